"""`--compile`: a model (or, for int8 inference, a function) run through torch.compile that falls back to eager, once
and with a warning, where it cannot."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


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

