"""Raw corpus readers: sentence splitting in linear time, and documents of bounded size whatever the shape of the
file (one line, no blank lines), cut where a warning says."""

from __future__ import annotations

import gzip
import time
import tracemalloc
import warnings

import pytest

from bertkit import fileio
from bertkit.corpus import read_documents, split_sentences


def _cpu_seconds(text: str, max_chars: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        split_sentences(text, max_chars)
        best = min(best, time.process_time() - started)
    return best


def test_split_sentences_is_linear_in_a_text_without_sentence_ends():
    """A text without 。！？ is one sentence cut into max_chars pieces. Each cut used to copy the rest of the text
    (8M characters took 13.7 s): 16 times the text cost about 100 times the time; now about 16 times. CPU time of
    this process, the best of a few runs, so the ratio holds on a busy machine; the bound is generous both ways."""
    unit = "北京欢迎你今天天气很好，我们去上海人民日报发表社论"  # a comma every 25 characters
    text = (unit * (4_000_000 // len(unit) + 1))[:4_000_000]
    pieces = split_sentences(text, 256)
    assert "".join(pieces) == text and max(map(len, pieces)) <= 256
    assert all(p.endswith("，") for p in pieces[:-1])  # cut after a comma where one is in reach
    no_commas = "北京欢迎你" * 400_000
    hard = split_sentences(no_commas, 256)
    assert [len(p) for p in hard] == [256] * (len(no_commas) // 256) + [len(no_commas) % 256]
    small, large = _cpu_seconds(text[:250_000], 256, 3), _cpu_seconds(text, 256, 2)
    assert large / small < 40, (small, large)


# ---- documents: a bound on their size, whatever the shape of the file -------------------------------------------
SENTENCES = ["北京欢迎你，今天天气很好。", "The cat sat on the mat. ", "我们去上海！", "人民日报发表社论；"]


def _text(chars: int) -> str:
    unit = "".join(SENTENCES)
    return (unit * (chars // len(unit) + 1))[:chars]


def test_a_file_of_one_long_line_becomes_documents_cut_at_sentence_ends(tmp_path):
    path = tmp_path / "one-line.txt"
    text = _text(200_000)
    path.write_text(text, encoding="utf-8")  # no newline at all
    with pytest.warns(UserWarning) as caught:
        documents = list(read_documents(path, split=False, max_document_chars=10_000))
    assert len(documents) >= 20 and all(len(d) == 1 and len(d[0]) <= 10_000 for d in documents)
    assert all(d[0].endswith(("。", "！", "；", ".")) for d in documents[:-1])  # at sentence ends
    assert "".join(d[0] for d in documents).replace(" ", "") == text.replace(" ", "")  # nothing lost
    messages = [str(w.message) for w in caught]
    assert messages[0].startswith(f"{path}:1: over 10,000 characters without a blank line: the document is cut")
    assert messages[1] == f"{path}: {len(documents) - 1} cuts in all, into documents of at most 10,000 characters " \
                          "(at line 1)"
    # split into sentences, the documents hold the sentences the whole line has: every cut was at a sentence end
    with pytest.warns(UserWarning):
        split = [s for d in read_documents(path, max_document_chars=10_000) for s in d]
    assert split == split_sentences(text, 256)


def test_a_file_without_blank_lines_is_cut_at_line_ends_naming_the_line(tmp_path):
    path = tmp_path / "no-blank-lines.txt"
    lines = [SENTENCES[i % 4] * (1 + i % 3) for i in range(3000)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.warns(UserWarning) as caught:
        documents = list(read_documents(path, split=False, max_document_chars=5_000))
    assert [line for d in documents for line in d] == [line.strip() for line in lines]  # whole lines, in order
    assert len(documents) > 10 and all(sum(map(len, d)) <= 5_000 for d in documents)
    first_cut = len(documents[0]) + 1  # the line that opens the second document
    assert str(caught[0].message).startswith(f"{path}:{first_cut}: over 5,000 characters without a blank line")
    assert str(caught[1].message).startswith(f"{path}: {len(documents) - 1} cuts in all")
    assert f"(at lines {first_cut:,}, " in str(caught[1].message)


def test_documents_under_the_limit_are_read_as_before_without_a_warning(tmp_path):
    path = tmp_path / "normal.txt"
    path.write_text("北京欢迎你。今天天气很好！\n我们去上海。\n\n  \nThe cat sat. It was happy!\n", encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert list(read_documents(path)) == [["北京欢迎你。", "今天天气很好！", "我们去上海。"],
                                              ["The cat sat. It was happy!"]]
        assert list(read_documents(path, split=False, max_document_chars=26)) == [
            ["北京欢迎你。今天天气很好！", "我们去上海。"], ["The cat sat. It was happy!"]]


def test_the_reader_holds_a_piece_and_a_document_not_the_line(tmp_path, monkeypatch):
    """A one-line file is read a piece at a time (64 KiB here): the most it holds at once does not grow with the
    file (it held the whole line, twice: 8 MB of text took 50 MB)."""
    monkeypatch.setattr(fileio, "LINE_PIECE_BYTES", 1 << 16)
    peaks = []
    for chars in (500_000, 2_000_000):
        path = tmp_path / f"{chars}.txt.gz"
        path.write_bytes(gzip.compress(_text(chars).encode("utf-8"), compresslevel=1))
        tracemalloc.start()
        with pytest.warns(UserWarning):
            count = sum(1 for _ in read_documents(path, split=False, max_document_chars=20_000))
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert count >= chars // 20_000
    assert peaks[1] < 1.5 * peaks[0] and peaks[1] < 2_000_000, peaks
