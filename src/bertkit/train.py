"""ONE training loop, `fit()`, for pre-training and fine-tuning: AdamW, warmup + linear decay, accumulation, clipping,
bf16 autocast, evaluation, checkpoints, exact resume and DDP, with what configures it (`TrainConfig`, `TrainTask`).

A task supplies data and losses through the small `TrainTask` protocol; `fit` owns everything else. Example `i`
of epoch `e` is the same tensor whatever the batch size, process count or resume point, so a resumed run or a
2-process run computes exactly the update a single uninterrupted run computes.

What the loop calls lives beside it: the run directory (lock, checkpoints, metrics, curves) in `rundir`, the
training state and its checks in `resume`, the batches in `loader`, the collectives in `distributed`, Ctrl-C
handling in `interrupt`.
"""

from __future__ import annotations

import contextlib
import functools
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from bertkit import distributed, hardware, loader, rundir
from bertkit.argtypes import flag, float_range, int_range
from bertkit.best import Best
from bertkit.compiled import CompiledOrEager
from bertkit.device import describe, resolve_device, setup_cuda, to_device
from bertkit.distributed import distributed_setup
from bertkit.errors import TrainingError
from bertkit.interrupt import InterruptGuard
from bertkit.loader import WorkerDied
from bertkit.memory import limit_heap_growth
from bertkit.model import set_gradient_checkpointing
from bertkit.resume import restore, training_state


@dataclass
class TrainConfig:
    """How to train. Each field with a help text is a `--flag` of the commands that train (`train_flags`); its
    type checks the range at parse time, and `__post_init__` checks the same for callers."""

    output_dir: str = flag("run directory: model/, checkpoints/, metrics.jsonl, curves.png", "runs/train")
    batch_size: int = flag("examples per process per micro-batch", 32, type=int_range(1))
    grad_accum: int = flag("micro-batches per optimizer step", 1, type=int_range(1))
    lr: float = flag("peak learning rate", 1e-4, type=float_range(0, low_open=True))
    weight_decay: float = flag("AdamW weight decay (not on biases and LayerNorm)", 0.01, type=float_range(0))
    warmup: float = flag("warmup: a fraction of the steps (< 1) or a number of steps", 0.06, type=float_range(0))
    max_steps: int = flag("optimizer steps (0: from --epochs)", 0, type=int_range(0))
    epochs: float = flag("passes over the training data when --max-steps is 0", 1.0, type=float_range(0))
    max_grad_norm: float = flag("gradient clipping norm (0: off)", 1.0, type=float_range(0))
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-6
    # None: bf16 autocast where the hardware has native bf16 (AVX512-BF16/AMX, CUDA)
    bf16: bool | None = flag("bf16 autocast (default: on where the CPU/GPU has native bf16)", None,
                             negation="train in fp32")
    seed: int = flag("random seed (data order, masking, initialisation, dropout)", 42, type=int_range(0))
    log_every: int = flag("steps between metrics.jsonl records", 10, type=int_range(1))
    eval_every: int = flag("steps between held-out evaluations (0: at the end)", 0, type=int_range(0))
    save_every: int = flag("steps between checkpoints (0: at the end)", 0, type=int_range(0))
    keep_checkpoints: int = flag("how many checkpoints to keep", 2, type=int_range(1))
    max_bad_steps: int = flag("consecutive non-finite steps before stopping", 5, type=int_range(1))
    best_metric: str | None = flag(
        "the evaluation metric whose best value picks the weights model/ holds: one the task's evaluation reports, "
        "or loss (the training loss since the previous evaluation); lower is better for loss and *_loss, higher "
        "for the others (default: the task's headline metric)", None, metavar="NAME")
    patience: int = flag("stop after this many evaluations in a row without a better --best-metric (0: never)", 0,
                         type=int_range(0))
    progress: bool = flag("no progress bar", True)
    # worker w builds the batches of the steps N with N % workers == w (torch.utils.data workers)
    workers: int = flag("processes building batches ahead of the step (0: in the training process; the batches are "
                        "the same for any number)", 0, type=int_range(0))
    device: str = flag("auto, cpu, cuda or cuda:N (auto: CUDA where available; under torchrun each process takes its "
                       "LOCAL_RANK GPU)", "auto")
    compile: bool = flag("torch.compile the model (eager, with a warning, where it cannot compile)", False)
    report_to: str | None = flag(
        "also write the metrics as TensorBoard event files in OUTPUT_DIR/tensorboard (the optional extra: pip "
        "install 'bertkit[tensorboard]')", None, choices=("tensorboard",))
    gradient_checkpointing: bool = flag(
        "keep only each encoder layer's input for backward and recompute its activations there: less memory, one "
        "more forward pass a step, the same gradients", False)
    resume: bool = flag("continue from the newest intact checkpoint in --output-dir", False)
    overwrite: bool = flag("delete the run already in --output-dir (checkpoints/, model/, metrics) and start again",
                           False)
    # The optimizer's moments and the random state come from the checkpoint.
    allow_resume_changes: bool = flag(
        "with --resume: continue with changed settings or training data instead of refusing (new lr, schedule, "
        "weight decay, clipping and seed apply from the resume point; the global batch cannot change)", False)

    def __post_init__(self) -> None:
        for name in ("batch_size", "grad_accum", "keep_checkpoints", "max_bad_steps", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "eval_every", "save_every", "seed", "workers", "patience"):
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
        if self.patience and not self.eval_every:
            raise ValueError("patience counts evaluations: give eval_every too")
        if self.best_metric is not None and not (isinstance(self.best_metric, str) and self.best_metric.strip()):
            raise ValueError(f"TrainConfig.best_metric must be a metric's name or None, got {self.best_metric!r}")
        if self.resume and self.overwrite:
            raise ValueError("give resume (continue the run) or overwrite (replace it), not both")
        self.adam_betas = tuple(self.adam_betas)


class TrainTask(Protocol):
    """What `fit` needs from a task (pre-training or any fine-tuning task)."""

    # Under DDP: whether some parameters get no gradient in a step (unused heads), which DDP must then search for.
    find_unused_parameters: bool
    # The metric that ranks evaluations when --best-metric names none (None: the first one `evaluate` reports).
    headline_metric: str | None

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

    # Optional: `fingerprint() -> str`, a digest of the encoded training examples (see `resume.data_fingerprint`;
    # pre-training on a prepared corpus adds its held-out shards). `fit` stores it in each checkpoint and `--resume`
    # refuses different data. `load(model, directory)`: the inverse of `save`, for `--resume` (default: the
    # checkpoint's weights into `model`, strictly), where `save` writes more than the model's weights.


@dataclass
class FitResult:
    step: int  # the last step trained
    metrics: dict[str, float] = field(default_factory=dict)  # the evaluation of the weights model/ holds
    output_dir: Path = Path()
    best_step: int | None = None  # the step whose weights model/ holds, where evaluations ranked them
    stopped_early: bool = False  # --patience ended the run before its last step


# ---- pieces of the loop ------------------------------------------------------------------------------------------

def autocast_dtype(device: torch.device, bf16: bool | None) -> torch.dtype | None:
    """The autocast dtype of a run: bf16 where the device has it natively (`bf16=None`: decide; True: require);
    on a GPU without bf16, fp16 (with a gradient scaler); None: float32 (TF32 matmuls on a GPU)."""
    if bf16 is not None:
        return torch.bfloat16 if bf16 else None
    if bf16_supported(device):
        return torch.bfloat16
    return torch.float16 if device.type == "cuda" else None


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":  # native only: before Ampere, bf16 is emulated (no tensor cores); fp16 is native
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return hardware.native_bf16()


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


# ---- the loop ------------------------------------------------------------------------------------------------------

def fit(model: nn.Module, task: TrainTask, config: TrainConfig, *, title: str = "training") -> FitResult:
    """Train `model` on `task` as `config` says; returns the final step and the last evaluation.

    The output directory is claimed for the run (`rundir.claim_run_dir`); Ctrl-C saves a checkpoint, then stops."""
    rank, _ = distributed_setup(resolve_device(config.device))
    with rundir.claim_run_dir(config.output_dir, resume=config.resume, overwrite=config.overwrite, rank=rank):
        limit_heap_growth()
        with InterruptGuard() as guard:
            return _fit(model, task, config, title, guard)


@dataclass
class Run:
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
    best: Best
    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    stopped: bool = False  # --patience has run out: the loop ends at this step
    board: Any = None  # rank 0's TensorBoard writer (--report-to tensorboard)

    @property
    def metrics_path(self) -> Path:
        return self.output / rundir.METRICS_NAME

    def autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.bfloat16,
                              enabled=self.amp_dtype is not None)

    def log(self, record: dict[str, Any]) -> None:
        if self.rank == 0:
            rundir.append_metrics(self.metrics_path, record)
            if self.board is not None:
                rundir.add_scalars(self.board, record)

    def checkpoint(self) -> Path | None:
        """Save weights and the whole training state (every rank's RNG) at the current step; rank 0 writes."""
        state = training_state(self)
        path = None
        if state is not None:
            path = rundir.write_checkpoint(self.output, self.step, functools.partial(self.task.save, self.model), state,
                                           self.config.keep_checkpoints, self.best.step)
            if self.board is not None:
                self.board.flush()  # what the checkpoint's step covers is on disk in both logs
        distributed.barrier()
        return path

    def evaluate(self) -> dict[str, float]:
        """Evaluate, rank the evaluation (`Best`), keep the weights on disk when they are the best so far; every
        rank learns whether `--patience` has run out."""
        result: dict[str, float] = {}
        if self.rank == 0:
            self.model.eval()
            with torch.no_grad(), self.autocast():
                result = self.task.evaluate(self.model)
            self.model.train()
            judged = self.best.judge(result, self.config.patience)
            if judged is not None and self.best.improves(*judged):
                # on disk before the ranking changes: a checkpoint never refers to best weights not yet written
                rundir.write_best(self.output, self.step, functools.partial(self.task.save, self.model))
            self.best.record(self.step, result, judged)
            self.log({"kind": "eval", "step": self.step, "epoch": self.epoch, **result})
            if judged is not None:
                self.log(self.best.record_line(self.step))
            rundir.plot_curves(self.metrics_path, self.output / rundir.CURVES_NAME, self.title)
        # the ranking lives on rank 0; every rank needs whether to stop, and which step was evaluated
        self.stopped = distributed.all_reduce_sum([float(self.best.exhausted(self.config.patience))])[0] > 0
        self.best.evaluated_step = self.step
        if self.stopped:
            self.log({"kind": "stopped", "step": self.step, "reason": f"{self.config.patience} evaluations without "
                      f"a better {self.best.metric}", "best_step": self.best.step})
        return result


def _start_run(model: nn.Module, task: TrainTask, config: TrainConfig, title: str) -> Run:
    """Device, precision, step count, optimizer and schedule of a run, before any resume."""
    device = resolve_device(config.device)
    rank, world = distributed_setup(device)
    if config.report_to == "tensorboard":
        rundir.summary_writer_class()  # the package is there before any step
    setup_cuda(device)
    model.to(device)
    if not set_gradient_checkpointing(model, config.gradient_checkpointing) and config.gradient_checkpointing:
        raise TrainingError("--gradient-checkpointing: the model has no BERT encoder layers to checkpoint")
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
    return Run(config, task, model, title, device, rank, world, Path(config.output_dir), amp_dtype,
                torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16), global_batch, total_steps,
                optimizer, scheduler, task.fingerprint() if hasattr(task, "fingerprint") else None,
                Best.start(config.best_metric, task.headline_metric))


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


def _backward(run: Run, train_model: nn.Module, micro: list[dict[str, Any]], meter: ThroughputMeter
              ) -> tuple[dict[str, float], bool]:
    """Forward and backward over one step's micro-batches: (this process's share of each loss term's step mean,
    whether every loss was finite). Each term is divided by its count over ALL micro-batches of ALL processes, so
    accumulation and DDP (which averages gradients over processes, hence * world) give the one-big-batch
    gradient."""
    task, world = run.task, run.world
    names = sorted({k for b in micro for k in task.counts(b)})
    local = [sum(task.counts(b).get(n, 0.0) for b in micro) for n in names]
    totals = dict(zip(names, distributed.all_reduce_sum(local), strict=True))
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


def _update(run: Run, loss_finite: bool, bad_steps: int) -> tuple[Tensor, int]:
    """Clip and apply the gradients, or skip the update (fp16 overflow, or a non-finite loss or gradient, counted
    towards `max_bad_steps`): (the gradient norm, the consecutive bad steps)."""
    config, scaler, optimizer = run.config, run.scaler, run.optimizer
    scaler.unscale_(optimizer)  # (fp16 only) the clipping below sees the true gradients
    grad_norm = (nn.utils.clip_grad_norm_(run.model.parameters(), config.max_grad_norm)
                 if config.max_grad_norm > 0 else torch.tensor(0.0))
    flags = distributed.all_reduce_sum([0.0 if loss_finite and torch.isfinite(grad_norm) else 1.0,
                                        0.0 if loss_finite else 1.0])
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
                f"checkpoint is in {run.output / rundir.CHECKPOINTS}")
        return grad_norm, bad_steps
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm, 0


def _progress_bar(run: Run) -> Any:
    if not (run.config.progress and run.rank == 0):
        return None
    from tqdm.auto import tqdm

    # In a log file (not a terminal) a bar redrawn every step would flood it: redraw every 30 s there.
    return tqdm(total=run.total_steps, initial=run.step, desc=run.title, unit="step", dynamic_ncols=True,
                mininterval=0.5 if sys.stderr.isatty() else 30)


def _fit(model: nn.Module, task: TrainTask, config: TrainConfig, title: str,
         guard: InterruptGuard | None = None) -> FitResult:
    run = _start_run(model, task, config, title)
    restore(run)
    if config.report_to == "tensorboard" and run.rank == 0:
        run.board = rundir.open_tensorboard(run.output, run.step + 1)
    try:
        return _train(run, guard)
    finally:
        if run.board is not None:
            run.board.close()


def _train(run: Run, guard: InterruptGuard | None) -> FitResult:
    """The loop, from wherever `run` stands (a fresh start or a restored checkpoint) to its final checkpoint."""
    model, task, config = run.model, run.task, run.config
    train_model: nn.Module = CompiledOrEager(model) if config.compile else model
    if run.world > 1:
        train_model = nn.parallel.DistributedDataParallel(
            train_model, device_ids=[run.device.index] if run.device.type == "cuda" else None,
            find_unused_parameters=task.find_unused_parameters)
    progress = _progress_bar(run)
    meter = ThroughputMeter(run.world)
    model.train()
    last_eval: dict[str, float] = {}
    bad_steps = 0
    batches = loader.batches(task, config, run.world, run.rank, run.epoch, run.step_in_epoch,
                             run.total_steps - run.step, run.device)
    try:
        if (config.eval_every and 0 < run.step < run.total_steps and run.step % config.eval_every == 0
                and run.best.evaluated_step != run.step and not run.stopped):
            last_eval = run.evaluate()  # resumed from a checkpoint saved between a step and its evaluation (Ctrl-C)
        while run.step < run.total_steps and not run.stopped:
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
            step_mean = dict(zip(step_loss, distributed.all_reduce_sum(list(step_loss.values())), strict=True))
            meter.add_step(step_mean)
            run.best.add_step_loss(sum(step_mean.values()))
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
        if run.best.evaluated_step != run.step:  # (an early stop has just evaluated this step)
            last_eval = run.evaluate()  # inside the try: Ctrl-C here still saves the trained steps
    except KeyboardInterrupt:
        if progress is not None:
            progress.close()
        _save_on_interrupt(run, guard)
        raise
    except WorkerDied as died:
        if progress is not None:
            progress.close()
        if run.world > 1:  # the other processes are inside a step's collectives and cannot join a save
            raise WorkerDied(f"{died}, at step {run.step}; the last checkpoint is in "
                             f"{run.output / rundir.CHECKPOINTS}") from None
        saved = _save_on_interrupt(run, guard, str(died))
        raise WorkerDied(f"{died}, at step {run.step}; the run stopped there and saved a checkpoint: {saved} "
                         "(continue with --resume)") from None
    if guard is not None:
        guard.saving = True  # the final checkpoint and model/: a Ctrl-C now waits for them instead of cutting them
    final = run.checkpoint()
    best = run.best
    if run.rank == 0 and final is not None:
        rundir.publish(run.output, _best_weights(run) if best.step is not None else final, run.title)
    distributed.barrier()
    return FitResult(step=run.step, metrics=best.metrics if best.step is not None else last_eval,
                     output_dir=run.output, best_step=best.step, stopped_early=run.stopped)


def _best_weights(run: Run) -> Path:
    source = rundir.best_weights(run.output, run.best.step)
    if source is None:
        raise TrainingError(f"the best weights (step {run.best.step}, {run.best.metric} {run.best.value}) are missing "
                            f"or damaged in {run.output / rundir.BEST}; the final weights are in "
                            f"{run.output / rundir.CHECKPOINTS}")
    return source


def _save_on_interrupt(run: Run, guard: InterruptGuard | None, reason: str = "interrupted") -> Path | None:
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
            print(f"the checkpoint of step {run.step} was NOT saved; {run.output / rundir.CHECKPOINTS} keeps the "
                  "previous ones", flush=True)
        raise
    if run.rank == 0:
        print(f"checkpoint saved: {saved}", flush=True)
    return saved


def steps_summary(config: TrainConfig, examples: int) -> str:
    global_batch = config.batch_size * config.grad_accum * distributed.world_size()
    steps = config.max_steps or max(1, round(config.epochs * (examples // global_batch)))
    epochs = steps * global_batch / max(examples, 1)
    return f"{examples:,} examples, global batch {global_batch}, {steps:,} steps (~{epochs:.2f} epochs)"
