"""Loss functions the tasks share: a cross-entropy that stays cheap on large-vocabulary bf16 logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_CHUNK_ROWS = 64  # rows of logits turned into fp32 at a time: ~8 MB at a 30k vocabulary, stays in the L3 cache


class _LowPrecisionCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy over rows of (M, V) logits kept in their own dtype (bf16 under autocast).

    Forward and backward work on fp32 copies of 64 rows at a time (cache-resident), and the gradient
    softmax - onehot is rounded to the logits' dtype once, at the end. Autograd's route (fp32 copy of all logits,
    log_softmax, zero-filled NLL gradient, cast back) makes several passes over the largest tensor of an MLM
    step through main memory; this takes about half the time on a CPU.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor) -> Tensor:
        total = torch.zeros((), dtype=torch.float32, device=logits.device)
        for start in range(0, logits.shape[0], _CHUNK_ROWS):
            rows = slice(start, start + _CHUNK_ROWS)
            total += F.cross_entropy(logits[rows].float(), targets[rows], reduction="sum")
        ctx.save_for_backward(logits, targets)
        return total / logits.shape[0]

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None]:
        logits, targets = ctx.saved_tensors
        scale = grad_output.float() / logits.shape[0]
        grad = torch.empty_like(logits)
        for start in range(0, logits.shape[0], _CHUNK_ROWS):
            rows = slice(start, start + _CHUNK_ROWS)
            chunk = torch.softmax(logits[rows].float(), dim=-1)  # (rows, V) fp32
            chunk[torch.arange(chunk.shape[0], device=chunk.device), targets[rows]] -= 1.0
            grad[rows] = chunk.mul_(scale)
        return grad, None


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy of (M, C) logits against (M,) class ids; fp32 result whatever the logits' dtype.

    fp32 logits go to F.cross_entropy; bf16/fp16 logits use a chunked fp32 log-sum-exp (same value, less memory
    traffic). Targets must be valid class ids (no ignore_index: select the rows that count first).
    """
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"expected logits (M, C) and targets (M,), got {tuple(logits.shape)} and "
                         f"{tuple(targets.shape)}")
    if logits.shape[0] == 0:
        return logits.float().sum() * 0.0  # no rows selected: zero loss, still connected to the graph
    if logits.dtype == torch.float32 or not logits.requires_grad or logits.device.type != "cpu":
        return F.cross_entropy(logits.float(), targets)
    return _LowPrecisionCrossEntropy.apply(logits, targets)
