"""extend-vocab: a domain term becomes one token, every output on text without new tokens stays exactly as it was,
each new row is the mean of its old pieces' rows, the result loads in transformers, bad token files are refused by
file:line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from bertkit import BertConfig, BertForPreTraining, Tokenizer
from bertkit.cli import main
from bertkit.errors import CheckpointError, DataError
from bertkit.predict import Predictor
from bertkit.vocab import extend_vocab
from tests.conftest import randomize_

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "bert", "##kit", "co",
         "##vid", "##19", "北", "京", "大", "学", "在", ".", "-"]
OLD_TEXT = ["the cat sat on the mat.", "北京 the cat 在 大学"]  # no new token occurs in these


@pytest.fixture
def pretrained(tmp_path) -> Path:
    """A tiny random BertForPreTraining (MLM head with its own bias) and its vocabulary."""
    tokenizer = Tokenizer(VOCAB)
    model = randomize_(BertForPreTraining(BertConfig(**TINY, vocab_size=len(VOCAB))), seed=4)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def write_tokens(path: Path, *lines: str) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def test_a_domain_term_becomes_one_token_and_old_outputs_do_not_change(pretrained, tmp_path, capsys):
    tokens = write_tokens(tmp_path / "new.txt", "bertkit", "北京大学", "Covid-19", "cat")
    assert main(["extend-vocab", str(pretrained), "--add-tokens", str(tokens), "--output", str(tmp_path / "ext")]) == 0
    out, err = capsys.readouterr()
    assert f"{tmp_path / 'ext'}: 3 token(s) appended from id {len(VOCAB)}; vocab_size 22 -> 25" in out
    assert "北京大学\tadded token, from 北 京 大 学" in out and "bertkit\tWordPiece entry, from bert ##kit" in out
    assert f"{tokens}:4: 'cat' is already in the vocabulary (id 6); skipped" in err
    assert f"{tokens}:3: 'Covid-19' is added as 'covid-19' (the model normalises text so)" in err

    old_tok, new_tok = Tokenizer.from_pretrained(pretrained), Tokenizer.from_pretrained(tmp_path / "ext")
    text = "Bertkit reads 北京大学 COVID-19 data"
    assert old_tok.tokenize(text)[:5] == ["bert", "##kit", "[UNK]", "北", "京"]
    assert new_tok.tokenize(text) == ["bertkit", "[UNK]", "北京大学", "covid-19", "[UNK]"]
    ids = {t: new_tok.token_to_index[t] for t in ("bertkit", "北京大学", "covid-19")}
    assert sorted(ids.values()) == [22, 23, 24]

    old = BertForPreTraining.from_pretrained(pretrained, strict=True)
    new = BertForPreTraining.from_pretrained(tmp_path / "ext", strict=True)
    assert json.loads((tmp_path / "ext" / "config.json").read_text())["vocab_size"] == new.config.vocab_size == 25
    batch = old_tok(OLD_TEXT)
    assert torch.equal(batch["input_ids"], new_tok(OLD_TEXT)["input_ids"])
    with torch.no_grad():
        before = old(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        after = new(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    assert torch.equal(before.last_hidden_state, after.last_hidden_state)
    assert torch.equal(before.pooler_output, after.pooler_output) and torch.equal(before.nsp_logits, after.nsp_logits)
    assert torch.equal(before.mlm_logits, after.mlm_logits[..., : len(VOCAB)])  # the old tokens' scores

    # each new row (and MLM bias entry) is the mean of the rows of the pieces the old vocabulary gave
    for token, pieces in [("bertkit", ["bert", "##kit"]), ("北京大学", list("北京大学")),
                          ("covid-19", ["co", "##vid", "-", "[UNK]"])]:  # "19" alone is no word of the old vocabulary
        assert old_tok.tokenize(token) == pieces
        rows = old_tok.convert_tokens_to_ids(pieces)
        torch.testing.assert_close(new.bert.embeddings.word.weight[ids[token]],
                                   old.bert.embeddings.word.weight[rows].mean(0), rtol=0, atol=1e-7)
        torch.testing.assert_close(new.mlm_bias[ids[token]], old.mlm_bias[rows].mean(), rtol=0, atol=1e-7)
    assert torch.equal(new.bert.embeddings.word.weight[: len(VOCAB)], old.bert.embeddings.word.weight)


def test_the_extended_checkpoint_loads_in_transformers_with_the_same_outputs(pretrained, tmp_path):
    import transformers

    transformers.logging.set_verbosity_error()
    extend_vocab(pretrained, write_tokens(tmp_path / "new.txt", "bertkit", "北京大学"), tmp_path / "ext")
    theirs_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "ext")
    theirs = transformers.BertForPreTraining.from_pretrained(tmp_path / "ext").eval()
    ours_tok, ours = Tokenizer.from_pretrained(tmp_path / "ext"), BertForPreTraining.from_pretrained(tmp_path / "ext")
    texts = ["bertkit 在 北京大学", "the cat sat on the mat."]
    assert [theirs_tok(t)["input_ids"] for t in texts] == [ours_tok.encode(t) for t in texts]
    assert len(VOCAB) in ours_tok.encode(texts[0]) and len(VOCAB) + 1 in ours_tok.encode(texts[0])
    batch = ours_tok(texts)
    with torch.no_grad():
        expected = theirs(**batch).prediction_logits
        got = ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).mlm_logits
    keep = batch["attention_mask"].bool()
    torch.testing.assert_close(got[keep], expected[keep], atol=1e-5, rtol=1e-5)


def test_a_stored_mlm_decoder_and_a_tokenizer_json_checkpoint_are_extended(tmp_path):
    """transformers' layout: the vocabulary in tokenizer.json, and (as some checkpoints store it) the MLM decoder
    weight and bias beside the embeddings."""
    import transformers

    transformers.logging.set_verbosity_error()
    (tmp_path / "vocab").mkdir()
    (tmp_path / "vocab" / "vocab.txt").write_text("".join(f"{t}\n" for t in VOCAB))
    config = transformers.BertConfig(**TINY, vocab_size=len(VOCAB))
    torch.manual_seed(0)
    transformers.BertForMaskedLM(config).save_pretrained(tmp_path / "hf")
    transformers.BertTokenizerFast.from_pretrained(tmp_path / "vocab").save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "vocab.txt").unlink(missing_ok=True)
    state = load_file(tmp_path / "hf" / "model.safetensors")
    state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"].clone()
    state["cls.predictions.decoder.bias"] = state["cls.predictions.bias"].clone()
    save_file(state, str(tmp_path / "hf" / "model.safetensors"), metadata={"format": "pt"})

    extend_vocab(tmp_path / "hf", write_tokens(tmp_path / "new.txt", "bertkit"), tmp_path / "ext")
    grown = load_file(tmp_path / "ext" / "model.safetensors")
    for key in ("bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight",
                "cls.predictions.bias", "cls.predictions.decoder.bias"):
        assert grown[key].shape[0] == len(VOCAB) + 1, key
        torch.testing.assert_close(grown[key][len(VOCAB)], state[key][[10, 11]].mean(0), rtol=0, atol=1e-7)
    assert (tmp_path / "ext" / "vocab.txt").read_text().splitlines()[-1] == "bertkit"
    theirs = transformers.BertForMaskedLM.from_pretrained(tmp_path / "ext")
    assert theirs.config.vocab_size == len(VOCAB) + 1


def test_a_fine_tuned_checkpoint_keeps_its_task_and_its_predictions(tmp_path, capsys):
    from tests.reliability.tiny_checkpoints import make_classifier

    directory = make_classifier(tmp_path / "c")
    extend_vocab(directory, write_tokens(tmp_path / "new.txt", "酒店服务"), tmp_path / "ext")
    texts = ["这家酒店非常好", "房间太差了"]
    before = Predictor(directory, device="cpu", precision="fp32").predict(texts)
    after = Predictor(tmp_path / "ext", device="cpu", precision="fp32")
    assert after.task == "classification" and after.predict(texts) == before
    assert after.tokenizer.tokenize("酒店服务很好")[0] == "酒店服务"
    assert main(["info", str(tmp_path / "ext")]) == 0
    printed = capsys.readouterr().out
    assert f"vocabulary   {len(after.tokenizer)} tokens (vocab.txt, 1 of them added tokens)" in printed
    assert "task         classification (task.json)" in printed


@pytest.mark.parametrize(("lines", "message"), [
    (["bertkit", ""], r"new\.txt:2: blank line: expected one token a line"),
    (["bertkit", "two words"], r"new\.txt:2: 'two words' contains whitespace: expected one token a line"),
    (["##kit"], r"new\.txt:1: '##kit' is a continuation piece; give whole words"),
    (["\u0301"], r"new\.txt:1: '\u0301' is empty once normalised"),
    (["cat", "mat"], r"new\.txt: no new tokens: every line names a token the vocabulary has"),
])
def test_bad_token_files_are_refused_by_file_and_line(pretrained, tmp_path, lines, message):
    with pytest.raises(DataError, match=message):
        extend_vocab(pretrained, write_tokens(tmp_path / "new.txt", *lines), tmp_path / "ext")
    assert not (tmp_path / "ext").exists()


def test_an_existing_output_is_not_overwritten(pretrained, tmp_path, capsys):
    (tmp_path / "ext").mkdir()
    (tmp_path / "ext" / "keep.txt").write_text("mine")
    with pytest.raises(CheckpointError, match=r"ext: exists and is not an empty directory"):
        extend_vocab(pretrained, write_tokens(tmp_path / "new.txt", "bertkit"), tmp_path / "ext")
    assert main(["extend-vocab", str(pretrained), "--add-tokens", str(tmp_path / "missing.txt"), "--output",
                 str(tmp_path / "other")]) == 2
    assert "missing.txt" in capsys.readouterr().err
