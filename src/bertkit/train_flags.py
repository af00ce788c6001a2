"""The `--flags` of the commands that train: one per TrainConfig flag field (ranges checked at parse time), and the
TrainConfig they give; what a training command prints at its end."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from bertkit.argtypes import add_dataclass_flags
from bertkit.device import resolve_device
from bertkit.errors import TrainingError
from bertkit.train import TrainConfig


def config_from_args(args: Any, **overrides: Any) -> TrainConfig:
    """A TrainConfig from an argparse namespace (attributes named like the fields), plus overrides."""
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    values.update(overrides)
    try:
        config = TrainConfig(**values)
    except ValueError as exc:  # combinations argparse cannot see (--resume with --overwrite, no steps nor epochs)
        raise TrainingError(f"invalid training flags: {exc}") from exc
    resolve_device(config.device)  # a device this machine lacks is refused before any data is read
    if config.report_to == "tensorboard":
        from bertkit.rundir import summary_writer_class

        summary_writer_class()  # so is a missing tensorboard package
    return config


def add_train_arguments(parser: Any, defaults: TrainConfig | None = None) -> None:
    """`--flag` for every flag field of TrainConfig (`argtypes.add_dataclass_flags`: the help, type and range are
    the field's), with `defaults`' values as the defaults (a command's own learning rate, output directory ...)."""
    add_dataclass_flags(parser, TrainConfig, defaults=defaults or TrainConfig())


def print_result(result: Any, what: str) -> None:
    """A training command's last words: the evaluation of the weights model/ holds (the best evaluated ones), and
    where the run stopped."""
    if result.stopped_early:
        print(f"stopped early at step {result.step} (--patience)")
    if result.metrics:
        at = f" of step {result.best_step} (the best)" if result.best_step not in (None, result.step) else ""
        print(f"{what}{at}: " + ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()))
    print(f"model: {result.output_dir / 'model'}")
