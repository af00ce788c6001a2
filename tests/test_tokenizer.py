"""Tokenizer: ids equal transformers' slow (pure Python) BertTokenizer; training keeps every frequent character."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
import transformers
from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

from bertkit import CheckpointError, DataError, Tokenizer
from tests.conftest import shared_data

MIXED = [
    "北京欢迎你！BERT模型在2018年发布。",
    "Héllo Wörld, naïve café résumé ÅNGSTRÖM Straße İstanbul",
    "emoji 😀👍🏽 and ❤️ ok",
    "ctrl\x00a\x07b\u200bc\ufeffd\t\ne\r\x1f end",
    "x" * 300,
    "a " + "y" * 300 + " b",
    "",
    "   ",
    "don't stop-believing: $5.00, #1 @user http://a.b/c?d=e (yes) [no] {maybe}",
    "日本語のテキスト、한국어 텍스트",
    "ﬁ ligature ½ ① Ⅻ \u0301combining",
    "mixed中文and English混合text123数字",
]


@pytest.fixture(scope="module")
def tokenizers_pair(minilm_dir):
    return Tokenizer.from_pretrained(minilm_dir), BertTokenizerLegacy.from_pretrained(minilm_dir)


def test_ids_equal_slow_python_tokenizer(tokenizers_pair, minilm_dir):
    ours, slow = tokenizers_pair
    fast = transformers.BertTokenizer.from_pretrained(minilm_dir)
    for text in MIXED:
        expected = slow(text)["input_ids"]
        assert ours.encode(text) == expected, text
        assert fast(text)["input_ids"] == expected, text
    # the texts really exercise the hard cases
    assert ours.tokenize("x" * 300) == ["[UNK]"]
    assert ours.encode("") == [ours.cls_token_id, ours.sep_token_id]
    assert ours.tokenize("北京") == ["北", "京"]
    assert ours.tokenize("café") == ["cafe"]


def test_batch_pairs_equal_slow_tokenizer(tokenizers_pair):
    ours, slow = tokenizers_pair
    a = MIXED[:6]
    b = list(reversed(MIXED[6:]))
    got = ours(a, b, max_length=512)
    expected = slow(
        a, b, padding=True, return_tensors="pt", max_length=512, truncation=True, return_token_type_ids=True
    )
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert torch.equal(got[key], expected[key]), key
    assert got["token_type_ids"].max() == 1


def test_longest_first_truncation_equals_slow_tokenizer(tokenizers_pair):
    ours, slow = tokenizers_pair
    a = ["one two three four five six seven eight nine ten eleven twelve", "short"]
    b = ["alpha beta", "a much longer second segment that must lose tokens first because it is longest"]
    with pytest.warns(UserWarning, match="longer than max_length=12 tokens were truncated"):
        got = ours(a, b, max_length=12)
    with pytest.warns(UserWarning):
        assert ours.encode_batch(a, b, max_length=12).truncated == 2  # counted per call: no shared counter
    assert ours.encode_batch(a, b).truncated == 0  # max_length=None: no truncation
    expected = slow(
        a, b, padding=True, truncation="longest_first", max_length=12, return_tensors="pt", return_token_type_ids=True
    )
    assert torch.equal(got["input_ids"], expected["input_ids"])
    assert torch.equal(got["token_type_ids"], expected["token_type_ids"])
    assert got["input_ids"].shape[1] == 12


def test_no_truncation_is_an_error(tokenizers_pair):
    ours, _ = tokenizers_pair
    with pytest.raises(ValueError, match=r"input 1 has \d+ tokens, more than max_length=8"):
        ours(["short", "this text is certainly longer than eight tokens in total"], max_length=8, truncation=False)


def test_special_tokens_written_in_a_text_are_those_tokens_as_in_transformers(minilm_dir):
    fast = transformers.BertTokenizerFast.from_pretrained(minilm_dir)
    mine = Tokenizer.from_pretrained(minilm_dir)
    text = "Paris is the [MASK] of France. [SEP] [mask] [UNK]"
    assert mine.encode(text) == fast(text)["input_ids"]
    assert mine.encode(text).count(mine.mask_token_id) == 1  # "[mask]" is lower-case text, not the token
    assert mine.decode(mine.encode(text)) == fast.decode(fast(text)["input_ids"], skip_special_tokens=True)


def test_bad_input_types_are_named(tokenizers_pair):
    ours, _ = tokenizers_pair
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str"):
        ours(["fine", None])
    with pytest.raises(ValueError, match="2 texts but 1 text_pairs"):
        ours(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="texts is empty"):
        ours([])


def test_offsets_and_word_ids(tokenizers_pair):
    ours, _ = tokenizers_pair
    text = "Hello 北京 world"
    out = ours(text, return_offsets_mapping=True)
    tokens = ours.convert_ids_to_tokens(out["input_ids"][0])
    spans = [text[s:e].lower() for s, e in out["offset_mapping"][0].tolist()]
    assert tokens == ["[CLS]", "hello", "北", "京", "world", "[SEP]"]
    assert spans == ["", "hello", "北", "京", "world", ""]
    words = ours([["New", "York", "城市"]], is_split_into_words=True, return_word_ids=True)
    assert words["word_ids"][0].tolist() == [-1, 0, 1, 2, 2, -1]


def _chinese_lines(limit: int = 3000) -> list[str]:
    path = shared_data("chnsenticorp", "train.tsv")
    lines = path.read_text(encoding="utf-8").splitlines()[1 : limit + 1]
    return [line.split("\t", 1)[1] for line in lines]


def test_trained_chinese_vocab_keeps_every_character_above_the_cut(tmp_path):
    texts = _chinese_lines()
    min_frequency = 3
    tok = Tokenizer.train(texts, vocab_size=3000, min_frequency=min_frequency)
    assert len(tok) <= 3000
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(ch for ch in tok.normalize(text) if not ch.isspace())
    vocab = set(tok.vocab)
    frequent = {ch for ch, n in counts.items() if n >= min_frequency}
    rare = {ch for ch, n in counts.items() if n < min_frequency}
    assert len(frequent) > 1500 and rare  # a real test: thousands of characters, some below the cut
    assert frequent <= vocab
    assert not (rare & vocab), "characters below the frequency cut should map to [UNK]"
    assert tok.vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    # Chinese is split per character, so a sentence of frequent characters has no [UNK]
    sentence = next(t for t in texts if all(counts[c] >= min_frequency for c in tok.normalize(t) if not c.isspace()))
    assert tok.unk_token_id not in tok.encode(sentence)
    # save -> load gives the same ids, and transformers' slow tokenizer reads our files
    tok.save_pretrained(tmp_path)
    again = Tokenizer.from_pretrained(tmp_path)
    slow = BertTokenizerLegacy.from_pretrained(tmp_path)
    for text in texts[:50]:
        assert again.encode(text) == tok.encode(text) == slow(text)["input_ids"]


def test_train_from_files_cased(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The Quick brown Fox.\nThe lazy Dog!\n\nÉcole Straße\n" * 20, encoding="utf-8")
    tok = Tokenizer.train([corpus], vocab_size=200, min_frequency=2, lowercase=False, strip_accents=False)
    assert "Q" in tok.vocab and "É" in tok.vocab
    tok.save_pretrained(tmp_path / "tok")
    slow = BertTokenizerLegacy.from_pretrained(tmp_path / "tok")
    for text in ["The Quick Fox", "École Straße Dog", "unseen Zebra"]:
        assert tok.encode(text) == slow(text)["input_ids"]
    assert json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())["do_lower_case"] is False


def test_training_file_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"good line\n" + b"caf\xe9 latin-1\n")
    with pytest.raises(DataError, match=r"bad\.txt:2: not UTF-8"):
        Tokenizer.train([bad], vocab_size=100, min_frequency=1)


def test_vocab_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        Tokenizer.from_pretrained(tmp_path / "nope")
    (tmp_path / "vocab.txt").write_bytes(b"[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nok\nbad\xff\n")
    with pytest.raises(CheckpointError, match=r"vocab\.txt:7: vocabulary is not UTF-8"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n", encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"lacks the special tokens \['\[CLS\]', '\[SEP\]', '\[MASK\]'\]"):
        Tokenizer.from_pretrained(tmp_path)
