"""The CRF against brute-force enumeration of every tag sequence on tiny cases."""

from __future__ import annotations

import itertools

import pytest
import torch

from bertkit.crf import CRF


def _brute(crf, emissions, length):
    C = crf.num_tags
    scores = {}
    for path in itertools.product(range(C), repeat=length):
        s = crf.start[path[0]] + crf.end[path[-1]] + sum(emissions[t, path[t]] for t in range(length))
        s = s + sum(crf.transitions[path[t - 1], path[t]] for t in range(1, length))
        scores[path] = float(s)
    return scores


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_log_likelihood_and_viterbi_equal_enumeration(seed):
    torch.manual_seed(seed)
    crf = CRF(3)
    with torch.no_grad():
        for p in crf.parameters():
            p.normal_()
    B, L = 4, 5
    emissions = torch.randn(B, L, 3)
    lengths = [5, 3, 1, 4]
    mask = torch.tensor([[t < n for t in range(L)] for n in lengths])
    tags = torch.randint(0, 3, (B, L))
    nll = crf.neg_log_likelihood(emissions, tags, mask)
    best = crf.decode(emissions, mask)
    for b, n in enumerate(lengths):
        scores = _brute(crf, emissions[b], n)
        log_z = torch.logsumexp(torch.tensor(list(scores.values())), 0)
        gold = scores[tuple(tags[b, :n].tolist())]
        assert nll[b].item() == pytest.approx(float(log_z) - gold, abs=1e-4)
        assert tuple(best[b]) == max(scores, key=scores.get)
        assert len(best[b]) == n


def test_gradients_flow_and_errors():
    crf = CRF(4)
    emissions = torch.randn(2, 3, 4, requires_grad=True)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]]).bool()
    crf.neg_log_likelihood(emissions, torch.zeros(2, 3, dtype=torch.long), mask).sum().backward()
    assert emissions.grad.abs().sum() > 0 and crf.transitions.grad.abs().sum() > 0
    assert emissions.grad[1, 2].abs().sum() == 0  # padding gets no gradient
    with pytest.raises(ValueError, match="mask\\[:, 0\\] must be true"):
        crf.decode(emissions, torch.tensor([[0, 1, 1], [1, 1, 0]]).bool())
    with pytest.raises(ValueError, match="emissions must be"):
        crf.decode(torch.randn(2, 3, 5), mask)
