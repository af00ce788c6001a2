"""The batches of a run: each step's examples (the epoch's permutation, this rank's share, each micro-batch),
built in the training process or ahead of the step in worker processes, the same for any number of workers."""

from __future__ import annotations

import functools
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from bertkit import rundir
from bertkit.errors import TrainingError
from bertkit.processes import die_with_parent

if TYPE_CHECKING:
    from bertkit.train import TrainConfig, TrainTask


class WorkerDied(TrainingError):
    """A process building batches (`--workers`) ended in the middle of the run: killed, or out of memory."""


def epoch_order(seed: int, epoch: int, size: int) -> np.ndarray:
    """The epoch's permutation of the examples; the same as Generator.permutation(size), in 4 bytes an example
    where that fits (a 100M-example epoch: 400 MB, not 800)."""
    order = np.arange(size, dtype=np.uint32 if size < 2**32 else np.int64)
    np.random.default_rng([seed, epoch, 7]).shuffle(order)
    return order


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


def batches(task: TrainTask, config: TrainConfig, world: int, rank: int, epoch: int, step_in_epoch: int,
            steps: int, device: torch.device | None = None) -> Iterator[tuple[int, int, list[dict[str, Any]]]]:
    """The micro-batches of the steps from (`epoch`, `step_in_epoch`) on: built in this process, or ahead of the
    step by `config.workers` worker processes."""
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
    rundir.forget_locks()
    torch.set_num_threads(1)  # the training process's threads do the math; a worker builds batches in Python
