"""Tasks: one file per task (reader, encoding, head, loss, decoding, metrics), found by name in `TASKS`."""

from __future__ import annotations

import importlib
from types import ModuleType

# task name -> module; each module has NAME, finetune(), FORMATS (input formats) and a model class
TASKS = {
    "classification": "bertkit.tasks.classification",
    "ner": "bertkit.tasks.ner",
    "intent_slot": "bertkit.tasks.intent_slot",
    "relation": "bertkit.tasks.relation",
    "spelling": "bertkit.tasks.spelling",
    "qa": "bertkit.tasks.qa",
}


def task_module(name: str) -> ModuleType:
    if name not in TASKS:
        from bertkit.errors import BertkitError

        raise BertkitError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    return importlib.import_module(TASKS[name])
