"""The encoder itself: padding invariance, segment ids matter, and clear errors for bad inputs."""

from __future__ import annotations

import pytest
import torch

from bertkit import BertConfig, BertForPreTraining, BertModel

CONFIG = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=37, max_position_embeddings=16)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return BertModel(CONFIG).eval()


def test_padding_does_not_change_real_tokens(model):
    ids = torch.tensor([[2, 10, 11, 12, 3]])
    alone = model(ids)
    padded = torch.cat([ids, torch.zeros(1, 6, dtype=torch.long)], dim=1)
    batch = torch.cat([padded, torch.randint(4, 100, (1, 11))])
    mask = torch.ones_like(batch)
    mask[0, 5:] = 0
    out = model(batch, attention_mask=mask)
    assert torch.allclose(out.last_hidden_state[0, :5], alone.last_hidden_state[0], atol=1e-6)
    assert torch.allclose(out.pooler_output[0], alone.pooler_output[0], atol=1e-6)


def test_segment_ids_and_mask_change_the_output(model):
    ids = torch.tensor([[2, 10, 11, 3, 12, 13, 3]])
    a = model(ids, token_type_ids=torch.zeros_like(ids)).last_hidden_state
    b = model(ids, token_type_ids=torch.tensor([[0, 0, 0, 0, 1, 1, 1]])).last_hidden_state
    assert (a - b).abs().max() > 1e-3
    c = model(ids, attention_mask=torch.tensor([[1, 1, 1, 1, 1, 1, 0]])).last_hidden_state
    assert (a[0, 0] - c[0, 0]).abs().max() > 1e-4


def test_fully_padded_row_stays_finite(model):
    out = model(torch.zeros(2, 4, dtype=torch.long), attention_mask=torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]]))
    assert torch.isfinite(out.last_hidden_state).all()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"input_ids": torch.ones(2, 5)}, TypeError, "integer tensor .* got dtype torch.float32"),
        ({"input_ids": torch.ones(5, dtype=torch.long)}, ValueError,
         r"shape \(batch, seq_len\), got \(5,\).*unsqueeze"),
        ({"input_ids": torch.ones(1, 17, dtype=torch.long)}, ValueError, "17 exceeds max_position_embeddings=16"),
        ({"input_ids": torch.tensor([[1, 100]])}, ValueError, r"token id 100, outside the vocabulary \[0, 100\)"),
        ({"input_ids": torch.tensor([[1, -1]])}, ValueError, "token id -1"),
        ({"input_ids": [[1, 2]]}, TypeError, "must be a torch.Tensor"),
        ({"input_ids": torch.ones(2, 5, dtype=torch.long), "attention_mask": torch.ones(2, 4, dtype=torch.long)},
         ValueError, r"attention_mask has shape \(2, 4\) but input_ids has shape \(2, 5\)"),
        ({"input_ids": torch.ones(1, 3, dtype=torch.long), "token_type_ids": torch.tensor([[0, 1, 2]])},
         ValueError, r"segment id 2, outside \[0, type_vocab_size=2\)"),
        ({"input_ids": torch.ones(1, 3, dtype=torch.long), "attention_mask": torch.ones(1, 3)},
         TypeError, "attention_mask must be an integer or bool tensor"),
    ],
)
def test_bad_inputs_get_clear_errors(model, kwargs, error, message):
    with pytest.raises(error, match=message):
        model(**kwargs)


def test_int32_and_bool_inputs_are_accepted(model):
    ids = torch.tensor([[2, 10, 11, 3]], dtype=torch.int32)
    a = model(ids, attention_mask=torch.ones(1, 4, dtype=torch.bool)).last_hidden_state
    b = model(ids.long()).last_hidden_state
    assert torch.equal(a, b)


def test_pretraining_output_shapes():
    model = BertForPreTraining(CONFIG)
    out = model(torch.randint(0, 100, (3, 9)))
    assert out.mlm_logits.shape == (3, 9, 100) and out.nsp_logits.shape == (3, 2)


def _rows_into_last_ffn(model):
    """A hook that records how many rows the last layer's feed-forward block receives at each forward."""
    seen = []
    model.layers[len(model.layers) - 1].ffn_in.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[0]))
    return seen


@pytest.mark.parametrize("unpad", [True, False])
def test_pooled_runs_the_last_layer_on_the_cls_rows_only(unpad):
    """`pooled` (what a [CLS] classifier reads) equals forward's pooler output on a padded batch (packed or masked
    dense) and an unpadded one, while the last layer's feed-forward sees one row per sequence; in training, with
    `narrow_last_layer` off, and through `forward`, every row."""
    torch.manual_seed(0)
    model = BertModel(CONFIG).eval()
    model.unpad = unpad
    seen = _rows_into_last_ffn(model)
    ids = torch.randint(4, 100, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, 5:], mask[2, 7:] = 0, 0
    types = torch.zeros_like(ids)
    types[1, 4:] = 1
    for batch in ((ids, mask, types), (ids, torch.ones_like(ids), types)):
        with torch.no_grad():
            expected = model(*batch).pooler_output
            rows_full = seen.pop()
            narrowed = model.pooled(*batch)
        assert seen.pop() == 3 and rows_full in (int(batch[1].sum()), 27)
        torch.testing.assert_close(narrowed, expected, atol=1e-6, rtol=1e-5)
    model.narrow_last_layer = False
    model.pooled(ids, mask, types)
    assert seen.pop() > 3
    model.narrow_last_layer = True
    model.train()
    model.pooled(ids, mask, types)
    assert seen.pop() > 3
