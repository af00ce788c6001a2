"""Multiple choice (SWAG / COPA / C3): each choice encoded with its context and question, one [CLS] score per choice,
softmax over the choices (transformers' BertForMultipleChoice layout); accuracy.

Input formats (`--format`):
- `jsonl` (default): one object per line, `{"context": ... (optional), "question": ..., "choices": [...], "label": i}`
  (`label`: the index of the right choice; or `"answer"`: its text).
- `copa`: SuperGLUE COPA's JSON lines `{"premise", "choice1", "choice2", "question": "cause"|"effect", "label"}`; the
  question becomes "What was the cause?" / "What happened as a result?". A directory: for training its `train.jsonl`
  and `unlabeled.jsonl` (the 400-row SuperGLUE train set, which the pet repository split in two, all labelled), for
  evaluation its `val.jsonl`.
- `c3`: C3's JSON arrays `[[paragraphs], [{"question", "choice": [...], "answer"}], id]`; `--train` / `--eval` name a
  file, or a directory whose `*-train.json` (or `*-dev.json`) files are all read. An answer that is not one of its
  choices is skipped and counted; a duplicated choice string is counted (the first copy is the answer).
Each choice becomes `[CLS] context [SEP] question choice [SEP]`, cut longest-first (the context first) to max_seq_len.
Questions may have different numbers of choices (C3: 2 to 4); missing choices are masked out of the softmax and
cost no compute.
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
from bertkit.errors import DataError, reason
from bertkit.fileio import read_lines, read_text
from bertkit.masking import IGNORE_INDEX
from bertkit.model import BertModel, CheckpointIO, Dropout, init_weights
from bertkit.tasks.base import (
    FinetuneTask,
    SkipReport,
    labelled_count,
    labelled_cross_entropy,
    one_row_each,
    pad_sequences,
    require_examples,
    run_batches,
    take,
    warn_truncated,
)
from bertkit.tasks.spec import DistillHead, InputField, TaskSpec, Work, seq_len_field, sequence
from bertkit.tokenizer import Tokenizer

NAME = "multiple_choice"
FORMATS = ("jsonl", "copa", "c3")
COPA_QUESTIONS = {"cause": "What was the cause?", "effect": "What happened as a result?"}


@dataclass
class Question:
    context: str
    question: str
    choices: list[str]
    label: int | None  # index of the right choice (None: unlabelled)
    line: int


def read_questions(path: str | Path, fmt: str = "jsonl", *, split: str = "train") -> list[Question]:
    """Questions of a file (a C3 directory: every `*-{split}.json` in it); errors name the file and line or item."""
    if fmt not in FORMATS:
        raise DataError(f"unknown multiple-choice format {fmt!r}; choose one of {FORMATS}")
    path = Path(path)
    if fmt == "c3":
        files = sorted(path.glob(f"*-{split}.json")) if path.is_dir() else [path]
        if not files:
            raise DataError(f"no *-{split}.json files", str(path))
        return [q for f in files for q in _read_c3(f)]
    if fmt == "copa" and path.is_dir():
        names = ("train.jsonl", "unlabeled.jsonl") if split == "train" else ("val.jsonl",)
        return [q for name in names for q in read_questions(path / name, fmt)]
    questions = []
    for number, line in read_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("expected a JSON object")
            questions.append(_from_copa(record, number) if fmt == "copa" else _from_jsonl(record, number))
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise DataError(f"bad {fmt} record: {reason(exc)}", str(path), number) from exc
    return questions


def _string(record: dict[str, Any], key: str) -> str:
    value = record[key]
    if not isinstance(value, str):
        raise ValueError(f"{key!r} must be a string, got {type(value).__name__}")
    return value


def _from_copa(record: dict[str, Any], number: int) -> Question:
    kind = record["question"]
    if kind not in COPA_QUESTIONS:
        raise ValueError(f'"question" must be "cause" or "effect", got {kind!r}')
    label = record.get("label")
    if label is not None and label not in (0, 1):
        raise ValueError(f'"label" must be 0 or 1, got {label!r}')
    return Question(_string(record, "premise"), COPA_QUESTIONS[kind],
                    [_string(record, "choice1"), _string(record, "choice2")], label, number)


def _from_jsonl(record: dict[str, Any], number: int) -> Question:
    choices = record["choices"]
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise ValueError('"choices" must be a list of two or more strings')
    label = record.get("label")
    if label is None and record.get("answer") is not None:
        if record["answer"] not in choices:
            raise ValueError(f"answer {record['answer']!r} is not one of the choices")
        label = choices.index(record["answer"])
    if label is not None and (isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices)):
        raise ValueError(f'"label" must be a choice index from 0 to {len(choices) - 1}, got {label!r}')
    context = record.get("context") or ""
    if not isinstance(context, str):
        raise ValueError('"context" must be a string')
    return Question(context, _string(record, "question"), choices, label, number)


def _read_c3(path: Path) -> list[Question]:
    report = SkipReport(path)
    try:
        data = json.loads(read_text(path))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise DataError(f"not C3 JSON ({exc})", str(path)) from exc
    if not isinstance(data, list):
        raise DataError("expected a JSON array of [paragraphs, questions, id] items", str(path))
    questions = []
    for item_number, item in enumerate(data, start=1):  # "line" = the item's position in the array
        try:
            paragraphs, asked = item[0], item[1]
            context = "\n".join(paragraphs)
            for q in asked:
                choices, answer = q["choice"], q.get("answer")
                if answer is not None and answer not in choices:
                    report.skip(item_number, "question(s) whose answer is not one of its choices")
                    continue
                if len(set(choices)) != len(choices):
                    report.skip(item_number, "question(s) with a duplicated choice (kept; the first copy is the "
                                             "answer)")
                questions.append(Question(context, q["question"], list(choices),
                                          choices.index(answer) if answer is not None else None, item_number))
        except (IndexError, KeyError, TypeError) as exc:
            raise DataError(f"item {item_number}: expected [[paragraphs], [{{question, choice, answer}}], id] "
                            f"({reason(exc)})", str(path)) from exc
    report.report()
    return questions


class BertForMultipleChoice(CheckpointIO, nn.Module):
    """BERT + dropout + linear to one score per choice on the pooled [CLS] (transformers' BertForMultipleChoice
    names). Inputs are the choices of all questions flattened, (N, T); `choice_mask` (B, C) marks which of each
    question's C slots hold a choice (row-major, N of them True); scores of empty slots are -inf."""

    hf_architecture = "BertForMultipleChoice"
    hf_head_renames = (("classifier.", "classifier."),)

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, 1)
        init_weights(self.classifier, config)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None,
                choice_mask: Tensor) -> Tensor:
        pooled = self.bert.pooled(input_ids, attention_mask, token_type_ids)  # (N, H)
        scores = self.classifier(self.dropout(pooled)).squeeze(-1).float()  # (N,)
        out = torch.full(choice_mask.shape, float("-inf"), device=scores.device)  # (B, C)
        return out.masked_scatter(choice_mask, scores)


@dataclass
class MultipleChoiceInfo:
    max_seq_len: int = seq_len_field()


Row = tuple[list[list[int]], list[list[int]], int]  # per question: choice ids, choice segment ids, label (-1: none)


def encode(tokenizer: Tokenizer, questions: list[Question], max_seq_len: int) -> tuple[list[Row], int]:
    """The one encoding of training and prediction: per choice `[CLS] context [SEP] question choice [SEP]`, cut
    longest-first to max_seq_len (a question without context: `[CLS] question [SEP] choice [SEP]`). Returns the
    rows and how many choices were cut."""
    firsts, seconds = [], []
    for q in questions:
        for choice in q.choices:
            firsts.append(q.context if q.context else q.question)
            seconds.append(f"{q.question} {choice}" if q.context else choice)
    encodings = tokenizer.encode_batch(firsts, seconds, max_length=max_seq_len) if firsts else []
    rows, k = [], 0
    for q in questions:
        chunk = encodings[k : k + len(q.choices)]
        k += len(q.choices)
        rows.append(([e.ids for e in chunk], [e.type_ids for e in chunk], -1 if q.label is None else q.label))
    return rows, getattr(encodings, "truncated", 0)


def collate(rows: list[Row], pad_id: int) -> dict[str, Any]:
    width = max(len(r[0]) for r in rows)
    batch = pad_sequences([ids for r in rows for ids in r[0]], pad_id, [t for r in rows for t in r[1]])
    batch["choice_mask"] = torch.tensor([[c < len(r[0]) for c in range(width)] for r in rows])
    batch["labels"] = torch.tensor([r[2] for r in rows])
    return batch


def _scores(model: nn.Module, batch: dict[str, Any]) -> Tensor:
    return model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], batch["choice_mask"])


class MultipleChoiceTask(FinetuneTask):
    task_name = NAME

    def __init__(self, tokenizer: Tokenizer, train: list[Question], heldout: list[Question],
                 info: MultipleChoiceInfo, eval_batch_size: int = 16, source: str | None = None,
                 heldout_source: str | None = None) -> None:
        self.tokenizer, self.info = tokenizer, info
        for q in train:
            if q.label is None:
                raise DataError("question has no label", source, q.line)
        self.train = self._encode(train, source)
        self.heldout = self._encode(heldout, heldout_source) if heldout else []
        self.eval_batch_size = eval_batch_size

    def _encode(self, questions: list[Question], source: str | None) -> list[Row]:
        rows, cut = encode(self.tokenizer, questions, self.info.max_seq_len)
        warn_truncated(source, cut, sum(len(q.choices) for q in questions), self.info.max_seq_len, "choices")
        return rows

    def make_batch(self, epoch: int, indices: list[int]) -> dict[str, Any]:
        return collate([self.train[i] for i in indices], self.tokenizer.pad_token_id)

    def counts(self, batch: dict[str, Any]) -> dict[str, float]:
        return {"choice": float(len(batch["labels"]))}

    def tokens(self, batch: dict[str, Any]) -> int:
        return int(batch["attention_mask"].sum())

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        return {"choice": F.cross_entropy(_scores(model, batch), batch["labels"], reduction="sum")}

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        if not self.heldout:
            return {}
        predicted = run_batches(model, self.heldout, lambda rows: collate(rows, self.tokenizer.pad_token_id),
                                lambda m, b: _scores(m, b).argmax(-1).tolist(), self.eval_batch_size)
        gold = [r[2] for r in self.heldout]
        return {"accuracy": sum(p == g for p, g in zip(predicted, gold, strict=True)) / len(gold)}


def finetune(train_file: str | Path, config: Any, *, eval_file: str | Path | None = None, fmt: str = "jsonl",
             init_from: str | Path | None = None, tokenizer: str | Path | None = None, model_size: str = "mini",
             max_seq_len: int = 128, limit: int | None = None) -> Any:
    """Fine-tune a multiple-choice model (from `init_from`, or from scratch with `tokenizer` and a preset)."""
    from bertkit.tasks.base import build_task_model, encoder_config, finetune_tokenizer
    from bertkit.train import fit

    tok = finetune_tokenizer(init_from, tokenizer)
    train = require_examples(take(read_questions(train_file, fmt), limit), train_file, "training")
    heldout = require_examples(read_questions(eval_file, fmt, split="dev"), eval_file, "evaluation") if eval_file \
        else []
    info = MultipleChoiceInfo(max_seq_len)
    model = build_task_model(BertForMultipleChoice, init_from, encoder_config(init_from, tok, model_size, max_seq_len),
                             config.seed)
    task = MultipleChoiceTask(tok, train, heldout, info, source=str(train_file), heldout_source=str(eval_file))
    return fit(model, task, config, title=f"multiple choice ({Path(train_file).parent.name or 'data'})")


def evaluate_file(model: nn.Module, tokenizer: Tokenizer, info: MultipleChoiceInfo, path: str | Path, fmt: str
                  ) -> dict[str, float]:
    questions = require_examples(read_questions(path, fmt, split="dev"), path, "evaluation")
    return MultipleChoiceTask(tokenizer, [], questions, info, heldout_source=str(path)).evaluate(model)


@torch.no_grad()
def predict(model: nn.Module, tokenizer: Tokenizer, info: MultipleChoiceInfo, inputs: list[dict[str, Any]]
            ) -> list[dict[str, Any]]:
    """The chosen answer of each {"context" (optional), "question", "choices"}, its index and the probability of
    every choice."""
    for index, item in enumerate(inputs):
        validate(item, index)
    questions = [Question(item.get("context") or "", item["question"], item["choices"], None, index)
                 for index, item in enumerate(inputs)]
    rows, _ = encode(tokenizer, questions, info.max_seq_len)
    # Each choice scored as a row of its own (a one-choice question), so a pass holds whole choices, not whole
    # questions: 32 choices of 512 tokens are 16,384 tokens, twice what a pass may hold (run_batches).
    choices = [([ids], [types], -1) for ids_list, types_list, _ in rows
               for ids, types in zip(ids_list, types_list, strict=True)]
    scores = run_batches(model, choices, lambda chunk: collate(chunk, tokenizer.pad_token_id),
                         lambda m, b: _scores(m, b)[:, 0].float().cpu())
    results, start = [], 0
    for q in questions:
        p = torch.softmax(torch.stack(scores[start : start + len(q.choices)]), -1)
        start += len(q.choices)
        best = int(p.argmax())
        results.append({"answer": q.choices[best], "index": best, "scores": p.tolist(),
                        "probabilities": {c: float(x) for c, x in zip(q.choices, p, strict=True)}})
    return results


def validate(item: dict[str, Any], index: int) -> None:
    """Two or more choices, none blank, no two alike (a repeated choice would share one key of `probabilities`)."""
    choices = item["choices"]
    if len(choices) < 2:
        raise DataError(f"input {index}: 'choices' needs two or more choices, got {len(choices)}")
    first: dict[str, int] = {}
    for number, choice in enumerate(choices):
        if not choice.strip():
            raise DataError(f"input {index}: choice {number} is blank")
        if choice in first:
            raise DataError(f"input {index}: choices {first[choice]} and {number} are the same text {choice!r:.80}; "
                            "give each choice once")
        first[choice] = number


def work(item: dict[str, Any], info: MultipleChoiceInfo) -> Work:
    """Each choice is a sequence of its own, the context and question repeated in every one."""
    shared = len(item.get("context") or "") + len(item["question"])
    total = Work()
    for choice in item["choices"]:
        total += sequence(shared + len(choice), info.max_seq_len)
    return total


def distill_task(tokenizer: Tokenizer, info: MultipleChoiceInfo, train_file: Path, eval_file: Path | None,
                 fmt: str | None, limit: int | None) -> MultipleChoiceTask:
    """The TrainTask of a distillation: the questions of `train_file`."""
    fmt = fmt or "jsonl"
    train = require_examples(take(read_questions(train_file, fmt), limit), train_file, "training")
    heldout = require_examples(read_questions(eval_file, fmt, split="dev"), eval_file, "evaluation") if eval_file \
        else []
    return MultipleChoiceTask(tokenizer, train, heldout, info, source=str(train_file), heldout_source=str(eval_file))


DISTILL = DistillHead(
    build=distill_task,
    forward=_scores,
    logits=lambda out, b: {"choice": out},  # (B, most choices in the batch), -inf where a question has fewer
    rows=lambda b: {"choice": one_row_each(b, "choice_mask")},
    hard=lambda m, out, b, info: {"choice": labelled_cross_entropy(out, b["labels"])},
    hard_counts=lambda b, info: {"choice": labelled_count(b["labels"])},
    augment=lambda task, i, change: task.train.append(([change(c) for c in task.train[i][0]], task.train[i][1],
                                                       IGNORE_INDEX)),
)  # no unlabeled texts: an input is a question with its choices

SPEC = TaskSpec(
    name=NAME,
    description="the right answer among choices (one [CLS] score per choice, softmax over the choices)",
    model=BertForMultipleChoice,
    info=MultipleChoiceInfo,
    inputs=(InputField("question", "the question"),
            InputField("choices", "the candidate answers", kind="list"),
            InputField("context", "a passage or premise the question is about", required=False, multiline=True)),
    predict=predict,
    view={"label": "answer", "probabilities": "probabilities"},
    example={"question": "What was the cause?", "choices": "It was crowded.\nIt was 3 AM.",
             "context": "The bar closed."},
    formats=FORMATS,
    default_format="jsonl",
    finetune=finetune,
    evaluate=evaluate_file,
    headline="accuracy",
    work=work,
    validate=validate,
    distill=DISTILL,
)
