"""Span-annotated text: readers for doccano, Label Studio and CBLUE (CMeEE) files, every entity checked against its
text, each error naming the file, the line and the entity.

Formats (`--format`), each giving texts with (type, start, end) character spans, nested and overlapping alike:
- `doccano`: JSON lines `{"text", "label": [[start, end, type], ...]}` (end exclusive); doccano's entity export
  `{"text", "entities": [{"start_offset", "end_offset", "label"}, ...]}` is read too.
- `label_studio`: Label Studio's JSON export, one array of tasks `{"data": {"text": ...}, "annotations": [{"result":
  [{"type": "labels", "value": {"start", "end", "labels": [...]}}, ...]}]}` (end exclusive): the first annotation
  not cancelled; each label of a region a span (multi-label regions give several); results of other kinds
  (choices, relations) are ignored, and a task without an annotation is skipped and counted. The text is
  `data.text`, or `data`'s only string value.
- `cmeee`: CBLUE's JSON array `[{"text", "entities": [{"start_idx", "end_idx", "type", "entity"}, ...]}]`,
  end_idx inclusive (CMeEE, CMeEE-V2).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bertkit.errors import DataError
from bertkit.fileio import read_lines, read_text
from bertkit.tasks.base import SkipReport

SPAN_FORMATS = ("doccano", "label_studio", "cmeee")

Span = tuple[str, int, int]  # (type, start, end): character offsets into the text, end exclusive


@dataclass
class SpanText:
    """A text and its entities; `line` is where its record starts in the file."""

    text: str
    spans: list[Span]
    line: int


class BadSpan(ValueError):
    """An entity that does not fit its text; the message says which entity and why."""


def read_span_texts(path: str | Path, fmt: str, *, skip_bad_lines: bool = False) -> list[SpanText]:
    """The texts of a span-annotated file; a malformed record or entity is a DataError naming file and line (or,
    with `skip_bad_lines`, its record is skipped and counted; a file that is not JSON at all stays an error)."""
    if fmt not in SPAN_FORMATS:
        raise DataError(f"unknown span format {fmt!r}; choose one of {SPAN_FORMATS}")
    report = SkipReport(path)
    reader = {"doccano": _read_doccano, "label_studio": _read_label_studio, "cmeee": _read_cmeee}[fmt]
    texts = reader(path, skip_bad_lines, report)
    report.report(len(texts))
    return texts


def checked_span(text: str, kind: Any, start: Any, end: Any, entity: str) -> Span:
    """(kind, start, end) once it fits `text` (end exclusive); else BadSpan naming `entity` and what is wrong."""
    if not isinstance(kind, str) or not kind.strip():
        raise BadSpan(f"{entity}: the type must be a non-empty string, got {kind!r:.40}")
    for name, value in (("start", start), ("end", end)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadSpan(f"{entity}: {name} must be an integer, got {value!r:.40}")
    if start < 0:
        raise BadSpan(f"{entity}: start {start} is negative")
    if end <= start:
        raise BadSpan(f"{entity}: end {end} is not after start {start} (a reversed or empty span)")
    if end > len(text):
        raise BadSpan(f"{entity}: end {end} is past the end of the text ({len(text)} characters)")
    return kind.strip(), start, end


def _surface(text: str, span: Span, written: Any, entity: str) -> None:
    """The entity's own copy of its text, where the format has one, must be what its offsets cover."""
    if written is not None and text[span[1] : span[2]] != written:
        raise BadSpan(f"{entity}: characters {span[1]}..{span[2]} of the text are {text[span[1]:span[2]]!r:.60}, "
                      f"not {written!r:.60}")


def _entity_name(index: int, kind: Any, surface: Any = None) -> str:
    shown = f" {surface!r:.40}" if isinstance(surface, str) else ""
    return f"entity {index + 1} ({kind!r:.30}{shown})"


def _record_text(record: Any, key: str = "text") -> str:
    if not isinstance(record, dict) or not isinstance(record.get(key), str):
        raise ValueError(f'expected an object with a string "{key}", got {_json_kind(record)}')
    return record[key]


def _json_kind(value: Any) -> str:
    if isinstance(value, dict):
        return f"an object with keys {sorted(value)[:6]}"
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), type(value).__name__)


def _unique(spans: Iterable[Span]) -> list[Span]:
    """Spans in reading order, an exact repeat (same type, same offsets) kept once."""
    return list(dict.fromkeys(spans))


def _read_doccano(path: str | Path, skip_bad_lines: bool, report: SkipReport) -> list[SpanText]:
    texts = []
    for number, line in read_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            text = _record_text(record)
            spans = []
            if "entities" in record and "label" not in record:  # doccano's entity export
                entities = record["entities"]
                if not isinstance(entities, list):
                    raise ValueError(f'"entities" must be an array, got {_json_kind(entities)}')
                for i, e in enumerate(entities):
                    if not isinstance(e, dict):
                        raise BadSpan(f"entity {i + 1}: expected an object with start_offset, end_offset, label, got "
                                      f"{_json_kind(e)}")
                    spans.append(checked_span(text, e.get("label"), e.get("start_offset"), e.get("end_offset"),
                                              _entity_name(i, e.get("label"))))
            else:
                labels = record.get("label") or []
                if not isinstance(labels, list):
                    raise ValueError(f'"label" must be an array of [start, end, type], got {_json_kind(labels)}')
                for i, item in enumerate(labels):
                    if not isinstance(item, list) or len(item) != 3:
                        raise BadSpan(f"entity {i + 1}: expected [start, end, type], got {item!r:.60}")
                    start, end, kind = item
                    spans.append(checked_span(text, kind, start, end, _entity_name(i, kind)))
            texts.append(SpanText(text, _unique(spans), number))
        except (ValueError, KeyError, TypeError, RecursionError) as exc:  # JSONDecodeError is a ValueError
            report.bad(skip_bad_lines, "doccano record", exc, number)
    return texts


_SPACE = re.compile(r"[ \t\n\r]*")


def json_array(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line where it starts, value) of each item of a file holding one JSON array, decoded one item at a time so
    an error names the item's line."""
    text = read_text(path)
    decoder = json.JSONDecoder()
    line, seen = 1, 0

    def at(position: int) -> int:
        nonlocal line, seen
        line += text.count("\n", seen, position)
        seen = position
        return line

    position = _SPACE.match(text, 0).end()  # type: ignore[union-attr]
    if not text.startswith("[", position):
        raise DataError("expected one JSON array of records ([{...}, ...])", str(path), at(position))
    position = _SPACE.match(text, position + 1).end()  # type: ignore[union-attr]
    if text.startswith("]", position):
        return
    while True:
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            raise DataError(f"not valid JSON: {exc.msg}", str(path), exc.lineno) from exc
        except RecursionError as exc:
            raise DataError("not valid JSON: nested too deep", str(path), at(position)) from exc
        yield at(position), value
        position = _SPACE.match(text, end).end()  # type: ignore[union-attr]
        if text.startswith("]", position):
            return
        if not text.startswith(",", position):
            raise DataError("expected ',' or ']' after an item of the array", str(path), at(position))
        position = _SPACE.match(text, position + 1).end()  # type: ignore[union-attr]


def _read_cmeee(path: str | Path, skip_bad_lines: bool, report: SkipReport) -> list[SpanText]:
    texts = []
    for number, record in json_array(path):
        try:
            text = _record_text(record)
            entities = record.get("entities") or []
            if not isinstance(entities, list):
                raise ValueError(f'"entities" must be an array, got {_json_kind(entities)}')
            spans = []
            for i, e in enumerate(entities):
                if not isinstance(e, dict):
                    raise BadSpan(f"entity {i + 1}: expected an object with start_idx, end_idx, type, got "
                                  f"{_json_kind(e)}")
                name = _entity_name(i, e.get("type"), e.get("entity"))
                last = e.get("end_idx")
                end = last + 1 if isinstance(last, int) and not isinstance(last, bool) else last  # inclusive
                span = checked_span(text, e.get("type"), e.get("start_idx"), end, name)
                _surface(text, span, e.get("entity"), name)
                spans.append(span)
            texts.append(SpanText(text, _unique(spans), number))
        except (ValueError, KeyError, TypeError) as exc:
            report.bad(skip_bad_lines, "CMeEE record", exc, number)
    return texts


def _task_text(task: dict[str, Any]) -> str:
    data = task.get("data")
    if not isinstance(data, dict):
        raise ValueError(f'expected a task with a "data" object, got {_json_kind(task)}')
    if isinstance(data.get("text"), str):
        return data["text"]
    strings = [v for v in data.values() if isinstance(v, str)]
    if len(strings) != 1:
        raise ValueError(f'"data" has no "text", and not one string value to read instead (keys {sorted(data)[:6]})')
    return strings[0]


def _read_label_studio(path: str | Path, skip_bad_lines: bool, report: SkipReport) -> list[SpanText]:
    texts = []
    for number, task in json_array(path):
        try:
            if not isinstance(task, dict):
                raise ValueError(f"expected a task object, got {_json_kind(task)}")
            text = _task_text(task)
            annotations = [a for a in task.get("annotations") or [] if isinstance(a, dict)
                           and not a.get("was_cancelled")]
            if not annotations:
                report.skip(number, "task(s) without an annotation")
                continue
            results = annotations[0].get("result") or []
            if not isinstance(results, list):
                raise ValueError(f'"result" must be an array, got {_json_kind(results)}')
            spans = []
            for i, result in enumerate(results):
                if not isinstance(result, dict) or result.get("type", "labels") != "labels":
                    continue  # choices, relations, ratings: not spans
                value = result.get("value")
                if not isinstance(value, dict) or not isinstance(value.get("labels"), list) or not value["labels"]:
                    raise BadSpan(f"result {i + 1}: expected value.start, value.end and a non-empty value.labels, "
                                  f"got {value!r:.80}")
                for kind in value["labels"]:
                    name = f"result {i + 1} ({kind!r:.30} {value.get('text', '')!r:.40})"
                    span = checked_span(text, kind, value.get("start"), value.get("end"), name)
                    _surface(text, span, value.get("text"), name)
                    spans.append(span)
            texts.append(SpanText(text, _unique(spans), number))
        except (ValueError, KeyError, TypeError) as exc:
            report.bad(skip_bad_lines, "Label Studio task", exc, number)
    return texts


def check_types(texts: Iterable[tuple[int, list[tuple[str, int, int]]]], known: Iterable[str], path: str | Path,
                whose: str) -> None:
    """Every entity's type is one of `known` (`whose` says whose types they are); else a DataError naming the
    line and the entity. `texts`: (line, spans) pairs."""
    allowed = set(known)
    for line, spans in texts:
        for kind, start, end in spans:
            if kind not in allowed:
                raise DataError(f"entity {kind!r} at {start}..{end} has a type that is not among {whose} "
                                f"({', '.join(sorted(allowed)) or 'none'})", str(path), line)
