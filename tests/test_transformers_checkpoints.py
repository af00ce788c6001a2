"""Checkpoints as transformers saves them: a tokenizer.json without vocab.txt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bertkit import Tokenizer
from bertkit.errors import CheckpointError

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
WORDS = ["the", "a", "cat", "cats", "dog", "sat", "on", "mat", "in", "park", "is", "where", "who", "what", "lives",
         "paris", "london", "tower", "big", "small", "and", "it", "was", "good", "bad", "not", "very", "film", "hello",
         "world"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "##s", "##ed", ".", ",", "?", "北", "京", "上", "海"]
TEXTS = ["the cat sat on the mat.", "Where is the big dog?", "hello world , it was very good", "北京 and London"]
HEADS = {
    "BertForSequenceClassification": {"id2label": {0: "neg", 1: "pos", 2: "mixed"}},
    "BertForTokenClassification": {"id2label": {0: "O", 1: "B-LOC", 2: "I-LOC", 3: "B-PER", 4: "I-PER"}},
    "BertForQuestionAnswering": {},
    "BertForMultipleChoice": {},
}


def _transformers():
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers


def hf_tokenizer(root: Path):
    """transformers' BertTokenizerFast over VOCAB, built from a vocab file."""
    (root / "vocab").mkdir(parents=True, exist_ok=True)
    (root / "vocab" / "vocab.txt").write_text("".join(f"{t}\n" for t in VOCAB), encoding="utf-8")
    return _transformers().BertTokenizerFast.from_pretrained(root / "vocab")


def save_as_transformers(directory: Path, head: str, seed: int = 0, **save_kwargs):
    """A tiny random transformers model of class `head` and its tokenizer, saved as transformers saves them (the
    vocabulary in tokenizer.json only); returns (model, tokenizer)."""
    transformers = _transformers()
    tokenizer = hf_tokenizer(directory.parent / f"{directory.name}-src")
    config = transformers.BertConfig(**TINY, vocab_size=len(VOCAB), **HEADS[head])
    torch.manual_seed(seed)
    model = getattr(transformers, head)(config).eval()
    with torch.no_grad():  # transformers initialises biases and LayerNorms to constants; make every weight count
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    model.save_pretrained(directory, **save_kwargs)
    tokenizer.save_pretrained(directory)
    (directory / "vocab.txt").unlink(missing_ok=True)
    return model, tokenizer


@pytest.fixture(scope="module")
def heads(tmp_path_factory) -> dict[str, tuple[Path, object, object]]:
    root = tmp_path_factory.mktemp("heads")
    return {head: (root / head, *save_as_transformers(root / head, head)) for head in HEADS}


def test_a_tokenizer_json_without_vocab_txt_gives_transformers_ids(tmp_path):
    tokenizer = hf_tokenizer(tmp_path)
    tokenizer.add_tokens(["北京上海"])  # an added token: matched before WordPiece, as transformers matches it
    tokenizer.save_pretrained(tmp_path / "saved")
    (tmp_path / "saved" / "vocab.txt").unlink(missing_ok=True)
    assert not (tmp_path / "saved" / "vocab.txt").exists() and (tmp_path / "saved" / "tokenizer.json").is_file()
    ours = Tokenizer.from_pretrained(tmp_path / "saved")
    assert len(ours) == len(tokenizer) == len(VOCAB) + 1
    for text in [*TEXTS, "Cats in 北京上海 sat.", "unknownword the"]:
        assert ours.encode(text) == tokenizer(text)["input_ids"], text
    assert ours.encode("the cat", "a dog") == tokenizer("the cat", "a dog")["input_ids"]
    assert ours.tokenize("北京上海") == ["北京上海"]
    # saved in bertkit's layout (vocab.txt + tokenizer_config.json), it reads back the same in both libraries
    ours.save_pretrained(tmp_path / "resaved")
    again = _transformers().AutoTokenizer.from_pretrained(tmp_path / "resaved")
    reread = Tokenizer.from_pretrained(tmp_path / "resaved")
    for text in [*TEXTS, "Cats in 北京上海 sat."]:
        assert again(text)["input_ids"] == tokenizer(text)["input_ids"] == reread.encode(text)


def test_a_tokenizer_json_that_is_not_wordpiece_is_refused_by_name(tmp_path):
    hf_tokenizer(tmp_path).save_pretrained(tmp_path / "saved")
    (tmp_path / "saved" / "vocab.txt").unlink(missing_ok=True)
    path = tmp_path / "saved" / "tokenizer.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["model"]["type"] = "BPE"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"tokenizer\.json: model type is 'BPE'; bertkit reads BERT's WordPiece"):
        Tokenizer.from_pretrained(tmp_path / "saved")
    data["model"]["type"], data["pre_tokenizer"] = "WordPiece", {"type": "Whitespace"}
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"pre_tokenizer is .*Whitespace.*; bertkit reads BERT's"):
        Tokenizer.from_pretrained(tmp_path / "saved")
