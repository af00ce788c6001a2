"""What a process decides once about inference precision, and what it keeps for it: one object, `STATE`.

Decided once, at the first int8 or bf16 model (trial products on this CPU, never assumptions from its name):
whether int8 products run on oneDNN-packed weights, whether bf16 ones do. Kept: the packed twin of each int8
weight tensor, the compiled int8 functions, and why compiling failed where it did (then the same functions run
eagerly, with one warning a process). Tests replace fields with `monkeypatch.setattr(STATE, ...)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


@dataclass
class ProcessState:
    """The inference-precision state of this process (one instance: `STATE`)."""

    packed_int8: bool | None = None
    """Whether int8 GEMMs run on oneDNN's kernel with pre-packed weights (`int8_ops.packed_int8_available`);
    None until the first int8 layer asks."""
    packed_bf16: bool | None = None
    """Whether bf16 encoder Linears are packed for oneDNN (`bf16.packed_bf16_available`); None until asked."""
    int8_packs: dict[int, tuple[Any, int, int, Tensor]] = field(default_factory=dict)
    """id(int8 weight) -> (a weak reference to it, its data pointer and version when packed, the packed weight):
    the packed twin of each int8 weight, made at its first product, made again when the weight changed, dropped
    with the tensor."""
    compiled: dict[str, Any] = field(default_factory=dict)
    """Function name -> its torch.compile'd form (one per process: torch keeps the graphs per shape family)."""
    compile_failed: str | None = None
    """Why torch.compile failed in this process (then every int8 function runs eagerly)."""
    frozen_failed: str | None = None
    """Why compiling a frozen int8 stack failed (then the stacks run as compiled functions of their weights)."""


STATE = ProcessState()

