"""Metric functions against values computed by hand."""

from __future__ import annotations

import pytest

from bertkit.metrics import (
    accuracy,
    entity_prf,
    get_entities,
    macro_f1,
    matthews_corrcoef,
    pearson,
    per_class_f1,
    ranks,
    span_prf,
    spearman,
)


def test_accuracy_macro_f1_mcc_by_hand():
    gold = [0, 0, 1, 1, 1, 2]
    pred = [0, 1, 1, 1, 0, 2]
    assert accuracy(gold, pred) == pytest.approx(4 / 6)
    # class 0: tp 1, fp 1, fn 1 -> F1 0.5; class 1: tp 2, fp 1, fn 1 -> 2/3; class 2: 1.0
    assert per_class_f1(gold, pred)[1] == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    assert macro_f1(gold, pred) == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
    # MCC: tp=2 tn=1 fp=1 fn=1 -> (2*1 - 1*1) / sqrt(3*3*2*2) = 1/6
    assert matthews_corrcoef([1, 1, 1, 0, 0], [1, 1, 0, 1, 0]) == pytest.approx(1 / 6)
    assert matthews_corrcoef([1, 1], [1, 1]) == 0.0  # undefined -> 0, as sklearn
    with pytest.raises(ValueError, match="gold has 2 items but pred has 1"):
        accuracy([1, 2], [1])


def test_get_entities_follows_seqeval():
    assert get_entities(["B-PER", "I-PER", "O", "B-LOC"]) == [("PER", 0, 1), ("LOC", 3, 3)]
    # I- after O starts an entity (conlleval); a type change splits; B after B splits
    assert get_entities(["O", "I-ORG", "I-ORG", "I-LOC", "B-LOC", "B-LOC"]) == [
        ("ORG", 1, 2), ("LOC", 3, 3), ("LOC", 4, 4), ("LOC", 5, 5)]
    # BIOES
    assert get_entities(["S-PER", "B-LOC", "I-LOC", "E-LOC", "O", "S-ORG"]) == [
        ("PER", 0, 0), ("LOC", 1, 3), ("ORG", 5, 5)]
    assert get_entities(["B-X", "E-X", "E-X"]) == [("X", 0, 1), ("X", 2, 2)]
    assert get_entities([]) == []


def test_span_f1_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "B-LOC"]]
    # gold: PER(0-1), LOC(3), ORG  -> 3; pred: PER(0-1), ORG, LOC(1) -> 3; correct: PER, ORG -> 2
    scores = span_prf(gold, pred)
    assert scores["precision"] == pytest.approx(2 / 3) and scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 / 3)
    # a span with the right type but a wrong boundary is wrong
    assert span_prf([["B-PER", "I-PER"]], [["B-PER", "O"]])["f1"] == 0.0
    with pytest.raises(ValueError, match="sentence 0: 2 gold tags but 1 predicted"):
        span_prf([["O", "O"]], [["O"]])


def test_entity_f1_counts_nested_entities_and_each_type_by_hand():
    gold = [{("ORG", 2, 6), ("LOC", 2, 4)}, {("PER", 0, 2)}]  # LOC inside ORG
    pred = [{("ORG", 2, 6), ("LOC", 2, 4), ("LOC", 3, 4)}, set()]
    scores = entity_prf(gold, pred, ["LOC", "ORG", "PER"])
    assert scores["precision"] == pytest.approx(2 / 3) and scores["recall"] == pytest.approx(2 / 3)
    assert (scores["LOC_precision"], scores["LOC_recall"], scores["ORG_f1"]) == (0.5, 1.0, 1.0)
    assert (scores["PER_precision"], scores["PER_recall"], scores["PER_f1"]) == (0.0, 0.0, 0.0)
    # flat entities: span_prf's numbers
    tags = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]], [["B-PER", "I-PER", "O", "O"], ["B-ORG", "B-LOC"]]
    flat = entity_prf(*([get_entities(t) for t in side] for side in tags))
    assert {k: flat[k] for k in ("precision", "recall", "f1")} == span_prf(*tags)


def test_pearson_and_spearman_by_hand():
    # x = 1..4, y = 2, 4, 5, 9: means 2.5 and 5; cov sum 1.5*3 + 0.5*1 + 0.5*0 + 1.5*4 = 11;
    # var sums 5 and 26 -> r = 11 / sqrt(130)
    assert pearson([1, 2, 3, 4], [2, 4, 5, 9]) == pytest.approx(11 / 130 ** 0.5)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pearson([1, 2, 3], [5, 5, 5]) == 0.0  # constant: undefined -> 0
    assert ranks([10, 20, 20, 5]) == [2.0, 3.5, 3.5, 1.0]  # a tie shares the mean of ranks 3 and 4
    assert spearman([1, 2, 3, 4], [1, 8, 27, 64]) == pytest.approx(1.0)  # monotone, not linear
    # ranks 1, 2, 3, 4 against 1, 3, 2, 4: d^2 sums to 2 -> rho = 1 - 6*2 / (4*15) = 0.8
    assert spearman([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(0.8)


def test_correlations_and_ranking_metrics_by_hand():
    from bertkit.metrics import mrr_at_k, pearson, ranks, recall_at_k, spearman

    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # x = [1, 2, 3, 4], y = [1, 3, 2, 4]: dx = dy-shape [-1.5, -0.5, 0.5, 1.5]; sum dx*dy = 2.25+(-0.25)+(-0.25)+2.25
    # = 4, sum dx^2 = sum dy^2 = 5 -> 0.8
    assert pearson([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert pearson([1, 1, 1], [1, 2, 3]) == 0.0  # undefined -> 0
    assert ranks([10, 30, 20, 20]) == [1.0, 4.0, 2.5, 2.5]  # ties share the mean of their ranks
    # monotone but not linear: Spearman 1, Pearson below 1
    assert spearman([1, 2, 3, 4], [1, 10, 100, 1000]) == pytest.approx(1.0)
    assert pearson([1, 2, 3, 4], [1, 10, 100, 1000]) < 0.9
    # with ties: ranks [1, 2.5, 2.5, 4] against [1, 2, 3, 4] -> Pearson of those
    assert spearman([0, 1, 1, 2], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(pearson([1, 2.5, 2.5, 4], [1, 2, 3, 4]))
    # answers at ranks 1, 3, 12: recall@1 1/3, recall@10 2/3, MRR@10 (1 + 1/3 + 0) / 3
    assert recall_at_k([1, 3, 12], 1) == pytest.approx(1 / 3)
    assert recall_at_k([1, 3, 12], 10) == pytest.approx(2 / 3)
    assert mrr_at_k([1, 3, 12], 10) == pytest.approx((1 + 1 / 3) / 3)
