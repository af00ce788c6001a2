"""Token-level augmentation of training texts for distillation, as pure functions: word pieces replaced by [MASK] or by
a piece drawn from the training data's own piece frequencies (Tang et al. 2019's masking and sampling), special
tokens never touched. An augmented text has no label: it feeds the soft targets only."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


class PieceSampler:
    """Draws word pieces with the frequencies they have in the training data (special tokens excluded)."""

    def __init__(self, rows: Iterable[Sequence[int]], protected: set[int]) -> None:
        counts: dict[int, int] = {}
        for ids in rows:
            for token in ids:
                if token not in protected:
                    counts[token] = counts.get(token, 0) + 1
        if not counts:
            raise ValueError("the training data has no word piece to sample (only special tokens)")
        self.ids = np.array(sorted(counts), dtype=np.int64)
        weights = np.array([counts[i] for i in self.ids], dtype=np.float64)
        self.cumulative = np.cumsum(weights / weights.sum())

    def draw(self, rng: np.random.Generator, count: int) -> np.ndarray:
        picks = np.searchsorted(self.cumulative, rng.random(count), side="right")
        return self.ids[np.minimum(picks, len(self.ids) - 1)]


def augment_ids(ids: Sequence[int], rng: np.random.Generator, probability: float, mask_id: int,
                protected: set[int], sampler: PieceSampler) -> list[int]:
    """A copy of `ids` in which each piece not in `protected` is replaced with chance `probability`: by `mask_id`
    half of the time, else by a piece from `sampler`. The length never changes, so word positions and entity spans
    computed on the original stay valid."""
    out = np.asarray(ids, dtype=np.int64).copy()
    free = np.array([token not in protected for token in ids], dtype=bool)
    chosen = free & (rng.random(len(out)) < probability)
    masked = chosen & (rng.random(len(out)) < 0.5)
    sampled = chosen & ~masked
    out[masked] = mask_id
    out[sampled] = sampler.draw(rng, int(sampled.sum()))
    return out.tolist()
