"""How many threads an inference forward pass takes on the CPU when other work shares the machine.

torch runs each operation on a team of OpenMP threads that meet at a barrier when it ends. Where another CPU-bound
process shares the cores, one of those threads is often off its core, and every barrier waits for it: a batch with
padding (packed: attention once per sequence, hundreds of small operations a layer) then ran ~3x slower beside one
busy neighbour while onnxruntime ran ~1.8x slower (bench/colocated.py). So the process watches how long the thread
that calls the model waits for a CPU while the encoder runs a packed batch (`run_delay` in
/proc/self/task/TID/schedstat: time runnable but not running). Where that share passes `THRESHOLD`, packed batches run
their encoder on one thread for the next `HOLD` seconds, then the share is measured again on all of them; a batch
without padding (a few large operations) keeps every thread. A neighbour at low priority (nice 19) yields its core and
leaves the share near zero: nothing changes. The thread count goes back after each narrowed pass.

`BERTKIT_ADAPTIVE_THREADS=0` turns it off; it never acts in training, on a GPU, or with one thread. The thread
count is process-wide: it governs one thread running the model at a time (a Predictor's, a server's batcher); threads
that run models at once share one decision and may see each other's narrowed count.
"""

from __future__ import annotations

import os
import threading
import time

import torch

THRESHOLD = 0.15  # share of the calling thread's time in the encoder spent waiting for a CPU
WINDOW = 0.25  # seconds of encoder passes per measurement
HOLD = 5.0  # seconds a measured contention stands before it is measured again


def run_delay(tid: int) -> int | None:
    """Nanoseconds thread `tid` of this process has spent runnable but waiting for a CPU; None where the kernel
    does not say (no schedstat)."""
    try:
        with open(f"/proc/self/task/{tid}/schedstat", "rb") as f:
            return int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None


class ThreadGovernor:
    """`begin(packed)` before an encoder pass (narrows the threads where contention was measured and the batch is
    packed; else starts measuring) and `end(token)` after it (measures, decides, puts the thread count back)."""

    def __init__(self) -> None:
        self.enabled = os.environ.get("BERTKIT_ADAPTIVE_THREADS", "1") != "0"
        self.contended_until = 0.0
        self.waited = self.ran = 0.0  # seconds in the current window
        self.narrowed = 0  # passes run on one thread (a server's /metrics)
        self._lock = threading.Lock()

    def state(self) -> dict[str, object]:
        """What the governor does now (the server's /metrics): on or off, whether packed batches run on one thread,
        and how many passes have."""
        return {"adaptive": self.enabled, "contended": time.monotonic() < self.contended_until,
                "one_thread_passes": self.narrowed}

    def active(self, device: torch.device) -> bool:
        return self.enabled and device.type == "cpu" and not torch.is_grad_enabled() and torch.get_num_threads() > 1

    def begin(self, packed: bool) -> tuple[int, float, int] | tuple[int] | None:
        """Before the pass: (the thread count to restore,) where narrowed; (threads, wall, run delay) where measured;
        None for an unpadded batch (never narrowed, so not measured either: two file reads a pass are ~5% of a
        small model's one sequence) or where this thread's waiting cannot be read."""
        if not packed:
            return None
        full = torch.get_num_threads()
        if time.monotonic() < self.contended_until:
            torch.set_num_threads(1)
            self.narrowed += 1
            return (full,)
        delay = run_delay(threading.get_native_id())
        return None if delay is None else (full, time.perf_counter(), delay)

    def end(self, token: tuple[int, float, int] | tuple[int] | None) -> None:
        if token is None:
            return
        if len(token) == 1:  # a narrowed pass: says nothing about the full width
            torch.set_num_threads(token[0])
            return
        delay = run_delay(threading.get_native_id())
        if delay is None:
            return
        _, start, before = token
        with self._lock:
            self.ran += time.perf_counter() - start
            self.waited += (delay - before) / 1e9
            if self.ran >= WINDOW:
                if self.waited > THRESHOLD * self.ran:
                    self.contended_until = time.monotonic() + HOLD
                self.ran = self.waited = 0.0


GOVERNOR = ThreadGovernor()
