"""Sentence-embedding data: the pair and sentence formats (JSON lines, AFQMC-style JSON, STS-B, LCQMC, BQ, plain
lines), their labels checked by file and line, and the examples each loss reads. The task is in `embed.py`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bertkit.errors import DataError
from bertkit.fileio import read_lines
from bertkit.tasks.base import (
    SkipReport,
)


@dataclass(frozen=True)
class JsonLayout:
    """JSON lines: the keys of the two texts, the label and a hard negative (None: the format has none)."""

    text: str = "text"
    text_pair: str = "text_pair"
    label: str = "label"
    negative: str | None = "negative"


@dataclass(frozen=True)
class TableLayout:
    """Delimited rows: the columns of the two texts and the label, by name in a header, else by position 0, 1, 2.
    `header`: "required" (columns found by name; the label column may be absent: an unlabelled file), "optional"
    (a first line naming the columns is skipped), "none"."""

    delimiter: str
    columns: tuple[str, str, str]
    header: str


@dataclass(frozen=True)
class LinesLayout:
    """One sentence per line."""


FORMATS: dict[str, JsonLayout | TableLayout | LinesLayout] = {
    "jsonl": JsonLayout(),
    "afqmc": JsonLayout(text="sentence1", text_pair="sentence2", negative=None),
    "stsb": TableLayout("\t", ("sentence1", "sentence2", "score"), "required"),
    "lcqmc": TableLayout("\t", ("text_a", "text_b", "label"), "optional"),
    "bq": TableLayout("_!_", ("sentence1", "sentence2", "label"), "none"),
    "lines": LinesLayout(),
}


@dataclass(frozen=True)
class Pair:
    """One line of a file: a text, and where the format has them a second text, a label and a hard negative."""

    text: str
    text_pair: str | None
    label: float | None
    negative: str | None
    line: int


def parse_label(value: Any, path: str | Path, line: int) -> float | None:
    """A label as a number: a JSON number, or a string holding one ("1", "3.800"); null or a blank string is no
    label; anything else, and NaN or infinity, is an error naming file and line."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None or not math.isfinite(number):
        raise DataError(f"label must be a number (0/1 or a similarity score), got {value!r:.60}", str(path), line)
    return number


def read_pairs(path: str | Path, fmt: str = "jsonl") -> list[Pair]:
    """The pairs (or, with `lines`, the sentences) of a file; blank lines are skipped."""
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; choose one of {sorted(FORMATS)}")
    layout = FORMATS[fmt]
    if isinstance(layout, LinesLayout):
        return [Pair(line, None, None, None, number) for number, line in read_lines(path) if line.strip()]
    if isinstance(layout, JsonLayout):
        return [_json_pair(line, number, layout, path) for number, line in read_lines(path) if line.strip()]
    return _table_pairs(path, layout)


def _json_pair(line: str, number: int, layout: JsonLayout, path: str | Path) -> Pair:
    try:
        record = json.loads(line)
    except (ValueError, RecursionError) as exc:
        raise DataError(f"bad JSON line: {exc}", str(path), number) from exc
    if not isinstance(record, dict):
        raise DataError(f'expected an object {{"{layout.text}": ..., "{layout.text_pair}": ..., "{layout.label}": '
                        f"...}}, got a JSON {type(record).__name__}", str(path), number)
    texts = {}
    for key in (layout.text, layout.text_pair, layout.negative):
        value = record.get(key) if key is not None else None
        if key == layout.text and value is None:
            raise DataError(f"missing field {key!r} (the text)", str(path), number)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise DataError(f"{key!r} must be a non-empty string, got {value!r:.60}", str(path), number)
        texts[key] = value
    return Pair(texts[layout.text], texts[layout.text_pair], parse_label(record.get(layout.label), path, number),
                texts.get(layout.negative), number)


def _table_pairs(path: str | Path, layout: TableLayout) -> list[Pair]:
    pairs: list[Pair] = []
    positions: tuple[int, int, int | None] | None = None if layout.header == "required" else (0, 1, 2)
    width = None if layout.header == "required" else 3
    first = True
    for number, line in read_lines(path):
        if not line.strip():
            continue
        cells = line.split(layout.delimiter)
        if first:
            first = False
            names = [c.strip() for c in cells]
            if layout.header == "required":
                missing = [n for n in layout.columns[:2] if n not in names]
                if missing:
                    raise DataError(f"the header has no column {missing[0]!r} (expected {', '.join(layout.columns)}); "
                                    f"found {names}", str(path), number)
                label = names.index(layout.columns[2]) if layout.columns[2] in names else None
                positions, width = (names.index(layout.columns[0]), names.index(layout.columns[1]), label), len(names)
                continue
            if layout.header == "optional" and names == list(layout.columns):
                continue
        if len(cells) != width:
            raise DataError(f"expected {width} fields separated by {layout.delimiter!r}, got {len(cells)}",
                            str(path), number)
        assert positions is not None
        text, text_pair = cells[positions[0]], cells[positions[1]]
        if not text.strip() or not text_pair.strip():
            raise DataError(f"empty {'first' if not text.strip() else 'second'} text", str(path), number)
        label = parse_label(cells[positions[2]], path, number) if positions[2] is not None else None
        pairs.append(Pair(text, text_pair, label, None, number))
    return pairs


def graded(pairs: list[Pair]) -> bool:
    """Whether the labels are graded scores rather than 0/1 (same / not the same)."""
    return any(p.label not in (None, 0.0, 1.0) for p in pairs)


def positives(pairs: list[Pair]) -> list[Pair]:
    """The (query, positive) pairs of a file: every pair of an unlabelled file, the label-1 pairs of a 0/1 one;
    a graded file's labelled pairs are none (a score is not a yes or no)."""
    scored = graded(pairs)
    return [p for p in pairs if p.text_pair is not None and (p.label is None or (not scored and p.label == 1.0))]


def _need_pair(p: Pair, source: str, loss: str) -> None:
    if p.text_pair is None:
        raise DataError(f"{loss} reads sentence pairs; this line has one text (is --format right?)", source, p.line)


def cosent_examples(pairs: list[Pair], source: str) -> list[Pair]:
    for p in pairs:
        _need_pair(p, source, "cosent")
        if p.label is None:
            raise DataError("cosent reads labelled pairs; this pair has no label", source, p.line)
    if len({p.label for p in pairs}) < 2:
        raise DataError(f"every pair has the label {pairs[0].label:g}: cosent learns from pairs ranked against pairs "
                        "with other labels", source)
    return pairs


def mnr_examples(pairs: list[Pair], source: str) -> list[Pair]:
    report = SkipReport(source)
    kept = []
    for p in pairs:
        _need_pair(p, source, "mnr")
        if p.label not in (None, 0.0, 1.0):
            raise DataError(f"mnr reads (query, positive) pairs, labelled 1 (or unlabelled); label {p.label:g} is a "
                            "graded score (train on scores with --loss cosent)", source, p.line)
        if p.label == 0.0:
            report.skip(p.line, "pair(s) labelled 0 (not a positive)")
        else:
            kept.append(p)
    report.report()
    return kept


def simcse_sentences(pairs: list[Pair]) -> list[str]:
    """Each distinct sentence of the file, in the order first seen (both texts of a pair)."""
    seen: dict[str, None] = {}
    for p in pairs:
        seen.setdefault(p.text)
        if p.text_pair is not None:
            seen.setdefault(p.text_pair)
    return list(seen)
