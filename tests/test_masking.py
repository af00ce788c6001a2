"""Masking and NSP pairs, tested statistically over >= 100k tokens (the ModernBERT/MosaicBERT habit)."""

from __future__ import annotations

import numpy as np
import pytest

from bertkit.masking import IGNORE_INDEX, ArrayShard, ExampleIndex, example_rng, mask_tokens
from bertkit.tasks.pretraining import decode_tokens, encode_token, tokenize_documents

MASK, VOCAB = 4, 1000
SPECIALS = np.array([0, 1, 2, 3, 4])
RANDOM_IDS = np.arange(5, VOCAB)


def _corrupt_many(n_sequences=1000, word_starts=None, mask_prob=0.15, seed=0):
    rng = np.random.default_rng(seed)
    stats = {"tokens": 0, "selected": 0, "mask": 0, "random": 0, "kept": 0, "special_hit": 0}
    for i in range(n_sequences):
        length = int(rng.integers(64, 257))  # varied lengths, so per-sequence rounding averages out
        ids = rng.integers(5, VOCAB, length)
        ids[0], ids[-1], ids[length // 2] = 2, 3, 3  # [CLS] ... [SEP] ... [SEP]
        special = np.isin(ids, SPECIALS)
        inputs, labels = mask_tokens(ids, special, example_rng(seed, 0, i), mask_id=MASK, random_ids=RANDOM_IDS,
                                     mask_prob=mask_prob, word_starts=word_starts)
        chosen = labels != IGNORE_INDEX
        stats["tokens"] += int((~special).sum())
        stats["selected"] += int(chosen.sum())
        stats["special_hit"] += int((chosen & special).sum())
        stats["mask"] += int((inputs[chosen] == MASK).sum())
        stats["kept"] += int((inputs[chosen] == ids[chosen]).sum())
        stats["random"] += int(((inputs[chosen] != MASK) & (inputs[chosen] != ids[chosen])).sum())
        assert np.array_equal(labels[chosen], ids[chosen])  # labels are the original tokens
        assert np.array_equal(inputs[~chosen], ids[~chosen])  # nothing else changes
        assert not np.isin(inputs[chosen & (inputs != MASK)], SPECIALS[SPECIALS != MASK]).any()
    return stats


def test_15_percent_selected_and_80_10_10_over_100k_tokens():
    s = _corrupt_many()
    assert s["tokens"] >= 100_000
    assert abs(s["selected"] / s["tokens"] - 0.15) < 0.001
    n = s["selected"]
    # binomial standard deviation at n ~ 19k: 0.8 -> 0.0029, 0.1 -> 0.0022; tolerance ~4 sigma. A random
    # replacement equal to the original (p = 1/995) counts as "kept", as in Google's implementation.
    assert abs(s["mask"] / n - 0.8) < 0.012
    assert abs(s["random"] / n - 0.1) < 0.009
    assert abs(s["kept"] / n - 0.1) < 0.009
    assert s["special_hit"] == 0


def test_mask_rate_is_configurable():
    s = _corrupt_many(n_sequences=300, mask_prob=0.3)
    assert abs(s["selected"] / s["tokens"] - 0.3) < 0.005


def test_whole_words_are_masked_together():
    rng = np.random.default_rng(1)
    length = 128
    whole, partial, tokens, selected = 0, 0, 0, 0
    for i in range(1000):
        ids = rng.integers(5, VOCAB, length)
        ids[0], ids[-1] = 2, 3
        special = np.isin(ids, SPECIALS)
        starts = rng.random(length) < 0.45  # words of ~2.2 tokens, like Chinese words in characters
        starts[0] = starts[1] = True
        _, labels = mask_tokens(ids, special, example_rng(1, 0, i), mask_id=MASK, random_ids=RANDOM_IDS,
                                word_starts=starts)
        chosen = labels != IGNORE_INDEX
        tokens += int((~special).sum())
        selected += int(chosen.sum())
        word_id = np.cumsum(starts)
        for w in np.unique(word_id[chosen]):
            members = (word_id == w) & ~special
            if chosen[members].all():
                whole += 1
            else:
                partial += 1
    assert partial == 0 and whole > 5_000
    assert abs(selected / tokens - 0.15) < 0.01  # whole words still fill ~15%


def test_masking_depends_only_on_seed_epoch_index():
    ids = np.arange(5, 105)
    special = np.zeros(100, dtype=bool)
    a = mask_tokens(ids, special, example_rng(7, 3, 11), mask_id=MASK, random_ids=RANDOM_IDS)
    b = mask_tokens(ids, special, example_rng(7, 3, 11), mask_id=MASK, random_ids=RANDOM_IDS)
    c = mask_tokens(ids, special, example_rng(7, 4, 11), mask_id=MASK, random_ids=RANDOM_IDS)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])  # dynamic masking: another epoch, another mask


def _documents(n_docs=400, seed=0):
    rng = np.random.default_rng(seed)
    docs = []
    for d in range(n_docs):
        # token value encodes (document, sentence): B's origin can be checked
        n_sentences = int(rng.integers(1, 12))
        docs.append([[d * 1000 + s] * int(rng.integers(3, 30)) for s in range(n_sentences)])
    return docs


def test_nsp_is_50_50_and_random_b_comes_from_another_document():
    docs = _documents()
    instances = []
    for epoch in range(5):
        instances += ExampleIndex([ArrayShard.from_documents(docs)], 128, nsp=True, seed=0, epoch=epoch).instances()
    labels = np.array([i.next_label for i in instances])
    n = len(labels)
    assert n > 2000
    assert abs(labels.mean() - 0.5) < 3 * 0.5 / np.sqrt(n) + 0.005
    for inst in instances:
        a_docs = {t // 1000 for t in inst.tokens_a}
        b_docs = {t // 1000 for t in inst.tokens_b}
        assert a_docs == {inst.source_a} and len(inst.tokens_a) + len(inst.tokens_b) <= 125
        if inst.next_label == 1:  # NotNext: B from a different document
            assert b_docs == {inst.source_b} and inst.source_b != inst.source_a
        else:  # IsNext: B is the text that follows A in the same document
            assert b_docs == {inst.source_a}
            last_a = max(t % 1000 for t in inst.tokens_a)
            first_b = min(t % 1000 for t in inst.tokens_b)
            assert first_b > last_a
            if len(inst.tokens_a) + len(inst.tokens_b) < 125:  # not truncated: B starts at the very next sentence
                assert first_b == last_a + 1


def test_packed_instances_fill_sequences_without_crossing_documents():
    docs = _documents(50)
    instances = ExampleIndex([ArrayShard.from_documents(docs)], 64, nsp=False, seed=0, epoch=0).instances()
    assert all(len(i.tokens_a) <= 62 and not i.tokens_b for i in instances)
    assert all({t // 1000 for t in i.tokens_a} == {i.source_a} for i in instances)
    assert sum(len(i.tokens_a) for i in instances) == sum(len(s) for d in docs for s in d)  # nothing lost


def test_token_codes_carry_jieba_word_starts():
    from bertkit import Tokenizer

    tok = Tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"中国人民很好", "token", "##ization", "works"])
    coded = tokenize_documents([["中国人民很好", "tokenization works"]], tok, whole_word=True)[0]
    ids, starts = decode_tokens(np.array(coded[0]))
    assert tok.convert_ids_to_tokens(ids) == list("中国人民很好")
    assert starts.tolist() == [True, False, True, False, True, True]  # jieba: 中国 / 人民 / 很 / 好
    ids, starts = decode_tokens(np.array(coded[1]))
    pieces = tok.convert_ids_to_tokens(ids)
    assert pieces[0] == "token" and pieces[1].startswith("##")
    assert starts.tolist()[:2] == [True, False]
    assert decode_tokens(np.array([encode_token(29999, True)]))[0][0] == 29999


def test_nsp_counts_only_documents_with_text():
    from bertkit.errors import DataError

    with pytest.raises(DataError, match="NSP needs at least two documents with text"):
        ExampleIndex([ArrayShard.from_documents([[[5, 6, 7], [8, 9, 10]], [[]], [[], []]])], 32, nsp=True, seed=0,
                     epoch=0)
    # an empty sentence or document between others is skipped, never chosen as random B
    docs = [[[5, 6, 7], [], [8, 9, 10]], [[]], [[11, 12], [13, 14, 15]], [[], []]]
    for epoch in range(20):
        for inst in ExampleIndex([ArrayShard.from_documents(docs)], 32, nsp=True, seed=0, epoch=epoch).instances():
            assert inst.tokens_a and inst.tokens_b and inst.source_a in (0, 2) and inst.source_b in (0, 2)
