"""Careless command lines end with exit 2 and one stderr line naming the flag or path, never a traceback."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bertkit.cli import COMMANDS, main
from bertkit.predict import Predictor
from tests.reliability.tiny_checkpoints import TEXTS, make_classifier


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_classifier(tmp_path_factory.mktemp("cli") / "model")


def _one_error_line(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "flag", "expected"),
    [
        (["predict", "CKPT", "--batch-size", "0"], "--batch-size", "an integer >= 1"),
        (["finetune", "--task", "classification", "--train", "t.tsv", "--limit", "-30"], "--limit", ">= 1"),
        (["finetune", "--task", "qa", "--train", "t.json", "--doc-stride", "0"], "--doc-stride", ">= 1"),
        (["finetune", "--task", "spelling", "--train", "t", "--augment", "-1"], "--augment", ">= 0"),
        (["finetune", "--task", "ner", "--train", "t", "--max-seq-len", "2"], "--max-seq-len", "from 8 to 131072"),
        (["pretrain", "--train", "t.txt", "--max-seq-len", "2"], "--max-seq-len", "from 8 to 131072"),
        (["pretrain", "--train", "t.txt", "--vocab-size", "1"], "--vocab-size", "from 6 to 2000000"),
        (["pretrain", "--train", "t.txt", "--mask-prob", "1.5"], "--mask-prob", "a finite number > 0 and < 1"),
        (["pretrain", "--train", "t.txt", "--mask-prob", "nan"], "--mask-prob", "a finite number > 0 and < 1"),
        (["pretrain", "--train", "t.txt", "--heldout-fraction", "1"], "--heldout-fraction", ">= 0 and < 1"),
        (["pretrain", "--train", "t.txt", "--max-predictions", "0"], "--max-predictions", ">= 1"),
        (["train-tokenizer", "t.txt", "--output", "o", "--vocab-size", "1"], "--vocab-size", "from 6"),
        (["train-tokenizer", "t.txt", "--output", "o", "--min-frequency", "0"], "--min-frequency", ">= 1"),
        (["embed", "CKPT", "--output", "o.npy", "--max-seq-len", "2"], "--max-seq-len", "from 8"),
        (["demo", "--lr", "nan"], "--lr", "a finite number > 0"),
        (["demo", "--finetune-lr", "-1"], "--finetune-lr", "a finite number > 0"),
        (["demo", "--pretrain-steps", "0"], "--pretrain-steps", ">= 1"),
        (["demo", "--batch-size", "ten"], "--batch-size", "got 'ten'"),
        (["demo", "--model-size", "huge"], "--model-size", "invalid choice: 'huge'"),
        (["prepare-corpus", "--seed", "-1"], "--seed", ">= 0"),
        (["prepare-data", "t.txt", "--tokenizer", "v", "--output", "o", "--max-document-chars", "0"],
         "--max-document-chars", ">= 1"),
    ],
)
def test_bad_numbers_are_refused_at_parse_time_naming_the_flag(argv, flag, expected, capsys, checkpoint):
    argv = [str(checkpoint) if a == "CKPT" else a for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: " in err and expected in err and "Traceback" not in err


def test_pretrain_data_that_is_not_a_prepared_directory_is_named(tmp_path, capsys):
    run = ["--output-dir", str(tmp_path / "run"), "--max-steps", "1", "--no-progress"]
    assert main(["pretrain", "--data", str(tmp_path / "nope"), *run]) == 2
    _one_error_line(capsys, f"{tmp_path / 'nope'}: no such directory (expected one written by `bertkit prepare-data`)")
    (tmp_path / "file").write_text("x", encoding="utf-8")
    assert main(["pretrain", "--data", str(tmp_path / "file"), *run]) == 2
    _one_error_line(capsys, f"{tmp_path / 'file'}: is a file; expected a directory written by `bertkit prepare-data`")
    (tmp_path / "empty").mkdir()
    assert main(["pretrain", "--data", str(tmp_path / "empty"), *run]) == 2
    _one_error_line(capsys, f"{tmp_path / 'empty'}: no manifest.json: not a directory written by `bertkit "
                            "prepare-data`")
    assert not (tmp_path / "run").exists()  # refused before the run directory was claimed


def test_predict_missing_input_file(checkpoint, tmp_path, capsys):
    assert main(["predict", str(checkpoint), "--input", str(tmp_path / "nope.jsonl")]) == 2
    _one_error_line(capsys, "nope.jsonl: file not found")


def test_predict_input_is_a_directory(checkpoint, tmp_path, capsys):
    assert main(["predict", str(checkpoint), "--input", str(tmp_path)]) == 2
    _one_error_line(capsys, f"{tmp_path}: is a directory; expected a file")


def test_predict_output_in_a_missing_directory(checkpoint, tmp_path, capsys):
    inputs = tmp_path / "in.txt"
    inputs.write_text("很满意\n", encoding="utf-8")
    target = tmp_path / "no" / "such" / "out.jsonl"
    assert main(["predict", str(checkpoint), "--input", str(inputs), "--output", str(target)]) == 2
    _one_error_line(capsys, f"{target}: directory {target.parent} does not exist")


def test_predict_output_is_a_directory_or_under_a_file(checkpoint, tmp_path, capsys):
    inputs = tmp_path / "in.txt"
    inputs.write_text("很满意\n", encoding="utf-8")
    assert main(["predict", str(checkpoint), "--input", str(inputs), "--output", str(tmp_path)]) == 2
    _one_error_line(capsys, "is a directory; expected a file name to write")
    assert main(["predict", str(checkpoint), "--input", str(inputs), "--output", str(inputs / "out.jsonl")]) == 2
    _one_error_line(capsys, f"{inputs} is not a directory")


def test_predict_non_utf8_file_and_stdin_name_the_line(checkpoint, tmp_path, capsys, monkeypatch):
    inputs = tmp_path / "latin1.txt"
    inputs.write_bytes("很满意\n".encode() + "café\n".encode("latin-1"))
    assert main(["predict", str(checkpoint), "--input", str(inputs), "--no-progress"]) == 2
    _one_error_line(capsys, "latin1.txt:2: not UTF-8 text")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"ok\n\xff\xfe bad\n"), encoding="utf-8"))
    assert main(["predict", str(checkpoint)]) == 2
    _one_error_line(capsys, "<stdin>:2: not UTF-8 text")


def test_predict_bom_is_dropped_from_file_and_stdin(checkpoint, tmp_path, capsys, monkeypatch):
    line = json.dumps({"text": TEXTS[0]}, ensure_ascii=False)
    plain = Predictor(checkpoint, precision="auto").predict([TEXTS[0]])  # what the command runs
    inputs = tmp_path / "bom.jsonl"
    inputs.write_bytes(b"\xef\xbb\xbf" + line.encode() + b"\n")
    out = tmp_path / "out.jsonl"
    assert main(["predict", str(checkpoint), "--input", str(inputs), "--output", str(out), "--no-progress"]) == 0
    assert [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()] == plain
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"\xef\xbb\xbf" + line.encode() + b"\n"),
                                                       encoding="utf-8"))
    capsys.readouterr()
    assert main(["predict", str(checkpoint)]) == 0
    assert [json.loads(x) for x in capsys.readouterr().out.splitlines()] == plain


def test_predict_with_no_inputs_says_so(checkpoint, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n  \n"))
    assert main(["predict", str(checkpoint)]) == 2
    _one_error_line(capsys, "<stdin>: no inputs: every line is empty or blank")


def test_predict_missing_checkpoint(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("x\n"))
    assert main(["predict", str(tmp_path / "gone")]) == 2
    _one_error_line(capsys, "gone: checkpoint directory not found")


def test_embed_keeps_row_i_equal_to_line_i(checkpoint, tmp_path, capsys):
    inputs = tmp_path / "lines.txt"
    inputs.write_text(f"{TEXTS[0]}\n\n{TEXTS[1]}\n   \n{TEXTS[2]}\n", encoding="utf-8")
    out = tmp_path / "vectors.npy"
    assert main(["embed", str(checkpoint), "--input", str(inputs), "--output", str(out)]) == 0
    err = capsys.readouterr().err
    assert "2 blank line(s) (line 2, 4) embedded as empty text" in err
    rows = np.load(out)
    assert rows.shape[0] == 5
    single = tmp_path / "one.txt"
    for line, text in ((0, TEXTS[0]), (2, TEXTS[1]), (4, TEXTS[2])):
        single.write_text(text + "\n", encoding="utf-8")
        assert main(["embed", str(checkpoint), "--input", str(single), "--output", str(tmp_path / "one.npy")]) == 0
        assert np.allclose(np.load(tmp_path / "one.npy")[0], rows[line], atol=1e-5)


def test_embed_io_errors(checkpoint, tmp_path, capsys):
    assert main(["embed", str(checkpoint), "--input", str(tmp_path / "none.txt"), "--output", "x.npy"]) == 2
    _one_error_line(capsys, "none.txt: file not found")
    inputs = tmp_path / "in.txt"
    inputs.write_text("", encoding="utf-8")
    assert main(["embed", str(checkpoint), "--input", str(inputs), "--output", str(tmp_path / "x.npy")]) == 2
    _one_error_line(capsys, "in.txt: no input lines")
    inputs.write_text("hello\n", encoding="utf-8")
    assert main(["embed", str(checkpoint), "--input", str(inputs), "--output", str(tmp_path / "d" / "x.npy")]) == 2
    _one_error_line(capsys, "does not exist")
    assert main(["embed", str(checkpoint), "--input", str(inputs), "--output", str(tmp_path / "x.npy"),
                 "--max-seq-len", "1024"]) == 2
    _one_error_line(capsys, "--max-seq-len 1024 exceeds", "max_position_embeddings 512")


def test_export_onnx_to_a_directory(checkpoint, tmp_path, capsys):
    assert main(["export", str(checkpoint), "--onnx", str(tmp_path)]) == 2
    _one_error_line(capsys, f"--onnx {tmp_path}: is a directory; give the file to write")


def test_an_oserror_reaching_main_is_one_line_with_the_path(monkeypatch, tmp_path, capsys):
    def disk_full(args):
        """Fails as a full disk does."""
        raise OSError(28, "No space left on device", str(tmp_path / "model.safetensors"))

    monkeypatch.setitem(COMMANDS, "info", (disk_full, COMMANDS["info"][1]))
    assert main(["info", str(tmp_path)]) == 2
    line = _one_error_line(capsys, "model.safetensors: No space left on device")
    assert line.startswith("bertkit info: error: ")


def test_predict_into_head_exits_quietly(checkpoint, tmp_path):
    """`bertkit predict ... | head -1`: the closed pipe ends the run without a traceback."""
    inputs = tmp_path / "many.txt"
    inputs.write_text("".join(f"{TEXTS[i % len(TEXTS)]}\n" for i in range(3000)), encoding="utf-8")
    script = (f"{sys.executable} -m bertkit.cli predict {checkpoint} --input {inputs} --no-progress "
              f"2> {tmp_path / 'err'} | head -1; echo \"status=${{PIPESTATUS[0]}}\"")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=300)
    lines = result.stdout.splitlines()
    assert json.loads(lines[0])["label"] in ("neg", "pos")
    err = (tmp_path / "err").read_text()
    assert "Traceback" not in err and "BrokenPipeError" not in err and err.strip() == "", err
    assert lines[-1] == "status=141"


def test_a_file_given_as_checkpoint_is_called_a_file(tmp_path, capsys, monkeypatch):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"x")
    assert main(["info", str(weights)]) == 2
    _one_error_line(capsys, "model.safetensors: is a file, not a checkpoint directory")
    monkeypatch.setattr(sys, "stdin", io.StringIO("x\n"))
    assert main(["predict", str(weights)]) == 2
    _one_error_line(capsys, "is a file, not a checkpoint directory")


def test_a_bad_line_names_its_line_and_leaves_the_previous_output_in_place(checkpoint, tmp_path, capsys):
    # found in review: the output was truncated before the input was read, and errors named the place in the batch
    out = tmp_path / "out.jsonl"
    out.write_text("previous results\n", encoding="utf-8")
    inputs = tmp_path / "in.jsonl"
    inputs.write_text(f"{TEXTS[0]}\n\n{json.dumps({'text': TEXTS[1], 'colour': 'red'})}\n", encoding="utf-8")
    assert main(["predict", str(checkpoint), "--input", str(inputs), "--output", str(out), "--no-progress"]) == 2
    _one_error_line(capsys, f"{inputs}:3: unknown field(s) ['colour']")
    assert out.read_text(encoding="utf-8") == "previous results\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    inputs.write_text(f"{TEXTS[0]}\n{TEXTS[1]}\n", encoding="utf-8")
    assert main(["predict", str(checkpoint), "--input", str(inputs), "--output", str(out), "--no-progress"]) == 0
    assert len(out.read_text(encoding="utf-8").splitlines()) == 2


def test_embed_to_stdout_writes_the_same_rows_as_npy(checkpoint, tmp_path, capsys):
    inputs = tmp_path / "lines.txt"
    inputs.write_text(f"{TEXTS[0]}\n{TEXTS[1]}\n", encoding="utf-8")
    assert main(["embed", str(checkpoint), "--input", str(inputs), "--output", str(tmp_path / "v.npy")]) == 0
    capsys.readouterr()
    assert main(["embed", str(checkpoint), "--input", str(inputs), "--output", "-"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == TEXTS[:2] and not (tmp_path / "-").exists() and not os.path.exists("-")
    assert np.allclose(np.array([r["vector"] for r in rows]), np.load(tmp_path / "v.npy"), atol=1e-5)
