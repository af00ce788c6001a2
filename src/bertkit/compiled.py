"""`--compile`: a model (or, for int8 inference, a function) run through torch.compile that falls back to eager, once
and with a warning, where it cannot; where compiled code is kept between processes (`compile_cache`)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shutil
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"  # where inductor keeps compiled graphs (its FX graph and AOTAutograd caches)


def compile_cache_key() -> str:
    """The directory name of this machine's compiled code: torch's version, the Python version and a hash of the
    CPU's model and feature flags, so that code compiled by another torch or for another CPU is never found here
    (within it, inductor keys each graph by its own content, its configuration and the compiler's flags)."""
    from bertkit import hardware

    cpu = hashlib.sha256(f"{hardware.cpu_name()}|{' '.join(sorted(hardware.cpu_flags()))}|{platform.machine()}"
                         .encode()).hexdigest()[:16]
    return f"torch-{torch.__version__}-py{sys.version_info.major}.{sys.version_info.minor}-cpu-{cpu}"


def compile_cache() -> Path:
    """Where compiled graphs are kept across processes: `$TORCHINDUCTOR_CACHE_DIR` where the user set it, else
    `<bertkit cache>/compiled/<compile_cache_key()>` (set for this process the first time it is asked, before
    anything compiles), so a second process loads what the first compiled (`bertkit compile DIR` fills it ahead)."""
    from bertkit.resources import cache_dir

    if CACHE_ENV not in os.environ:
        os.environ[CACHE_ENV] = str(cache_dir() / "compiled" / compile_cache_key())
    return Path(os.environ[CACHE_ENV])


def compiler_available() -> bool:
    """Whether a C++ compiler for torch.compile's CPU code is on the PATH ($CXX, or c++, g++, clang++)."""
    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["c++", "g++", "clang++"]
    return any(shutil.which(name) for name in names)


@contextlib.contextmanager
def compiling_options() -> Iterator[None]:
    """The settings bertkit's inference graphs compile under: float arguments (a LayerNorm's eps, the activation's
    constants) as constants of the graph, not symbols. A symbolic float makes dynamo trace a graph twice (it restarts
    to turn the scalar into a tensor), and the graph it ends with is not one AOTAutograd's cache keeps, so a second
    process traced it again. And the generated C++ asks OpenMP for its thread count at each call rather than fixing
    the count it compiled with, so it follows `torch.set_num_threads` (bertkit.threads)."""
    import torch._inductor.config as inductor_config

    with torch._dynamo.config.patch(specialize_float=True), inductor_config.patch({"cpp.dynamic_threads": True}):
        yield


def failure_line(exc: BaseException) -> str:
    """One line for a compile failure's warning: the exception's type and its message's first line."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


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
        self.failed = failure_line(exc)
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

