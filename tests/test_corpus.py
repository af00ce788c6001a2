"""Raw corpus readers: sentence splitting in linear time, with pieces no longer than asked."""

from __future__ import annotations

import time

from bertkit.corpus import split_sentences


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
