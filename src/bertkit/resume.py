"""Exact resume: the training state a checkpoint saves, the checks that it fits this run (settings, data
fingerprint, process count, batch), and putting it back."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from bertkit import distributed, rundir
from bertkit.best import Best
from bertkit.device import to_device
from bertkit.errors import TrainingError

if TYPE_CHECKING:
    from bertkit.train import Run, TrainConfig

# The settings a resumed run must share with the run it continues (the rest only say where and how often to
# write, log and evaluate). A change is refused unless `allow_resume_changes`.
RESUME_SETTINGS = ("batch_size", "grad_accum", "lr", "weight_decay", "warmup", "max_steps", "epochs",
                   "max_grad_norm", "adam_betas", "adam_eps", "bf16", "seed", "best_metric", "patience")


def data_fingerprint(data: Any) -> str:
    """sha256 of encoded training examples (nested lists, tuples, dicts, dataclasses, arrays, tensors, scalars):
    equal exactly when the examples are. Token-id lists are hashed as one array, not one update per id."""
    digest = hashlib.sha256()
    for chunk in _fingerprint_chunks(data):
        digest.update(chunk)
    return digest.hexdigest()


def _fingerprint_chunks(value: Any) -> Iterator[bytes]:
    # every value is framed by its type and length, so [[1], [2]] and [[1, 2]] hash differently
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    if hasattr(value, "__array__") and not isinstance(value, np.ndarray | np.generic):  # filearray.FileArray
        value = np.asarray(value)
    if isinstance(value, np.ndarray):
        yield f"a{value.dtype.str}{value.shape};".encode()
        yield np.ascontiguousarray(value).tobytes()
    elif isinstance(value, list | tuple):
        if value and all(type(v) is int for v in value):
            yield f"i{len(value)};".encode()
            yield np.asarray(value, dtype=np.int64).tobytes()
        else:
            yield f"l{len(value)};".encode()
            for item in value:
                yield from _fingerprint_chunks(item)
    elif isinstance(value, dict):
        yield f"d{len(value)};".encode()
        for key in sorted(value, key=repr):
            yield from _fingerprint_chunks(key)
            yield from _fingerprint_chunks(value[key])
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        yield f"c{type(value).__name__};".encode()
        for f in fields(value):
            yield from _fingerprint_chunks(getattr(value, f.name))
    elif value is None or isinstance(value, str | int | float | bool | np.generic):
        text = repr(value.item() if isinstance(value, np.generic) else value)
        yield f"s{type(value).__name__}{len(text)};{text}".encode()
    else:
        raise TypeError(f"cannot fingerprint a {type(value).__name__}")


def resume_changes(saved: dict[str, Any], config: TrainConfig, saved_data: str | None, data: str | None
                   ) -> list[str]:
    """What differs between the run a checkpoint was written by and this one, as "name old -> new" lines."""
    changes = []
    new = plain(asdict(config))
    for name in RESUME_SETTINGS:
        if name in saved and saved[name] != new[name]:
            changes.append(f"{name} {saved[name]} -> {new[name]}")
    if saved_data is not None and data is not None and saved_data != data:
        changes.append(f"data (sha256 of the encoded examples) {saved_data[:12]} -> {data[:12]}")
    return changes


def plain(value: Any) -> Any:
    """Config values as plain types (tuples become lists) so torch.load(weights_only=True) reads them back."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def training_state(run: Run) -> dict[str, Any] | None:
    """What a checkpoint saves besides the weights: position, optimizer, schedule, every rank's random state, the
    settings and data fingerprint it was trained with. Called on every rank (the random states are gathered);
    rank 0 gets the state, on the CPU so the file loads on any machine, the others None."""
    cuda_rng = torch.cuda.get_rng_state(run.device) if run.device.type == "cuda" else None
    gathered = distributed.all_gather((torch.get_rng_state(), cuda_rng), run.world)
    if run.rank != 0:
        return None
    return to_device({"step": run.step, "epoch": run.epoch, "step_in_epoch": run.step_in_epoch,
                      "world_size": run.world, "global_batch": run.global_batch,
                      "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
                      "rng": [g[0] for g in gathered], "config": plain(asdict(run.config)),
                      "fingerprint": run.fingerprint, "device_type": run.device.type, "best": run.best.state(),
                      "cuda_rng": [g[1] for g in gathered] if run.device.type == "cuda" else None,
                      **({"scaler": run.scaler.state_dict()} if run.scaler.is_enabled() else {})},
                     torch.device("cpu"), non_blocking=False)


def restore(run: Run) -> None:
    """With `--resume`: weights, optimizer, schedule, RNG and position from the latest intact checkpoint, after
    checking it was written by the same settings, data, process count and batch. Else a fresh metrics log."""
    config, rank = run.config, run.rank
    resumed_from = rundir.latest_checkpoint(run.output) if config.resume else None
    if config.resume and resumed_from is None and rank == 0:
        print(f"no checkpoint in {run.output / rundir.CHECKPOINTS}: starting from scratch")
    if resumed_from is None:
        if rank == 0:  # a fresh run starts a fresh log, and ranks its own evaluations
            run.metrics_path.unlink(missing_ok=True)
            shutil.rmtree(run.output / rundir.BEST, ignore_errors=True)
            shutil.rmtree(run.output / rundir.TENSORBOARD, ignore_errors=True)
        return
    state = rundir.read_state(resumed_from)
    changes = resume_changes(state.get("config", {}), config, state.get("fingerprint"), run.fingerprint)
    if changes and not config.allow_resume_changes:
        raise TrainingError(f"--resume: this run differs from the one that wrote {resumed_from}: "
                            f"{'; '.join(changes)}. Resume with the old settings and data, pass "
                            "--allow-resume-changes to continue with the new ones, or --overwrite to start over")
    if changes and rank == 0:
        warnings.warn(f"resuming with changes (--allow-resume-changes): {'; '.join(changes)}", stacklevel=3)
    if run.fingerprint is not None and state.get("fingerprint") is None and rank == 0:
        warnings.warn(f"{resumed_from} records no training-data fingerprint (written by an older bertkit): "
                      "whether this run's training data is the same cannot be checked", stacklevel=3)
    if state["world_size"] != run.world or state["global_batch"] != run.global_batch:
        raise TrainingError(f"{resumed_from} was written by a run with {state['world_size']} process(es) and "
                            f"global batch {state['global_batch']}; this run has {run.world} and {run.global_batch}")
    if hasattr(run.task, "load"):  # a model that is more than one checkpoint's weights (distillation's projection)
        run.task.load(run.model, resumed_from)
    else:
        from bertkit.checkpoint import from_hf_state_dict, read_weights

        weights, source = read_weights(resumed_from)
        from_hf_state_dict(run.model, weights, source, strict=True)
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if changes:
        _apply_settings(run.optimizer, run.scheduler, config)
    torch.set_rng_state(state["rng"][rank])
    saved_device = state.get("device_type", "cpu")
    if run.device.type == "cuda" and state.get("cuda_rng") is not None and saved_device == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng"][rank], run.device)
    if saved_device != run.device.type and rank == 0:
        warnings.warn(f"{resumed_from} was written on {saved_device}, this run is on {run.device.type}: the weights, "
                      "optimizer and schedule continue exactly; dropout's random stream differs (bit-exact "
                      "resume holds on one device type)", stacklevel=3)
    if "scaler" in state and run.scaler.is_enabled():
        run.scaler.load_state_dict(state["scaler"])
    run.step, run.epoch, run.step_in_epoch = state["step"], state["epoch"], state["step_in_epoch"]
    _restore_best(run, state.get("best"), resumed_from)
    if rank == 0:
        rundir.trim_metrics(run.metrics_path, run.step)
        print(f"resumed from {resumed_from} at step {run.step} (epoch {run.epoch}, batch {run.step_in_epoch})")


def _restore_best(run: Run, saved: dict[str, Any] | None, resumed_from: Path) -> None:
    """The ranking of evaluations as the checkpoint left it (an older checkpoint without one: from scratch), its
    best weights checked intact, the best weights of later evaluations dropped (they are evaluated again)."""
    config = run.config
    if saved is not None:
        best = Best.from_state(saved)
        if best.requested != (config.best_metric is not None) or (best.requested and best.metric != config.best_metric):
            # allowed by --allow-resume-changes: the run ranks by the new metric from here on
            best.metric, best.requested = config.best_metric or run.task.headline_metric, config.best_metric is not None
            best.reset()
        run.best = best
    if run.rank == 0:
        rundir.drop_best_after(run.output, run.step)
    # every rank reads the directory here (as it read the checkpoint), so all agree on the ranking and on stopping
    if run.best.step is not None and rundir.best_weights(run.output, run.best.step) is None:
        if run.rank == 0:
            warnings.warn(f"{resumed_from} ranks step {run.best.step} best ({run.best.metric} {run.best.value}), but "
                          f"its weights in {run.output / rundir.BEST} are missing or damaged: the ranking starts "
                          "again", stacklevel=3)
        run.best.reset()
    run.stopped = run.best.exhausted(config.patience)


def _apply_settings(optimizer: torch.optim.Optimizer, scheduler: Any, config: TrainConfig) -> None:
    """After a resume with allowed changes: the loaded optimizer and scheduler carry the old run's learning rate,
    weight decay and Adam settings; put this run's in their place, at the new schedule's current point."""
    scheduler.base_lrs = [config.lr] * len(optimizer.param_groups)
    for group, decay, factor in zip(optimizer.param_groups, (config.weight_decay, 0.0), scheduler.lr_lambdas,
                                    strict=True):  # the groups `parameter_groups` builds: decay, then no decay
        group.update(initial_lr=config.lr, weight_decay=decay, betas=config.adam_betas, eps=config.adam_eps,
                     lr=config.lr * factor(scheduler.last_epoch))
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
