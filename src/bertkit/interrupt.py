"""Ctrl-C during training: the first stops the run at a whole step and lets it save; none cuts a save short."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any


class InterruptGuard:
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

    def __enter__(self) -> InterruptGuard:
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
