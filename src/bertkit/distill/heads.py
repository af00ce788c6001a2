"""How distillation reads each task it covers: the training data as that task's TrainTask on the teacher's labels, the
model's call, the logits the soft targets apply to, the hard-label loss over labelled examples only, and what an
unlabeled or augmented example is.

Covered, the encoder-based heads of logits over classes: classification, multiple_choice, ner, intent_slot, relation.
Not covered: qa (its answers are spans scored over overlapping document windows, and one window's start/end logits
are not a distribution over the answer), spelling (a vocabulary-wide distribution at every character: soft targets
of that size per token cost more than the student saves), triples (the GlobalPointer scores every span with an
independent sigmoid, not one softmax to soften), fill_mask and sentence_embedding (no fine-tuned head).

Shape legend: B batch, W words, R rows of a soft-target term, C classes.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from bertkit.errors import DataError
from bertkit.tasks.base import report_inconsistent_tags, require_examples, take

IGNORE = -100  # the label of an unlabeled or augmented example: the hard loss skips it, as cross-entropy does -100

NOT_COVERED = {
    "qa": "its answers are spans over document windows, not one distribution per input",
    "spelling": "a vocabulary-wide distribution at every character is not worth its cost as a soft target",
    "triples": "the GlobalPointer scores spans with independent sigmoids, not a softmax",
    "fill_mask": "a pre-trained head, not a fine-tuned task",
    "sentence_embedding": "vectors, not a fine-tuned task",
}

Batch = dict[str, Any]


@dataclass(frozen=True)
class TaskHead:
    """One task, as distillation reads it (each function is the task's own; `task` is its TrainTask):

    - `build(tokenizer, info, train, heldout, fmt, limit)`: the TrainTask on the teacher's info (labels the teacher
      does not know are errors naming the file and line);
    - `forward(model, batch)`: the model's output;
    - `logits(output, batch)`: term -> (R, C) logits the soft targets apply to, rows in example order;
    - `rows(batch)`: term -> how many of those rows each example of the batch has;
    - `hard(model, output, batch, info)` / `hard_counts(batch, info)`: term -> the summed hard-label loss over the
      labelled examples, and its count;
    - `unlabeled(task, lines, source)`: append unlabeled texts ((line number, text) pairs) as examples, or None
      where the task's input is more than a text;
    - `augment(task, index, change)`: append a copy of training example `index` whose token ids went through
      `change` (same length), unlabeled."""

    build: Callable[..., Any]
    forward: Callable[[nn.Module, Batch], Any]
    logits: Callable[[Any, Batch], dict[str, Tensor]]
    rows: Callable[[Batch], dict[str, list[int]]]
    hard: Callable[[nn.Module, Any, Batch, Any], dict[str, Tensor]]
    hard_counts: Callable[[Batch, Any], dict[str, float]]
    augment: Callable[[Any, int, Callable[[list[int]], list[int]]], None]
    unlabeled: Callable[[Any, list[tuple[int, str]], str], Any] | None = None


def _each(batch: Batch) -> list[int]:
    return [1] * len(batch["input_ids"] if "choice_mask" not in batch else batch["choice_mask"])


def _cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE, reduction="sum")


def _labelled(labels: Tensor) -> float:
    return float((labels != IGNORE).sum())


# ---- classification ---------------------------------------------------------------------------------------------

def _build_classification(tok: Any, info: Any, train: Path, heldout: Path | None, fmt: str | None,
                          limit: int | None) -> Any:
    from bertkit.tasks.classification import ClassificationTask, read_examples

    fmt = fmt or "tsv"
    examples = require_examples(take(read_examples(train, fmt), limit), train, "training")
    held = require_examples(read_examples(heldout, fmt), heldout, "evaluation") if heldout else []
    return ClassificationTask(tok, examples, held, info, source=str(train), heldout_source=str(heldout))


def _unlabeled_texts(task: Any, lines: list[tuple[int, str]], source: str) -> None:
    from bertkit.tasks.base import warn_truncated
    from bertkit.tasks.classification import encode

    pairs = [line.split("\t", 1) if "\t" in line else [line, None] for _, line in lines]
    rows, cut = encode(task.tokenizer, [p[0] for p in pairs], [p[1] for p in pairs], task.info.max_seq_len,
                       [IGNORE] * len(pairs))
    warn_truncated(source, cut, len(pairs), task.info.max_seq_len)
    task.train.extend(rows)


CLASSIFICATION = TaskHead(
    build=_build_classification,
    forward=lambda m, b: m(b["input_ids"], b["attention_mask"], b["token_type_ids"]),
    logits=lambda out, b: {"cls": out},
    rows=lambda b: {"cls": _each(b)},
    hard=lambda m, out, b, info: {"cls": _cross_entropy(out, b["labels"])},
    hard_counts=lambda b, info: {"cls": _labelled(b["labels"])},
    augment=lambda task, i, change: task.train.append((change(task.train[i][0]), task.train[i][1], IGNORE)),
    unlabeled=_unlabeled_texts,
)


# ---- relation -------------------------------------------------------------------------------------------------------

def _build_relation(tok: Any, info: Any, train: Path, heldout: Path | None, fmt: str | None,
                    limit: int | None) -> Any:
    from bertkit.tasks.relation import RelationTask, read_examples

    fmt = fmt or info.format
    examples = require_examples(take(read_examples(train, fmt), limit), train, "training")
    held = require_examples(read_examples(heldout, fmt), heldout, "evaluation") if heldout else []
    return RelationTask(tok, examples, held, info, source=str(train), heldout_source=str(heldout))


RELATION = TaskHead(
    build=_build_relation,
    forward=lambda m, b: m(b["input_ids"], b["attention_mask"], None, b["e1_mask"], b["e2_mask"]),
    logits=lambda out, b: {"relation": out},
    rows=lambda b: {"relation": _each(b)},
    hard=lambda m, out, b, info: {"relation": _cross_entropy(out, b["labels"])},
    hard_counts=lambda b, info: {"relation": _labelled(b["labels"])},
    augment=lambda task, i, change: task.train.append((change(task.train[i][0]), *task.train[i][1:5], IGNORE)),
)


# ---- multiple choice -----------------------------------------------------------------------------------------------

def _build_multiple_choice(tok: Any, info: Any, train: Path, heldout: Path | None, fmt: str | None,
                           limit: int | None) -> Any:
    from bertkit.tasks.multiple_choice import MultipleChoiceTask, read_questions

    fmt = fmt or "jsonl"
    questions = require_examples(take(read_questions(train, fmt), limit), train, "training")
    held = require_examples(read_questions(heldout, fmt, split="dev"), heldout, "evaluation") if heldout else []
    return MultipleChoiceTask(tok, questions, held, info, source=str(train), heldout_source=str(heldout))


MULTIPLE_CHOICE = TaskHead(
    build=_build_multiple_choice,
    forward=lambda m, b: m(b["input_ids"], b["attention_mask"], b["token_type_ids"], b["choice_mask"]),
    logits=lambda out, b: {"choice": out},  # (B, most choices in the batch), -inf where a question has fewer
    rows=lambda b: {"choice": _each(b)},
    hard=lambda m, out, b, info: {"choice": _cross_entropy(out, b["labels"])},
    hard_counts=lambda b, info: {"choice": _labelled(b["labels"])},
    augment=lambda task, i, change: task.train.append(([change(c) for c in task.train[i][0]], task.train[i][1],
                                                       IGNORE)),
)


# ---- tagging: ner and intent_slot ----------------------------------------------------------------------------------

def _tag_loss(model: nn.Module, emissions: Tensor, batch: Batch) -> Tensor:
    """The tagger's own loss over the labelled sentences: cross-entropy skips unknown tags by itself; the CRF's
    likelihood needs every tag of a sentence, so an unlabeled sentence is left out of it."""
    tags, words = batch["tags"], batch["word_mask"]
    if model.head.crf is None:
        return model.head.loss_sum(emissions, tags, words)[0]
    labelled = ((tags != IGNORE) & words).any(1)  # (B,)
    if not bool(labelled.any()):
        return emissions.float().sum() * 0.0
    return model.head.loss_sum(emissions[labelled], tags[labelled], words[labelled])[0]


def _tag_count(batch: Batch, crf: bool) -> float:
    known = (batch["tags"] != IGNORE) & batch["word_mask"]
    return float(known.any(1).sum()) if crf else float(known.sum())


def _unlabeled_pieces(task: Any, lines: list[tuple[int, str]], source: str, whole: bool) -> int:
    """Unlabeled texts, split into words as the task predicts them, as pieces without tags; `whole`: an utterance
    must fit one sequence (intent detection reads all of it), else it is skipped and counted. Returns how many
    texts were kept."""
    from bertkit.tasks.tagging import encode_sentences, words_of

    words = [words_of(text, task.info.word_level)[0] for _, text in lines]
    pieces = encode_sentences(task.tokenizer, words, None, task.info.max_seq_len, source)
    if whole:
        counts: dict[int, int] = {}
        for piece in pieces:
            counts[piece.sentence] = counts.get(piece.sentence, 0) + 1
        pieces = [p for p in pieces if counts[p.sentence] == 1]
        skipped = len(lines) - len(pieces)
        if skipped:
            warnings.warn(f"{source}: {skipped} unlabeled utterance(s) skipped: empty, or longer than "
                          f"max_seq_len={task.info.max_seq_len} tokens", stacklevel=3)
    task.train.extend(pieces)
    return len(pieces)


def _checked_tags(sequences: list[Any], info: Any, source: Path) -> None:
    """Tags in the teacher's scheme; a tag the teacher does not know is an error naming the line."""
    from bertkit.tasks.tagging import convert_scheme

    report_inconsistent_tags([(s.tags, s.line) for s in sequences], source)
    known = set(info.labels)
    for s in sequences:
        s.tags = convert_scheme(s.tags, info.scheme)
        unknown = [t for t in s.tags if t not in known]
        if unknown:
            raise DataError(f"tag {unknown[0]!r} is not in the teacher's tag set {info.labels}", str(source), s.line)


def _build_ner(tok: Any, info: Any, train: Path, heldout: Path | None, fmt: str | None, limit: int | None) -> Any:
    from bertkit.tasks.ner import NerTask, read_sentences

    fmt = fmt or "conll"
    sentences = require_examples(take(read_sentences(train, fmt), limit), train, "training")
    _checked_tags(sentences, info, train)
    held = require_examples(read_sentences(heldout, fmt), heldout, "evaluation") if heldout else []
    return NerTask(tok, sentences, held, info, source=str(train), heldout_source=str(heldout))


def _copy_piece(task: Any, i: int, change: Callable[[list[int]], list[int]]) -> None:
    piece = task.train[i]
    task.train.append(dataclasses.replace(piece, input_ids=change(piece.input_ids),
                                          labels=[IGNORE] * len(piece.labels)))


NER = TaskHead(
    build=_build_ner,
    forward=lambda m, b: m(b["input_ids"], b["attention_mask"], b["token_type_ids"], b["word_index"]),
    logits=lambda out, b: {"tag": out[b["word_mask"]]},  # (R, C): the words of each row, in order
    rows=lambda b: {"tag": b["word_mask"].sum(1).tolist()},
    hard=lambda m, out, b, info: {"tag": _tag_loss(m, out, b)},
    hard_counts=lambda b, info: {"tag": _tag_count(b, info.crf)},
    augment=_copy_piece,
    unlabeled=lambda task, lines, source: _unlabeled_pieces(task, lines, source, whole=False),
)


def _build_intent_slot(tok: Any, info: Any, train: Path, heldout: Path | None, fmt: str | None,
                       limit: int | None) -> Any:
    from bertkit.tasks.intent_slot import IntentSlotTask, read_utterances

    fmt = fmt or "atis"
    utterances = require_examples(take(read_utterances(train, fmt), limit), train, "training")
    _checked_tags(utterances, info, train)
    for u in utterances:
        if u.intent not in info.intents:
            raise DataError(f"intent {u.intent!r} is not in the teacher's intent set {info.intents}", str(train),
                            u.line)
    held = require_examples(read_utterances(heldout, fmt), heldout, "evaluation") if heldout else []
    return IntentSlotTask(tok, utterances, held, info, source=str(train), heldout_source=str(heldout))


def _unlabeled_utterances(task: Any, lines: list[tuple[int, str]], source: str) -> None:
    kept = _unlabeled_pieces(task, lines, source, whole=True)
    task.train_intents.extend([IGNORE] * kept)


def _copy_utterance(task: Any, i: int, change: Callable[[list[int]], list[int]]) -> None:
    _copy_piece(task, i, change)
    task.train_intents.append(IGNORE)


INTENT_SLOT = TaskHead(
    build=_build_intent_slot,
    forward=lambda m, b: m(b["input_ids"], b["attention_mask"], b["token_type_ids"], b["word_index"]),
    logits=lambda out, b: {"intent": out[0], "slot": out[1][b["word_mask"]]},
    rows=lambda b: {"intent": _each(b), "slot": b["word_mask"].sum(1).tolist()},
    hard=lambda m, out, b, info: {"intent": _cross_entropy(out[0], b["intent"]), "slot": _tag_loss(m, out[1], b)},
    hard_counts=lambda b, info: {"intent": _labelled(b["intent"]), "slot": _tag_count(b, info.crf)},
    augment=_copy_utterance,
    unlabeled=_unlabeled_utterances,
)

HEADS: dict[str, TaskHead] = {"classification": CLASSIFICATION, "multiple_choice": MULTIPLE_CHOICE, "ner": NER,
                              "intent_slot": INTENT_SLOT, "relation": RELATION}


def task_head(name: str) -> TaskHead:
    """The head of a covered task; for any other, an error that says why it is not covered."""
    if name in HEADS:
        return HEADS[name]
    why = NOT_COVERED.get(name, "its head is not one that distillation knows")
    raise DataError(f"distillation covers {', '.join(HEADS)}; not {name}: {why}")
