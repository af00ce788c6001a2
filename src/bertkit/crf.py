"""Linear-chain CRF for tagging heads: vectorised log-likelihood (forward algorithm) and Viterbi decoding.

Shape legend: B batch, L positions (words), C tags. Masks are prefixes: position 0 is always real.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class CRF(nn.Module):
    """Scores tags y as start[y0] + sum_t emissions[t, y_t] + sum_t transitions[y_{t-1}, y_t] + end[y_last]."""

    def __init__(self, num_tags: int) -> None:
        super().__init__()
        self.num_tags = num_tags
        self.start = nn.Parameter(torch.zeros(num_tags))
        self.end = nn.Parameter(torch.zeros(num_tags))
        self.transitions = nn.Parameter(torch.zeros(num_tags, num_tags))  # [from, to]

    def _check(self, emissions: Tensor, mask: Tensor) -> None:
        if emissions.dim() != 3 or emissions.shape[-1] != self.num_tags:
            raise ValueError(f"emissions must be (batch, length, {self.num_tags}), got {tuple(emissions.shape)}")
        if mask.shape != emissions.shape[:2]:
            raise ValueError(f"mask {tuple(mask.shape)} does not match emissions {tuple(emissions.shape[:2])}")
        if emissions.shape[1] and not bool(mask[:, 0].all()):
            raise ValueError("every sequence needs at least one position (mask[:, 0] must be true)")

    def log_partition(self, emissions: Tensor, mask: Tensor) -> Tensor:
        """log Z for each sequence: (B,)."""
        alpha = self.start + emissions[:, 0]  # (B, C)
        for t in range(1, emissions.shape[1]):
            scores = alpha[:, :, None] + self.transitions[None] + emissions[:, t, None, :]  # (B, C_from, C_to)
            alpha = torch.where(mask[:, t, None], torch.logsumexp(scores, dim=1), alpha)
        return torch.logsumexp(alpha + self.end, dim=1)

    def score(self, emissions: Tensor, tags: Tensor, mask: Tensor) -> Tensor:
        """Unnormalised score of the given tag sequences: (B,)."""
        L = emissions.shape[1]
        mask_f = mask.to(emissions.dtype)
        emitted = emissions.gather(2, tags[:, :, None]).squeeze(2)  # (B, L)
        total = self.start[tags[:, 0]] + (emitted * mask_f).sum(1)
        if L > 1:
            moves = self.transitions[tags[:, :-1], tags[:, 1:]]  # (B, L-1)
            total = total + (moves * mask_f[:, 1:]).sum(1)
        last = tags.gather(1, (mask.long().sum(1) - 1)[:, None]).squeeze(1)  # (B,)
        return total + self.end[last]

    def neg_log_likelihood(self, emissions: Tensor, tags: Tensor, mask: Tensor) -> Tensor:
        """-log p(tags | emissions) for each sequence: (B,). Computed in fp32 whatever the emissions' dtype."""
        mask = mask.bool()
        self._check(emissions, mask)
        emissions = emissions.float()
        tags = tags.masked_fill(~mask, 0)
        return self.log_partition(emissions, mask) - self.score(emissions, tags, mask)

    @torch.no_grad()
    def decode(self, emissions: Tensor, mask: Tensor) -> list[list[int]]:
        """Viterbi: the highest-scoring tag sequence of each sequence, as lists of its real length."""
        mask = mask.bool()
        self._check(emissions, mask)
        emissions = emissions.float()
        B, L = emissions.shape[:2]
        score = self.start + emissions[:, 0]  # (B, C)
        history = []
        for t in range(1, L):
            candidates = score[:, :, None] + self.transitions[None]  # (B, C_from, C_to)
            best, best_from = candidates.max(dim=1)  # (B, C)
            history.append(best_from)
            score = torch.where(mask[:, t, None], best + emissions[:, t], score)
        score = score + self.end
        lengths = mask.long().sum(1).tolist()
        history = torch.stack(history).cpu() if history else torch.zeros(0, B, emissions.shape[2], dtype=torch.long)
        score = score.cpu()  # the backtrace reads single elements: from host memory, not one GPU copy each
        paths = []
        for b in range(B):
            tag = int(score[b].argmax())
            path = [tag]
            for t in range(lengths[b] - 1, 0, -1):
                tag = int(history[t - 1][b, tag])
                path.append(tag)
            paths.append(path[::-1])
        return paths
