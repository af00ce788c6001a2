"""Sentence / sentence-pair classification: real dataset readers, malformed lines, hand-computed scores,
a tiny end-to-end run on sentence pairs that only a model reading the second segment can solve; multi-label and
regression (toy sets learned, the same logits and loss in transformers, threshold tuning by hand, bad labels named);
long texts in windows (pooling by hand, the serving budget, an ending learned only when read)."""

from __future__ import annotations

import json
import warnings
from collections import Counter

import pytest

from bertkit import DataError, Tokenizer
from bertkit.tasks import classification
from bertkit.tasks.classification import read_examples, scores
from bertkit.train import TrainConfig
from tests.conftest import shared_data
from tests.serving import make_windowed_classifier


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
    assert task.train[0].rows[0][0] == alone == mixed["input_ids"][0][: len(alone)].tolist()
    assert task.train[1].rows[0][0] == tok.encode("a dog", "on the mat")
    assert tok.sep_token_id not in task.train[0].rows[0][0][1:-1]  # no empty second segment


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


# ---- multi-label and regression ------------------------------------------------------------------------------

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
FRUIT, COLOUR, ANIMAL = ["apple", "pear"], ["red", "blue"], ["cat", "dog"]


def _train_args(root, data, *extra):
    return ["finetune", "--task", "classification", "--train", str(data), "--eval", str(data),
            "--tokenizer", str(root / "vocab"), "--model-size", "tiny", "--max-steps", "120", "--lr", "1e-3",
            "--batch-size", "8", "--warmup", "5", "--no-progress", "--no-bf16", "--max-seq-len", "16",
            "--output-dir", str(root / "run"), *extra]


def _vocab(root, words):
    (root / "words.txt").write_text(" ".join(words) + "\n")
    Tokenizer.train([root / "words.txt"], vocab_size=60, min_frequency=1).save_pretrained(root / "vocab")


def test_multi_label_learns_a_toy_set_and_predicts_its_labels(tmp_path, capsys):
    from bertkit.cli import main
    from bertkit.predict import Predictor

    # each word names one label; a text holds words of 0-3 groups, so it has as many labels
    groups = {"fruit": FRUIT, "colour": COLOUR, "animal": ANIMAL}
    rows = []
    for i in range(48):
        chosen = [name for k, name in enumerate(groups) if (i >> k) & 1]
        words = [groups[name][(i >> 3) % 2] for name in chosen] or ["the"]
        rows.append({"text": " ".join(words), "label": chosen})
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _vocab(tmp_path, [*FRUIT, *COLOUR, *ANIMAL, "the"])
    assert main(_train_args(tmp_path, data, "--format", "jsonl", "--multi-label")) == 0
    assert "exact_match 1.0000" in capsys.readouterr().out
    saved = tmp_path / "run" / "model"
    task = json.loads((saved / "task.json").read_text())
    assert (task["problem_type"], task["labels"], task["threshold"]) == (
        "multi_label_classification", ["animal", "colour", "fruit"], 0.5)
    assert json.loads((saved / "config.json").read_text())["problem_type"] == "multi_label_classification"
    [both, none] = Predictor(saved, device="cpu").predict(["pear blue", "the"])
    assert both["labels"] == ["colour", "fruit"] and none["labels"] == []
    assert set(both["probabilities"]) == {"animal", "colour", "fruit"} and both["probabilities"]["animal"] < 0.5


def test_a_new_multi_label_head_starts_from_the_label_priors_by_hand(tmp_path):
    import math

    from safetensors.torch import load_file

    from bertkit.cli import main

    def bias(run):
        return load_file(tmp_path / run / "model" / "model.safetensors")["classifier.bias"].tolist()

    # joy in 3 of 4 texts, anger in 1: log-odds of (3 + 0.5) / (4 + 1) and (1 + 0.5) / (4 + 1)
    rows = [["joy"], ["joy", "anger"], ["joy"], []]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(
        ["the cat", "the dog", "a cat", "a dog"], rows, strict=True)))
    _vocab(tmp_path, ["the", "a", "cat", "dog"])
    one_step = ["--max-steps", "1", "--lr", "1e-9", "--batch-size", "2"]
    assert main([*_train_args(tmp_path, data, "--format", "jsonl", "--multi-label"), *one_step]) == 0
    assert bias("run") == pytest.approx([math.log(0.3 / 0.7), math.log(0.7 / 0.3)], abs=1e-6)  # anger, joy
    # a head that a fine-tuned init_from brings keeps its bias, whatever the new data's priors
    data.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(
        ["the cat", "a dog"], [["anger", "joy"], ["anger"]], strict=True)))
    assert main(["finetune", "--task", "classification", "--train", str(data), "--format", "jsonl", "--multi-label",
                 "--init-from", str(tmp_path / "run" / "model"), "--no-progress", "--no-bf16",
                 "--max-seq-len", "16", "--output-dir", str(tmp_path / "again"), *one_step]) == 0
    assert bias("again") == pytest.approx(bias("run"), abs=1e-6)


def test_regression_learns_a_toy_set_and_predicts_a_score(tmp_path, capsys):
    from bertkit.cli import main
    from bertkit.predict import Predictor

    scores = {"awful": 0.0, "bad": 1.0, "fine": 2.5, "good": 4.0, "great": 5.0}
    rows = [f"{y}\t{filler} {word}\n" for word, y in scores.items() for filler in ("the", "a", "it was", "so")]
    data = tmp_path / "train.tsv"
    data.write_text("label\ttext\n" + "".join(rows * 2))
    _vocab(tmp_path, [*scores, "the", "a", "it", "was", "so"])
    assert main(_train_args(tmp_path, data, "--regression")) == 0
    printed = capsys.readouterr().out
    metrics = dict(pair.split() for pair in printed.split("evaluation: ")[1].splitlines()[0].split(", "))
    assert float(metrics["pearson"]) > 0.95 and float(metrics["spearman"]) > 0.95 and float(metrics["mse"]) < 0.3
    saved = tmp_path / "run" / "model"
    config = json.loads((saved / "config.json").read_text())
    assert (config["problem_type"], config["id2label"]) == ("regression", {"0": "score"})
    results = Predictor(saved, device="cpu").predict(["so awful", "the great"])
    assert list(results[0]) == ["score"] and results[0]["score"] < 1.0 < 4.0 < results[1]["score"]


@pytest.mark.parametrize("problem", ["multi_label_classification", "regression"])
def test_multi_label_and_regression_load_in_transformers_with_the_same_logits_and_loss(tmp_path, problem):
    import torch
    import transformers

    from bertkit import BertConfig
    from bertkit.tasks.base import save_task
    from tests.conftest import batch_with_padding_and_pairs, randomize_

    labels = ["joy", "anger", "fear"] if problem != "regression" else ["score"]
    info = classification.ClassificationInfo(labels, 16, problem_type=problem)
    tok = Tokenizer.train(["a b c d e f g h"], vocab_size=99, min_frequency=1)
    model = randomize_(classification.BertForSequenceClassification(
        BertConfig(**TINY, vocab_size=99, extra=classification.SPEC.config_extra(info))), seed=5).eval()
    save_task(classification.SPEC, info, model, tok, tmp_path)
    theirs = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(theirs).__name__ == "BertForSequenceClassification"
    assert theirs.config.problem_type == problem and theirs.num_labels == len(labels)
    ids, mask, types = batch_with_padding_and_pairs(99)
    targets = (torch.tensor([[1.0, 0, 1], [0, 0, 0], [0, 1, 0], [1, 1, 1]]) if problem != "regression"
               else torch.tensor([0.5, 4.0, 2.2, 1.0]))
    with torch.no_grad():
        reference = theirs(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=targets)
        ours = model(ids, mask, types)
    torch.testing.assert_close(ours, reference.logits, atol=1e-5, rtol=1e-5)
    # transformers' loss for this problem_type is ours divided by the batch (its mean; ours a sum that fit divides)
    ours_loss = classification.loss_sum(ours, targets, problem) / len(targets)
    torch.testing.assert_close(ours_loss, reference.loss, atol=1e-5, rtol=1e-5)


def test_tuning_picks_the_threshold_with_the_best_f1_by_hand():
    import torch

    # one label; gold 1 1 0 0. Thresholds in (0.30, 0.35] keep both positives and drop both negatives: F1 1.0;
    # above 0.35 the second positive is lost, at 0.30 or below a negative comes in. Of the ties, the nearest 0.5.
    probabilities = torch.tensor([[0.9], [0.35], [0.3], [0.1]])
    gold = torch.tensor([[1.0], [1.0], [0.0], [0.0]])
    assert classification.best_threshold(probabilities, gold, "micro_f1") == 0.35
    at = classification.multi_label_scores(probabilities, gold, [0.35, 0.5, 0.3])
    # 0.5: TP 1, FN 1 -> F1 2/3; 0.3: TP 2, FP 1 -> 4/5
    assert at["micro_f1"].tolist() == pytest.approx([1.0, 2 / 3, 0.8])
    # two labels, macro against micro: label A has 3 examples, label B 1. At 0.6 A is perfect and B missed
    # (micro 6/7, macro 1/2); at 0.2 B is found with one false A (A: 6/7, B: 1 -> macro 13/14, micro 8/9).
    probabilities = torch.tensor([[0.9, 0.1], [0.8, 0.1], [0.7, 0.1], [0.3, 0.25]])
    gold = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    at = classification.multi_label_scores(probabilities, gold, [0.6, 0.2])
    assert at["micro_f1"].tolist() == pytest.approx([6 / 7, 8 / 9])
    assert at["macro_f1"].tolist() == pytest.approx([1 / 2, 13 / 14])
    assert at["exact_match"].tolist() == pytest.approx([3 / 4, 3 / 4])
    assert classification.best_threshold(probabilities, gold, "macro_f1") == 0.25  # B in, no false A: all right
    task_info = classification.ClassificationInfo(["a", "b"], 16, "macro_f1", "multi_label_classification")
    assert task_info.threshold == 0.5


def test_tune_threshold_is_kept_in_task_json(tmp_path):
    from bertkit.cli import main

    rows = [{"text": w, "label": ["x"] if w in FRUIT else []} for w in [*FRUIT, *COLOUR, *ANIMAL]]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows * 4))
    _vocab(tmp_path, [*FRUIT, *COLOUR, *ANIMAL])
    assert main(_train_args(tmp_path, data, "--format", "jsonl", "--multi-label", "--tune-threshold",
                            "--max-steps", "3")) == 0
    evaluated = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
                 if '"eval"' in line][-1]
    saved = json.loads((tmp_path / "run" / "model" / "task.json").read_text())
    assert saved["threshold"] == evaluated["threshold"] and 0.01 <= saved["threshold"] <= 0.99


def test_bad_labels_are_named_with_file_and_line(tmp_path):
    tsv = tmp_path / "train.tsv"
    tsv.write_text("label\ttext\n2.5\tgood\nabc\tbad\n")
    with pytest.raises(DataError, match=r"train\.tsv:3: label 'abc' is not a number"):
        read_examples(tsv, problem_type="regression")
    tsv.write_text("label\ttext\n2.5\tgood\nnan\tbad\n")
    with pytest.raises(DataError, match=r"train\.tsv:3: label 'nan' is not a finite number"):
        read_examples(tsv, problem_type="regression")
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text('{"text": "a", "label": 1.5}\n{"text": "b", "label": true}\n')
    with pytest.raises(DataError, match=r"train\.jsonl:2: label True is not a number"):
        read_examples(jsonl, "jsonl", problem_type="regression")
    jsonl.write_text('{"text": "a", "label": ["x", "y"]}\n{"text": "b", "label": ["x", {"z": 1}]}\n')
    with pytest.raises(DataError, match=r"train\.jsonl:2: label must be a string, number or boolean, got a JSON "
                                        "object"):
        read_examples(jsonl, "jsonl", problem_type="multi_label_classification")
    tsv.write_text("label\ttext\nx,y\tgood\nx,,y\tbad\n")
    with pytest.raises(DataError, match=r"train\.tsv:3: label list 'x,,y' has an empty item"):
        read_examples(tsv, problem_type="multi_label_classification")
    # a label outside the training set, inside a list of the evaluation file
    tsv.write_text("label\ttext\nx,y\tgood\ny\tfine\n")
    heldout = tmp_path / "dev.tsv"
    heldout.write_text("label\ttext\ny\tok\nx,z\tbad\n")
    tok = Tokenizer.train(["good fine ok bad"], vocab_size=40, min_frequency=1)
    info = classification.ClassificationInfo(["x", "y"], 16, problem_type="multi_label_classification")
    with pytest.raises(DataError, match=r"dev\.tsv:3: label 'z' is not in the label set \['x', 'y'\]"):
        classification.ClassificationTask(tok, read_examples(tsv, problem_type=info.problem_type),
                                          read_examples(heldout, problem_type=info.problem_type), info,
                                          heldout_source=str(heldout))
    # GoEmotions: labels are indices into emotions.txt beside the file
    (tmp_path / "emotions.txt").write_text("admiration\namusement\nanger")
    goemotions = tmp_path / "dev.tsv"
    goemotions.write_text("so good\t0,2\tid1\nugh\t3\tid2\n")
    with pytest.raises(DataError, match=r"dev\.tsv:2: label '3' is not an index into the 3 label names "
                                        r"\(expected 0 to 2\)"):
        read_examples(goemotions, "goemotions")
    with pytest.raises(DataError, match="--format goemotions is multi-label classification; it cannot be read as "
                                        "regression"):
        read_examples(goemotions, "goemotions", problem_type="regression")


def test_flags_that_do_not_apply_are_refused(tmp_path, capsys):
    from bertkit.cli import main

    data = tmp_path / "train.tsv"
    data.write_text("label\ttext\n1\tgood\n0\tbad\n")
    _vocab(tmp_path, ["good", "bad"])
    for extra, message in [(["--multi-label", "--regression"], "--multi-label and --regression exclude each other"),
                           (["--tune-threshold"], "apply to multi-label classification, not single-label"),
                           (["--threshold", "0.3", "--regression"], "apply to multi-label classification, not "
                                                                     "regression"),
                           (["--stride", "8"], "--stride and --pool apply to --long-text windows"),
                           (["--pool", "max"], "--stride and --pool apply to --long-text windows"),
                           (["--format", "goemotions", "--regression"], "--format goemotions is multi-label")]:
        assert main(_train_args(tmp_path, data, *extra)) == 2
        assert message in capsys.readouterr().err
    args = _train_args(tmp_path, data, "--multi-label", "--tune-threshold")
    at = args.index("--eval")
    assert main(args[:at] + args[at + 2 :]) == 2
    assert "--tune-threshold picks the threshold on the evaluation set: give --eval" in capsys.readouterr().err


def test_goemotions_and_sts_b_read():
    train = read_examples(shared_data("goemotions", "train.tsv"), "goemotions")
    assert len(train) == 43410
    assert Counter(len(e.label) for e in train) == {1: 36308, 2: 6541, 3: 532, 4: 28, 5: 1}  # SOURCE.md's counts
    assert (train[0].text, train[0].label) == ("My favourite food is anything I didn't have to cook myself.",
                                               ("neutral",))  # 27
    dev = read_examples(shared_data("goemotions", "dev.tsv"), "goemotions")
    quoted = next(e for e in dev if "i hate sports" in e.text)
    assert quoted.text.startswith('see, i\'m over here thinking "i hate sports" now')  # CSV quoting undone
    assert (quoted.label, quoted.line) == (("anger", "neutral"), 5363)  # 2,27
    names = classification.label_names(shared_data("goemotions", "train.tsv"), "goemotions")
    assert len(names) == 28 and names[27] == "neutral"
    dev = read_examples(shared_data("sts_b", "dev.tsv"), "stsb")
    assert len(dev) == 1500 and all(isinstance(e.label, float) and 0 <= e.label <= 5 for e in dev)
    assert (dev[0].text, dev[0].text_pair, dev[0].label) == (
        "A man with a hard hat is dancing.", "A man wearing a hard hat is dancing.", 5.0)
    assert all(e.label is None for e in read_examples(shared_data("sts_b", "test.tsv"), "stsb"))  # no scores there
    news = read_examples(shared_data("thucnews", "cnews.test.sample1000.txt"), "thucnews")
    assert len(news) == 1000 and Counter(e.label for e in news)["体育"] == 116
    assert sum(len(e.text) > 510 for e in news) == 687  # SOURCE.md: 68.7% are longer than 510 characters


# ---- long texts in windows -----------------------------------------------------------------------------------

def test_windows_cover_the_text_by_hand():
    ids = list(range(10, 20))  # ten tokens; max_seq_len 6 leaves windows of 4
    rows = classification.text_windows(ids, 6, 2, 1, 2)
    assert [r[0] for r in rows] == [[1, 10, 11, 12, 13, 2], [1, 12, 13, 14, 15, 2], [1, 14, 15, 16, 17, 2],
                                    [1, 16, 17, 18, 19, 2]]
    assert all(r[1] == [0] * 6 for r in rows)
    # a stride over the window is cut to it (no token left out); the last window ends at the text's end
    assert [r[0] for r in classification.text_windows(ids, 6, 9, 1, 2)] == [
        [1, 10, 11, 12, 13, 2], [1, 14, 15, 16, 17, 2], [1, 18, 19, 2]]
    assert classification.text_windows([10, 11], 6, 2, 1, 2) == [([1, 10, 11, 2], [0, 0, 0, 0])]
    assert classification.text_windows([], 6, 2, 1, 2) == [([1, 2], [0, 0])]


@pytest.mark.parametrize("pool", ["mean", "max"])
def test_pooled_logits_are_the_windows_logits_pooled_by_hand(tmp_path, pool):
    import torch

    from bertkit.predict import Predictor

    model, tok = make_windowed_classifier(tmp_path, "regression", pool)
    text = "the cat sat on the mat while dogs run fast and it is raining"
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) == 16  # windows of 6 tokens every 3: starts 0, 3, 6, 9, 12 (the last reaches the end)

    def score(window: list[int]) -> float:
        row = torch.tensor([[tok.cls_token_id, *window, tok.sep_token_id]])
        with torch.no_grad():
            return model(row, torch.ones_like(row), torch.zeros_like(row))[0, 0].item()

    by_hand = [score(ids[start : start + 6]) for start in (0, 3, 6, 9, 12)]
    expected = sum(by_hand) / 5 if pool == "mean" else max(by_hand)
    predictor = Predictor(tmp_path, device="cpu")
    [long, short] = predictor.predict([text, "the cat"])  # batched with a one-window text
    assert long["score"] == pytest.approx(expected, abs=1e-5)
    assert short["score"] == pytest.approx(score(tok.encode("the cat", add_special_tokens=False)), abs=1e-5)
    assert len({round(v, 4) for v in by_hand}) == 5  # the windows really differ, so the pooling is tested
    # what the server budgets for it is never below what it encodes: 5 windows of at most 8 tokens
    work = predictor.work(predictor.normalise([text]))
    assert work.sequences >= 5 and work.tokens >= 5 * 8


def test_windows_refuse_a_second_text_naming_the_input_or_line(tmp_path):
    from bertkit.predict import Predictor

    make_windowed_classifier(tmp_path / "model", "single_label_classification")
    predictor = Predictor(tmp_path / "model", device="cpu")
    with pytest.raises(DataError, match=r"input 1: --long-text windows reads a text alone, but this input has a "
                                        r"second text"):
        predictor.predict(["a text", {"text": "a text", "text_pair": "another"}])
    data = tmp_path / "train.tsv"
    data.write_text("label\ttext\ttext_pair\npos\ta\t\npos\ta\tb\n")
    examples = read_examples(data)
    with pytest.raises(DataError, match=r"train\.tsv:3: --long-text windows reads a text alone"):
        classification.ClassificationTask(predictor.tokenizer, examples, [], predictor.info, source=str(data))


def test_the_work_bound_is_never_below_what_windows_encode(tmp_path):
    import random

    from bertkit.predict import Predictor

    make_windowed_classifier(tmp_path, "multi_label_classification", labels=("a", "b", "c"))
    predictor = Predictor(tmp_path, device="cpu")
    rng = random.Random(0)
    alphabet = [*"的一是不了人我在有他这中大来上国个到说们", "cat ", "sat ", "unbelievable ", "mat. ", "  "]
    for _ in range(30):
        text = "".join(rng.choice(alphabet) for _ in range(rng.choice([1, 3, 20, 200, 3000]))).strip() or "x"
        [rows], _ = classification.encode(predictor.tokenizer, [text], [None], predictor.info)
        bound = predictor.work(predictor.normalise([text]))
        assert len(rows) <= bound.sequences and sum(len(r[0]) for r in rows) <= bound.tokens, (text, bound)


def test_an_ending_that_decides_the_label_is_learned_in_windows_not_when_truncated(tmp_path):
    import random

    words = ["the", "a"]
    rng = random.Random(0)
    for split in ("train", "dev"):  # 20 filler words, then the label word: a truncated text never shows it
        rows = [(label, " ".join(rng.choice(words) for _ in range(20)) + f" {label}")
                for label in ("good", "bad") for _ in range(12)]
        (tmp_path / f"{split}.tsv").write_text("label\ttext\n" + "".join(f"{y}\t{x}\n" for y, x in rows))
    _vocab(tmp_path, [*words, "good", "bad"])
    results = {}
    for long_text in ("truncate", "windows"):
        config = TrainConfig(output_dir=str(tmp_path / long_text), batch_size=8, max_steps=30, lr=2e-3, warmup=3,
                             log_every=10, progress=False, bf16=False, seed=0)
        options = classification.ClassificationOptions(long_text=long_text,
                                                       **({"stride": 10} if long_text == "windows" else {}))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # truncation's warning: the point of the comparison
            results[long_text] = classification.finetune(
                tmp_path / "train.tsv", config, eval_file=tmp_path / "dev.tsv", tokenizer=tmp_path / "vocab",
                model_size="tiny", max_seq_len=12, options=options).metrics["accuracy"]
    assert results["windows"] == 1.0 and results["truncate"] <= 0.75, results
    saved = json.loads((tmp_path / "windows" / "model" / "task.json").read_text())
    assert (saved["long_text"], saved["stride"], saved["pool"]) == ("windows", 10, "mean")


def test_multi_label_and_regression_are_served_and_windows_count_in_the_work_budget(tmp_path):
    from bench._serving import Server

    make_windowed_classifier(tmp_path / "regression", "regression")
    make_windowed_classifier(tmp_path / "multi", "multi_label_classification", labels=("joy", "anger", "fear"))
    server = Server(tmp_path / "regression")
    try:
        status, body, _ = server.post("/predict", {"inputs": ["the cat sat on the mat"]})
        assert status == 200 and list(body["predictions"][0]) == ["score"]
        # 9,000 characters in windows of 6 tokens every 3: ~3,000 sequences of 8 tokens a text; two are over
        # the budget of 32,768 tokens (as two truncated texts would never be)
        status, body, _ = server.post("/predict", {"inputs": ["cat " * 2250] * 2})
        assert status == 413 and "in 5998 sequences" in body["error"], body
    finally:
        server.stop()
    server = Server(tmp_path / "multi")
    try:
        status, body, _ = server.post("/predict", {"inputs": ["the cat sat on the mat"]})
        [result] = body["predictions"]
        assert status == 200 and set(result) == {"labels", "probabilities"}
        assert result["labels"] == [k for k, p in result["probabilities"].items() if p >= 0.5]
    finally:
        server.stop()
