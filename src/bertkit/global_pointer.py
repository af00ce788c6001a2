"""Span scoring heads: the efficient GlobalPointer (every (start, end) pair of a sequence scored per type) and its loss.

A span head scores the pair (i, j) for type c as

    s[c, i, j] = <q_i, k_j> / sqrt(D) + start_c(h_i) + end_c(h_j)

with q, k one shared projection of the encoder's hidden states (rotated by position, RoPE, so the score sees j - i)
and start/end a per-type bias: the "efficient" GlobalPointer (Su Jianlin, 2021), which adds 2C numbers per token
instead of C projections. Entities are the pairs scoring above 0 (flat, nested or overlapping alike). GPLinker's
subject-object heads are the same module without RoPE and without the j >= i mask (a subject may follow its object).

Shape legend: B batch, T tokens, H hidden, C span types, D head size.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

NEG = -1e12  # the score of a pair that cannot be a span: padding, or end before start


def rotary(x: Tensor) -> Tensor:
    """RoPE on the last dimension (even D) of x: (B, T, D), pairs (2m, 2m+1) rotated by position * 10000^(-2m/D)."""
    _, T, D = x.shape
    inv = 10000.0 ** (-torch.arange(0, D, 2, device=x.device, dtype=torch.float32) / D)  # (D/2,)
    angle = torch.arange(T, device=x.device, dtype=torch.float32)[:, None] * inv[None]  # (T, D/2)
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    even, odd = x[..., 0::2], x[..., 1::2]  # (B, T, D/2) each
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)  # (B, T, D)


class GlobalPointer(nn.Module):
    """Efficient GlobalPointer: hidden states (B, T, H) -> span logits (B, C, T, T)."""

    def __init__(self, hidden_size: int, num_types: int, head_size: int = 64, *, rope: bool = True,
                 upper_triangle: bool = True) -> None:
        super().__init__()
        if head_size % 2:
            raise ValueError(f"head_size must be even for RoPE, got {head_size}")
        self.num_types, self.head_size = num_types, head_size
        self.rope, self.upper_triangle = rope, upper_triangle
        self.query_key = nn.Linear(hidden_size, 2 * head_size)
        self.type_bias = nn.Linear(2 * head_size, 2 * num_types)

    def forward(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        T = hidden.shape[1]
        qk = self.query_key(hidden)  # (B, T, 2D)
        q, k = qk[..., 0::2], qk[..., 1::2]  # (B, T, D) each
        if self.rope:
            q, k = rotary(q), rotary(k)
        shared = q @ k.transpose(1, 2) / math.sqrt(self.head_size)  # (B, T, T)
        bias = self.type_bias(qk).transpose(1, 2) / 2  # (B, 2C, T)
        start, end = bias[:, 0::2], bias[:, 1::2]  # (B, C, T) each
        logits = shared[:, None] + start[..., :, None] + end[..., None, :]  # (B, C, T, T)
        real = attention_mask.bool()
        allowed = real[:, None, :, None] & real[:, None, None, :]  # (B, 1, T, T)
        if self.upper_triangle:
            allowed = allowed & torch.ones(T, T, dtype=torch.bool, device=hidden.device).triu()
        return logits.masked_fill(~allowed, NEG)


def span_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Multi-label categorical cross-entropy over all pairs of each (sequence, type), mean over B x C.

    For the scores s of one (b, c): log(1 + sum_neg e^s) + log(1 + sum_pos e^-s), which pushes every positive pair
    above 0 and every negative below, whatever their counts. targets: (B, C, T, T), 1 for a span; the pairs masked
    with NEG contribute nothing.
    """
    B, C = logits.shape[:2]
    s = logits.float().reshape(B * C, -1)  # (B*C, T*T)
    pos = targets.reshape(B * C, -1).bool()
    neg_term = torch.logaddexp(torch.logsumexp(s.masked_fill(pos, NEG), dim=1), s.new_zeros(()))
    # the few positives alone, not a second pass over every pair (on a CPU the loss is most of a step's time):
    # log(1 + sum e^-s) per row, shifted by the row's largest -s (>= 0), which cancels out of the value
    row, column = pos.nonzero(as_tuple=True)
    negated = -s[row, column]
    top = s.new_zeros(B * C).scatter_reduce(0, row, negated.detach(), "amax")  # include_self: the 1's exponent 0
    total = torch.exp(-top).index_add(0, row, torch.exp(negated - top[row]))
    pos_term = top + torch.log(total)
    return (neg_term + pos_term).mean()


def decode_spans(logits: Tensor, threshold: float = 0.0) -> list[list[tuple[int, int, int]]]:
    """Per sequence, the (type, start, end) spans (token indices, end inclusive) scoring above threshold."""
    found: list[list[tuple[int, int, int]]] = [[] for _ in range(logits.shape[0])]
    for b, c, i, j in (logits > threshold).nonzero().tolist():
        found[b].append((c, i, j))
    return found
