"""The `--flags` of the commands that train: one per TrainConfig field, ranges checked at parse time, and the
TrainConfig they give."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any

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
    return config


# The range of each numeric flag (checked at parse time); TrainConfig.__post_init__ checks the same for callers.
_RANGES: dict[str, tuple[type, float, bool]] = {
    "batch_size": (int, 1, False), "grad_accum": (int, 1, False), "lr": (float, 0, True),
    "weight_decay": (float, 0, False), "warmup": (float, 0, False), "max_steps": (int, 0, False),
    "epochs": (float, 0, False), "max_grad_norm": (float, 0, False), "seed": (int, 0, False),
    "log_every": (int, 1, False), "eval_every": (int, 0, False), "save_every": (int, 0, False),
    "keep_checkpoints": (int, 1, False), "max_bad_steps": (int, 1, False), "workers": (int, 0, False),
}


def _argtype(kind: type, low: float, strict: bool) -> Callable[[str], Any]:
    from bertkit.argtypes import float_range, int_range

    return int_range(int(low) + strict) if kind is int else float_range(low, low_open=strict)


def add_train_arguments(parser: Any, defaults: TrainConfig | None = None) -> None:
    """`--flag` for every TrainConfig field (the field comments are the help)."""
    defaults = defaults or TrainConfig()
    helps = {
        "output_dir": "run directory: model/, checkpoints/, metrics.jsonl, curves.png",
        "batch_size": "examples per process per micro-batch",
        "grad_accum": "micro-batches per optimizer step",
        "lr": "peak learning rate",
        "weight_decay": "AdamW weight decay (not on biases and LayerNorm)",
        "warmup": "warmup: a fraction of the steps (< 1) or a number of steps",
        "max_steps": "optimizer steps (0: from --epochs)",
        "epochs": "passes over the training data when --max-steps is 0",
        "max_grad_norm": "gradient clipping norm (0: off)",
        "seed": "random seed (data order, masking, initialisation, dropout)",
        "log_every": "steps between metrics.jsonl records",
        "eval_every": "steps between held-out evaluations (0: at the end)",
        "save_every": "steps between checkpoints (0: at the end)",
        "keep_checkpoints": "how many checkpoints to keep",
        "max_bad_steps": "consecutive non-finite steps before stopping",
        "workers": "processes building batches ahead of the step (0: in the training process; the batches are the "
                   "same for any number)",
        "device": "auto, cpu, cuda or cuda:N (auto: CUDA where available; under torchrun each process takes its "
                  "LOCAL_RANK GPU)",
    }
    for f in fields(TrainConfig):
        name = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if f.name in ("adam_betas", "adam_eps"):
            continue
        if f.name == "bf16":
            parser.add_argument("--bf16", dest="bf16", action="store_true", default=default,
                                help="bf16 autocast (default: on where the CPU/GPU has native bf16)")
            parser.add_argument("--no-bf16", dest="bf16", action="store_false", help="train in fp32")
        elif f.name == "progress":
            parser.add_argument("--no-progress", dest="progress", action="store_false", default=default,
                                help="no progress bar")
        elif f.name == "compile":
            parser.add_argument("--compile", action="store_true", default=default,
                                help="torch.compile the model (eager, with a warning, where it cannot compile)")
        elif f.name == "resume":
            parser.add_argument("--resume", action="store_true", default=default,
                                help="continue from the newest intact checkpoint in --output-dir")
        elif f.name == "overwrite":
            parser.add_argument("--overwrite", action="store_true", default=default,
                                help="delete the run already in --output-dir (checkpoints/, model/, metrics) and "
                                "start again")
        elif f.name == "allow_resume_changes":
            parser.add_argument("--allow-resume-changes", action="store_true", default=default,
                                help="with --resume: continue with changed settings or training data instead of "
                                "refusing (new lr, schedule, weight decay, clipping and seed apply from the resume "
                                "point; the global batch cannot change)")
        else:
            kind = _argtype(*_RANGES[f.name]) if f.name in _RANGES else (type(default) if default is not None else str)
            parser.add_argument(name, dest=f.name, type=kind, default=default,
                                help=f"{helps.get(f.name, f.name)} (default: %(default)s)")
