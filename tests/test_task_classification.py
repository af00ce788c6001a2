"""Sentence / sentence-pair classification: real dataset readers, malformed lines, hand-computed scores,
a tiny end-to-end run on sentence pairs that only a model reading the second segment can solve."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from bertkit import DataError, Tokenizer
from bertkit.tasks import classification
from bertkit.tasks.classification import read_examples, scores
from bertkit.train import TrainConfig
from tests.conftest import shared_data


@pytest.mark.parametrize(("path", "fmt", "count", "labels", "paired"), [
    (("glue", "SST-2", "dev.tsv"), "sst2", 872, {"0": 428, "1": 444}, False),
    (("glue", "MRPC", "dev.tsv"), "mrpc", 408, {"0": 129, "1": 279}, True),  # header starts with a BOM
    (("glue", "CoLA", "dev.tsv"), "cola", 1043, {"0": 322, "1": 721}, False),  # no header, 4 columns
    (("glue", "RTE", "dev.tsv"), "rte", 277, {"entailment": 146, "not_entailment": 131}, True),
    (("chnsenticorp", "test.tsv"), "chnsenticorp", 1200, {"0": 598, "1": 602}, False),
    (("bq_corpus", "test.txt"), "bq", 10000, {"0": 5000, "1": 5000}, True),  # `_!_`-separated, no header
])
def test_real_datasets_read(path, fmt, count, labels, paired):
    examples = read_examples(shared_data(*path), fmt)
    assert len(examples) == count
    assert Counter(e.label for e in examples) == labels
    assert all(e.text.strip() for e in examples)
    assert all((e.text_pair is not None) == paired for e in examples)


def test_cola_columns_are_the_right_ones():
    first = read_examples(shared_data("glue", "CoLA", "dev.tsv"), "cola")[0]
    assert (first.text, first.label, first.line) == ("The sailors rode the breeze clear of the rocks.", "1", 1)


def test_malformed_lines_are_named(tmp_path):
    tsv = tmp_path / "train.tsv"
    tsv.write_text("label\ttext\n1\tgood\n0\n")
    with pytest.raises(DataError, match=r"train\.tsv:3: expected 2 columns separated by '\\t', got 1"):
        read_examples(tsv)
    tsv.write_text("label\tbody\n1\tgood\n")
    with pytest.raises(DataError, match=r"train\.tsv:1: header has no text column"):
        read_examples(tsv)
    tsv.write_text("label\ttext\n1\t   \n")
    with pytest.raises(DataError, match=r"train\.tsv:2: empty text"):
        read_examples(tsv)
    bq = tmp_path / "bq.txt"
    bq.write_text("问题一_!_问题二_!_1\n问题一_!_1\n")
    with pytest.raises(DataError, match=r"bq\.txt:2: expected 3 columns separated by '_!_', got 2"):
        read_examples(bq, "bq")
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text('{"text": "ok", "label": 1}\n{"text": 5}\n')
    with pytest.raises(DataError, match=r'train\.jsonl:2: bad JSON line: expected an object with a string "text"'):
        read_examples(jsonl, "jsonl")
    with pytest.raises(DataError, match="unknown format 'csv'"):
        read_examples(jsonl, "csv")


def test_skipped_lines_are_counted_not_lost(tmp_path):
    tsv = tmp_path / "train.tsv"
    tsv.write_text("label\ttext\n1\tgood\n0\n1\tfine\n0\t \n")
    with pytest.warns(UserWarning, match=r"skipped 1 line\(s\) with a wrong column count \(line 3\); "
                                         r"1 line\(s\) with empty text \(line 5\)"):
        kept = read_examples(tsv, skip_bad_lines=True)
    assert [e.text for e in kept] == ["good", "fine"]


def test_labels_outside_the_label_set_are_named(tmp_path):
    (tmp_path / "v.txt").write_text("good bad fine\n")
    tok = Tokenizer.train([tmp_path / "v.txt"], vocab_size=40, min_frequency=1)
    examples = [classification.Example("good", None, "pos", 2), classification.Example("bad", None, "meh", 7)]
    with pytest.raises(DataError, match=r"train:7: label 'meh' is not in the label set \['neg', 'pos'\]"):
        classification.ClassificationTask(tok, examples, [], classification.ClassificationInfo(["neg", "pos"], 128))


def test_scores_by_hand():
    gold, pred = [1, 1, 1, 0, 0], [1, 1, 0, 1, 0]
    result = scores(gold, pred, 2)
    assert result["accuracy"] == pytest.approx(3 / 5)
    # positive class 1: TP 2, FP 1, FN 1 -> P = R = F1 = 2/3; class 0: TP 1, FP 1, FN 1 -> F1 1/2
    assert result["f1"] == pytest.approx(2 / 3)
    assert result["macro_f1"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert result["mcc"] == pytest.approx(1 / 6)  # (2*1 - 1*1) / sqrt(3*2*3*2)
    three = scores([0, 1, 2, 2], [0, 2, 2, 2], 3)
    assert "f1" not in three and "mcc" not in three  # binary-only metrics
    assert three["macro_f1"] == pytest.approx((1 + 0 + 0.8) / 3)


def test_tiny_end_to_end_on_pairs(tmp_path):
    # the label is decided by the second segment alone; the first is noise, so reading only A scores 50%
    words = ["apple", "pear", "plum", "fig"]
    rows = [(a, b, "pome" if b in ("apple", "pear") else "other") for a in words for b in words] * 2
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"text": a, "text_pair": b, "label": y}) + "\n" for a, b, y in rows))
    (tmp_path / "words.txt").write_text(" ".join(words) + "\n")
    tok = Tokenizer.train([tmp_path / "words.txt"], vocab_size=60, min_frequency=1)
    tok.save_pretrained(tmp_path / "vocab")
    config = TrainConfig(output_dir=str(tmp_path / "run"), batch_size=8, max_steps=100, lr=3e-3, warmup=5,
                         log_every=20, progress=False, bf16=False, seed=0)
    result = classification.finetune(train, config, eval_file=train, fmt="jsonl", tokenizer=tmp_path / "vocab",
                                     model_size="tiny", max_seq_len=16)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line]
    assert losses[-1] < losses[0]
    assert result.metrics["accuracy"] == 1.0
    saved = tmp_path / "run" / "model"
    assert json.loads((saved / "config.json").read_text())["id2label"] == {"0": "other", "1": "pome"}
    model = classification.BertForSequenceClassification.from_pretrained(saved)
    info = classification.ClassificationInfo(["other", "pome"], 16)
    out = classification.predict(model, Tokenizer.from_pretrained(saved), info,
                                 [{"text": "plum", "text_pair": "pear"}, {"text": "fig", "text_pair": "fig"}])
    assert [o["label"] for o in out] == ["pome", "other"]
    assert all(abs(sum(o["probabilities"].values()) - 1.0) < 1e-5 for o in out)


def test_training_and_prediction_encode_a_missing_pair_the_same_way():
    # a pair dataset where one JSONL record has no text_pair: training must see what prediction will see
    tok = Tokenizer.train(["the cat sat", "on the mat", "a dog"], vocab_size=40, min_frequency=1)
    examples = [classification.Example("the cat sat", None, "a", 1),
                classification.Example("a dog", "on the mat", "b", 2)]
    task = classification.ClassificationTask(tok, examples, [], classification.ClassificationInfo(["a", "b"], 16))
    alone = tok(["the cat sat"], max_length=16)["input_ids"][0].tolist()
    mixed = tok(["the cat sat", "a dog"], [None, "on the mat"], max_length=16)
    assert task.train[0][0] == alone == mixed["input_ids"][0][: len(alone)].tolist()
    assert task.train[1][0] == tok.encode("a dog", "on the mat")
    assert tok.sep_token_id not in task.train[0][0][1:-1]  # no empty second segment


def test_superglue_and_clue_json_presets(tmp_path):
    cb = tmp_path / "cb.jsonl"
    cb.write_text(json.dumps({"premise": "It was complex.", "hypothesis": "It was simple.", "label": "contradiction",
                              "idx": 0}) + "\n")
    [e] = read_examples(cb, "cb")
    assert (e.text, e.text_pair, e.label, e.line) == ("It was complex.", "It was simple.", "contradiction", 1)
    ocnli = tmp_path / "ocnli.json"
    pairs = [("他家很有钱。", "neutral"), ("他很穷。", "-"), ("他有东西。", "entailment")]
    ocnli.write_text("\n".join(json.dumps({"sentence1": "他什么都有", "sentence2": s, "label": y}, ensure_ascii=False)
                               for s, y in pairs))
    with pytest.warns(UserWarning, match=r"skipped 1 row\(s\) labelled '-' \(line 2\)"):
        kept = read_examples(ocnli, "ocnli")
    got = [(e.text_pair, e.label, e.line) for e in kept]
    assert got == [(pairs[0][0], "neutral", 1), (pairs[2][0], "entailment", 3)]
    csl = tmp_path / "csl.json"
    csl.write_bytes(json.dumps({"id": 1, "abst": "球团设备安装", "keyword": ["球团", "设备"], "label": "1"},
                               ensure_ascii=False).encode() + b"\r\n")  # FewCLUE files end lines with CRLF
    [e] = read_examples(csl, "csl")
    assert (e.text, e.text_pair, e.label) == ("球团设备安装", "球团，设备", "1")
    tnews = tmp_path / "tnews.json"
    tnews.write_text(json.dumps({"label": 100, "label_desc": "news_story", "sentence": "孩子跟谁睡"}) + "\n")
    [e] = read_examples(tnews, "tnews")
    assert (e.text, e.text_pair, e.label) == ("孩子跟谁睡", None, "100")


def test_the_real_superglue_and_clue_files_read():
    with pytest.warns(UserWarning, match=r"skipped 50 row\(s\) labelled '-'"):
        assert len(read_examples(shared_data("clue", "ocnli", "dev.json"), "ocnli")) == 2950
    assert len(read_examples(shared_data("superglue", "CB", "val.jsonl"), "cb")) == 56
    csl = read_examples(shared_data("clue", "fewclue", "csl", "train_few_all.json"), "csl")
    assert len(csl) == 160 and {e.label for e in csl} == {"0", "1"}
