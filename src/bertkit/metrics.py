"""Pure metric functions: accuracy, per-class and macro P/R/F1, MCC, entity-span P/R/F1 (seqeval's definition; exact
(type, start, end) matches, nested entities included, overall and per type), Pearson and Spearman correlation,
recall@k and MRR@k of ranks."""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence


def accuracy(gold: Sequence[Hashable], pred: Sequence[Hashable]) -> float:
    _same_length(gold, pred)
    return sum(g == p for g, p in zip(gold, pred, strict=True)) / len(gold) if gold else 0.0


def prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    """Precision, recall, F1 from counts (0 where undefined, as seqeval and sklearn's zero_division=0)."""
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def per_class_f1(gold: Sequence[Hashable], pred: Sequence[Hashable],
                 labels: Iterable[Hashable] | None = None) -> dict[Hashable, tuple[float, float, float]]:
    _same_length(gold, pred)
    classes = list(labels) if labels is not None else sorted(set(gold) | set(pred), key=str)
    out = {}
    for c in classes:
        tp = sum(g == c and p == c for g, p in zip(gold, pred, strict=True))
        fp = sum(g != c and p == c for g, p in zip(gold, pred, strict=True))
        fn = sum(g == c and p != c for g, p in zip(gold, pred, strict=True))
        out[c] = prf(tp, fp, fn)
    return out


def macro_f1(gold: Sequence[Hashable], pred: Sequence[Hashable], labels: Iterable[Hashable] | None = None) -> float:
    """Unweighted mean of per-class F1 over `labels` (default: every class in gold or pred)."""
    scores = per_class_f1(gold, pred, labels)
    return sum(f for _, _, f in scores.values()) / len(scores) if scores else 0.0


def matthews_corrcoef(gold: Sequence[int], pred: Sequence[int]) -> float:
    """Binary MCC (GLUE's CoLA metric); 0 when a marginal is empty."""
    _same_length(gold, pred)
    tp = sum(g == 1 and p == 1 for g, p in zip(gold, pred, strict=True))
    tn = sum(g == 0 and p == 0 for g, p in zip(gold, pred, strict=True))
    fp = sum(g == 0 and p == 1 for g, p in zip(gold, pred, strict=True))
    fn = sum(g == 1 and p == 0 for g, p in zip(gold, pred, strict=True))
    denominator = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / denominator if denominator else 0.0


def pearson(gold: Sequence[float], pred: Sequence[float]) -> float:
    """Pearson's r (GLUE's STS-B metric); 0 when either side is constant (undefined)."""
    _same_length(gold, pred)
    n = len(gold)
    if n < 2:
        return 0.0
    mean_g, mean_p = math.fsum(gold) / n, math.fsum(pred) / n
    cov = math.fsum((g - mean_g) * (p - mean_p) for g, p in zip(gold, pred, strict=True))
    var_g = math.fsum((g - mean_g) ** 2 for g in gold)
    var_p = math.fsum((p - mean_p) ** 2 for p in pred)
    return cov / math.sqrt(var_g * var_p) if var_g > 0 and var_p > 0 else 0.0


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks; tied values share the mean of the ranks they span (scipy's rankdata, "average")."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):
            out[order[k]] = (start + end) / 2 + 1
        start = end + 1
    return out


def spearman(gold: Sequence[float], pred: Sequence[float]) -> float:
    """Spearman's rho: Pearson's r of the ranks (ties averaged, as scipy.stats.spearmanr)."""
    _same_length(gold, pred)
    return pearson(ranks(gold), ranks(pred))


def recall_at_k(gold_ranks: Sequence[int], k: int) -> float:
    """The fraction of queries whose answer is among the first k results (`gold_ranks`: 1-based)."""
    return sum(r <= k for r in gold_ranks) / len(gold_ranks) if gold_ranks else 0.0


def mrr_at_k(gold_ranks: Sequence[int], k: int) -> float:
    """Mean reciprocal rank of the answer, 0 for a query whose answer is not in the first k (MRR@k)."""
    return sum(1 / r for r in gold_ranks if r <= k) / len(gold_ranks) if gold_ranks else 0.0


def _same_length(gold: Sequence, pred: Sequence) -> None:
    if len(gold) != len(pred):
        raise ValueError(f"gold has {len(gold)} items but pred has {len(pred)}")


# ---- entity spans (seqeval's default, conlleval-compatible definition) --------------------------------------------

def _split_tag(tag: str) -> tuple[str, str]:
    if tag in ("O", ""):
        return "O", ""
    prefix, _, kind = tag.partition("-")
    return prefix, kind or "_"


def _end_of_chunk(prev_tag: str, tag: str, prev_type: str, kind: str) -> bool:
    return (prev_tag in ("E", "S") or (prev_tag in ("B", "I") and tag in ("B", "S", "O"))
            or (prev_tag != "O" and prev_type != kind))


def _start_of_chunk(prev_tag: str, tag: str, prev_type: str, kind: str) -> bool:
    return (tag in ("B", "S") or (prev_tag in ("E", "S", "O") and tag in ("E", "I"))
            or (tag != "O" and prev_type != kind))


def get_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """(type, first, last) spans of a BIO / BIOES tag sequence, inclusive, as seqeval.get_entities (default mode):
    an I- after O or after another type starts an entity, like conlleval."""
    chunks = []
    prev_tag, prev_type, begin = "O", "", 0
    for i, tag in enumerate([*tags, "O"]):
        prefix, kind = _split_tag(tag)
        if _end_of_chunk(prev_tag, prefix, prev_type, kind):
            chunks.append((prev_type, begin, i - 1))
        if _start_of_chunk(prev_tag, prefix, prev_type, kind):
            begin = i
        prev_tag, prev_type = prefix, kind
    return chunks


def span_prf(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, float]:
    """Entity-level micro precision / recall / F1 over sentences (seqeval's f1_score default)."""
    _same_length(gold, pred)
    true, found = set(), set()
    for i, (g, p) in enumerate(zip(gold, pred, strict=True)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(g)} gold tags but {len(p)} predicted")
        true.update((i, *e) for e in get_entities(g))
        found.update((i, *e) for e in get_entities(p))
    precision, recall, f1 = prf(len(true & found), len(found - true), len(true - found))
    return {"precision": precision, "recall": recall, "f1": f1}


def entity_prf(gold: Sequence[Iterable[tuple[str, int, int]]], pred: Sequence[Iterable[tuple[str, int, int]]],
               types: Iterable[str] | None = None) -> dict[str, float]:
    """Exact-match micro P/R/F1 of (type, start, end) entities over texts (nested and overlapping entities count
    each), then each type's as `TYPE_precision`, `TYPE_recall`, `TYPE_f1` (`types`: which, in order; default every
    type in gold or pred). For flat entities the overall numbers are `span_prf`'s."""
    _same_length(gold, pred)
    true = {(i, *e) for i, entities in enumerate(gold) for e in entities}
    found = {(i, *e) for i, entities in enumerate(pred) for e in entities}
    precision, recall, f1 = prf(len(true & found), len(found - true), len(true - found))
    out = {"precision": precision, "recall": recall, "f1": f1}
    kinds = list(types) if types is not None else sorted({e[1] for e in true | found})
    for kind in kinds:
        t, f = {e for e in true if e[1] == kind}, {e for e in found if e[1] == kind}
        out[f"{kind}_precision"], out[f"{kind}_recall"], out[f"{kind}_f1"] = prf(len(t & f), len(f - t), len(t - f))
    return out
