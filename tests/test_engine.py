"""The fast engine: packed (no-padding) path equals the padded one, sparse MLM, fast dropout, bf16 accuracy."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from bertkit import BertConfig, BertForPreTraining, BertModel, Tokenizer
from bertkit.model import Layout, dropout, keep_mask
from tests.conftest import batch_with_padding_and_pairs, randomize_

CONFIG = BertConfig(vocab_size=150, hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                    type_vocab_size=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _pair(model):
    padded = copy.deepcopy(model)
    padded.bert.unpad = False
    return model, padded


def test_layout_packs_only_real_tokens():
    _, mask, _ = batch_with_padding_and_pairs(100)
    layout = Layout(mask, *mask.shape, torch.float32)
    assert layout.packed and layout.indices.numel() == int(mask.sum())
    x = torch.randn(*mask.shape, 3)
    rows = layout.rows(x)
    assert torch.equal(rows, x[mask.bool()])
    back = layout.pad(rows)
    assert torch.equal(back[mask.bool()], x[mask.bool()]) and back[~mask.bool()].abs().sum() == 0
    assert not Layout(torch.ones(2, 3), 2, 3, torch.float32).packed
    left_padded = torch.tensor([[0, 1, 1], [1, 1, 1]])
    assert not Layout(left_padded, 2, 3, torch.float32).packed  # falls back to the masked dense path


def test_packed_equals_padded_forward_and_backward():
    torch.manual_seed(0)
    packed, padded = _pair(randomize_(BertForPreTraining(CONFIG), seed=3).train())
    ids, mask, types = batch_with_padding_and_pairs(CONFIG.vocab_size, seed=1)
    selected = (torch.rand(mask.shape) < 0.3) & mask.bool()
    losses = []
    for model in (packed, padded):
        out = model(ids, mask, types, mlm_positions=selected)
        loss = F.cross_entropy(out.mlm_logits, ids[selected]) + out.nsp_logits.sum() + out.pooler_output.sum()
        loss.backward()
        losses.append((out, loss))
    (a, la), (b, lb) = losses
    keep = mask.bool()
    assert (a.last_hidden_state[keep] - b.last_hidden_state[keep]).abs().max() < 1e-5
    assert a.last_hidden_state[~keep].abs().max() == 0  # packed: nothing computed, zeros at padding
    assert (a.mlm_logits - b.mlm_logits).abs().max() < 1e-5
    assert (la - lb).abs() < 1e-5
    for (name, p), (_, q) in zip(packed.named_parameters(), padded.named_parameters(), strict=True):
        assert (p.grad - q.grad).abs().max() < 1e-5, name


def test_sparse_mlm_equals_dense_logits_at_selected_positions():
    model = randomize_(BertForPreTraining(CONFIG), seed=4).eval()
    ids, mask, types = batch_with_padding_and_pairs(CONFIG.vocab_size, seed=2)
    selected = (torch.rand(mask.shape, generator=torch.Generator().manual_seed(0)) < 0.2) & mask.bool()
    with torch.no_grad():
        dense = model(ids, mask, types).mlm_logits  # (B, T, V)
        sparse = model(ids, mask, types, mlm_positions=selected).mlm_logits  # (M, V)
    assert sparse.shape == (int(selected.sum()), CONFIG.vocab_size)
    assert torch.allclose(sparse, dense[selected], atol=1e-5)
    with pytest.raises(ValueError, match="selects padding positions"):
        model(ids, mask, types, mlm_positions=~mask.bool())
    with pytest.raises(ValueError, match="must be a bool tensor"):
        model(ids, mask, types, mlm_positions=selected.long())


def test_keep_mask_statistics():
    torch.manual_seed(0)
    for p in (0.1, 0.5, 0.02):
        mask = keep_mask((1_000_000,), p, torch.device("cpu"))
        kept = mask.float().mean().item()
        # binomial standard error at n = 1e6 is <= 5e-4; 5 sigma
        assert abs(kept - (1 - p)) < 2.5e-3, (p, kept)
    # independent across positions: neighbours agree as often as chance says
    mask = keep_mask((1_000_000,), 0.5, torch.device("cpu"))
    agree = (mask[1:] == mask[:-1]).float().mean().item()
    assert abs(agree - 0.5) < 2.5e-3


def test_dropout_is_unbiased_seeded_and_off_in_eval():
    x = torch.ones(200_000)
    torch.manual_seed(1)
    a = dropout(x, 0.1, training=True)
    torch.manual_seed(1)
    b = dropout(x, 0.1, training=True)
    assert torch.equal(a, b)  # reproducible from torch's seed
    assert a.unique().tolist() == [0.0, pytest.approx(1 / 0.9)]
    assert abs(a.mean().item() - 1.0) < 0.01  # inverted dropout keeps the expectation
    assert dropout(x, 0.1, training=False) is x


def test_bf16_stays_close_to_fp32_on_real_weights(minilm_dir):
    tok = Tokenizer.from_pretrained(minilm_dir)
    fp32 = BertModel.from_pretrained(minilm_dir)
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    batch = tok(["The quick brown fox jumps over the lazy dog.", "BERT in bfloat16 on a CPU.",
                 "A much longer sentence, with commas, numbers like 1998, and several clauses to attend over."],
                ["pairs too", "yes", "no"])
    with torch.inference_mode():
        a = fp32(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        b = bf16(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    assert b.last_hidden_state.dtype == torch.bfloat16
    keep = batch["attention_mask"].bool()
    per_token = F.cosine_similarity(a.last_hidden_state[keep], b.last_hidden_state[keep].float(), dim=-1)
    assert per_token.min() >= 0.999, per_token.min()
    pooled = F.cosine_similarity(a.pooler_output, b.pooler_output.float(), dim=-1)
    assert pooled.min() >= 0.999


def test_autocast_training_keeps_fp32_master_weights():
    torch.manual_seed(0)
    model = BertForPreTraining(CONFIG).train()
    ids, mask, types = batch_with_padding_and_pairs(CONFIG.vocab_size, seed=5)
    selected = mask.bool() & (torch.rand(mask.shape) < 0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, mask, types, mlm_positions=selected)
        loss = F.cross_entropy(out.mlm_logits.float(), ids[selected])
    assert out.mlm_logits.dtype == torch.bfloat16
    loss.backward()
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters()
               if p.grad is not None)
    assert torch.isfinite(loss)


def test_low_precision_cross_entropy_matches_autograd():
    from bertkit.losses import cross_entropy

    torch.manual_seed(0)
    logits = (torch.randn(300, 1000) * 4).to(torch.bfloat16)
    targets = torch.randint(0, 1000, (300,))
    a = logits.clone().requires_grad_()
    reference = F.cross_entropy(a.float(), targets)
    reference.backward()
    b = logits.clone().requires_grad_()
    ours = cross_entropy(b, targets)
    (ours * 2).backward()  # a non-unit upstream gradient
    assert abs(ours.item() - reference.item()) < 1e-5
    expected = 2 * a.grad.float()
    # both are rounded to bf16 once, from fp32 values that may straddle a rounding boundary: at most 1 ulp apart
    assert ((b.grad.float() - expected).abs() <= expected.abs() * 2**-7 + 1e-12).all()
    assert b.grad.dtype == torch.bfloat16
    with pytest.raises(ValueError, match=r"expected logits \(M, C\) and targets \(M,\)"):
        cross_entropy(logits, targets[:5])
    empty = cross_entropy(torch.zeros(0, 7, requires_grad=True), torch.zeros(0, dtype=torch.long))
    assert empty.item() == 0.0


def test_attention_maps_equal_transformers_attentions(minilm_dir):
    import transformers

    tok = Tokenizer.from_pretrained(minilm_dir)
    ours = BertModel.from_pretrained(minilm_dir)
    hf = transformers.BertModel.from_pretrained(minilm_dir, attn_implementation="eager").eval()
    batch = tok(["The cat sat on the mat.", "Attention, please."])
    maps = ours.attention_maps(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    with torch.no_grad():
        expected = hf(**batch, output_attentions=True).attentions
    assert maps.shape == (6, 2, 12, batch["input_ids"].shape[1], batch["input_ids"].shape[1])
    keep = batch["attention_mask"].bool()
    for layer in range(6):
        for b in range(2):
            real = keep[b]
            got = maps[layer, b][:, real][:, :, real]
            want = expected[layer][b][:, real][:, :, real]
            assert (got - want).abs().max() < 1e-5
    assert torch.allclose(maps.sum(-1), torch.ones(maps.shape[:-1]), atol=1e-5)  # rows are distributions
