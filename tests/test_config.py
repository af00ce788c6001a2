"""BertConfig: presets, config.json round trips that keep unknown keys, and refusals of unsupported settings."""

from __future__ import annotations

import json

import pytest

from bertkit import BertConfig, BertForPreTraining, BertModel
from bertkit.config import PRESETS
from bertkit.model import num_parameters


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds(name):
    config = BertConfig.preset(name, vocab_size=1000)
    expected = {"nano": (2, 64), "tiny": (2, 128), "mini": (4, 256), "small": (4, 512), "medium": (8, 512),
                "base": (12, 768)}[name]
    assert (config.num_hidden_layers, config.hidden_size) == expected
    assert config.intermediate_size == 4 * config.hidden_size
    if name != "base":  # building base costs seconds; its size is checked below
        model = BertModel(config)
        assert len(model.layers) == expected[0]


def test_base_parameter_count_matches_published_bert_base():
    # BERT-base uncased, as transformers.BertModel counts it: 109,482,240 parameters
    assert num_parameters(BertModel(BertConfig.preset("base"))) == 109_482_240


def test_pretraining_decoder_is_tied_to_word_embeddings():
    model = BertForPreTraining(BertConfig.preset("tiny", vocab_size=50))
    names = [n for n, _ in model.named_parameters()]
    assert not any("decoder" in n for n in names)
    out = model(__import__("torch").tensor([[2, 7, 9, 3]]))
    out.mlm_logits.sum().backward()
    assert model.bert.embeddings.word.weight.grad[9].abs().sum() > 0


def test_json_round_trip_keeps_extra_keys(tmp_path):
    data = {"vocab_size": 99, "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 100, "_name_or_path": "somewhere", "id2label": {"0": "NEG", "1": "POS"},
            "my_custom_key": [1, 2, 3]}
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.warns(UserWarning, match=r"\['my_custom_key'\] are not used by bertkit; they are kept"):
        config = BertConfig.from_pretrained(tmp_path)
    assert config.vocab_size == 99 and config.extra["my_custom_key"] == [1, 2, 3]
    config.save_pretrained(tmp_path / "out")
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    for key, value in data.items():
        assert written[key] == value
    assert written["model_type"] == "bert"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"hidden_act": "swish"}, "hidden_act 'swish' is not supported"),
        ({"num_hidden_layers": 0}, "num_hidden_layers must be a positive integer"),
        ({"hidden_dropout_prob": 1.5}, r"hidden_dropout_prob must be in \[0, 1\)"),
        ({"pad_token_id": 500, "vocab_size": 100}, r"pad_token_id \(500\) must be in \[0, vocab_size=100\)"),
        ({"layer_norm_eps": "1e-12"}, r"layer_norm_eps must be a finite number, got '1e-12'"),
        ({"initializer_range": float("nan")}, r"initializer_range must be a finite number"),
        ({"max_position_embeddings": 10**12}, r"max_position_embeddings must be at most 131,072"),
        ({"num_hidden_layers": 512, "hidden_size": 16384, "num_attention_heads": 16, "intermediate_size": 65536},
         r"more than bertkit's limit of 10,000,000,000"),
    ],
)
def test_invalid_values_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        BertConfig(**overrides)


def test_unknown_preset_and_unknown_field():
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        BertConfig.preset("huge")
    with pytest.raises(TypeError):
        BertConfig(num_heads=4)  # spelled-out HF names only; a typo is not silently ignored
