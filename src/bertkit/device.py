"""Where bertkit computes: `--device auto|cpu|cuda|cuda:N` resolved once, batches moved to the model's device.

`auto` is CUDA where torch sees a GPU, else the CPU. Under `torchrun` a bare `cuda` (or `auto`) means the GPU of
this process's LOCAL_RANK, one process per GPU. Checkpoints never depend on the device: weights are written from
CPU copies and read with `map_location="cpu"`, then moved.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from bertkit.errors import DeviceError
from bertkit.hardware import cpu_name

CHOICES = "auto, cpu, cuda or cuda:N"


def _local_rank() -> int | None:
    value = os.environ.get("LOCAL_RANK")
    return int(value) if value is not None and value.strip().isdigit() else None


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The device `spec` names, checked: "auto" (or None) is CUDA when available (this process's GPU under
    torchrun), else the CPU; "cuda" without an index is LOCAL_RANK's GPU (0 outside torchrun)."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    name = (spec or "auto").strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        index_text = name.partition(":")[2]
        if index_text and not index_text.isdigit():
            raise DeviceError(f"device {spec!r}: expected {CHOICES}")
        if not torch.cuda.is_available():
            build = "a CPU-only build of torch" if torch.version.cuda is None else \
                f"torch built for CUDA {torch.version.cuda}, but no GPU is visible (driver, CUDA_VISIBLE_DEVICES?)"
            raise DeviceError(f"device {spec!r}: CUDA is not available here ({build}); use --device cpu or auto")
        count = torch.cuda.device_count()
        index = int(index_text) if index_text else (_local_rank() or 0)
        if index >= count:
            where = f" (LOCAL_RANK {index})" if not index_text else ""
            raise DeviceError(f"device {spec!r}{where}: this machine has {count} GPU(s), numbered 0 to {count - 1}; "
                              "start at most one process per GPU")
        return torch.device("cuda", index)
    raise DeviceError(f"device {spec!r}: expected {CHOICES}")


def device_of(model: nn.Module) -> torch.device:
    """The device a model's weights are on (the CPU for a model without parameters)."""
    for param in model.parameters():
        return param.device
    return torch.device("cpu")


def to_device(obj: Any, device: torch.device, non_blocking: bool = True) -> Any:
    """Tensors in `obj` (nested dicts, lists, tuples) on `device`; anything else as it is. On the CPU, or when a
    tensor is already there, the same objects come back (no copy)."""
    if isinstance(obj, torch.Tensor):
        return obj if obj.device == device else obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, dict):
        return {key: to_device(value, device, non_blocking) for key, value in obj.items()}
    if isinstance(obj, list):
        return [to_device(value, device, non_blocking) for value in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(to_device(value, device, non_blocking) for value in obj)
    return obj


def for_model(model: nn.Module, batch: Any) -> Any:
    """A batch built on the CPU (tokenizer, collate) moved to where `model` computes."""
    return to_device(batch, device_of(model))


def describe(device: torch.device) -> str:
    """One line for logs, `bertkit info` and /health: the device and what it is."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        bf16 = "bf16" if torch.cuda.is_bf16_supported() else "fp16 (no bf16)"
        return f"{device} ({props.name}, {props.total_memory / 2**30:.0f} GiB, {bf16})"
    return f"cpu ({cpu_name()}, {torch.get_num_threads()} threads)"


def setup_cuda(device: torch.device) -> None:
    """Per-process CUDA settings: this process's GPU as the current one (NCCL and all_gather_object need it) and
    TF32 for the float32 matmuls that autocast leaves (bf16/fp16 do the bulk)."""
    if device.type != "cuda":
        return
    torch.cuda.set_device(device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
