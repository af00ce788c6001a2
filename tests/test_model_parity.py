"""bertkit's encoder and pre-training heads equal transformers' numerically (fp32, eval mode)."""

from __future__ import annotations

import pytest
import torch
import transformers

from bertkit import BertConfig, BertForPreTraining, BertModel
from tests.conftest import batch_with_padding_and_pairs, randomize_

TOL = 1e-5

CONFIGS = {
    # hidden not a power of two, intermediate odd, three segment types, one layer
    "odd": dict(vocab_size=97, hidden_size=60, num_hidden_layers=1, num_attention_heads=3, intermediate_size=37,
                type_vocab_size=3, max_position_embeddings=24),
    "tiny": dict(vocab_size=211, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37),
    "tanh-gelu": dict(vocab_size=150, hidden_size=48, num_hidden_layers=3, num_attention_heads=6,
                      intermediate_size=64, hidden_act="gelu_new", layer_norm_eps=1e-6, type_vocab_size=1),
    "relu": dict(vocab_size=120, hidden_size=40, num_hidden_layers=2, num_attention_heads=5, intermediate_size=80,
                 hidden_act="relu", pad_token_id=3),
}


def hf_twin(hf_class, config: BertConfig, attn: str):
    hf_config = transformers.BertConfig(**{k: v for k, v in config.to_dict().items() if k != "architectures"})
    hf_config._attn_implementation = attn
    return randomize_(hf_class(hf_config).eval(), seed=1)


def real_positions(mask: torch.Tensor) -> torch.Tensor:
    return mask.bool()


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_pretraining_parity_random_weights(tmp_path, name, attn):
    config = BertConfig(**CONFIGS[name])
    hf = hf_twin(transformers.BertForPreTraining, config, attn)
    hf.save_pretrained(tmp_path)
    ours = BertForPreTraining.from_pretrained(tmp_path)
    if config.type_vocab_size == 1:
        ids, mask, _ = batch_with_padding_and_pairs(config.vocab_size, 1)
        types = torch.zeros_like(ids)
    else:
        ids, mask, types = batch_with_padding_and_pairs(config.vocab_size, config.type_vocab_size)
    if config.pad_token_id != 0:
        ids[mask == 0] = config.pad_token_id
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        hf_base = hf.bert(input_ids=ids, attention_mask=mask, token_type_ids=types)
        got = ours(ids, attention_mask=mask, token_type_ids=types)
    keep = real_positions(mask)
    assert (got.last_hidden_state[keep] - hf_base.last_hidden_state[keep]).abs().max() <= TOL
    assert (got.pooler_output - hf_base.pooler_output).abs().max() <= TOL
    assert (got.mlm_logits[keep] - expected.prediction_logits[keep]).abs().max() <= TOL
    assert (got.nsp_logits - expected.seq_relationship_logits).abs().max() <= TOL
    # the checks above compare something non-trivial
    assert got.mlm_logits.abs().max() > 0.1 and got.pooler_output.std() > 0.01


def test_base_model_parity_random_weights(tmp_path):
    config = BertConfig(**CONFIGS["odd"])
    hf = hf_twin(transformers.BertModel, config, "sdpa")
    hf.save_pretrained(tmp_path)
    ours = BertModel.from_pretrained(tmp_path)
    ids, mask, types = batch_with_padding_and_pairs(config.vocab_size, config.type_vocab_size, seed=3)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        got = ours(ids, attention_mask=mask, token_type_ids=types)
    keep = real_positions(mask)
    assert (got.last_hidden_state[keep] - expected.last_hidden_state[keep]).abs().max() <= TOL
    assert (got.pooler_output - expected.pooler_output).abs().max() <= TOL


def test_parity_real_minilm_weights(minilm_dir):
    from bertkit import Tokenizer

    hf = transformers.BertModel.from_pretrained(minilm_dir).eval()
    ours = BertModel.from_pretrained(minilm_dir)
    tok = Tokenizer.from_pretrained(minilm_dir)
    batch = tok(
        ["The cat sat on the mat.", "BERT reads both directions at once, which is the whole point.", "hi"],
        ["Where did the cat sit?", "Why does that matter?", "a pair with a longer second segment than first"],
    )
    assert (batch["attention_mask"] == 0).any() and (batch["token_type_ids"] == 1).any()
    with torch.no_grad():
        expected = hf(**batch)
        got = ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    keep = real_positions(batch["attention_mask"])
    assert (got.last_hidden_state[keep] - expected.last_hidden_state[keep]).abs().max() <= TOL
    assert (got.pooler_output - expected.pooler_output).abs().max() <= TOL


def test_pretraining_heads_on_real_minilm_weights(tmp_path, minilm_dir):
    """MiniLM ships no MLM/NSP heads: give both libraries the same random heads on top of the real encoder."""
    hf = transformers.BertForPreTraining.from_pretrained(minilm_dir).eval()
    randomize_(hf.cls, seed=5)
    hf.save_pretrained(tmp_path)
    ours = BertForPreTraining.from_pretrained(tmp_path)
    ids, mask, types = batch_with_padding_and_pairs(30522, seed=7)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        got = ours(ids, attention_mask=mask, token_type_ids=types)
    keep = real_positions(mask)
    assert (got.mlm_logits[keep] - expected.prediction_logits[keep]).abs().max() <= TOL
    assert (got.nsp_logits - expected.seq_relationship_logits).abs().max() <= TOL
