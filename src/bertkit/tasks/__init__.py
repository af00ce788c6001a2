"""Tasks: one file per task (reader, encoding, head, loss, decoding, metrics, and its `SPEC`), found by name here."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bertkit.tasks.spec import TaskSpec

# task name -> the module whose SPEC declares it (the one list a new task is added to)
TASKS = {
    "classification": "bertkit.tasks.classification",
    "ner": "bertkit.tasks.ner",
    "intent_slot": "bertkit.tasks.intent_slot",
    "relation": "bertkit.tasks.relation",
    "spelling": "bertkit.tasks.spelling",
    "qa": "bertkit.tasks.qa",
    "multiple_choice": "bertkit.tasks.multiple_choice",
    "triples": "bertkit.tasks.triples",
    "fill_mask": "bertkit.tasks.fill_mask",
    "sentence_embedding": "bertkit.tasks.embed",
}


def task_spec(name: str) -> TaskSpec:
    if name not in TASKS:
        from bertkit.errors import BertkitError

        raise BertkitError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    return importlib.import_module(TASKS[name]).SPEC


def trainable_tasks() -> list[str]:
    """Names of the tasks `bertkit finetune` trains (fill-mask and embeddings need no training)."""
    return [name for name in TASKS if task_spec(name).trainable]


def default_task(architectures: list[str]) -> str:
    """The task of a checkpoint without task.json: fill-mask where it has an MLM head, else sentence embeddings."""
    from bertkit.tasks.embed import NAME as EMBEDDING
    from bertkit.tasks.fill_mask import MLM_ARCHITECTURES
    from bertkit.tasks.fill_mask import NAME as FILL_MASK

    return FILL_MASK if any(a in MLM_ARCHITECTURES for a in architectures) else EMBEDDING
