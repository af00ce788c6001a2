"""Checkpoints move both ways between bertkit and transformers, and every broken one is refused in words."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from bertkit import BertConfig, BertForPreTraining, BertModel, CheckpointError, Tokenizer
from tests.conftest import batch_with_padding_and_pairs, randomize_

TINY = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)


def test_hf_to_bertkit_to_hf_round_trip(tmp_path, minilm_dir):
    ours = BertModel.from_pretrained(minilm_dir)
    ours.save_pretrained(tmp_path / "ours")
    shutil.copy(minilm_dir / "vocab.txt", tmp_path / "ours")
    reloaded, info = transformers.BertModel.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert info["missing_keys"] == set() or not info["missing_keys"]
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    original = transformers.BertModel.from_pretrained(minilm_dir).eval()
    ids, mask, types = batch_with_padding_and_pairs(30522, seed=2)
    with torch.no_grad():
        a = original(input_ids=ids, attention_mask=mask, token_type_ids=types)
        b = reloaded.eval()(input_ids=ids, attention_mask=mask, token_type_ids=types)
    assert torch.equal(a.last_hidden_state, b.last_hidden_state)
    assert torch.equal(a.pooler_output, b.pooler_output)
    # the saved tensors are exactly the original ones
    theirs = load_file(minilm_dir / "model.safetensors")
    saved = load_file(tmp_path / "ours" / "model.safetensors")
    assert set(saved) == {k for k in theirs if not k.endswith("position_ids")}
    assert all(torch.equal(saved[k], theirs[k]) for k in saved)


def test_bertkit_to_hf_to_bertkit_pretraining_round_trip(tmp_path):
    ours = randomize_(BertForPreTraining(BertConfig(**TINY)), seed=4).eval()
    ours.save_pretrained(tmp_path / "a")
    hf, info = transformers.BertForPreTraining.from_pretrained(tmp_path / "a", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert json.loads((tmp_path / "a" / "config.json").read_text())["architectures"] == ["BertForPreTraining"]
    ids, mask, types = batch_with_padding_and_pairs(TINY["vocab_size"], seed=5)
    with torch.no_grad():
        expected = ours(ids, mask, types)
        theirs = hf.eval()(input_ids=ids, attention_mask=mask, token_type_ids=types)
    keep = mask.bool()
    assert (theirs.prediction_logits[keep] - expected.mlm_logits[keep]).abs().max() <= 1e-5
    assert (theirs.seq_relationship_logits - expected.nsp_logits).abs().max() <= 1e-5
    hf.save_pretrained(tmp_path / "b")
    back = BertForPreTraining.from_pretrained(tmp_path / "b")
    for (name, p), (_, q) in zip(ours.state_dict().items(), back.state_dict().items(), strict=True):
        assert torch.equal(p, q), name


def test_base_model_from_pretraining_checkpoint_and_back(tmp_path, recwarn):
    full = randomize_(BertForPreTraining(BertConfig(**TINY)), seed=6)
    full.save_pretrained(tmp_path)
    base = BertModel.from_pretrained(tmp_path)
    assert any("not used by BertModel" in str(w.message) and "cls.seq_relationship" in str(w.message) for w in recwarn)
    assert torch.equal(base.embeddings.word.weight, full.bert.embeddings.word.weight)
    # a pre-training model from an encoder-only checkpoint: the heads are new, and said to be
    base.save_pretrained(tmp_path / "base")
    with pytest.warns(UserWarning, match="newly initialised.*mlm_bias"):
        BertForPreTraining.from_pretrained(tmp_path / "base")
    with pytest.raises(CheckpointError, match="missing weights"):
        BertForPreTraining.from_pretrained(tmp_path / "base", strict=True)


def test_legacy_bin_and_gamma_beta_names(tmp_path):
    model = randomize_(BertModel(BertConfig(**TINY)), seed=7)
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    renamed = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
               for k, v in state.items()}
    (tmp_path / "model.safetensors").unlink()
    torch.save(renamed, tmp_path / "pytorch_model.bin")
    loaded = BertModel.from_pretrained(tmp_path)
    for (name, p), (_, q) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(p, q), name


class _Exploit:
    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['PWNED_PATH'], 'w').write('pwned')",))


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, monkeypatch):
    BertConfig(**TINY).save_pretrained(tmp_path)
    marker = tmp_path / "pwned"
    monkeypatch.setenv("PWNED_PATH", str(marker))
    with open(tmp_path / "pytorch_model.bin", "wb") as handle:
        pickle.dump({"embeddings.word_embeddings.weight": _Exploit()}, handle)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        BertModel.from_pretrained(tmp_path)
    assert not marker.exists()


def test_errors_are_specific(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint directory not found"):
        BertModel.from_pretrained(tmp_path / "missing")
    tmp_path.joinpath("empty").mkdir()
    with pytest.raises(CheckpointError, match=r"config\.json: config file not found"):
        BertModel.from_pretrained(tmp_path / "empty")
    BertConfig(**TINY).save_pretrained(tmp_path / "noweights")
    with pytest.raises(CheckpointError, match="no weights found"):
        BertModel.from_pretrained(tmp_path / "noweights")

    model = BertModel(BertConfig(**TINY))
    model.save_pretrained(tmp_path / "ok")
    # vocab larger than the embedding table: refused at load time
    (tmp_path / "ok" / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
                                                         + [f"w{i}" for i in range(200)]) + "\n")
    with pytest.raises(CheckpointError, match=r"vocab\.txt has 205 tokens but .*vocab_size=120"):
        BertModel.from_pretrained(tmp_path / "ok")
    (tmp_path / "ok" / "vocab.txt").write_bytes(b"[PAD]\n\xff\xfe\n")
    with pytest.raises(CheckpointError, match=r"vocab\.txt:2: vocabulary is not UTF-8"):
        BertModel.from_pretrained(tmp_path / "ok")
    (tmp_path / "ok" / "vocab.txt").unlink()

    # every shape mismatch and every missing weight named in one message
    state = load_file(tmp_path / "ok" / "model.safetensors")
    state["encoder.layer.1.intermediate.dense.weight"] = torch.zeros(5, 32)
    state["encoder.layer.0.attention.self.key.bias"] = torch.zeros(31)
    del state["encoder.layer.1.output.LayerNorm.bias"]
    state["encoder.layer.9.extra.weight"] = torch.zeros(1)
    save_file(state, tmp_path / "ok" / "model.safetensors")
    with pytest.raises(CheckpointError) as info:
        BertModel.from_pretrained(tmp_path / "ok")
    message = str(info.value)
    assert "encoder.layer.1.intermediate.dense.weight: checkpoint has shape (5, 32), model expects (37, 32)" in message
    assert "attention.self.key.bias" in message and "(96,)" in message
    assert "layers.1.ffn_norm.bias" in message and "missing weights" in message
    with pytest.raises(CheckpointError, match=r"unexpected weights:\n  encoder\.layer\.9\.extra\.weight"):
        state["encoder.layer.1.intermediate.dense.weight"] = torch.zeros(37, 32)
        state["encoder.layer.0.attention.self.key.bias"] = torch.zeros(32)
        state["encoder.layer.1.output.LayerNorm.bias"] = torch.zeros(32)
        save_file(state, tmp_path / "ok" / "model.safetensors")
        BertModel.from_pretrained(tmp_path / "ok", strict=True)

    (tmp_path / "ok" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read weights"):
        BertModel.from_pretrained(tmp_path / "ok")


def test_config_errors(tmp_path):
    (tmp_path / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"config\.json: invalid JSON at line 1"):
        BertConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**TINY, "position_embedding_type": "relative_key"}))
    with pytest.raises(CheckpointError, match="position_embedding_type='relative_key' is not supported"):
        BertConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**TINY, "model_type": "roberta"}))
    with pytest.raises(CheckpointError, match="model_type is 'roberta'"):
        BertConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**TINY, "num_attention_heads": 5}))
    with pytest.raises(CheckpointError, match=r"hidden_size \(32\) must be divisible by num_attention_heads \(5\)"):
        BertConfig.from_pretrained(tmp_path)


def test_checkpoint_with_tokenizer_loads_together(tmp_path):
    tok = Tokenizer.train(["hello world hello there", "world of words"] * 5, vocab_size=60, min_frequency=1)
    model = BertModel(BertConfig(**{**TINY, "vocab_size": len(tok)}))
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    batch = Tokenizer.from_pretrained(tmp_path)(["hello world", "words"])
    out = BertModel.from_pretrained(tmp_path)(batch["input_ids"], batch["attention_mask"])
    assert out.last_hidden_state.shape == (2, batch["input_ids"].shape[1], 32)
