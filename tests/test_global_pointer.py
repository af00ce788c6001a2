"""The span head: RoPE makes scores depend on offsets only, the mask, the loss by hand, decoding, and a nested fit."""

import math

import torch

from bertkit.global_pointer import NEG, GlobalPointer, decode_spans, rotary, span_loss


def test_rotary_scores_depend_on_the_offset_only():
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 8), torch.randn(1, 1, 8)
    T = 12
    rq, rk = rotary(q.expand(1, T, 8)), rotary(k.expand(1, T, 8))
    scores = (rq @ rk.transpose(1, 2))[0]  # (T, T)
    for offset in (-3, 0, 1, 5):
        diagonal = scores.diagonal(offset)
        assert torch.allclose(diagonal, diagonal[0].expand_as(diagonal), atol=1e-5)
    assert not torch.allclose(scores.diagonal(0)[0], scores.diagonal(3)[0])
    # a rotation keeps norms
    assert torch.allclose(rq.norm(dim=-1), q.norm(dim=-1).expand(1, T), atol=1e-5)


def test_rotary_first_position_is_the_identity_and_the_second_by_hand():
    x = torch.tensor([[[1.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 1.0]]])  # (1, 2, 4)
    out = rotary(x)
    assert torch.equal(out[0, 0], x[0, 0])
    theta0, theta1 = 1.0, 10000.0 ** (-2 / 4)  # position 1: angles 1 * 10000^(-2m/D)
    expected = [math.cos(theta0), math.sin(theta0), -math.sin(theta1), math.cos(theta1)]
    assert torch.allclose(out[0, 1], torch.tensor(expected), atol=1e-6)


def test_global_pointer_masks_padding_and_spans_ending_before_they_start():
    torch.manual_seed(0)
    head = GlobalPointer(16, 3, head_size=8)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    logits = head(torch.randn(2, 4, 16), mask)
    assert logits.shape == (2, 3, 4, 4)
    assert (logits[0, :, 3, :] == NEG).all() and (logits[0, :, :, 3] == NEG).all()
    lower = torch.ones(4, 4, dtype=torch.bool).tril(-1)
    assert (logits[:, :, lower] == NEG).all()
    assert (logits[1][:, ~lower] > NEG / 2).all()
    free = GlobalPointer(16, 3, head_size=8, upper_triangle=False)
    assert (free(torch.randn(2, 4, 16), mask)[1] > NEG / 2).all()


def test_global_pointer_is_the_efficient_formula():
    torch.manual_seed(1)
    head = GlobalPointer(6, 2, head_size=4, rope=False, upper_triangle=False)
    hidden = torch.randn(1, 3, 6)
    logits = head(hidden, torch.ones(1, 3))
    qk = head.query_key(hidden)[0]
    bias = head.type_bias(qk) / 2  # (T, 2C): start_c at 2c, end_c at 2c + 1
    for c in range(2):
        for i in range(3):
            for j in range(3):
                want = qk[i, 0::2] @ qk[j, 1::2] / 2 + bias[i, 2 * c] + bias[j, 2 * c + 1]
                assert torch.allclose(logits[0, c, i, j], want, atol=1e-5)


def test_span_loss_by_hand():
    logits = torch.tensor([[[[1.0, -2.0], [NEG, 0.5]]]])  # (1, 1, 2, 2), pair (1, 0) masked
    targets = torch.tensor([[[[1, 0], [0, 0]]]])
    neg = math.log(1 + math.exp(-2.0) + math.exp(0.5))
    pos = math.log(1 + math.exp(-1.0))
    assert abs(span_loss(logits, targets).item() - (neg + pos)) < 1e-6
    # no positive: only the negative term; a confident right answer costs almost nothing
    only_neg = math.log(1 + math.exp(1.0) + math.exp(-2.0) + math.exp(0.5))
    assert abs(span_loss(logits, torch.zeros_like(targets)).item() - only_neg) < 1e-6
    sure = torch.tensor([[[[30.0, -30.0], [NEG, -30.0]]]])
    assert span_loss(sure, targets).item() < 1e-10 + 3 * math.exp(-30)


def test_span_loss_equals_the_dense_formula_with_its_gradient():
    torch.manual_seed(3)
    logits = (torch.randn(3, 2, 5, 5) * 30).masked_fill(torch.ones(5, 5, dtype=torch.bool).tril(-1), NEG)
    targets = torch.zeros(3, 2, 5, 5)
    targets[0, 0, 1, 3] = targets[0, 0, 2, 2] = targets[1, 1, 0, 4] = targets[2, 0, 0, 0] = 1  # row (2, 1): none

    def dense(s, t):  # every pair of every row, positives and negatives alike
        s, t = s.reshape(6, -1), t.reshape(6, -1).bool()
        zero = s.new_zeros(6, 1)
        neg = torch.logsumexp(torch.cat((s.masked_fill(t, NEG), zero), 1), 1)
        pos = torch.logsumexp(torch.cat(((-s).masked_fill(~t, NEG), zero), 1), 1)
        return (neg + pos).mean()

    ours, theirs = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    span_loss(ours, targets).backward()
    dense(theirs, targets).backward()
    assert torch.allclose(span_loss(logits, targets), dense(logits, targets), atol=1e-5)
    assert torch.allclose(ours.grad, theirs.grad, atol=1e-6)


def test_decode_spans_returns_type_start_end_above_the_threshold():
    logits = torch.full((2, 2, 3, 3), -1.0)
    logits[0, 1, 0, 2] = 0.3
    logits[0, 0, 1, 1] = 2.0
    logits[1, 0, 0, 0] = 0.4
    assert decode_spans(logits) == [[(0, 1, 1), (1, 0, 2)], [(0, 0, 0)]]
    assert decode_spans(logits, threshold=0.35) == [[(0, 1, 1)], [(0, 0, 0)]]


def test_global_pointer_fits_nested_and_overlapping_spans():
    torch.manual_seed(0)
    T, H = 6, 16
    hidden = torch.randn(4, T, H)
    mask = torch.ones(4, T)
    mask[3, 4:] = 0
    gold = [{(0, 0, 3), (1, 1, 2)}, {(0, 2, 5), (0, 3, 4), (1, 3, 5)}, {(1, 0, 0)}, set()]  # nested and overlapping
    targets = torch.zeros(4, 2, T, T)
    for b, spans in enumerate(gold):
        for c, i, j in spans:
            targets[b, c, i, j] = 1
    head = GlobalPointer(H, 2, head_size=8)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(100):
        opt.zero_grad()
        span_loss(head(hidden, mask), targets).backward()
        opt.step()
    assert [set(found) for found in decode_spans(head(hidden, mask))] == gold
