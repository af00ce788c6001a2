"""A checkpoint that does not fit together is refused at load with what is wrong, never predicted from."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from bertkit import BertConfig, CheckpointError
from bertkit.cli import main
from bertkit.predict import Predictor
from tests.reliability.tiny_checkpoints import TEXTS, finetune_tiny, make_classifier


def _edit_json(path, **changes) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(changes)
    path.write_text(json.dumps(data), encoding="utf-8")


def _edit_weights(directory, change) -> None:
    state = load_file(directory / "model.safetensors")
    change(state)
    save_file(state, directory / "model.safetensors")


def test_intact_checkpoint_predicts(tmp_path):
    predictions = Predictor(make_classifier(tmp_path)).predict(TEXTS)
    assert [p["label"] for p in predictions] and all(p["label"] in ("neg", "pos") for p in predictions)


def test_missing_head_weights_are_named_not_randomly_initialised(tmp_path, capsys):
    directory = make_classifier(tmp_path)

    def drop_head(state):
        del state["classifier.weight"], state["classifier.bias"]

    _edit_weights(directory, drop_head)
    with pytest.raises(CheckpointError, match="missing weights") as info:
        Predictor(directory)
    assert "classifier.weight" in str(info.value) and "classifier.bias" in str(info.value)
    capsys.readouterr()
    assert main(["evaluate", str(directory), "--data", str(tmp_path / "none.tsv")]) == 2  # evaluate loads the same way
    assert "missing weights" in capsys.readouterr().err


def test_ner_task_json_over_classifier_weights_is_refused(tmp_path):
    directory = make_classifier(tmp_path)
    (directory / "task.json").write_text(json.dumps({"task": "ner", "labels": ["neg", "pos"], "max_seq_len": 32,
                                                     "scheme": "bio", "crf": False, "word_level": "char"}))
    with pytest.raises(CheckpointError, match=r"task\.json says task 'ner' \(a BertForTokenClassification\) but "
                       r".*config\.json says architectures \['BertForSequenceClassification'\]"):
        Predictor(directory)


def test_three_labels_over_a_two_class_head_are_refused(tmp_path):
    directory = make_classifier(tmp_path)
    _edit_json(directory / "task.json", labels=["neg", "pos", "neutral"])
    with pytest.raises(CheckpointError, match=r"task\.json has 3 labels .* but .*config\.json has 2 in id2label"):
        Predictor(directory)
    # config.json agrees with task.json but the weights hold a two-class head: the shapes say so
    _edit_json(directory / "config.json", id2label={"0": "neg", "1": "pos", "2": "neutral"},
               label2id={"neg": 0, "pos": 1, "neutral": 2})
    with pytest.raises(CheckpointError, match=r"classifier\.weight: checkpoint has shape \(2, 32\), model expects "
                       r"\(3, 32\)"):
        Predictor(directory)


def test_label_names_that_differ_between_task_and_config_are_refused(tmp_path):
    directory = make_classifier(tmp_path)
    _edit_json(directory / "task.json", labels=["pos", "neg"])  # same count, swapped: every label would flip
    with pytest.raises(CheckpointError, match=r"task\.json has 2 labels \['pos', 'neg'\] but"):
        Predictor(directory)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"max_seq_len": "128"}, r"max_seq_len must be an integer from 8 to 131072, got '128'"),
        ({"max_seq_len": 100000}, r"max_seq_len=100000 but .*max_position_embeddings=512"),
        ({"labels": "neg,pos"}, r"labels must be a non-empty list of distinct, non-empty strings, got 'neg,pos'"),
        ({"labels": [0, 1]}, r"labels must be a non-empty list"),
        ({"labels": ["neg", "neg"]}, r"labels must be a non-empty list of distinct"),
        ({"task": "sentiment"}, r"task must be one of \['classification', .*got 'sentiment'"),
        ({"task": "ner"}, r"a ner task\.json needs \['scheme', 'crf', 'word_level'\]"),
    ],
)
def test_task_json_fields_are_validated(tmp_path, change, message):
    directory = make_classifier(tmp_path)
    _edit_json(directory / "task.json", **change)
    with pytest.raises(CheckpointError, match=message) as info:
        Predictor(directory)
    assert "task.json" in str(info.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"layer_norm_eps": "1e-12"}, r"layer_norm_eps must be a finite number, got '1e-12'"),
        ({"layer_norm_eps": 0}, r"layer_norm_eps must be in \(0, 1\), got 0"),
        ({"hidden_dropout_prob": None}, r"hidden_dropout_prob must be a finite number, got None"),
        ({"hidden_size": -32}, r"hidden_size must be a positive integer, got -32"),
        ({"num_attention_heads": 5}, r"hidden_size \(32\) must be divisible by num_attention_heads \(5\)"),
        ({"architectures": "BertModel"}, r"architectures must be a list of strings"),
        ({"id2label": {"1": "neg", "2": "pos"}}, r'id2label keys must be "0".."1"'),
        ({"id2label": ["neg", "pos"]}, r"id2label must be an object of label names"),
    ],
)
def test_config_json_fields_are_validated(tmp_path, change, message):
    directory = make_classifier(tmp_path)
    _edit_json(directory / "config.json", **change)
    with pytest.raises(CheckpointError, match=message) as info:
        Predictor(directory)
    assert "config.json" in str(info.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"max_position_embeddings": 10**12},
         r"max_position_embeddings must be at most 131,072, got 1,000,000,000,000"),
        ({"max_position_embeddings": 1e12}, r"max_position_embeddings must be a positive integer, got 1000000000000.0"),
        ({"hidden_size": 16384, "num_attention_heads": 16, "num_hidden_layers": 512, "intermediate_size": 65536},
         r"describes about 1,649,\d{3},\d{3},\d{3} parameters, more than bertkit's limit"),
    ],
)
def test_huge_sizes_are_refused_before_allocating(tmp_path, monkeypatch, change, message):
    directory = make_classifier(tmp_path)
    _edit_json(directory / "config.json", **change)

    def no_allocation(*args, **kwargs):
        raise AssertionError("a model was built from a config that should have been refused")

    monkeypatch.setattr("bertkit.model.Embeddings.__init__", no_allocation)
    with pytest.raises(CheckpointError, match=message):
        Predictor(directory)
    with pytest.raises(CheckpointError, match=message):
        BertConfig.from_pretrained(directory)


def test_nonfinite_weights_are_refused_by_name_and_reported_by_info(tmp_path, capsys):
    directory = make_classifier(tmp_path)

    def poison(state):
        state["classifier.weight"][0, 0] = math.nan
        state["bert.encoder.layer.1.output.dense.bias"][3] = math.inf

    _edit_weights(directory, poison)
    with pytest.raises(CheckpointError, match=r"2 tensor\(s\) hold NaN or infinite values: "
                       r"bert\.encoder\.layer\.1\.output\.dense\.bias, classifier\.weight"):
        Predictor(directory)
    capsys.readouterr()
    assert main(["info", str(directory)]) == 1
    out = capsys.readouterr().out
    assert "finite       NO: 2 tensor(s) hold NaN or infinite values" in out and "classifier.weight" in out
    assert main(["predict", str(directory)]) == 2
    assert "hold NaN or infinite values" in capsys.readouterr().err


def test_info_says_finite_for_a_good_checkpoint(tmp_path, capsys):
    assert main(["info", str(make_classifier(tmp_path))]) == 0
    assert "finite       yes" in capsys.readouterr().out


def test_onnx_file_is_bound_to_its_checkpoint(tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    import onnx

    a = make_classifier(tmp_path / "a", seed=0)
    b = make_classifier(tmp_path / "b", seed=1)  # same shape, same labels, other weights
    path = tmp_path / "a.onnx"
    assert main(["export", str(a), "--onnx", str(path)]) == 0
    # the file from this model loads and predicts what PyTorch predicts
    expected = Predictor(a).predict(TEXTS)
    got = Predictor(a, onnx=path).predict(TEXTS)
    assert [p["label"] for p in got] == [p["label"] for p in expected]
    # from another model: refused, where it used to load and change labels silently
    with pytest.raises(CheckpointError, match=r"a\.onnx: exported from a different model than this checkpoint"):
        Predictor(b, onnx=path)
    # a file without a fingerprint (an older export, another tool) cannot be matched, so it is refused too
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "old.onnx"))
    with pytest.raises(CheckpointError, match=r"old\.onnx: has no bertkit_fingerprint in its metadata"):
        Predictor(a, onnx=tmp_path / "old.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(CheckpointError, match=r"junk\.onnx: not a loadable ONNX model"):
        Predictor(a, onnx=tmp_path / "junk.onnx")


def test_onnx_fingerprint_ignores_dropout_but_not_weights(tmp_path):
    from bertkit.export import fingerprint
    from bertkit.model import BertModel

    directory = make_classifier(tmp_path)
    with pytest.warns(UserWarning, match="not used by BertModel"):  # the classifier head, expected here
        model = BertModel.from_pretrained(directory)
    before = fingerprint(model)
    model.config.hidden_dropout_prob = 0.3
    assert fingerprint(model) == before
    with torch.no_grad():
        model.pooler.bias[0] += 1e-3
    assert fingerprint(model) != before


@pytest.mark.parametrize("task", ["classification", "ner", "intent_slot", "relation", "spelling", "qa"])
def test_every_task_checkpoint_passes_the_strict_checks(tmp_path, task):
    """The checks refuse mixed-up checkpoints, not the ones `finetune` writes: each task's own loads and predicts."""
    directory, inputs = finetune_tiny(task, tmp_path)
    predictor = Predictor(directory)
    assert predictor.task == task
    assert len(predictor.predict(inputs)) == len(inputs)
