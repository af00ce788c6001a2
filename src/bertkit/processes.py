"""Child processes that end with their parent: prepare-data's and the training loader's workers."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent: int, watch: bool = True) -> None:
    """End this process when its parent (process id `parent`) ends, however it ends: a parent killed with SIGKILL
    runs no cleanup, and a worker blocked on its task queue would otherwise wait forever (holding its memory and
    files, and keeping multiprocessing's resource tracker alive through the pipe every spawned process inherits).
    On Linux the kernel sends SIGKILL at the parent's death (PR_SET_PDEATHSIG: it fires when the thread that
    started this process exits, so start workers from a thread that outlives them); with `watch`, a daemon thread
    also checks the parent's pid once a second, for other systems (torch's loader workers check every 5 s
    themselves)."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the request was made: nobody will send the signal
        os._exit(1)
    if watch:
        threading.Thread(target=_watch_parent, args=(parent,), name="watch-parent", daemon=True).start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:  # an orphan is adopted by init (or a subreaper): its parent pid changes
        time.sleep(1.0)
    os._exit(1)
