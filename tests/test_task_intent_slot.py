"""Joint intent + slot filling: real ATIS/CAIS readers, hand-computed metrics, a tiny end-to-end run."""

from __future__ import annotations

import pytest

from bertkit import DataError, Tokenizer
from bertkit.predict import Predictor
from bertkit.tasks import intent_slot
from bertkit.tasks.intent_slot import Utterance, read_utterances, scores
from bertkit.train import TrainConfig
from tests.conftest import shared_data


def test_real_datasets_read():
    atis = read_utterances(shared_data("atis", "train"), "atis")
    assert len(atis) == 4478 and len({u.intent for u in atis}) == 21
    assert atis[0].words[5] == "baltimore" and atis[0].tags[5] == "B-fromloc.city_name"
    cais = read_utterances(shared_data("cais", "test"), "cais")
    assert len(cais) == 1012  # SOURCE.md: the official file has 1012, not the paper's 1024
    assert any(" " in u.words for u in cais)  # space tokens kept (the tag stays aligned)


def test_misaligned_files_are_named(tmp_path):
    (tmp_path / "seq.in").write_text("show me flights\nhi\n")
    (tmp_path / "seq.out").write_text("O O O\nO O\n")
    (tmp_path / "label").write_text("atis_flight\ngreet\n")
    with pytest.raises(DataError, match=r"seq\.out:2: 1 words in seq\.in but 2 tags in seq\.out"):
        read_utterances(tmp_path, "atis")
    (tmp_path / "label").write_text("atis_flight\n")
    with pytest.raises(DataError, match=r"seq\.in has 2 lines, seq\.out 2, label 1"):
        read_utterances(tmp_path, "atis")


def test_scores_by_hand():
    gold = [Utterance(["a", "b"], ["B-x", "O"], "i1", 1), Utterance(["c", "d"], ["B-y", "I-y"], "i2", 2),
            Utterance(["e"], ["O"], "i1", 3)]
    result = scores(gold, ["i1", "i2", "i2"], [["B-x", "O"], ["B-y", "O"], ["O"]])
    assert result["intent_accuracy"] == pytest.approx(2 / 3)
    # gold slots: x(0), y(0-1); predicted: x(0), y(0): 1 correct of 2 -> P 1/2, R 1/2
    assert result["slot_f1"] == pytest.approx(0.5)
    assert result["exact_match"] == pytest.approx(1 / 3)  # only the first is right in intent and every tag


def test_tiny_end_to_end(tmp_path):
    rows = [("play song by adele", "O B-song O B-singer", "PlayMusic"),
            ("weather in paris", "O O B-city", "GetWeather"),
            ("play music by queen", "O B-song O B-singer", "PlayMusic"),
            ("weather in rome", "O O B-city", "GetWeather")] * 6
    d = tmp_path / "train"
    d.mkdir()
    (d / "seq.in").write_text("\n".join(r[0] for r in rows) + "\n")
    (d / "seq.out").write_text("\n".join(r[1] for r in rows) + "\n")
    (d / "label").write_text("\n".join(r[2] for r in rows) + "\n")
    tok = Tokenizer.train([d / "seq.in"], vocab_size=80, min_frequency=1)
    tok.save_pretrained(tmp_path / "vocab")
    config = TrainConfig(output_dir=str(tmp_path / "run"), batch_size=8, max_steps=40, lr=3e-3, warmup=2,
                         log_every=10, progress=False, bf16=False)
    result = intent_slot.finetune(d, config, eval_file=d, tokenizer=tmp_path / "vocab", model_size="tiny",
                                  options=intent_slot.IntentSlotOptions(crf=True))
    assert result.metrics["intent_accuracy"] == 1.0 and result.metrics["slot_f1"] > 0.9
    out = Predictor(tmp_path / "run" / "model").predict(["weather in rome"])
    assert out[0]["intent"] == "GetWeather"
    assert out[0]["slots"] == [{"type": "city", "start": 11, "end": 15, "text": "rome"}]
