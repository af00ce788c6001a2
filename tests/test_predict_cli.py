"""Predictor and the finetune / evaluate / predict / embed commands, end to end on a tiny classifier."""

from __future__ import annotations

import io
import json
import sys

import numpy as np
import pytest

from bertkit import DataError
from bertkit.cli import main
from bertkit.predict import Predictor
from tests.conftest import CLASSIFIER_ROWS, finetune_tiny_classifier

ROWS = CLASSIFIER_ROWS


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return finetune_tiny_classifier(tmp_path_factory.mktemp("cls"))


def test_evaluate_command(classifier, capsys):
    capsys.readouterr()
    assert main(["evaluate", str(classifier / "run" / "model"), "--data", str(classifier / "train.tsv")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["task"] == "classification" and result["accuracy"] == 1.0


def test_predict_command_from_file_and_stdin(classifier, tmp_path, capsys, monkeypatch):
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"text": "服务很棒，非常好"}\n\n房间糟糕，不满意\n', encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert main(["predict", str(classifier / "run" / "model"), "--input", str(inputs), "--output", str(out),
                 "--no-progress"]) == 0
    results = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert [r["label"] for r in results] == ["1", "0"]
    assert abs(sum(results[0]["probabilities"].values()) - 1) < 1e-5
    monkeypatch.setattr(sys, "stdin", io.StringIO('{"text": "很满意"}\n{"text": 5}\n'))
    capsys.readouterr()
    assert main(["predict", str(classifier / "run" / "model")]) == 2
    assert "<stdin>:2: 'text' must be a string, got int" in capsys.readouterr().err  # the line, not the batch index


def test_predictor_input_errors(classifier):
    predictor = Predictor(classifier / "run" / "model")
    assert predictor.task == "classification" and predictor.labels == ["0", "1"]
    with pytest.raises(DataError, match="input 0: missing 'text'"):
        predictor.predict([{"text_pair": "x"}])
    with pytest.raises(DataError, match=r"input 1: 'text' is empty"):
        predictor.predict(["好", "  "])
    with pytest.raises(DataError, match=r"unknown field\(s\) \['question'\]"):
        predictor.predict([{"text": "好", "question": "?"}])
    assert predictor.predict([]) == []


def test_embed_command(classifier, tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("服务很棒\n房间太差\n", encoding="utf-8")
    out = tmp_path / "v.npy"
    assert main(["embed", str(classifier / "run" / "model"), "--input", str(texts), "--output", str(out)]) == 0
    vectors = np.load(out)
    assert vectors.shape == (2, 128) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def test_finetune_rejects_options_of_other_tasks(classifier, capsys):
    assert main(["finetune", "--task", "classification", "--train", str(classifier / "train.tsv"), "--crf",
                 "--tokenizer", str(classifier / "vocab"), "--output-dir", str(classifier / "x")]) == 2
    assert "--crf do(es) not apply to the classification task" in capsys.readouterr().err
