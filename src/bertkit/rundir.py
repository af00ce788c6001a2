"""A training run's directory: its lock, its checkpoints (written atomically, verified, the latest found), the
best evaluated weights, the published model/, metrics.jsonl and the curves drawn from it.

    OUTPUT/.lock                         flock held by the run using the directory (`claim_run_dir`)
    OUTPUT/checkpoints/step-NNNNNNNN/    weights, config, vocabulary, training_state.pt, checkpoint.json (sha256s)
    OUTPUT/best/step-NNNNNNNN/           the weights of the best evaluation so far (`--best-metric`), and the older
                                         best ones a kept checkpoint still refers to
    OUTPUT/model/                        the best evaluated weights (else the final checkpoint's), no training state
    OUTPUT/metrics.jsonl, curves.png     one JSON record per log line or evaluation; loss and scores per step
    OUTPUT/tensorboard/                  the same records as TensorBoard scalars (`--report-to tensorboard`)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from bertkit.errors import TrainingError
from bertkit.fileio import atomic_write, atomic_write_text, files_intact, sha256_file

CHECKPOINTS = "checkpoints"
STATE_NAME = "training_state.pt"
TRAINING_ONLY = "training_*"  # files of a checkpoint that only --resume reads (the state, a distillation's projection)
MANIFEST_NAME = "checkpoint.json"
METRICS_NAME = "metrics.jsonl"
CURVES_NAME = "curves.png"
MODEL_NAME = "model"
BEST = "best"
TENSORBOARD = "tensorboard"
LOCK_NAME = ".lock"
# What makes a directory hold a run: a fresh run refuses to start over these unless told to (--overwrite).
RUN_OUTPUTS = (CHECKPOINTS, MODEL_NAME, METRICS_NAME)


# ---- the lock ------------------------------------------------------------------------------------------------------

# Run directory -> the open lock file this process holds. flock belongs to an open file, so a second open() by
# this same process (pre-training claims the directory before it writes its vocabulary, then `fit` claims it again)
# would lock itself out.
_held_locks: dict[Path, int] = {}


@contextlib.contextmanager
def claim_run_dir(output_dir: str | Path, *, resume: bool, overwrite: bool, rank: int = 0,
                  own: tuple[str, ...] = ()) -> Iterator[Path]:
    """The run directory, claimed for the `with` block before any work: locked, checked writable, and refused to a
    fresh run over an old one unless `overwrite` (which deletes the old run's outputs, and the names in `own`,
    first); `resume` continues what is there. Released at the end of the block, however it ends.

    Only rank 0 touches the directory. A claim inside a claim of the same directory (`pretrain`, then its `fit`)
    shares the outer one's lock and leaves the release to it."""
    output = Path(output_dir)
    if rank != 0 or held_run_dir(output):
        yield output
        return
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrainingError(f"--output-dir {output}: cannot create the run directory ({exc.strerror})") from exc
    _lock(output)
    try:
        _claim(output, resume, overwrite, own)
        yield output
    finally:
        _unlock(output)  # a refused run does not keep the directory from the next attempt either


def held_run_dir(output: str | Path) -> bool:
    """Whether this process holds the lock of run directory `output`."""
    return Path(output).resolve() in _held_locks


def forget_locks() -> None:
    """In a child forked from a run (a batch worker): close its copies of the run-directory locks. flock holds until
    the last copy of the descriptor is closed, so a child outliving a kill -9 of the run would keep a --resume out
    of the directory."""
    for fd in _held_locks.values():
        os.close(fd)
    _held_locks.clear()


def _lock(output: Path) -> None:
    """flock on <output>/.lock: the kernel drops it when the holder exits, however it exits, so a crashed run
    never leaves a stale lock. The holder's PID is written into the file for the refusal message."""
    path = output / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise TrainingError(f"--output-dir {output}: cannot write there ({exc.strerror}); choose a directory "
                            "this user can write") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise TrainingError(f"--output-dir {output} is in use by another run (PID {holder}); wait for it to "
                            "finish or choose another --output-dir") from exc
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    _held_locks[output.resolve()] = fd


def _unlock(output: Path) -> None:
    fd = _held_locks.pop(output.resolve(), None)
    if fd is not None:
        os.close(fd)  # the file stays: unlinking it would let a waiting run lock a file no one else can see


def _check_writable(directory: Path) -> None:
    """Create and delete a file where checkpoints go, so a read-only directory fails now, not after training."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise TrainingError(f"--output-dir: cannot write to {directory} ({exc.strerror}); choose a directory "
                            "this user can write") from exc


def _claim(output: Path, resume: bool, overwrite: bool, own: tuple[str, ...]) -> None:
    _check_writable(output / CHECKPOINTS)
    if resume:
        return
    if overwrite:
        for name in (*RUN_OUTPUTS, BEST, TENSORBOARD, CURVES_NAME, *own):
            target = output / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
        _check_writable(output / CHECKPOINTS)
        return
    found = [name for name in RUN_OUTPUTS if (output / name).exists() and not _empty_dir(output / name)]
    if found:
        raise TrainingError(f"--output-dir {output} already holds a run ({', '.join(found)}); pass --resume to "
                            "continue it, --overwrite to delete it and start again, or choose another --output-dir")


def _empty_dir(path: Path) -> bool:
    """An empty directory (e.g. checkpoints/ after the write check) holds no work."""
    return path.is_dir() and not any(path.iterdir())


# ---- checkpoints and the published model ---------------------------------------------------------------------------

def checkpoint_dirs(output: Path, kind: str = CHECKPOINTS) -> list[Path]:
    """The run's checkpoint directories (`kind=BEST`: best-weights directories), newest first, complete or not."""
    root = output / kind
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-")), reverse=True)


def step_of(directory: Path) -> int:
    return int(directory.name.removeprefix("step-"))


def verify_checkpoint(directory: Path) -> dict[str, Any] | None:
    """The manifest of a complete, intact checkpoint, or None (torn write, missing or altered file)."""
    manifest_path = directory / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if not files_intact(directory, manifest["files"]):
            return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return manifest


def latest_checkpoint(output: Path) -> Path | None:
    """Newest checkpoint whose every file matches its manifest; damaged ones are skipped with a warning."""
    for directory in checkpoint_dirs(output):
        if verify_checkpoint(directory) is not None:
            return directory
        warnings.warn(f"{directory}: incomplete or damaged checkpoint, skipped", stacklevel=2)
    return None


def _write_verified(root: Path, step: int, save: Callable[[Path], None], state: dict[str, Any] | None,
                    manifest: dict[str, Any]) -> Path:
    """root/step-N: `save(directory)` writes the model's files, then the training state (if any); written into a
    temporary directory, every file's sha256 recorded last, then renamed into place."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save(tmp)
    if state is not None:
        atomic_write(tmp / STATE_NAME, lambda p: torch.save(state, p))
    files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
    atomic_write_text(tmp / MANIFEST_NAME, json.dumps({"step": step, **manifest, "files": files}, indent=1) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for stale in root.glob(".tmp-step-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def write_checkpoint(output: Path, step: int, save: Callable[[Path], None], state: dict[str, Any],
                     keep: int, best_step: int | None = None) -> Path:
    """Checkpoint `step` (`_write_verified`; its manifest names the best evaluated step, `best_step`, so the best
    weights it refers to are kept while it is). Keeps the newest `keep`, and the best weights they refer to."""
    final = _write_verified(output / CHECKPOINTS, step, save, state, {"best_step": best_step})
    for old in checkpoint_dirs(output)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    _prune_best(output, best_step)
    return final


def write_best(output: Path, step: int, save: Callable[[Path], None]) -> Path:
    """The weights of the best evaluation so far, as OUTPUT/best/step-N (atomic, verified like a checkpoint). An
    older best one stays while a kept checkpoint refers to it: a resume from that checkpoint publishes it."""
    final = _write_verified(output / BEST, step, save, None, {})
    _prune_best(output, step)
    return final


def _prune_best(output: Path, current: int | None) -> None:
    """Delete the best weights that neither the run (`current`) nor a kept checkpoint refers to."""
    referenced = {current}
    for kept in checkpoint_dirs(output):
        try:
            referenced.add(json.loads((kept / MANIFEST_NAME).read_text(encoding="utf-8")).get("best_step"))
        except (OSError, ValueError, AttributeError):
            continue  # a damaged checkpoint is never loaded, so the best it refers to is not needed
    for old in checkpoint_dirs(output, BEST):
        if step_of(old) not in referenced:
            shutil.rmtree(old, ignore_errors=True)


def best_weights(output: Path, step: int) -> Path | None:
    """OUTPUT/best/step-N, if it is complete and intact."""
    directory = output / BEST / f"step-{step:08d}"
    return directory if verify_checkpoint(directory) is not None else None


def drop_best_after(output: Path, step: int) -> None:
    """Best weights of evaluations after `step` (written by a run that died before its next checkpoint): the
    resumed run evaluates those steps again."""
    for directory in checkpoint_dirs(output, BEST):
        if step_of(directory) > step:
            shutil.rmtree(directory, ignore_errors=True)


def read_state(checkpoint: Path) -> dict[str, Any]:
    """The training state a checkpoint holds (CPU tensors and plain values)."""
    return torch.load(checkpoint / STATE_NAME, map_location="cpu", weights_only=True)


def publish(output: Path, source: Path, title: str) -> None:
    """A checkpoint's (or the best weights') files, config, vocabulary and task.json (not its `training_*` files) as
    OUTPUT/model (swapped in whole), and the curves."""
    model_dir = output / MODEL_NAME
    tmp = output / f".tmp-model-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp, ignore=shutil.ignore_patterns(TRAINING_ONLY, MANIFEST_NAME))
    shutil.rmtree(model_dir, ignore_errors=True)
    os.replace(tmp, model_dir)
    plot_curves(output / METRICS_NAME, output / CURVES_NAME, title)


# ---- metrics and curves --------------------------------------------------------------------------------------------

def append_metrics(path: Path, record: dict[str, Any]) -> None:
    """One record as one line of metrics.jsonl, flushed at once (a crash loses at most this line)."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], int]:
    """(records, lines skipped) of metrics.jsonl. A run killed mid-append leaves a torn last line: it is skipped
    (and counted) rather than failing the resume or the plot of everything before it."""
    records, torn = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            torn += 1
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            torn += 1
    return records, torn


def trim_metrics(path: Path, step: int) -> None:
    """After a resume from `step`, drop records a crashed run wrote past it (so the log has no duplicates) and
    torn lines (which the next append would otherwise extend into one unreadable line)."""
    if not path.is_file():
        return
    records, torn = read_metrics(path)
    if torn:
        warnings.warn(f"{path}: {torn} unreadable line(s) (a write cut short by a crash) dropped", stacklevel=2)
    kept = [record for record in records if record.get("step", 0) <= step]
    atomic_write_text(path, "".join(json.dumps(record) + "\n" for record in kept))


def summary_writer_class() -> Any:
    """torch's TensorBoard writer, or a TrainingError saying how to install what it needs."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise TrainingError(f"--report-to tensorboard needs the tensorboard package ({exc}); install it with "
                            "pip install 'bertkit[tensorboard]' (or pip install tensorboard)") from None
    return SummaryWriter


def open_tensorboard(output: Path, next_step: int) -> Any:
    """A TensorBoard writer into OUTPUT/tensorboard. A resumed run starts at `next_step`: TensorBoard drops what the
    interrupted run wrote from that step on, as `trim_metrics` drops it from metrics.jsonl."""
    return summary_writer_class()(str(output / TENSORBOARD), purge_step=next_step if next_step > 1 else None)


def add_scalars(writer: Any, record: dict[str, Any]) -> None:
    """A metrics.jsonl record as TensorBoard scalars, one tag per number: KIND/NAME (train/loss, eval/accuracy,
    best/value ...) at the record's step."""
    for name, value in record.items():
        if name not in ("kind", "step") and isinstance(value, int | float) and not isinstance(value, bool):
            writer.add_scalar(f"{record['kind']}/{name}", value, record["step"])


def plot_curves(metrics_path: Path, out_path: Path, title: str) -> Path | None:
    """Training loss and every evaluation metric against the step, one PNG next to the checkpoints."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is a dependency; plotting is never worth a crash
        return None
    records, torn = read_metrics(metrics_path)
    if torn:
        warnings.warn(f"{metrics_path}: {torn} unreadable line(s) not plotted", stacklevel=2)
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    if not train and not evals:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key in sorted({k for r in train for k in r if k.startswith("loss")}):
        axes[0].plot([r["step"] for r in train if key in r], [r[key] for r in train if key in r], label=key)
    # held-out losses share the loss axis; scores (accuracy, F1, EM ...) get their own panel
    for key in sorted({k for r in evals for k in r if k not in ("kind", "step", "epoch", "elapsed_s")}):
        axis = axes[0] if "loss" in key else axes[1]
        axis.plot([r["step"] for r in evals if key in r], [r[key] for r in evals if key in r], marker="o",
                  linestyle="--" if axis is axes[0] else "-", label=f"held-out {key}")
    axes[0].set_xlabel("step")
    axes[0].set_title("loss")
    axes[0].legend()
    axes[1].set_xlabel("step")
    axes[1].set_title("held-out scores")
    if axes[1].get_legend_handles_labels()[0]:
        axes[1].legend()
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(out_path, lambda p: fig.savefig(p, format="png", dpi=90))
    plt.close(fig)
    return out_path
