"""ONE training loop, `fit()`, for pre-training and fine-tuning: AdamW, warmup + linear decay, accumulation, clipping,
bf16 autocast, evaluation, JSONL metrics, curves, atomic checkpoints, exact resume and DDP.

A task supplies data and losses through the small `TrainTask` protocol; `fit` owns everything else. Example `i`
of epoch `e` is the same tensor whatever the batch size, process count or resume point, so a resumed run or a
2-process run computes exactly the update a single uninterrupted run computes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import functools
import hashlib
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from bertkit.device import describe, resolve_device, setup_cuda, to_device
from bertkit.errors import BertkitError
from bertkit.fileio import atomic_write, atomic_write_text, files_intact, sha256_file
from bertkit.processes import die_with_parent

CHECKPOINTS = "checkpoints"
STATE_NAME = "training_state.pt"
MANIFEST_NAME = "checkpoint.json"
METRICS_NAME = "metrics.jsonl"
CURVES_NAME = "curves.png"
MODEL_NAME = "model"
LOCK_NAME = ".lock"
# What makes a directory hold a run: a fresh run refuses to start over these unless told to (--overwrite).
RUN_OUTPUTS = (CHECKPOINTS, MODEL_NAME, METRICS_NAME)
# The settings a resumed run must share with the run it continues (the rest only say where and how often to
# write, log and evaluate). A change is refused unless `allow_resume_changes`.
RESUME_SETTINGS = ("batch_size", "grad_accum", "lr", "weight_decay", "warmup", "max_steps", "epochs",
                   "max_grad_norm", "adam_betas", "adam_eps", "bf16", "seed")


class TrainingError(BertkitError):
    """Training cannot go on (repeated non-finite losses, a checkpoint that does not fit the run)."""


class WorkerDied(TrainingError):
    """A process building batches (`--workers`) ended in the middle of the run: killed, or out of memory."""


@dataclass
class TrainConfig:
    """How to train; every field is a `--flag` of the CLI commands that train."""

    output_dir: str = "runs/train"
    batch_size: int = 32  # examples per process per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-4
    weight_decay: float = 0.01  # not applied to biases and LayerNorm weights
    warmup: float = 0.06  # fraction of the steps (< 1) or a number of steps (>= 1)
    max_steps: int = 0  # 0: derive from epochs
    epochs: float = 1.0
    max_grad_norm: float = 1.0  # 0 disables clipping
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-6
    bf16: bool | None = None  # None: bf16 autocast where the hardware has native bf16 (AVX512-BF16/AMX, CUDA)
    seed: int = 42
    log_every: int = 10
    eval_every: int = 0  # 0: evaluate at the end only
    save_every: int = 0  # 0: checkpoint at the end only
    keep_checkpoints: int = 2
    max_bad_steps: int = 5  # consecutive non-finite steps before the run stops
    progress: bool = True
    # processes that build batches ahead of the step (torch.utils.data workers; 0: in the training process). The
    # batch of step N is the same for any number: worker w builds the steps N with N % workers == w
    workers: int = 0
    # auto: CUDA where torch sees a GPU (this process's LOCAL_RANK GPU under torchrun), else the CPU
    device: str = "auto"
    compile: bool = False  # torch.compile the model (falls back to eager, with a warning, where it cannot)
    resume: bool = False
    overwrite: bool = False  # a fresh run in a directory holding a run: delete that run's outputs first
    # On --resume, continue with changed settings or training data instead of refusing: the new learning rate,
    # schedule (steps, epochs, warmup), weight decay, Adam settings, clipping and seed apply from the resume point
    # (the optimizer's moments and the random state come from the checkpoint); the global batch cannot change.
    allow_resume_changes: bool = False

    def __post_init__(self) -> None:
        for name in ("batch_size", "grad_accum", "keep_checkpoints", "max_bad_steps", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "eval_every", "save_every", "seed", "workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("lr", "weight_decay", "warmup", "epochs", "max_grad_norm", "adam_eps"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"TrainConfig.{name} must be a finite number >= 0, got {value}")
        if not all(math.isfinite(b) and 0 <= b < 1 for b in self.adam_betas):
            raise ValueError(f"TrainConfig.adam_betas must be two numbers in [0, 1), got {self.adam_betas}")
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if self.max_steps < 0 or (self.epochs <= 0 and self.max_steps == 0):
            raise ValueError("give a positive max_steps or epochs")
        if self.resume and self.overwrite:
            raise ValueError("give resume (continue the run) or overwrite (replace it), not both")
        self.adam_betas = tuple(self.adam_betas)


class TrainTask(Protocol):
    """What `fit` needs from a task (pre-training or any fine-tuning task)."""

    # Under DDP: whether some parameters get no gradient in a step (unused heads), which DDP must then search for.
    find_unused_parameters: bool

    def num_examples(self, epoch: int) -> int:
        """Training examples in this epoch (may vary: NSP pairs are rebuilt every epoch)."""

    def make_batch(self, epoch: int, indices: list[int]) -> dict[str, Any]:
        """The batch of these example indices of `epoch` (tensors; masking etc. seeded per example)."""

    def counts(self, batch: dict[str, Any]) -> dict[str, float]:
        """Denominator of each loss term (e.g. masked tokens, pairs), known from the data alone."""

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        """The SUM of each loss term over the batch; `fit` divides by the counts over all micro-batches and ranks."""

    def tokens(self, batch: dict[str, Any]) -> int:
        """Real (non-padding) tokens in the batch, for tokens/s."""

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Held-out metrics (called on one process, in eval mode, without gradients)."""

    def save(self, model: nn.Module, directory: Path) -> None:
        """Write a self-describing checkpoint directory (weights, config, vocab, labels)."""

    # Optional: `fingerprint() -> str`, a digest of the encoded training examples (see `data_fingerprint`; pre-training
    # on a prepared corpus adds its held-out shards). `fit` stores it in each checkpoint and `--resume` refuses
    # different data.


@dataclass
class FitResult:
    step: int
    metrics: dict[str, float] = field(default_factory=dict)
    output_dir: Path = Path()


# ---- distributed -----------------------------------------------------------------------------------------------------

_COMM_DEVICE = torch.device("cpu")  # where collectives put their tensors: the GPU under NCCL


def distributed_setup(device: torch.device | None = None) -> tuple[int, int]:
    """(rank, world size): joins the process group when started by torchrun: NCCL when this process trains on a
    GPU (one process per GPU, LOCAL_RANK's), gloo on the CPU."""
    global _COMM_DEVICE
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        device = device if device is not None else torch.device("cpu")
        setup_cuda(device)
        # rank 0 alone prepares the corpus and evaluates while the others wait at a barrier: allow it hours, not
        # the default 10 (NCCL) or 30 (gloo) minutes
        timeout = datetime.timedelta(seconds=float(os.environ.get("BERTKIT_DIST_TIMEOUT_S", 4 * 3600)))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
        _COMM_DEVICE = device if device.type == "cuda" else torch.device("cpu")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce_sum(values: list[float]) -> list[float]:
    if not dist.is_initialized():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=_COMM_DEVICE)
    dist.all_reduce(tensor)
    return tensor.tolist()


def autocast_dtype(device: torch.device, bf16: bool | None) -> torch.dtype | None:
    """The autocast dtype of a run: bf16 where the device has it natively (`bf16=None`: decide; True: require);
    on a GPU without bf16, fp16 (with a gradient scaler); None: float32 (TF32 matmuls on a GPU)."""
    if bf16 is not None:
        return torch.bfloat16 if bf16 else None
    if bf16_supported(device):
        return torch.bfloat16
    return torch.float16 if device.type == "cuda" else None


class CompiledOrEager(nn.Module):
    """`torch.compile(model)` that falls back to the eager model, once and with a warning, when compiling fails
    (no C++ compiler, an unsupported op, a platform torch.compile does not cover). Attributes of the model (its
    heads) are reachable through it, as through DDP's `.module`."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.module = model
        self.failed: str | None = None
        try:
            self.compiled: Callable[..., Any] | None = torch.compile(model, dynamic=True)
        except Exception as exc:  # any failure means: run eagerly
            self._fall_back(exc)

    def _fall_back(self, exc: BaseException) -> None:
        self.compiled = None
        self.failed = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        warnings.warn(f"--compile: torch.compile failed ({self.failed[:300]}); training continues in eager mode",
                      stacklevel=3)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except torch.OutOfMemoryError:
                raise  # not a compilation problem
            except Exception as exc:  # compilation happens at the first call
                self._fall_back(exc)
        return self.module(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["module"], name)


def maybe_compile(model: nn.Module) -> nn.Module:
    return CompiledOrEager(model)


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


# ---- pieces of the loop ------------------------------------------------------------------------------------------

def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":  # native only: before Ampere, bf16 is emulated (no tensor cores); fp16 is native
        return torch.cuda.is_bf16_supported(including_emulation=False)
    from bertkit.quantize import native_bf16

    return native_bf16()


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay for weight matrices and embeddings, none for biases and LayerNorm (BERT's rule)."""
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_linear_decay(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LR multiplier: 0 -> 1 linearly over warmup, then 1 -> 0 linearly at the last step."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


def epoch_order(seed: int, epoch: int, size: int) -> np.ndarray:
    """The epoch's permutation of the examples; the same as Generator.permutation(size), in 4 bytes an example
    where that fits (a 100M-example epoch: 400 MB, not 800)."""
    order = np.arange(size, dtype=np.uint32 if size < 2**32 else np.int64)
    np.random.default_rng([seed, epoch, 7]).shuffle(order)
    return order


def _checkpoint_dirs(output: Path) -> list[Path]:
    root = output / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-")), reverse=True)


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
    for directory in _checkpoint_dirs(output):
        if verify_checkpoint(directory) is not None:
            return directory
        warnings.warn(f"{directory}: incomplete or damaged checkpoint, skipped", stacklevel=2)
    return None


def _write_checkpoint(output: Path, step: int, task: TrainTask, model: nn.Module, state: dict[str, Any],
                      keep: int) -> Path:
    """Write into a temporary directory, record every file's sha256 last, then rename into place."""
    root = output / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    task.save(model, tmp)
    atomic_write(tmp / STATE_NAME, lambda p: torch.save(state, p))
    files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
    atomic_write_text(tmp / MANIFEST_NAME, json.dumps({"step": step, "files": files}, indent=1) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in _checkpoint_dirs(output)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-step-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


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


def _trim_metrics(path: Path, step: int) -> None:
    """After a resume from `step`, drop records a crashed run wrote past it (so the log has no duplicates) and
    torn lines (which the next append would otherwise extend into one unreadable line)."""
    if not path.is_file():
        return
    records, torn = read_metrics(path)
    if torn:
        warnings.warn(f"{path}: {torn} unreadable line(s) (a write cut short by a crash) dropped", stacklevel=2)
    kept = [record for record in records if record.get("step", 0) <= step]
    atomic_write_text(path, "".join(json.dumps(record) + "\n" for record in kept))


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


# ---- run directories -------------------------------------------------------------------------------------------

# Run directory -> the open lock file this process holds. flock belongs to an open file, so a second open() by
# this same process (pre-training locks before it writes its vocabulary, then `fit` runs) would lock itself out.
_held_locks: dict[Path, int] = {}


def _lock_run_dir(output: Path) -> None:
    """flock on <output>/.lock: the kernel drops it when the holder exits, however it exits, so a crashed run
    never leaves a stale lock. The holder's PID is written into the file for the refusal message."""
    key = output.resolve()
    if key in _held_locks:
        return
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
    _held_locks[key] = fd


def _unlock_run_dir(output: Path) -> None:
    fd = _held_locks.pop(output.resolve(), None)
    if fd is not None:
        os.close(fd)  # the file stays: unlinking it would let a waiting run lock a file no one else can see


def held_run_dir(output: str | Path) -> bool:
    """Whether this process holds the lock of run directory `output`."""
    return Path(output).resolve() in _held_locks


def release_run_dir(output: str | Path) -> None:
    """Release a run directory claimed with `open_run_dir` by a caller that stops before `fit` (which releases it)."""
    _unlock_run_dir(Path(output))


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


def open_run_dir(config: TrainConfig, rank: int = 0, own: tuple[str, ...] = ()) -> Path:
    """Claim `config.output_dir` for this run before any work: lock it, check it can be written, and refuse to
    start a fresh run over an old one unless `overwrite` (which deletes the old run's outputs, and the names in
    `own`, first). Only rank 0 touches the directory. Idempotent within a process; `fit` releases it."""
    output = Path(config.output_dir)
    if rank != 0:
        return output
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrainingError(f"--output-dir {output}: cannot create the run directory ({exc.strerror})") from exc
    held_before = output.resolve() in _held_locks
    _lock_run_dir(output)
    try:
        _claim(output, config, own)
    except BaseException:
        if not held_before:
            _unlock_run_dir(output)  # a refused run does not keep the directory from the next attempt
        raise
    return output


def _claim(output: Path, config: TrainConfig, own: tuple[str, ...]) -> None:
    _check_writable(output / CHECKPOINTS)
    if config.resume:
        return
    if config.overwrite:
        for name in (*RUN_OUTPUTS, CURVES_NAME, *own):
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
    if hasattr(value, "__array__") and not isinstance(value, np.ndarray | np.generic):  # prepared.FileArray
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
    new = _plain(asdict(config))
    for name in RESUME_SETTINGS:
        if name in saved and saved[name] != new[name]:
            changes.append(f"{name} {saved[name]} -> {new[name]}")
    if saved_data is not None and data is not None and saved_data != data:
        changes.append(f"data (sha256 of the encoded examples) {saved_data[:12]} -> {data[:12]}")
    return changes


class _InterruptGuard:
    """SIGINT handling for one run: the first Ctrl-C stops the run (KeyboardInterrupt, which saves a checkpoint);
    later ones, and any while the final checkpoint and model are written, only say the save is still going, so no
    Ctrl-C cuts a save in the middle. A first Ctrl-C inside `whole()` (a step's update and its count) is raised at
    its end, so the checkpoint it leads to is of one step: its weights, its number.
    Installed only in the main thread (the only one Python delivers signals to)."""

    def __init__(self) -> None:
        self.pressed = 0
        self.saving = False  # set while a checkpoint or the final model is written: Ctrl-C then waits for it
        self.holding = False  # set inside `whole()`
        self.held = False  # a first Ctrl-C came inside `whole()`
        self.previous: Any = None

    @contextlib.contextmanager
    def whole(self) -> Iterator[None]:
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
        if self.held:
            self.held = False
            raise KeyboardInterrupt

    def __enter__(self) -> _InterruptGuard:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.pressed += 1
        if self.pressed == 1 and self.holding:
            self.held = True
            return
        if self.pressed == 1 and not self.saving:
            raise KeyboardInterrupt
        print("\nstill saving the checkpoint: Ctrl-C is ignored until it is written (kill -9 would lose only this "
              "save; the previous checkpoint stays intact)", file=sys.stderr, flush=True)

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


# ---- the loop ------------------------------------------------------------------------------------------------------

class StepBatches(torch.utils.data.IterableDataset):
    """The micro-batches of each optimizer step, for one rank, from a position in the run: items are
    (epoch, step in epoch, micro-batches). Step k's examples are order[k * global_batch ...] of its epoch's
    permutation, this rank's share of them; every worker walks the same steps and builds every workers-th one, and
    the DataLoader takes them round-robin, so the sequence is the same for any number of workers."""

    def __init__(self, task: TrainTask, config: TrainConfig, world: int, rank: int, epoch: int, step_in_epoch: int,
                 steps: int) -> None:
        self.task, self.config, self.world, self.rank = task, config, world, rank
        self.epoch, self.step_in_epoch, self.steps = epoch, step_in_epoch, steps

    def __iter__(self) -> Iterator[tuple[int, int, list[dict[str, Any]]]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        config, task = self.config, self.task
        global_batch = config.batch_size * config.grad_accum * self.world
        epoch, step_in_epoch = self.epoch, self.step_in_epoch
        order = epoch_order(config.seed, epoch, task.num_examples(epoch))
        for k in range(self.steps):
            while step_in_epoch >= len(order) // global_batch:
                epoch, step_in_epoch = epoch + 1, 0
                order = epoch_order(config.seed, epoch, task.num_examples(epoch))
                if len(order) < global_batch:
                    raise TrainingError(f"epoch {epoch} has {len(order)} examples, fewer than one global batch "
                                        f"({global_batch})")
            if k % workers == worker:
                base = step_in_epoch * global_batch
                micro = []
                for m in range(config.grad_accum):
                    offset = base + (m * self.world + self.rank) * config.batch_size
                    micro.append(task.make_batch(epoch, order[offset : offset + config.batch_size].tolist()))
                yield epoch, step_in_epoch, micro
            step_in_epoch += 1


def _batches(task: TrainTask, config: TrainConfig, world: int, rank: int, epoch: int, step_in_epoch: int,
             steps: int, device: torch.device | None = None) -> Iterator[tuple[int, int, list[dict[str, Any]]]]:
    dataset = StepBatches(task, config, world, rank, epoch, step_in_epoch, steps)
    if config.workers == 0:
        return iter(dataset)
    # One loader for the whole run, so its workers live as long as the run (persistent by construction); fork, so
    # they share the parent's shard files and vocabulary instead of pickling the task; batches come in pinned
    # memory for a GPU
    # its own generator: seeding workers from torch's global one would shift the dropout stream of the training
    # process, and a run would no longer equal its resumed twin
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=config.workers, prefetch_factor=4,
                                         worker_init_fn=functools.partial(_start_batch_worker, os.getpid()),
                                         generator=torch.Generator(),
                                         pin_memory=device is not None and device.type == "cuda",
                                         multiprocessing_context="fork" if os.name == "posix" else None)
    return _WorkerBatches(loader)


class _WorkerBatches:
    """The batches of a loader with worker processes. A worker that dies is named (its id, PID and exit signal or
    status) by a `WorkerDied` raised from `next`, between steps, where the run's state is whole.

    torch's own SIGCHLD handler is taken out again once the workers are started: it raises from wherever the main
    thread is when the signal comes, between an optimizer update and the step count, or in the middle of a
    checkpoint, and a checkpoint saved after that would not be of any one step. torch's other check stays: while
    a batch is awaited, it looks at the workers every 5 s, and a dead one ends the wait."""

    def __init__(self, loader: torch.utils.data.DataLoader) -> None:
        handled = threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGCHLD")
        previous = signal.getsignal(signal.SIGCHLD) if handled else None
        self.iterator: Any = iter(loader)
        if handled:
            signal.signal(signal.SIGCHLD, previous if previous is not None else signal.SIG_DFL)

    def __iter__(self) -> _WorkerBatches:
        return self

    def __next__(self) -> tuple[int, int, list[dict[str, Any]]]:
        try:
            return next(self.iterator)
        except (RuntimeError, EOFError, OSError):
            # torch's "DataLoader worker (pid(s) ...) exited unexpectedly"; or a batch the worker queued before it
            # died, whose shared memory cannot be fetched from it now, which comes before the worker is wholly gone
            # (so it is waited for a moment); or a worker's own error, raised again here as it is
            dead = self._dead_workers(wait_s=2.0)
            if not dead:
                raise
        self.iterator = None  # its finalizer stops the other workers
        raise WorkerDied("; ".join(dead))

    def _dead_workers(self, wait_s: float) -> list[str]:
        """What ended each worker that has ended, looking for up to `wait_s` seconds until one has."""
        workers = getattr(self.iterator, "_workers", [])  # torch's worker processes, in worker-id order
        deadline = time.monotonic() + wait_s
        while True:
            ended = [(worker_id, p) for worker_id, p in enumerate(workers) if p.exitcode is not None]
            if ended or time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        dead = []
        for worker_id, process in ended:
            code = process.exitcode
            how = f"exited with status {code}"
            if code < 0:
                name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
                how = f"was killed by signal {name}" + (" (kill -9, or the kernel's out-of-memory killer)"
                                                        if -code == signal.SIGKILL else "")
            dead.append(f"batch worker {worker_id} of {len(workers)} (PID {process.pid}) {how}")
        return dead


def _start_batch_worker(parent: int, worker_id: int) -> None:
    """First thing in each batch worker: it ends with its parent, and does not hold the parent's run lock."""
    die_with_parent(parent, watch=False)
    for fd in _held_locks.values():
        # the fork copied the lock's descriptor, and flock holds until the last copy is closed: a worker outliving a
        # kill -9 of the run would keep a --resume out of the directory
        os.close(fd)
    _held_locks.clear()
    torch.set_num_threads(1)  # the training process's threads do the math; a worker builds batches in Python


def limit_heap_growth() -> int:
    """Opt-in (`BERTKIT_MMAP_THRESHOLD=BYTES`): stop glibc's heap from growing with every new tensor shape; returns
    the threshold set (0: none, glibc's default).

    The no-padding engine gives every batch other shapes; glibc keeps freed activation buffers in its heap (its mmap
    threshold rises to 32 MB after the first large free) and the heap fragments: mini, batch 64 x 128, went
    0.5 -> 2.4 GB in 50 steps, 3.1 GB in a long run. A fixed threshold (malloc(3): M_MMAP_THRESHOLD) such as 131072
    returns every large buffer to the system when freed (the same 50 steps stay near 1.3 GB), but each buffer is
    then mapped and zeroed anew: bench/scale.py measured mini 35% slower, so it is not the default."""
    import ctypes
    import ctypes.util

    threshold = int(os.environ.get("BERTKIT_MMAP_THRESHOLD", 0))
    if threshold <= 0 or not sys.platform.startswith("linux"):
        return 0
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return 0
    m_mmap_threshold = -3
    return threshold if mallopt(m_mmap_threshold, threshold) == 1 else 0


def fit(model: nn.Module, task: TrainTask, config: TrainConfig, *, title: str = "training") -> FitResult:
    """Train `model` on `task` as `config` says; returns the final step and the last evaluation.

    The output directory is locked for the run (see `open_run_dir`); Ctrl-C saves a checkpoint, then stops."""
    rank, _ = distributed_setup(resolve_device(config.device))
    output = open_run_dir(config, rank)
    limit_heap_growth()
    try:
        with _InterruptGuard() as guard:
            return _fit(model, task, config, title, guard)
    finally:
        if rank == 0:
            _unlock_run_dir(output)  # also the lock `pretrain` took for this run before its vocabulary


def _apply_settings(optimizer: torch.optim.Optimizer, scheduler: Any, config: TrainConfig) -> None:
    """After a resume with allowed changes: the loaded optimizer and scheduler carry the old run's learning rate,
    weight decay and Adam settings; put this run's in their place, at the new schedule's current point."""
    scheduler.base_lrs = [config.lr] * len(optimizer.param_groups)
    for group, decay, factor in zip(optimizer.param_groups, (config.weight_decay, 0.0), scheduler.lr_lambdas,
                                    strict=True):  # the groups `parameter_groups` builds: decay, then no decay
        group.update(initial_lr=config.lr, weight_decay=decay, betas=config.adam_betas, eps=config.adam_eps,
                     lr=config.lr * factor(scheduler.last_epoch))
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


@dataclass
class _Run:
    """What one training run holds besides the loop: where it runs, its optimizer and schedule, and its position
    (step, epoch, batch of the epoch), which checkpoints save and `--resume` restores."""

    config: TrainConfig
    task: TrainTask
    model: nn.Module
    title: str
    device: torch.device
    rank: int
    world: int
    output: Path
    amp_dtype: torch.dtype | None  # autocast dtype (None: fp32)
    scaler: torch.amp.GradScaler  # enabled for fp16 only (a GPU without bf16)
    global_batch: int
    total_steps: int
    optimizer: torch.optim.Optimizer
    scheduler: Any
    fingerprint: str | None
    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0

    @property
    def metrics_path(self) -> Path:
        return self.output / METRICS_NAME

    def autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.bfloat16,
                              enabled=self.amp_dtype is not None)

    def log(self, record: dict[str, Any]) -> None:
        _append(self.metrics_path, record, self.rank)

    def checkpoint(self) -> Path | None:
        """Save weights and the whole training state (every rank's RNG) at the current step; rank 0 writes."""
        cuda_rng = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        rng_states, cuda_states = [torch.get_rng_state()], [cuda_rng]
        if self.world > 1:
            gathered: list[Any] = [None] * self.world
            dist.all_gather_object(gathered, (torch.get_rng_state(), cuda_rng))
            rng_states, cuda_states = [g[0] for g in gathered], [g[1] for g in gathered]
        path = None
        if self.rank == 0:
            # on the CPU, so the file loads on any machine; the optimizer moves its state to the parameters' device
            state = to_device({"step": self.step, "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                               "world_size": self.world, "global_batch": self.global_batch,
                               "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                               "rng": rng_states, "config": _plain(asdict(self.config)),
                               "fingerprint": self.fingerprint, "device_type": self.device.type,
                               "cuda_rng": cuda_states if self.device.type == "cuda" else None,
                               **({"scaler": self.scaler.state_dict()} if self.scaler.is_enabled() else {})},
                              torch.device("cpu"), non_blocking=False)
            path = _write_checkpoint(self.output, self.step, self.task, self.model, state,
                                     self.config.keep_checkpoints)
        _barrier()
        return path

    def evaluate(self) -> dict[str, float]:
        result: dict[str, float] = {}
        if self.rank == 0:
            self.model.eval()
            with torch.no_grad(), self.autocast():
                result = self.task.evaluate(self.model)
            self.model.train()
            self.log({"kind": "eval", "step": self.step, "epoch": self.epoch, **result})
            plot_curves(self.metrics_path, self.output / CURVES_NAME, self.title)
        _barrier()
        return result


def _start_run(model: nn.Module, task: TrainTask, config: TrainConfig, title: str) -> _Run:
    """Device, precision, step count, optimizer and schedule of a run, before any resume."""
    device = resolve_device(config.device)
    rank, world = distributed_setup(device)
    setup_cuda(device)
    model.to(device)
    amp_dtype = autocast_dtype(device, config.bf16)
    if rank == 0 and device.type == "cuda":
        print(f"training on {describe(device)}, autocast {amp_dtype or 'off (fp32, TF32 matmuls)'}")
    global_batch = config.batch_size * config.grad_accum * world
    first_epoch_examples = task.num_examples(0)
    if first_epoch_examples < global_batch:
        raise TrainingError(f"{first_epoch_examples} training examples are fewer than one global batch "
                            f"({config.batch_size} x {config.grad_accum} accumulation x {world} processes)")
    total_steps = config.max_steps or max(1, round(config.epochs * (first_epoch_examples // global_batch)))
    warmup_steps = int(config.warmup * total_steps) if config.warmup < 1 else int(config.warmup)
    warmup_steps = max(1, min(warmup_steps, total_steps))
    torch.manual_seed(config.seed + rank)
    optimizer = torch.optim.AdamW(parameter_groups(model, config.weight_decay), lr=config.lr,
                                  betas=config.adam_betas, eps=config.adam_eps, fused=device.type in ("cpu", "cuda"))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_linear_decay(total_steps, warmup_steps))
    return _Run(config, task, model, title, device, rank, world, Path(config.output_dir), amp_dtype,
                torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16), global_batch, total_steps,
                optimizer, scheduler, task.fingerprint() if hasattr(task, "fingerprint") else None)


def _restore(run: _Run) -> None:
    """With `--resume`: weights, optimizer, schedule, RNG and position from the latest intact checkpoint, after
    checking it was written by the same settings, data, process count and batch. Else a fresh metrics log."""
    config, rank = run.config, run.rank
    resumed_from = latest_checkpoint(run.output) if config.resume else None
    if config.resume and resumed_from is None and rank == 0:
        print(f"no checkpoint in {run.output / CHECKPOINTS}: starting from scratch")
    if resumed_from is None:
        if rank == 0 and run.metrics_path.exists():
            run.metrics_path.unlink()  # a fresh run starts a fresh log
        return
    state = torch.load(resumed_from / STATE_NAME, map_location="cpu", weights_only=True)
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
    if rank == 0:
        _trim_metrics(run.metrics_path, run.step)
        print(f"resumed from {resumed_from} at step {run.step} (epoch {run.epoch}, batch {run.step_in_epoch})")


class ThroughputMeter:
    """The mean loss terms over the steps since the last log line, and real tokens per second over that window
    (all processes); evaluation and checkpointing are not training time, so they restart the window."""

    def __init__(self, world: int) -> None:
        self.world = world
        self.started = time.perf_counter()
        self.restart()
        self.losses: dict[str, float] = {}
        self.steps = 0

    def restart(self) -> None:
        self.tokens, self.window_start = 0, time.perf_counter()

    def add_step(self, losses: dict[str, float]) -> None:
        for name, value in losses.items():
            self.losses[name] = self.losses.get(name, 0.0) + value
        self.steps += 1

    def record(self, step: int, epoch: int, lr: float, grad_norm: float) -> dict[str, Any]:
        """The log line of the window ending at `step`; starts the next window."""
        now = time.perf_counter()
        tokens_per_s = self.tokens * self.world / max(now - self.window_start, 1e-9)
        record = {"kind": "train", "step": step, "epoch": epoch, "loss": sum(self.losses.values()) / self.steps,
                  **{f"loss_{n}": v / self.steps for n, v in self.losses.items()}, "lr": lr, "grad_norm": grad_norm,
                  "tokens_per_s": tokens_per_s, "elapsed_s": now - self.started}
        self.losses, self.steps = {}, 0
        self.tokens, self.window_start = 0, now
        return record


def _backward(run: _Run, train_model: nn.Module, micro: list[dict[str, Any]], meter: ThroughputMeter
              ) -> tuple[dict[str, float], bool]:
    """Forward and backward over one step's micro-batches: (this process's share of each loss term's step mean,
    whether every loss was finite). Each term is divided by its count over ALL micro-batches of ALL processes, so
    accumulation and DDP (which averages gradients over processes, hence * world) give the one-big-batch
    gradient."""
    task, world = run.task, run.world
    names = sorted({k for b in micro for k in task.counts(b)})
    local = [sum(task.counts(b).get(n, 0.0) for b in micro) for n in names]
    totals = dict(zip(names, _all_reduce_sum(local), strict=True))
    step_loss = dict.fromkeys(names, 0.0)
    finite = True
    for m, batch in enumerate(micro):
        sync = contextlib.nullcontext() if (world == 1 or m == len(micro) - 1) else train_model.no_sync()
        with sync:
            with run.autocast():
                parts = task.loss(train_model, batch)
            loss = sum(parts[n] / max(totals[n], 1.0) for n in parts) * world
            finite = finite and bool(torch.isfinite(loss))
            run.scaler.scale(loss).backward()
        for n, value in parts.items():
            step_loss[n] += float(value.detach()) / max(totals[n], 1.0)
        meter.tokens += task.tokens(batch)
    return step_loss, finite


def _update(run: _Run, loss_finite: bool, bad_steps: int) -> tuple[Tensor, int]:
    """Clip and apply the gradients, or skip the update (fp16 overflow, or a non-finite loss or gradient, counted
    towards `max_bad_steps`): (the gradient norm, the consecutive bad steps)."""
    config, scaler, optimizer = run.config, run.scaler, run.optimizer
    scaler.unscale_(optimizer)  # (fp16 only) the clipping below sees the true gradients
    grad_norm = (nn.utils.clip_grad_norm_(run.model.parameters(), config.max_grad_norm)
                 if config.max_grad_norm > 0 else torch.tensor(0.0))
    flags = _all_reduce_sum([0.0 if loss_finite and torch.isfinite(grad_norm) else 1.0, 0.0 if loss_finite else 1.0])
    finite, loss_finite = flags[0] == 0.0, flags[1] == 0.0
    if not finite and loss_finite and scaler.is_enabled() and scaler.get_scale() > 1.0:
        # fp16 loss scaling: gradients that overflow (the loss itself finite) skip the step and halve the scale, as
        # GradScaler does (unscale_ recorded the inf); not a bad step: an fp16 run's first steps often overflow
        optimizer.zero_grad(set_to_none=True)
        scaler.update()
        run.log({"kind": "skipped", "step": run.step + 1, "reason": "fp16 overflow", "scale": scaler.get_scale()})
        return grad_norm, bad_steps
    if not finite:
        optimizer.zero_grad(set_to_none=True)
        if scaler.is_enabled():
            scaler.update()
        bad_steps += 1
        warnings.warn(f"step {run.step + 1}: non-finite loss or gradient, update skipped ({bad_steps} in a row)",
                      stacklevel=3)
        run.log({"kind": "skipped", "step": run.step + 1, "reason": "non-finite"})
        if bad_steps >= config.max_bad_steps:
            raise TrainingError(
                f"step {run.step + 1}: {bad_steps} consecutive non-finite losses or gradients; stopping. Likely "
                f"causes: learning rate too high ({config.lr}), fp16/bf16 overflow, or corrupt input. The last good "
                f"checkpoint is in {run.output / CHECKPOINTS}")
        return grad_norm, bad_steps
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm, 0


def _publish(run: _Run, final: Path | None) -> None:
    """The final checkpoint's weights, config, vocabulary and task.json as OUTPUT/model (swapped in whole), and the
    curves."""
    if run.rank != 0 or final is None:
        return
    model_dir = run.output / MODEL_NAME
    tmp = run.output / f".tmp-model-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(final, tmp, ignore=shutil.ignore_patterns(STATE_NAME, MANIFEST_NAME))
    shutil.rmtree(model_dir, ignore_errors=True)
    os.replace(tmp, model_dir)
    plot_curves(run.metrics_path, run.output / CURVES_NAME, run.title)


def _progress_bar(run: _Run) -> Any:
    if not (run.config.progress and run.rank == 0):
        return None
    from tqdm.auto import tqdm

    # In a log file (not a terminal) a bar redrawn every step would flood it: redraw every 30 s there.
    return tqdm(total=run.total_steps, initial=run.step, desc=run.title, unit="step", dynamic_ncols=True,
                mininterval=0.5 if sys.stderr.isatty() else 30)


def _fit(model: nn.Module, task: TrainTask, config: TrainConfig, title: str,
         guard: _InterruptGuard | None = None) -> FitResult:
    run = _start_run(model, task, config, title)
    _restore(run)
    train_model: nn.Module = maybe_compile(model) if config.compile else model
    if run.world > 1:
        train_model = nn.parallel.DistributedDataParallel(
            train_model, device_ids=[run.device.index] if run.device.type == "cuda" else None,
            find_unused_parameters=task.find_unused_parameters)
    progress = _progress_bar(run)
    meter = ThroughputMeter(run.world)
    model.train()
    last_eval: dict[str, float] = {}
    bad_steps = 0
    batches = _batches(task, config, run.world, run.rank, run.epoch, run.step_in_epoch, run.total_steps - run.step,
                       run.device)
    try:
        while run.step < run.total_steps:
            run.epoch, run.step_in_epoch, micro = next(batches)
            micro = to_device(micro, run.device)  # pinned by the loader on CUDA: the copies overlap the step
            step_loss, finite = _backward(run, train_model, micro, meter)
            with guard.whole() if guard is not None else contextlib.nullcontext():
                # a Ctrl-C between the optimizer's update and the count would save step N + 1's weights as step N
                grad_norm, bad_steps = _update(run, finite, bad_steps)
                run.scheduler.step()
                run.step += 1
                run.step_in_epoch += 1
            # each process holds its share of the global mean; the sum over processes is the mean
            meter.add_step(dict(zip(step_loss, _all_reduce_sum(list(step_loss.values())), strict=True)))
            if run.step % config.log_every == 0 or run.step == run.total_steps:
                record = meter.record(run.step, run.epoch, run.scheduler.get_last_lr()[0], float(grad_norm))
                run.log(record)
                if progress is not None:
                    progress.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_s']:,.0f}")
            if progress is not None:
                progress.update(1)
            if config.eval_every and run.step % config.eval_every == 0 and run.step < run.total_steps:
                last_eval = run.evaluate()
                meter.restart()  # tokens/s measures training, not evaluation
            if config.save_every and run.step % config.save_every == 0 and run.step < run.total_steps:
                run.checkpoint()
                meter.restart()
        if progress is not None:
            progress.close()
        del batches  # the loader's workers end here, not after the final evaluation and checkpoint
        last_eval = run.evaluate()  # inside the try: Ctrl-C during the final evaluation still saves the trained steps
    except KeyboardInterrupt:
        if progress is not None:
            progress.close()
        _save_on_interrupt(run, guard)
        raise
    except WorkerDied as died:
        if progress is not None:
            progress.close()
        if run.world > 1:  # the other processes are inside a step's collectives and cannot join a save
            raise WorkerDied(f"{died}, at step {run.step}; the last checkpoint is in {run.output / CHECKPOINTS}") \
                from None
        saved = _save_on_interrupt(run, guard, str(died))
        raise WorkerDied(f"{died}, at step {run.step}; the run stopped there and saved a checkpoint: {saved} "
                         "(continue with --resume)") from None
    if guard is not None:
        guard.saving = True  # the final checkpoint and model/: a Ctrl-C now waits for them instead of cutting them
    _publish(run, run.checkpoint())
    _barrier()
    return FitResult(step=run.step, metrics=last_eval, output_dir=run.output)


def _save_on_interrupt(run: _Run, guard: _InterruptGuard | None, reason: str = "interrupted") -> Path | None:
    """After the first Ctrl-C (or a batch worker's death): a checkpoint of the steps done, which later Ctrl-Cs
    cannot cut; returns its path (on rank 0)."""
    if run.rank == 0:
        print(f"\n{reason} at step {run.step}: saving a checkpoint (resume with --resume)", flush=True)
    if guard is not None:
        guard.saving = True
    try:
        saved = run.checkpoint()
    except BaseException:
        if run.rank == 0:
            print(f"the checkpoint of step {run.step} was NOT saved; {run.output / CHECKPOINTS} keeps the previous "
                  "ones", flush=True)
        raise
    if run.rank == 0:
        print(f"checkpoint saved: {saved}", flush=True)
    return saved


def _append(path: Path, record: dict[str, Any], rank: int = 0) -> None:
    if rank != 0:
        return
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()


def _plain(value: Any) -> Any:
    """Config values as plain types (tuples become lists) so torch.load(weights_only=True) reads them back."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


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


def steps_summary(config: TrainConfig, examples: int) -> str:
    world = dist.get_world_size() if dist.is_initialized() else 1
    global_batch = config.batch_size * config.grad_accum * world
    steps = config.max_steps or max(1, round(config.epochs * (examples // global_batch)))
    epochs = steps * global_batch / max(examples, 1)
    return f"{examples:,} examples, global batch {global_batch}, {steps:,} steps (~{epochs:.2f} epochs)"
