"""Processes training together under torchrun: joining the process group, and the few collectives `fit` uses."""

from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as dist

from bertkit.device import setup_cuda

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


def world_size() -> int:
    """Processes in this run (1 outside torchrun)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def all_reduce_sum(values: list[float]) -> list[float]:
    """Each value summed over the processes (as it is in a single process)."""
    if not dist.is_initialized():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=_COMM_DEVICE)
    dist.all_reduce(tensor)
    return tensor.tolist()


def all_gather(value: Any, world: int) -> list[Any]:
    """Every process's `value`, in rank order (`[value]` in a single process)."""
    if world == 1:
        return [value]
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, value)
    return gathered


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
