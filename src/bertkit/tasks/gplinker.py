"""The triples task's GPLinker head (Su Jianlin, 2022): subject and object spans by one GlobalPointer, linked per
predicate by two pointer matrices, subject start to object start and subject end to object end.

Every (subject span, object span) pair of a window is scored against every predicate, the negatives included: a
tagged entity wrongly paired is a trained-against cell of a matrix, not a pair the head never saw. A triple
(s, p, o) is kept where s and o score above the threshold as spans and both head-head[p, s_start, o_start] and
tail-tail[p, s_end, o_end] do too. Spans are over words (the first piece of each, as the pipeline head's tagger
reads them: characters for DuIE, whitespace words for WebNLG); a text longer than max_seq_len is cut into the same
windows as the pipeline head's, and a pair whose entities fall in different windows cannot be extracted (counted in
training). Entities are typed by role (subject, object); a triple's entity types are its predicate's in the schema.

Shape legend: B batch, T tokens, W words, H hidden, P predicates, R roles (2: subject, object).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bertkit.config import BertConfig
from bertkit.errors import DataError
from bertkit.global_pointer import GlobalPointer, span_loss
from bertkit.model import BertModel, CheckpointIO, Dropout, init_weights
from bertkit.tasks import tagging
from bertkit.tasks.base import MAX_BATCH_TOKENS, SkipReport, run_batches
from bertkit.tasks.tagging import Piece, encode_sentences
from bertkit.tasks.triples_data import (
    UNTYPED,
    Located,
    Record,
    TriplesTrainTask,
    locate,
    read_schema,
    score_extracted,
)
from bertkit.tokenizer import Tokenizer

HEAD = "gplinker"
ROLES = ["subject", "object"]  # the entity pointer's two span types
HEAD_SIZE = 64  # the pointers' query/key size (Su's)
# Spans of each role a window keeps when decoding, the highest scores first: an untrained or adversarial model may
# score thousands of spans above 0, and pairing them all is |subjects| x |objects| x P cells.
MAX_SPANS = 64
# Pair-matrix cells (B x P x W x W, per matrix) one inference batch may hold: batches are cut to fit (a batch of 64
# rows of 126 words against 211 predicates would hold 214M cells, 860 MB a matrix).
MAX_PAIR_CELLS = 1 << 25


class BertForGPLinker(CheckpointIO, nn.Module):
    """BERT + three efficient GlobalPointers over the words' first-piece states: entity spans (subject, object;
    RoPE, end >= start), and per predicate the subject-start -> object-start and subject-end -> object-end links
    (no RoPE, any order: an object may come first). The encoder loads in transformers as BertModel."""

    hf_architecture = "BertModel"

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        predicates = config.extra.get("bertkit_predicates")
        if not predicates:
            raise DataError("the config needs bertkit_predicates")
        self.config = config
        H, P = config.hidden_size, len(predicates)
        self.bert = BertModel(config, pooler=False)
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.entity = GlobalPointer(H, len(ROLES), HEAD_SIZE)
        self.head_head = GlobalPointer(H, P, HEAD_SIZE, rope=False, upper_triangle=False)
        self.tail_tail = GlobalPointer(H, P, HEAD_SIZE, rope=False, upper_triangle=False)
        for pointer in (self.entity, self.head_head, self.tail_tail):
            init_weights(pointer, config)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None, word_index: Tensor,
                word_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(entity logits (B, R, W, W), head-head (B, P, W, W), tail-tail (B, P, W, W)); padding words score NEG."""
        hidden = self.bert(input_ids, attention_mask, token_type_ids).last_hidden_state
        words = hidden.gather(1, word_index[:, :, None].expand(-1, -1, hidden.shape[-1]))  # (B, W, H)
        words = self.dropout(words)
        return self.entity(words, word_mask), self.head_head(words, word_mask), self.tail_tail(words, word_mask)


# ---- encoding -----------------------------------------------------------------------------------------------------

@dataclass
class Window:
    """One model input: a chunk of a record and, for training, its targets at the chunk's word positions."""

    piece: Piece
    spans: list[tuple[int, int, int]]  # (role, first, last word)
    links: list[tuple[int, int, int, int, int]]  # (predicate, subject first, last, object first, last word)


def encode(tokenizer: Tokenizer, records: list[Record], info: Any, source: str | None = None,
           train: bool = True, located: list[Located] | None = None) -> list[Window]:
    """Records -> windows of at most max_seq_len tokens; with `train`, the span and link targets of every
    occurrence of each learnable triple's subject and object in the window, and one warning counting the triples
    that cannot be learnt and why."""
    if located is None:
        located = [locate(r, info.word_level) for r in records]
    predicate_ids = {p: i for i, p in enumerate(info.predicates)}
    pieces = encode_sentences(tokenizer, [loc.words for loc in located], None, info.max_seq_len, source)
    windows, linked = [], [set() for _ in records]
    for piece in pieces:
        spans: set[tuple[int, int, int]] = set()
        links: set[tuple[int, int, int, int, int]] = set()
        if train:
            loc = located[piece.sentence]
            local = {word: i for i, word in enumerate(piece.positions)}
            where: dict[str, list[tuple[int, int]]] = {}  # entity name -> its (first, last) in this window
            for _, first, last, name in loc.spans:
                if first in local and last in local:
                    where.setdefault(name, []).append((local[first], local[last]))
            for t in loc.trainable:
                if t.predicate not in predicate_ids:
                    continue
                subjects, objects = where.get(t.subject, []), where.get(t.object, [])
                spans.update((0, *s) for s in subjects)
                spans.update((1, *o) for o in objects)
                links.update((predicate_ids[t.predicate], *s, *o) for s in subjects for o in objects)
                if subjects and objects:
                    linked[piece.sentence].add(t.key)
        windows.append(Window(piece, sorted(spans), sorted(links)))
    if train and source is not None:
        report = SkipReport(source)
        for r, loc, done in zip(records, located, linked, strict=True):
            for reason, count in loc.problems.items():
                for _ in range(count):
                    report.skip(r.line, reason)
            for t in loc.trainable:
                if t.key not in done:
                    report.skip(r.line, "triple(s) whose two entities fall in different max_seq_len chunks "
                                        "(raise --max-seq-len)")
        report.report()
    return windows


def collate(windows: list[Window], pad_id: int, num_predicates: int) -> dict[str, Any]:
    batch = tagging.collate([w.piece for w in windows], pad_id)
    B, W = batch["word_mask"].shape
    batch["spans"] = torch.zeros((B, len(ROLES), W, W), dtype=torch.bool)
    batch["head_links"] = torch.zeros((B, num_predicates, W, W), dtype=torch.bool)
    batch["tail_links"] = torch.zeros((B, num_predicates, W, W), dtype=torch.bool)
    for i, w in enumerate(windows):
        for role, first, last in w.spans:
            batch["spans"][i, role, first, last] = True
        for p, s_first, s_last, o_first, o_last in w.links:
            batch["head_links"][i, p, s_first, o_first] = True
            batch["tail_links"][i, p, s_last, o_last] = True
    return batch


# ---- decoding -----------------------------------------------------------------------------------------------------

def _logit(probability: float) -> float:
    return float(torch.logit(torch.tensor(probability, dtype=torch.float64)))


def top_spans(logits: Tensor, threshold: float) -> list[tuple[int, int, float]]:
    """(first, last, score) of the spans of one (W, W) matrix above `threshold`: at most MAX_SPANS, the highest."""
    W = logits.shape[-1]
    values, index = logits.flatten().topk(min(MAX_SPANS, W * W))
    keep = values > threshold
    return [(i // W, i % W, v) for i, v in zip(index[keep].tolist(), values[keep].tolist(), strict=True)]


def _decode(model: nn.Module, windows: list[Window], info: Any, pad_id: int, batch_size: int = 64
            ) -> list[tuple[list[tuple[str, int, int]], list[tuple[tuple[int, int], int, tuple[int, int], float]]]]:
    """Per window: its spans (role, first, last word of the record) and its links ((subject first, last), predicate
    id, (object first, last), score: the lowest of the four logits), each above the threshold."""
    threshold = _logit(info.threshold)

    def forward(m: nn.Module, batch: dict[str, Any]) -> list[Any]:
        entity, head, tail = m(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                               batch["word_index"], batch["word_mask"])
        entity, head, tail = entity.float(), head.float(), tail.float()
        out = []
        for i, piece in enumerate(batch["_pieces"]):
            n, at = len(piece.positions), piece.positions
            if not n:  # a window of control characters only
                out.append(([], []))
                continue
            subjects, objects = (top_spans(entity[i, r, :n, :n], threshold) for r in range(len(ROLES)))
            spans = [(ROLES[r], at[f], at[la]) for r, found in enumerate((subjects, objects)) for f, la, _ in found]
            links = []
            if subjects and objects:
                s_first, s_last = (torch.tensor([s[k] for s in subjects], device=head.device) for k in (0, 1))
                o_first, o_last = (torch.tensor([o[k] for o in objects], device=head.device) for k in (0, 1))
                heads = head[i][:, s_first][:, :, o_first]  # (P, subjects, objects)
                tails = tail[i][:, s_last][:, :, o_last]  # (P, subjects, objects)
                spans_score = torch.tensor([s[2] for s in subjects], device=head.device)[:, None].minimum(
                    torch.tensor([o[2] for o in objects], device=head.device)[None, :])  # (subjects, objects)
                scores = torch.minimum(torch.minimum(heads, tails), spans_score[None])
                for p, a, b in (scores > threshold).nonzero().tolist():
                    s, o = subjects[a], objects[b]
                    links.append(((at[s[0]], at[s[1]]), p, (at[o[0]], at[o[1]]), float(scores[p, a, b])))
            out.append((spans, links))
        return out

    def collate_windows(chunk: list[Window]) -> dict[str, Any]:
        batch = tagging.collate([w.piece for w in chunk], pad_id)
        batch["_pieces"] = [w.piece for w in chunk]
        return batch

    max_tokens = min(MAX_BATCH_TOKENS, max(1, MAX_PAIR_CELLS // (len(info.predicates) * info.max_seq_len)))
    return run_batches(model, windows, collate_windows, forward, batch_size, max_tokens=max_tokens)


def predicate_types(info: Any) -> dict[str, tuple[str, str]]:
    """Each predicate's (subject type, object type): its first row in the schema (ENTITY where it has none)."""
    types: dict[str, tuple[str, str]] = {}
    for subject_type, predicate, object_type in info.schema:
        types.setdefault(predicate, (subject_type, object_type))
    return {p: types.get(p, (UNTYPED, UNTYPED)) for p in info.predicates}


@torch.no_grad()
def extract(model: nn.Module, tokenizer: Tokenizer, info: Any, texts: list[str], batch_size: int = 64
            ) -> list[dict[str, Any]]:
    """Raw texts -> {"triples": [{subject, subject_type, predicate, object, object_type, score}], "entities":
    [{type (subject or object), start, end, text}]} (character offsets), one per text."""
    records = [Record(t, [], i + 1) for i, t in enumerate(texts)]
    located = [locate(r, info.word_level) for r in records]  # the words and their character offsets
    windows = encode(tokenizer, records, info, train=False, located=located)
    decoded = _decode(model, windows, info, tokenizer.pad_token_id, batch_size)
    types = predicate_types(info)
    results: list[dict[str, Any]] = [{"triples": [], "entities": []} for _ in texts]
    seen: list[dict[tuple[str, str, str], int]] = [{} for _ in texts]
    spans_seen: list[set[tuple[str, int, int]]] = [set() for _ in texts]
    for window, (spans, links) in zip(windows, decoded, strict=True):
        index = window.piece.sentence
        text, offsets = texts[index], located[index].offsets

        def name(first: int, last: int, text: str = text, offsets: list = offsets) -> tuple[str, int, int]:
            start, end = offsets[first][0], offsets[last][1]
            return text[start:end], start, end

        for role, first, last in spans:
            surface, start, end = name(first, last)
            if (role, start, end) not in spans_seen[index]:
                spans_seen[index].add((role, start, end))
                results[index]["entities"].append({"type": role, "start": start, "end": end, "text": surface})
        for (s_first, s_last), p, (o_first, o_last), logit in links:
            predicate = info.predicates[p]
            subject, obj = name(s_first, s_last)[0], name(o_first, o_last)[0]
            triple = {"subject": subject, "subject_type": types[predicate][0], "predicate": predicate,
                      "object": obj, "object_type": types[predicate][1],
                      "score": round(float(torch.sigmoid(torch.tensor(logit))), 4)}
            key = (subject, predicate, obj)
            if key in seen[index]:  # one triple from several occurrences: the highest score
                kept = results[index]["triples"][seen[index][key]]
                kept["score"] = max(kept["score"], triple["score"])
            else:
                seen[index][key] = len(results[index]["triples"])
                results[index]["triples"].append(triple)
    for r in results:
        r["entities"].sort(key=lambda e: (e["start"], e["end"], e["type"]))
    return results


# ---- the task -----------------------------------------------------------------------------------------------------

class GPLinkerTask(TriplesTrainTask):
    encode = staticmethod(encode)
    collate = staticmethod(collate)

    def fingerprint(self) -> str:
        from bertkit.resume import data_fingerprint  # the encoded training examples: --resume refuses other data

        return data_fingerprint([(w.piece, w.spans, w.links) for w in self.train])

    def counts(self, batch: dict[str, Any]) -> dict[str, float]:
        rows = float(len(batch["input_ids"]))
        return {"entity": rows, "head": rows, "tail": rows}

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Each pointer's multi-label span loss summed over its types and the rows (GPLinker's: a mean over types
        would weigh each predicate's link matrix 1/P, and with P = 46 the encoder learns the entity pointer alone:
        on DuIE the link losses stayed at 0.16-0.19 for 3 epochs and no triple came out)."""
        entity, head, tail = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                                   batch["word_index"], batch["word_mask"])
        rows = len(batch["input_ids"])
        return {"entity": span_loss(entity, batch["spans"]) * rows * entity.shape[1],
                "head": span_loss(head, batch["head_links"]) * rows * head.shape[1],
                "tail": span_loss(tail, batch["tail_links"]) * rows * tail.shape[1]}

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        if not self.heldout:
            return {}
        texts = [r.text for r in self.heldout]
        return score_extracted(self.heldout, extract(model, self.tokenizer, self.info, texts, self.eval_batch_size))


def schema_rows(located: list[Located], predicates: list[str], schema: str | Path | None) -> list[list[str]]:
    """The (subject type, predicate, object type) rows of the learnable training triples, the most frequent of each
    predicate first (the types its triples are given), then the schema file's other rows for those predicates."""
    counted = Counter((t.subject_type, t.predicate, t.object_type) for loc in located for t in loc.trainable)
    rows = [list(c) for c, _ in sorted(counted.items(), key=lambda item: (-item[1], item[0]))]
    if schema is not None:
        rows += [r for r in read_schema(schema) if r[1] in predicates and r not in rows]
    return rows
