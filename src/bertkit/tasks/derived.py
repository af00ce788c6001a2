"""Checkpoints that transformers fine-tuned (no task.json): the task each `BertFor*` head is, and its task info
derived from config.json (architectures, id2label, problem_type) and the vocabulary, each choice said in words."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bertkit.config import CONFIG_NAME, BertConfig
from bertkit.errors import CheckpointError
from bertkit.tasks import task_spec
from bertkit.tasks.spec import TaskSpec
from bertkit.tokenizer import read_vocabulary

# transformers' default lengths: its pipelines read up to 512 tokens (384 a window for question answering, with
# its doc_stride of 128)
MAX_SEQ_LEN = 512
QA_MAX_SEQ_LEN, QA_DOC_STRIDE = 384, 128
_PLACEHOLDER = re.compile(r"LABEL_(\d+)")  # the names transformers gives labels nobody named
_TAG = re.compile(r"O|[BIES]-.+")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f]")
_LATIN_WORD = re.compile(r"[A-Za-z]{2,}")


@dataclass(frozen=True)
class DerivedTask:
    """A task read from a transformers checkpoint: the spec, its info, and where each part of the info came from."""

    spec: TaskSpec
    info: Any
    architecture: str
    reasons: tuple[str, ...]

    def describe(self) -> str:
        return f"{self.spec.name}, derived from config.json: {self.architecture}; {'; '.join(self.reasons)}"


def derive_task(directory: str | Path, config: BertConfig) -> DerivedTask | None:
    """The task of a checkpoint without task.json whose config.json names a `BertFor*` head that transformers
    fine-tunes; None for a pre-trained checkpoint and for one bertkit wrote (its `bertkit_` config keys: the task
    needs the task.json that was lost). An architecture bertkit has no model for is a CheckpointError naming it."""
    directory = Path(directory)
    source = str(directory / CONFIG_NAME)
    heads = [a for a in config.architectures if a in HEADS]
    if any(key.startswith("bertkit_") for key in config.extra):
        return None  # bertkit wrote it (a head transformers lacks, perhaps): its task.json was lost
    if not heads:
        from bertkit.tasks.fill_mask import MLM_ARCHITECTURES

        known = {"BertModel", *MLM_ARCHITECTURES}
        unknown = [a for a in config.architectures if a not in known]
        if unknown:
            raise CheckpointError(f"{source}: architectures {unknown} is a head bertkit does not read; without "
                                  f"task.json it reads {', '.join(HEADS)} (fine-tuned) and {', '.join(sorted(known))} "
                                  "(pre-trained)")
        return None
    name, values, reasons = HEADS[heads[0]](directory, config, source)
    spec = task_spec(name)
    return DerivedTask(spec, spec.read_info(values, f"{source} (task info derived from it)"), heads[0],
                       tuple(reasons))


def _labels(config: BertConfig, source: str) -> tuple[list[str], str]:
    """id2label's names in id order; transformers' placeholders LABEL_0..LABEL_{n-1} read as "0".."n-1", the labels
    of a file whose label column holds numbers."""
    id2label = config.extra.get("id2label")
    if not id2label:
        raise CheckpointError(f"{source}: no id2label; a {config.architectures[0]} needs its labels")
    names = [id2label[str(i)] for i in range(len(id2label))]
    if all(_PLACEHOLDER.fullmatch(n) and int(n[6:]) == i for i, n in enumerate(names)):
        return [str(i) for i in range(len(names))], f"labels 0..{len(names) - 1} (id2label's placeholders LABEL_i)"
    return names, f"labels from id2label ({len(names)})"


def _length(config: BertConfig, limit: int = MAX_SEQ_LEN) -> tuple[int, str]:
    length = min(limit, config.max_position_embeddings)
    return length, f"max_seq_len {length}"


def _classification(directory: Path, config: BertConfig, source: str) -> tuple[str, dict[str, Any], list[str]]:
    """transformers' problem_type, or where config.json has none, the one its model picks when it trains: one
    output is regression, more are single-label."""
    from bertkit.tasks.classification import HEADLINES, MULTI, PROBLEM_TYPES, REGRESSION, SCORE_LABEL, SINGLE

    problem = config.extra.get("problem_type")
    labels, why = _labels(config, source)
    if problem is None:
        problem = REGRESSION if len(labels) == 1 else SINGLE
        problem_why = ("problem_type absent, one output: regression (as transformers trains it)"
                       if problem == REGRESSION else "problem_type absent: single-label")
    elif problem in PROBLEM_TYPES:
        problem_why = f"problem_type {problem}" + (": a score" if problem == REGRESSION else "")
    else:
        raise CheckpointError(f"{source}: problem_type {problem!r} is not one transformers writes "
                              f"({', '.join(PROBLEM_TYPES)})")
    values: dict[str, Any] = {"labels": labels, "problem_type": problem, "metric": HEADLINES[problem][0]}
    if problem == REGRESSION:
        if len(labels) != 1:
            raise CheckpointError(f"{source}: problem_type regression with {len(labels)} outputs in id2label; "
                                  "bertkit's regression has one (a score)")
        values["labels"], why = [SCORE_LABEL], "one output"
    elif len(labels) < 2 and problem == SINGLE:
        raise CheckpointError(f"{source}: problem_type {problem} with one label in id2label; a single-label "
                              "classifier needs two or more")
    elif problem == MULTI:
        values["threshold"] = 0.5
        problem_why += ": a label where its probability is at least 0.5"
    length, length_why = _length(config)
    values["max_seq_len"] = length
    return "classification", values, [why, problem_why, length_why]


def _ner(directory: Path, config: BertConfig, source: str) -> tuple[str, dict[str, Any], list[str]]:
    tags, why = _labels(config, source)
    bad = [t for t in config.extra["id2label"].values() if not _TAG.fullmatch(t)]  # as written, not as read
    if bad:
        raise CheckpointError(f"{source}: id2label has {bad[:5]!r:.200}, which are not entity tags; bertkit reads a "
                              "BertForTokenClassification as NER, whose labels are O and B-/I- (E-/S-) TYPE tags")
    scheme = "bioes" if any(t[:2] in ("E-", "S-") for t in tags) else "bio"
    level, level_why = _word_level(directory)
    length, length_why = _length(config)
    return "ner", {"labels": tags, "max_seq_len": length, "scheme": scheme, "crf": False, "word_level": level}, [
        why.replace("labels", "tags"), f"scheme {scheme}", "no CRF", level_why, length_why]


def _word_level(directory: Path) -> tuple[str, str]:
    """How prediction splits raw text into the words a tag is given to: per character for a Chinese vocabulary
    (more single CJK characters than Latin words), else at spaces."""
    vocab, _, path = read_vocabulary(directory)
    cjk = sum(len(t) == 1 and bool(_CJK.match(t)) for t in vocab)
    latin = sum(bool(_LATIN_WORD.fullmatch(t)) for t in vocab)
    if cjk > latin:
        return "char", f"a tag per character ({path.name}: {cjk} CJK characters, {latin} Latin words)"
    return "space", f"a tag per space-separated word ({path.name}: {latin} Latin words, {cjk} CJK characters)"


def _qa(directory: Path, config: BertConfig, source: str) -> tuple[str, dict[str, Any], list[str]]:
    length, length_why = _length(config, QA_MAX_SEQ_LEN)
    return "qa", {"max_seq_len": length, "doc_stride": QA_DOC_STRIDE}, [
        f"{length_why} and doc_stride {QA_DOC_STRIDE} (transformers' question-answering defaults)"]


def _multiple_choice(directory: Path, config: BertConfig, source: str) -> tuple[str, dict[str, Any], list[str]]:
    length, length_why = _length(config)
    return "multiple_choice", {"max_seq_len": length}, [length_why]


# transformers class -> the function giving (bertkit task, its info's values, why each value)
HEADS: dict[str, Callable[[Path, BertConfig, str], tuple[str, dict[str, Any], list[str]]]] = {
    "BertForSequenceClassification": _classification,
    "BertForTokenClassification": _ner,
    "BertForQuestionAnswering": _qa,
    "BertForMultipleChoice": _multiple_choice,
}


def describe_task(directory: str | Path, config: BertConfig) -> str:
    """What `bertkit info` says of a checkpoint's task: from task.json, derived from config.json (and how), or none
    (a pre-trained checkpoint); a problem is said, not raised (info is how one inspects a broken checkpoint)."""
    from bertkit.tasks import default_task
    from bertkit.tasks.base import TASK_FILE, read_task_info

    directory = Path(directory)
    try:
        if (directory / TASK_FILE).is_file():
            spec, _ = read_task_info(directory)
            return f"{spec.name} ({TASK_FILE})"
        derived = derive_task(directory, config)
    except CheckpointError as exc:
        return f"unknown: {exc}"
    if derived is not None:
        return derived.describe()
    if any(key.startswith("bertkit_") or key == "id2label" for key in config.extra):
        return f"unknown: {TASK_FILE} not found, and config.json is a fine-tuned bertkit model's"
    return f"none: pre-trained (predict and serve run {default_task(config.architectures)})"
