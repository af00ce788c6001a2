"""Knowledge-graph triples from raw text: (subject, predicate, object) with entity types, for a graph's nodes and
edges. One encoder, two heads, one checkpoint: a word-level BIO tagger finds the typed entities, then a pair head
scores every ordered pair of entities found in one sequence against every predicate (sigmoid: a pair may hold
several), kept where the schema allows the pair's types for the predicate. Trained jointly (gold entities feed the
pair head), decoded as a pipeline. Scored as DuIE and WebNLG are: exact string match of (subject, predicate, object),
micro P/R/F1 over sentences.

Input formats (`--format`):
- `duie` (DuIE 2.0): JSON lines `{"text", "spo_list": [{"subject", "subject_type", "predicate", "object": {"@value":
  ...}, "object_type": {"@value": ...}}]}` (a plain string object and object_type are read too). Complex objects'
  extra slots (inWork, onDate, ...) are not extracted: a triple is its main value. Characters are the words.
- `webnlg` (the exact-match WebNLG of CasRel / TPLinker): a JSON array (or JSON lines) of `{"text", "triple_list":
  [[subject, relation, object], ...]}`; untyped (every entity is ENTITY); whitespace-separated words.

Gold triples whose subject or object does not occur in the text (at word boundaries), or only inside a longer
entity, or whose two entities fall in different max_seq_len chunks, cannot be extracted: they are counted in one
warning per file, left out of training and kept in scoring (they count as misses).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertkit.argtypes import flag
from bertkit.config import BertConfig
from bertkit.errors import DataError, reason
from bertkit.fileio import read_lines
from bertkit.metrics import get_entities, prf
from bertkit.model import BertModel, CheckpointIO, Dropout, init_weights
from bertkit.tasks import tagging
from bertkit.tasks.base import FinetuneTask, SkipReport, require_examples, run_batches, take
from bertkit.tasks.spec import (
    InputField,
    TaskSpec,
    choice_field,
    chunks,
    id2label,
    labels_field,
    seq_len_field,
)
from bertkit.tasks.tagging import Piece, TaggingHead, encode_sentences, spans_to_tags, tag_set, words_of
from bertkit.tokenizer import Tokenizer

NAME = "triples"
FORMATS = ("duie", "webnlg")
WORD_LEVEL = {"duie": "char", "webnlg": "space"}
UNTYPED = "ENTITY"
SECOND_TYPE = "second type(s) of an entity in one record (its first type kept)"
# Entity pairs scored per chunk of text, at most: the nearest ones where the tagger found more entities than that
# many pairs need (23 entities: 506 pairs). A text of one repeated name tags an entity every few words, and every
# ordered pair of 255 entities is 64,770 pairs a chunk, 64 chunks a batch: gigabytes, and seconds of Python.
MAX_PAIRS = 512
PAIR_BATCH = 16_384  # pairs through the pair head at once


@dataclass(frozen=True)
class Triple:
    subject: str
    predicate: str
    object: str
    subject_type: str = UNTYPED
    object_type: str = UNTYPED

    @property
    def key(self) -> tuple[str, str, str]:
        return self.subject, self.predicate, self.object


@dataclass
class Record:
    text: str
    triples: list[Triple]
    line: int


# ---- readers ------------------------------------------------------------------------------------------------------

def read_records(path: str | Path, fmt: str = "duie", *, skip_bad_lines: bool = False) -> list[Record]:
    """Texts with their gold triples; a malformed record is an error naming the file and line (or, with
    `skip_bad_lines`, skipped and counted)."""
    if fmt not in FORMATS:
        raise DataError(f"unknown triples format {fmt!r}; choose one of {FORMATS}")
    report = SkipReport(path)
    records = []
    for number, item in (_json_lines(path) if fmt == "duie" else _json_items(path)):
        try:
            if isinstance(item, NotJSON):
                raise ValueError(str(item))
            if not isinstance(item, dict) or not isinstance(item.get("text"), str):
                raise ValueError('expected an object with a string "text"')
            parse = _duie_triples if fmt == "duie" else _webnlg_triples
            records.append(Record(item["text"], parse(item), number))
        except (ValueError, KeyError, TypeError) as exc:
            if not skip_bad_lines:
                raise DataError(f"bad {fmt} record: {reason(exc)}", str(path), number) from exc
            report.skip(number, "malformed record(s)")
    report.report()
    return records


class NotJSON(str):
    """A line that is not JSON (why), in place of its value: the reader refuses or skips it."""


def _json_lines(path: str | Path) -> list[tuple[int, Any]]:
    items: list[tuple[int, Any]] = []
    for number, line in read_lines(path):
        if line.strip():
            try:
                items.append((number, json.loads(line)))
            except (json.JSONDecodeError, RecursionError) as exc:
                items.append((number, NotJSON(f"not JSON ({exc})")))
    return items


def _json_items(path: str | Path) -> list[tuple[int, Any]]:
    """The elements of a (pretty-printed) JSON array with the line each starts on; JSON lines are read too."""
    text = "\n".join(line for _, line in read_lines(path))
    start = len(text) - len(text.lstrip())
    if text[start:start + 1] != "[":
        return _json_lines(path)
    decoder, items = json.JSONDecoder(), []
    position, line, counted = start + 1, 1, 0
    while True:
        while position < len(text) and text[position] in " \t\r\n,":
            position += 1
        if position >= len(text):
            raise DataError("the JSON array is not closed with ]", str(path), text.count("\n") + 1)
        line += text.count("\n", counted, position)
        counted = position
        if text[position] == "]":
            return items
        try:
            value, position = decoder.raw_decode(text, position)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise DataError(f"not JSON: {exc}", str(path), line) from exc
        items.append((line, value))


def _value(value: Any, what: str) -> str:
    """A DuIE field: a string, or an object whose "@value" is one (complex objects' other slots are not read)."""
    if isinstance(value, dict):
        value = value.get("@value")
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty string (or an object with one in \"@value\"), got {value!r:.60}")
    return value.strip()


def _duie_triples(item: dict[str, Any]) -> list[Triple]:
    spo = item.get("spo_list", [])
    if not isinstance(spo, list):
        raise ValueError(f'"spo_list" must be a list, got {type(spo).__name__}')
    triples = []
    for t in spo:
        if not isinstance(t, dict):
            raise ValueError(f"each spo_list item must be an object, got {t!r:.60}")
        triples.append(Triple(_value(t.get("subject"), "subject"), _value(t.get("predicate"), "predicate"),
                              _value(t.get("object"), "object"),
                              _value(t.get("subject_type", UNTYPED), "subject_type"),
                              _value(t.get("object_type", UNTYPED), "object_type")))
    return triples


def _webnlg_triples(item: dict[str, Any]) -> list[Triple]:
    listed = item.get("triple_list", [])
    if not isinstance(listed, list):
        raise ValueError(f'"triple_list" must be a list, got {type(listed).__name__}')
    triples = []
    for t in listed:
        if not (isinstance(t, list) and len(t) == 3 and all(isinstance(x, str) and x.strip() for x in t)):
            raise ValueError(f"each triple must be [subject, relation, object] strings, got {t!r:.80}")
        triples.append(Triple(t[0].strip(), t[1].strip(), t[2].strip()))
    return triples


def read_schema(path: str | Path) -> list[list[str]]:
    """DuIE's schema file (JSON lines `{"subject_type", "predicate", "object_type": {"@value": ...}}`) as
    [subject_type, predicate, object_type] rows."""
    rows = []
    for number, item in _json_lines(path):
        try:
            if isinstance(item, NotJSON):
                raise ValueError(str(item))
            rows.append([_value(item["subject_type"], "subject_type"), _value(item["predicate"], "predicate"),
                         _value(item["object_type"], "object_type")])
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"bad schema row: {reason(exc)}", str(path), number) from exc
    return rows


# ---- locating entities --------------------------------------------------------------------------------------------

@dataclass
class Located:
    """A record's words and its entities' word spans: (type, first, last, name), every non-overlapping occurrence."""

    words: list[str]
    offsets: list[tuple[int, int]]
    spans: list[tuple[str, int, int, str]]
    trainable: list[Triple]  # the gold triples whose two entities were found
    problems: dict[str, int] = field(default_factory=dict)  # why other triples cannot be extracted


def locate(record: Record, word_level: str) -> Located:
    """Find every occurrence of each entity name at word boundaries; a longer entity wins an overlap (1 . FC Köln
    over 1 . FC); an entity given two types in one record keeps the first."""
    words, offsets = words_of(record.text, word_level)
    starts = {s: i for i, (s, _) in enumerate(offsets)}
    ends = {e: i for i, (_, e) in enumerate(offsets)}
    types: dict[str, str] = {}
    problems: dict[str, int] = {}
    for t in record.triples:
        for name, kind in ((t.subject, t.subject_type), (t.object, t.object_type)):
            if types.setdefault(name, kind) != kind:
                problems[SECOND_TYPE] = problems.get(SECOND_TYPE, 0) + 1
    taken = [False] * len(words)
    spans, found, inside = [], set(), set()
    for name in sorted(types, key=lambda n: (-len(n), n)):
        position = record.text.find(name)
        while position >= 0:
            first, last = starts.get(position), ends.get(position + len(name))
            if first is not None and last is not None and first <= last:
                if any(taken[first : last + 1]):
                    inside.add(name)
                else:
                    taken[first : last + 1] = [True] * (last - first + 1)
                    spans.append((types[name], first, last, name))
                    found.add(name)
            position = record.text.find(name, position + 1)
    trainable = []
    for t in record.triples:
        missing = [n for n in (t.subject, t.object) if n not in found]
        if not missing:
            trainable.append(t)
            continue
        reason = ("triple(s) with an entity only inside a longer one" if all(n in inside for n in missing)
                  else "triple(s) with an entity not in the text at word boundaries")
        problems[reason] = problems.get(reason, 0) + 1
    return Located(words, offsets, sorted(spans, key=lambda s: s[1]), trainable, problems)


# ---- the model ----------------------------------------------------------------------------------------------------

class BertForTriples(CheckpointIO, nn.Module):
    """BERT + the entity tagger (transformers' BertForTokenClassification names: the checkpoint loads there as the
    tagger) + a pair head: [first; last word of the subject; first; last word of the object] -> dense -> GELU ->
    one logit per predicate."""

    hf_architecture = "BertForTokenClassification"
    hf_head_renames = (("head.classifier.", "classifier."),)

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        if not config.extra.get("id2label") or not config.extra.get("bertkit_predicates"):
            raise DataError("the config needs id2label (the entity tags) and bertkit_predicates")
        self.config = config
        H = config.hidden_size
        self.bert = BertModel(config, pooler=False)
        self.head = TaggingHead(config, len(config.extra["id2label"]), False)
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.pair_dense = nn.Linear(4 * H, H)
        self.pair_out = nn.Linear(H, len(config.extra["bertkit_predicates"]))
        for layer in (self.pair_dense, self.pair_out):
            init_weights(layer, config)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None, word_index: Tensor,
                pairs: Tensor | None = None) -> tuple[Tensor, Tensor | None, Tensor]:
        """(tag scores (B, W, C), pair logits (N, P) for `pairs` (N, 5): row, subject first, last, object first,
        last word, first-piece states (B, W, H))."""
        hidden = self.bert(input_ids, attention_mask, token_type_ids).last_hidden_state
        words = hidden.gather(1, word_index[:, :, None].expand(-1, -1, hidden.shape[-1]))  # (B, W, H)
        emissions = self.head.classifier(self.head.dropout(words))
        return emissions, (self.pair_logits(words, pairs) if pairs is not None else None), words

    def pair_logits(self, words: Tensor, pairs: Tensor) -> Tensor:
        row = pairs[:, 0]
        parts = [words[row, pairs[:, k]] for k in (1, 2, 3, 4)]  # (N, H) each
        return self.pair_out(self.dropout(F.gelu(self.pair_dense(self.dropout(torch.cat(parts, -1))))))


# ---- encoding -----------------------------------------------------------------------------------------------------

@dataclass
class Row:
    """One model input: a chunk of a record, its entities (local word positions) and, for training, pair targets."""

    piece: Piece
    entities: list[tuple[str, int, int, str]]  # (type, first, last position in the piece, name)
    pairs: list[tuple[int, int, tuple[int, ...]]]  # (subject entity, object entity, predicate ids)


def _piece_entities(piece: Piece, spans: list[tuple[str, int, int, str]]) -> list[tuple[str, int, int, str]]:
    """The entities wholly inside the piece (its first and last word in it), at the piece's word positions."""
    local = {word: i for i, word in enumerate(piece.positions)}
    return [(kind, local[first], local[last], name) for kind, first, last, name in spans
            if first in local and last in local]


def encode(tokenizer: Tokenizer, records: list[Record], info: TriplesInfo, source: str | None = None,
           train: bool = True, located: list[Located] | None = None) -> list[Row]:
    """Records -> rows (chunks of at most max_seq_len tokens); with `train`, tag and pair targets from the gold
    triples, and one warning counting the triples that cannot be learnt and why. `located`: the records'
    `locate` results, where the caller has them already."""
    if located is None:
        located = [locate(r, info.word_level) for r in records]
    tag_ids = {t: i for i, t in enumerate(info.labels)}
    predicate_ids = {p: i for i, p in enumerate(info.predicates)}
    tags = None
    if train:
        tags = []
        for r, loc in zip(records, located, strict=True):
            sequence = spans_to_tags(len(loc.words), [(k, a, b) for k, a, b, _ in loc.spans])
            unknown = [t for t in sequence if t not in tag_ids]
            if unknown:
                raise DataError(f"entity tag {unknown[0]!r} is not in the tag set", source, r.line)
            tags.append([tag_ids[t] for t in sequence])
    pieces = encode_sentences(tokenizer, [loc.words for loc in located], tags, info.max_seq_len, source)
    rows, paired = [], [set() for _ in records]
    golds: list[dict[tuple[str, str], set[int]]] = [{} for _ in records]  # (subject, object) -> predicate ids
    if train:  # once per record, not once per chunk
        for gold, loc in zip(golds, located, strict=True):
            for t in loc.trainable:
                if t.predicate in predicate_ids:
                    gold.setdefault((t.subject, t.object), set()).add(predicate_ids[t.predicate])
    for piece in pieces:
        loc = located[piece.sentence]
        entities = _piece_entities(piece, loc.spans)
        pairs = []
        if train:
            gold = golds[piece.sentence]
            for a, (_, _, _, sname) in enumerate(entities):
                for b, (_, _, _, oname) in enumerate(entities):
                    if a != b and sname != oname:
                        labels = gold.get((sname, oname), set())
                        pairs.append((a, b, tuple(sorted(labels))))
                        if labels:
                            paired[piece.sentence].add((sname, oname))
        rows.append(Row(piece, entities, pairs))
    if train and source is not None:
        report = SkipReport(source)
        for r, loc, done in zip(records, located, paired, strict=True):
            for reason, count in loc.problems.items():
                for _ in range(count):
                    report.skip(r.line, reason)
            for t in loc.trainable:
                if (t.subject, t.object) not in done and t.subject != t.object:
                    report.skip(r.line, "triple(s) whose two entities fall in different max_seq_len chunks "
                                        "(raise --max-seq-len)")
                elif t.subject == t.object:
                    report.skip(r.line, "triple(s) whose subject is its object")
        report.report()
    return rows


def collate(rows: list[Row], pad_id: int, num_predicates: int) -> dict[str, Any]:
    batch = tagging.collate([r.piece for r in rows], pad_id)
    pairs, labels = [], []
    for i, r in enumerate(rows):
        for a, b, predicates in r.pairs:
            s, o = r.entities[a], r.entities[b]
            pairs.append((i, s[1], s[2], o[1], o[2]))
            target = [0.0] * num_predicates
            for p in predicates:
                target[p] = 1.0
            labels.append(target)
    batch["pairs"] = torch.tensor(pairs, dtype=torch.long).reshape(-1, 5)
    batch["pair_labels"] = torch.tensor(labels, dtype=torch.float).reshape(-1, num_predicates)
    return batch


# ---- decoding and scoring -----------------------------------------------------------------------------------------

def candidate_pairs(entities: list[tuple[str, int, int]]) -> list[tuple[int, int]]:
    """The (subject, object) entity index pairs of one chunk the pair head scores: every ordered pair, or where
    that is over MAX_PAIRS, the MAX_PAIRS with the fewest entities between them (then the fewest words), found in
    O(MAX_PAIRS + n) without listing all n^2 pairs."""
    n = len(entities)
    if n * (n - 1) <= MAX_PAIRS:
        return [(a, b) for a in range(n) for b in range(n) if a != b]
    chosen: list[tuple[int, int, int, int]] = []  # entities are in text order: neighbours first, gap by gap
    for gap in range(1, n):
        for a in range(n - gap):
            b = a + gap
            distance = entities[b][1] - entities[a][1]
            chosen += [(gap, distance, a, b), (gap, distance, b, a)]
        if len(chosen) >= MAX_PAIRS:
            break
    chosen.sort()
    return [(a, b) for _, _, a, b in chosen[:MAX_PAIRS]]


def _decode(model: nn.Module, rows: list[Row], info: TriplesInfo, pad_id: int, batch_size: int = 64
            ) -> list[tuple[list[tuple[str, int, int]], list[tuple[tuple[str, int, int], str, tuple[str, int, int],
                                                                      float]]]]:
    """Per row: the tagged entities (type, first, last word of the record) and the (subject, predicate, object,
    probability) edges between them that pass the threshold and the schema."""
    allowed = {tuple(r) for r in info.schema}

    def forward(m: nn.Module, batch: dict[str, Any]) -> list[Any]:
        emissions, _, words = m(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                                batch["word_index"])
        decoded = m.head.decode(emissions, batch["word_mask"])
        pieces = batch["_pieces"]
        found, pairs = [], []
        for i, tag_ids in enumerate(decoded):
            entities = get_entities([info.labels[t] for t in tag_ids])  # local positions
            found.append(entities)
            pairs += [(i, entities[a][1], entities[a][2], entities[b][1], entities[b][2], a, b)
                      for a, b in candidate_pairs(entities)]
        out: list[Any] = [([(k, piece.positions[f], piece.positions[la]) for k, f, la in entities], [])
                          for piece, entities in zip(pieces, found, strict=True)]
        for start in range(0, len(pairs), PAIR_BATCH):
            chunk = pairs[start : start + PAIR_BATCH]
            index = torch.tensor([p[:5] for p in chunk], device=words.device)
            probs = torch.sigmoid(m.pair_logits(words, index).float()).cpu()
            hits = (probs >= info.threshold).nonzero().tolist()  # (pair, predicate): only those pass on to Python
            for (k, p), score in zip(hits, probs[probs >= info.threshold].tolist(), strict=True):
                i, *_, a, b = chunk[k]
                s, o = out[i][0][a], out[i][0][b]
                predicate = info.predicates[p]
                if not allowed or (s[0], predicate, o[0]) in allowed:
                    out[i][1].append((s, predicate, o, score))
        return out

    def collate_rows(chunk: list[Row]) -> dict[str, Any]:
        batch = tagging.collate([r.piece for r in chunk], pad_id)
        batch["_pieces"] = [r.piece for r in chunk]
        return batch

    return run_batches(model, rows, collate_rows, forward, batch_size)


@torch.no_grad()
def extract(model: nn.Module, tokenizer: Tokenizer, info: TriplesInfo, texts: list[str], batch_size: int = 64
            ) -> list[dict[str, Any]]:
    """Raw texts -> {"triples": [{subject, subject_type, predicate, object, object_type, score}], "entities":
    [{type, start, end, text}]} (character offsets), one per text."""
    records = [Record(t, [], i + 1) for i, t in enumerate(texts)]
    located = [locate(r, info.word_level) for r in records]  # the words and their character offsets
    rows = encode(tokenizer, records, info, train=False, located=located)
    decoded = _decode(model, rows, info, tokenizer.pad_token_id, batch_size)
    results: list[dict[str, Any]] = [{"triples": [], "entities": []} for _ in texts]
    seen: list[dict[tuple[str, str, str], int]] = [{} for _ in texts]
    spans: list[set[tuple[int, int]]] = [set() for _ in texts]
    for row, (entities, edges) in zip(rows, decoded, strict=True):
        index = row.piece.sentence
        text, offsets = texts[index], located[index].offsets

        def name(span: tuple[str, int, int], text: str = text, offsets: list = offsets) -> tuple[str, int, int]:
            start, end = offsets[span[1]][0], offsets[span[2]][1]
            return text[start:end], start, end

        for kind, first, last in entities:
            surface, start, end = name((kind, first, last))
            if (start, end) not in spans[index]:
                spans[index].add((start, end))
                results[index]["entities"].append({"type": kind, "start": start, "end": end, "text": surface})
        for s, predicate, o, score in edges:
            triple = {"subject": name(s)[0], "subject_type": s[0], "predicate": predicate, "object": name(o)[0],
                      "object_type": o[0], "score": round(score, 4)}
            key = (triple["subject"], predicate, triple["object"])
            if key in seen[index]:  # one triple from several occurrences: the highest score
                kept = results[index]["triples"][seen[index][key]]
                kept["score"] = max(kept["score"], triple["score"])
            else:
                seen[index][key] = len(results[index]["triples"])
                results[index]["triples"].append(triple)
    for r in results:
        r["entities"].sort(key=lambda e: e["start"])
    return results


def triple_prf(gold: list[set[tuple[str, str, str]]], pred: list[set[tuple[str, str, str]]]) -> dict[str, float]:
    """Exact-match micro precision / recall / F1 over sentences: a triple counts only with subject, predicate and
    object all equal to a gold one (strings compared exactly)."""
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sentences but {len(pred)} predicted")
    tp = sum(len(g & p) for g, p in zip(gold, pred, strict=True))
    fp = sum(len(p - g) for g, p in zip(gold, pred, strict=True))
    fn = sum(len(g - p) for g, p in zip(gold, pred, strict=True))
    precision, recall, f1 = prf(tp, fp, fn)
    return {"precision": precision, "recall": recall, "f1": f1}


def score(model: nn.Module, tokenizer: Tokenizer, info: TriplesInfo, records: list[Record], batch_size: int = 64
          ) -> dict[str, float]:
    """Triple P/R/F1 against every gold triple (those that cannot be extracted count as misses), plus entity F1
    (entity names per sentence)."""
    predicted = extract(model, tokenizer, info, [r.text for r in records], batch_size)
    gold = [{t.key for t in r.triples} for r in records]
    pred = [{(t["subject"], t["predicate"], t["object"]) for t in p["triples"]} for p in predicted]
    metrics = triple_prf(gold, pred)
    gold_entities = [{n for t in r.triples for n in (t.subject, t.object)} for r in records]
    pred_entities = [{e["text"] for e in p["entities"]} for p in predicted]
    tp = sum(len(g & p) for g, p in zip(gold_entities, pred_entities, strict=True))
    entity = prf(tp, sum(map(len, pred_entities)) - tp, sum(map(len, gold_entities)) - tp)
    return {**metrics, "entity_f1": entity[2]}


# ---- the task -----------------------------------------------------------------------------------------------------

def _schema_rows(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(r, list) and len(r) == 3 and all(isinstance(x, str) and x for x in r) for r in value)


@dataclass
class TriplesInfo:
    labels: list[str] = labels_field("the entity tag set (O, then B-/I- per entity type)")
    predicates: list[str] = labels_field("the predicate set, in the pair head's order")
    max_seq_len: int = seq_len_field()
    word_level: str = choice_field(("char", "space"), help="how raw text is split into words")
    schema: list[list[str]] = field(default_factory=list, metadata={
        "check": _schema_rows, "expected": "a list of [subject_type, predicate, object_type] string triples",
        "help": "the (subject type, predicate, object type) combinations a triple may have; empty: any"})
    threshold: float = field(default=0.5, metadata={
        "check": lambda v: isinstance(v, int | float) and not isinstance(v, bool) and 0 < v < 1,
        "expected": "a number between 0 and 1", "help": "a predicate is kept above this probability"})


@dataclass
class TriplesOptions:
    schema: str | None = flag("DuIE's schema file (JSON lines subject_type / predicate / object_type): the type "
                                "combinations a predicted triple may have, besides those seen in training")


def label_sets(located: list[Located]) -> tuple[list[str], list[str], set[tuple[str, str, str]]]:
    """What a training set defines: the BIO tag set of its entity types (just "O" where no entity was found), the
    predicates of its learnable triples, and the (subject type, predicate, object type) combinations they show."""
    types = sorted({s[0] for loc in located for s in loc.spans})
    predicates = sorted({t.predicate for loc in located for t in loc.trainable})
    combos = set()
    for loc in located:
        kinds = {name: kind for kind, _, _, name in loc.spans}
        combos |= {(kinds[t.subject], t.predicate, kinds[t.object]) for t in loc.trainable}
    return tag_set([[f"B-{k}" for k in types]], "bio"), predicates, combos


class TriplesTask(FinetuneTask):
    task_name = NAME

    def __init__(self, tokenizer: Tokenizer, train: list[Record], heldout: list[Record], info: TriplesInfo,
                 eval_batch_size: int = 64, source: str | None = None, located: list[Located] | None = None
                 ) -> None:
        self.tokenizer, self.info = tokenizer, info
        self.train = encode(tokenizer, train, info, source, located=located) if train else []
        self.heldout = heldout
        self.eval_batch_size = eval_batch_size

    def fingerprint(self) -> str:
        from bertkit.resume import data_fingerprint  # the encoded training examples: --resume refuses other data

        return data_fingerprint([(r.piece, r.entities, r.pairs) for r in self.train])

    def make_batch(self, epoch: int, indices: list[int]) -> dict[str, Any]:
        return collate([self.train[i] for i in indices], self.tokenizer.pad_token_id, len(self.info.predicates))

    def counts(self, batch: dict[str, Any]) -> dict[str, float]:
        return {"tag": float(((batch["tags"] != -100) & batch["word_mask"]).sum()),
                "pair": float(len(batch["pairs"]))}

    def tokens(self, batch: dict[str, Any]) -> int:
        return int(batch["attention_mask"].sum())

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        emissions, logits, _ = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                                     batch["word_index"], batch["pairs"])
        head = model.module.head if hasattr(model, "module") else model.head
        tag, _ = head.loss_sum(emissions, batch["tags"], batch["word_mask"])
        pair = F.binary_cross_entropy_with_logits(logits.float(), batch["pair_labels"], reduction="sum")
        return {"tag": tag, "pair": pair}

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        if not self.heldout:
            return {}
        return score(model, self.tokenizer, self.info, self.heldout, self.eval_batch_size)


def finetune(train_file: str | Path, config: Any, *, eval_file: str | Path | None = None, fmt: str = "duie",
             init_from: str | Path | None = None, tokenizer: str | Path | None = None, model_size: str = "mini",
             max_seq_len: int = 128, limit: int | None = None, options: TriplesOptions | None = None) -> Any:
    """Fine-tune the tagger and the pair head together on `train_file`; scores triple F1 on `eval_file`."""
    from bertkit.tasks.base import build_task_model, encoder_config, finetune_tokenizer
    from bertkit.train import fit

    tok = finetune_tokenizer(init_from, tokenizer)
    train = require_examples(take(read_records(train_file, fmt), limit), train_file, "training")
    heldout = require_examples(read_records(eval_file, fmt), eval_file, "evaluation") if eval_file else []
    word_level = WORD_LEVEL[fmt]
    located = [locate(r, word_level) for r in train]
    labels, predicates, combos = label_sets(located)
    if labels == ["O"]:
        raise DataError("no entity of any training triple was found in its text", str(train_file))
    schema = (options or TriplesOptions()).schema
    if schema is not None:
        combos |= {tuple(r) for r in read_schema(schema) if r[1] in predicates}
    info = TriplesInfo(labels, predicates, max_seq_len, word_level, [list(c) for c in sorted(combos)])
    model_config = encoder_config(init_from, tok, model_size, max_seq_len, **SPEC.config_extra(info))
    model = build_task_model(BertForTriples, init_from, model_config, config.seed)
    task = TriplesTask(tok, train, heldout, info, source=str(train_file), located=located)
    return fit(model, task, config, title=f"triples ({Path(train_file).parent.name or 'data'})")


def evaluate_file(model: nn.Module, tokenizer: Tokenizer, info: TriplesInfo, path: str | Path, fmt: str
                  ) -> dict[str, float]:
    records = require_examples(read_records(path, fmt), path, "evaluation")
    return score(model, tokenizer, info, records)


@torch.no_grad()
def predict(model: nn.Module, tokenizer: Tokenizer, info: TriplesInfo, inputs: list[dict[str, Any]]
            ) -> list[dict[str, Any]]:
    """The triples (and the entities) of each raw text."""
    return extract(model, tokenizer, info, [i["text"] for i in inputs])


SPEC = TaskSpec(
    name=NAME,
    description="knowledge-graph triples (subject, predicate, object) with entity types, from raw text",
    model=BertForTriples,
    info=TriplesInfo,
    inputs=(InputField("text", "the text to extract triples from", multiline=True),),
    predict=predict,
    view={"spans": "entities", "spans_over": "text", "graph": "triples"},
    example={"text": "《曾经的你》是许巍演唱的歌曲"},
    formats=FORMATS,
    default_format="duie",
    options=TriplesOptions,
    finetune=finetune,
    evaluate=evaluate_file,
    headline="f1",
    work=chunks,
    config_extra=lambda info: {**id2label(info.labels), "bertkit_predicates": info.predicates},
    not_distilled="its GlobalPointer scores each span with an independent sigmoid, not one softmax to soften",
)
