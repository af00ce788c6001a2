"""The triples task's data, shared by its two heads: DuIE and WebNLG records and DuIE's schema read by file and line,
each triple's entity names located as word spans (and why a triple cannot be), and exact-match scoring.

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

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from bertkit.errors import DataError, reason
from bertkit.fileio import NotJSON, json_items, json_lines
from bertkit.metrics import prf
from bertkit.tasks.base import FinetuneTask, SkipReport
from bertkit.tasks.tagging import words_of

FORMATS = ("duie", "webnlg")
WORD_LEVEL = {"duie": "char", "webnlg": "space"}
UNTYPED = "ENTITY"
SECOND_TYPE = "second type(s) of an entity in one record (its first type kept)"


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
    for number, item in (json_lines(path) if fmt == "duie" else json_items(path)):
        try:
            if isinstance(item, NotJSON):
                raise ValueError(str(item))
            if not isinstance(item, dict) or not isinstance(item.get("text"), str):
                raise ValueError('expected an object with a string "text"')
            parse = _duie_triples if fmt == "duie" else _webnlg_triples
            records.append(Record(item["text"], parse(item), number))
        except (ValueError, KeyError, TypeError) as exc:
            report.bad(skip_bad_lines, f"{fmt} record", exc, number)
    report.report()
    return records


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
    for number, item in json_lines(path):
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


def score_extracted(records: list[Record], predicted: list[dict[str, Any]]) -> dict[str, float]:
    """Triple P/R/F1 of a head's predictions (`{"triples": [...], "entities": [...]}` per record) against every gold
    triple (those that cannot be extracted count as misses), plus entity F1 (entity names per sentence)."""
    gold = [{t.key for t in r.triples} for r in records]
    pred = [{(t["subject"], t["predicate"], t["object"]) for t in p["triples"]} for p in predicted]
    metrics = triple_prf(gold, pred)
    gold_entities = [{n for t in r.triples for n in (t.subject, t.object)} for r in records]
    pred_entities = [{e["text"] for e in p["entities"]} for p in predicted]
    tp = sum(len(g & p) for g, p in zip(gold_entities, pred_entities, strict=True))
    entity = prf(tp, sum(map(len, pred_entities)) - tp, sum(map(len, gold_entities)) - tp)
    return {**metrics, "entity_f1": entity[2]}


class TriplesTrainTask(FinetuneTask):
    """What both triples heads' TrainTasks share: the training records encoded by the head's `encode` (into rows of
    at most max_seq_len tokens) and batched by its `collate`; the held-out records kept as they are, for scoring."""

    task_name = "triples"
    encode: ClassVar[Callable[..., list[Any]]]
    collate: ClassVar[Callable[..., dict[str, Any]]]

    def __init__(self, tokenizer: Any, train: list[Record], heldout: list[Record], info: Any,
                 eval_batch_size: int = 64, source: str | None = None, located: list[Located] | None = None
                 ) -> None:
        self.tokenizer, self.info = tokenizer, info
        self.train = type(self).encode(tokenizer, train, info, source, located=located) if train else []
        self.heldout = heldout
        self.eval_batch_size = eval_batch_size

    def make_batch(self, epoch: int, indices: list[int]) -> dict[str, Any]:
        return type(self).collate([self.train[i] for i in indices], self.tokenizer.pad_token_id,
                                  len(self.info.predicates))

    def tokens(self, batch: dict[str, Any]) -> int:
        return int(batch["attention_mask"].sum())
