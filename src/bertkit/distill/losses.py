"""The losses of knowledge distillation as pure functions over tensors: soft targets with a temperature (KL, scaled by
T^2), hidden-state and attention-map MSE, and which teacher layer each student layer learns from.

Shape legend: R rows a distribution is over (examples, words or questions), C classes, B batch, T tokens, H hidden
(the teacher's width, after projection), N heads, D head dim.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bertkit.model import split_heads

# Logits below this are a class the row does not have (a question's missing choice, -inf): kept finite, so that its
# probability is exactly 0 in both distributions and 0 * log 0 never becomes NaN.
ABSENT = -1e4


def soft_target_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """T^2 * sum over the R rows of KL(softmax(teacher / T) || softmax(student / T)), for (R, C) logits.

    The softened distributions' gradients shrink as 1/T^2 (Hinton et al. 2015), so T^2 keeps the soft term's weight
    against the hard labels' the same for any temperature."""
    log_teacher = (teacher.float().clamp(min=ABSENT) / temperature).log_softmax(-1)  # (R, C)
    log_student = (student.float().clamp(min=ABSENT) / temperature).log_softmax(-1)  # (R, C)
    return temperature**2 * (log_teacher.exp() * (log_teacher - log_student)).sum()


def layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """The teacher layer (1-based) each student layer m = 1..student_layers learns from: every
    teacher_layers / student_layers-th, m * teacher_layers // student_layers (TinyBERT's uniform mapping), so the
    last layers meet. Layer 0, the embeddings' output, maps to the teacher's layer 0 (not listed)."""
    if teacher_layers < 1 or student_layers < 1:
        raise ValueError(f"layer counts must be >= 1, got teacher {teacher_layers}, student {student_layers}")
    return [max(1, m * teacher_layers // student_layers) for m in range(1, student_layers + 1)]


def hidden_loss(student: Tensor, teacher: Tensor, mask: Tensor) -> Tensor:
    """Sum over the real tokens of the mean squared difference of their hidden states: (B, T, H) each (the
    student's already projected to the teacher's width), `mask` (B, T) marking real tokens."""
    keep = mask.bool()
    diff = student.float()[keep] - teacher.float()[keep]  # (tokens, H)
    return diff.pow(2).mean(-1).sum()


def attention_probabilities(qkv: Tensor, mask: Tensor, num_heads: int) -> Tensor:
    """Attention probabilities (B, N, T, T) from a layer's fused QKV projections (B, T, 3H) over the real tokens of
    `mask` (B, T): the softmax the layer computes, recomputed (fp32) so that it can be compared."""
    B, T = mask.shape
    q, k, _ = split_heads(qkv.reshape(B * T, -1).float(), B, num_heads)  # (B, N, T, D) each
    scores = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5  # (B, N, T, T)
    scores = scores.masked_fill(~mask.bool()[:, None, None, :], float("-inf"))
    return torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a row of padding only would be NaN: it is masked anyway


def attention_loss(student: Tensor, teacher: Tensor, mask: Tensor) -> Tensor:
    """Sum over the real query tokens of the squared difference of their attention rows (summed over the real keys),
    averaged over heads: (B, N_s, T, T) and (B, N_t, T, T). With different head counts, each side's maps are first
    averaged over its heads (one map per layer is compared)."""
    if student.shape[1] != teacher.shape[1]:
        student, teacher = student.mean(1, keepdim=True), teacher.mean(1, keepdim=True)  # (B, 1, T, T)
    keep = mask.bool()
    pairs = (keep[:, :, None] & keep[:, None, :])[:, None]  # (B, 1, T, T): real query and real key
    diff = (student.float() - teacher.float()).pow(2) * pairs
    return diff.sum(-1).mean(1).sum()  # (B, N, T) -> (B, T) -> a sum over the tokens
