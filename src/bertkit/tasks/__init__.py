"""Tasks: one file per task (reader, encoding, head, loss, decoding, metrics, and its `SPEC`), found by name here."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bertkit.tasks.spec import TaskSpec

# task name -> the module whose SPEC declares it: the one list a new task of bertkit's is added to (a task of another
# package is added by `register_task` or by an entry point; docs/adding-a-task.md)
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


ENTRY_POINTS = "bertkit.tasks"  # the entry-point group an installed package declares its tasks in (name = module)


def register_task(name: str, module: str) -> None:
    """Add a task whose file lives outside bertkit: `module` (a dotted module path, imported when the task is first
    used) declares its `SPEC`, named `name`. What a line of TASKS does for a task of bertkit's own; a name already
    taken by another module is an error."""
    from bertkit.errors import BertkitError

    if TASKS.get(name, module) != module:
        raise BertkitError(f"task {name!r} is already registered, by {TASKS[name]}; {module} cannot take its name")
    TASKS[name] = module


def _register_installed_tasks() -> None:
    """The tasks installed packages declare as entry points (`[project.entry-points."bertkit.tasks"]` in their
    pyproject.toml, `name = "module"`), so that every bertkit process (the CLI, the server) sees them."""
    import warnings
    from importlib.metadata import entry_points

    from bertkit.errors import BertkitError

    for entry in entry_points(group=ENTRY_POINTS):
        try:
            register_task(entry.name, entry.value)
        except BertkitError as exc:  # one package's clash must not stop bertkit for every task
            warnings.warn(f"entry point {entry.name} = {entry.value} ignored: {exc}", stacklevel=2)


_register_installed_tasks()


def task_spec(name: str) -> TaskSpec:
    if name not in TASKS:
        from bertkit.errors import BertkitError

        raise BertkitError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    spec = importlib.import_module(TASKS[name]).SPEC
    if spec.name != name:
        from bertkit.errors import BertkitError

        raise BertkitError(f"task {name!r}: {TASKS[name]}'s SPEC is named {spec.name!r}")
    return spec


def trainable_tasks() -> list[str]:
    """Names of the tasks `bertkit finetune` trains (fill-mask runs on a pre-trained checkpoint as it is)."""
    return [name for name in TASKS if task_spec(name).trainable]


def pretrained_tasks() -> list[str]:
    """Names of the tasks a pre-trained checkpoint (no task.json) runs (fill-mask, sentence vectors)."""
    return [name for name in TASKS if task_spec(name).serves_pretrained]


def default_task(architectures: list[str]) -> str:
    """The task of a checkpoint without task.json: fill-mask where it has an MLM head, else sentence embeddings."""
    from bertkit.tasks.embed import NAME as EMBEDDING
    from bertkit.tasks.fill_mask import MLM_ARCHITECTURES
    from bertkit.tasks.fill_mask import NAME as FILL_MASK

    return FILL_MASK if any(a in MLM_ARCHITECTURES for a in architectures) else EMBEDDING
