"""Multiple choice: the COPA / C3 / JSONL readers by hand, choice masking, transformers parity, a tiny end-to-end
fine-tune and prediction through the Predictor."""

from __future__ import annotations

import json

import pytest
import torch

from bertkit import BertConfig, DataError, Tokenizer
from bertkit.predict import Predictor
from bertkit.tasks import multiple_choice as mc
from bertkit.train import TrainConfig
from tests.conftest import randomize_, shared_data

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)


def test_copa_and_jsonl_readers(tmp_path):
    copa = tmp_path / "copa.jsonl"
    copa.write_text(json.dumps({"premise": "The bar closed.", "choice1": "It was crowded.", "choice2": "It was 3 AM.",
                                "question": "cause", "label": 1, "idx": 98}) + "\n\n")
    [q] = mc.read_questions(copa, "copa")
    assert (q.context, q.question, q.choices, q.label, q.line) == (
        "The bar closed.", "What was the cause?", ["It was crowded.", "It was 3 AM."], 1, 1)
    copa.write_text(json.dumps({"premise": "p", "choice1": "a", "choice2": "b", "question": "why", "label": 0}))
    with pytest.raises(DataError, match=r'copa.jsonl:1: bad copa record: "question" must be "cause" or "effect"'):
        mc.read_questions(copa, "copa")
    plain = tmp_path / "mc.jsonl"
    plain.write_text(json.dumps({"question": "q", "choices": ["x", "y", "z"], "answer": "z"}) + "\n"
                     + json.dumps({"question": "q", "choices": ["x", "y"], "label": 2}) + "\n")
    with pytest.raises(DataError, match=r'mc.jsonl:2: .*"label" must be a choice index from 0 to 1, got 2'):
        mc.read_questions(plain)
    plain.write_text(json.dumps({"question": "q", "choices": ["x", "y", "z"], "answer": "z"}) + "\n")
    assert mc.read_questions(plain)[0].label == 2


def test_c3_reader_counts_what_it_skips(tmp_path):
    data = [[["女：你喜欢喝咖啡吗?", "男：不太喜欢，我爱喝茶。"],
             [{"question": "男的爱喝什么?", "choice": ["茶", "牛奶", "咖啡"], "answer": "茶"},
              {"question": "女的问什么?", "choice": ["茶", "水"], "answer": "咖啡"}], "8-18"],
            [["第二段。"], [{"question": "哪个?", "choice": ["甲", "乙", "甲"], "answer": "甲"}], "9-1"]]
    (tmp_path / "c3-d-train.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    with pytest.warns(UserWarning, match=r"skipped 1 question\(s\) whose answer is not one of its choices \(line 1\); "
                                         r"1 question\(s\) with a duplicated choice"):
        questions = mc.read_questions(tmp_path, "c3")
    assert [(q.question, q.label, len(q.choices)) for q in questions] == [("男的爱喝什么?", 0, 3), ("哪个?", 0, 3)]
    assert questions[0].context == "女：你喜欢喝咖啡吗?\n男：不太喜欢，我爱喝茶。"


def test_the_real_c3_and_copa_files_read():
    train = mc.read_questions(shared_data("superglue", "COPA", "train.jsonl"), "copa")
    extra = mc.read_questions(shared_data("superglue", "COPA", "unlabeled.jsonl"), "copa")
    assert len(train) + len(extra) == 400 and all(q.label is not None for q in train + extra)
    with pytest.warns(UserWarning, match="duplicated choice"):
        c3 = mc.read_questions(shared_data("clue", "c3"), "c3", split="dev")
    assert len(c3) == 3816 and {len(q.choices) for q in c3} <= {2, 3, 4}


def test_encoding_and_choice_mask():
    tok = Tokenizer.train(["the bar closed it was crowded late"], vocab_size=60, min_frequency=1)
    questions = [mc.Question("the bar closed", "why", ["crowded", "late"], 1, 1),
                 mc.Question("", "why", ["a", "b", "late"], 2, 2)]
    rows, cut = mc.encode(tok, questions, 32)
    assert cut == 0 and [len(r[0]) for r in rows] == [2, 3] and [r[2] for r in rows] == [1, 2]
    assert rows[0][0][1] == tok.encode("the bar closed", "why late")  # [CLS] context [SEP] question choice [SEP]
    assert rows[1][0][2] == tok.encode("why", "late")  # no context: [CLS] question [SEP] choice [SEP]
    batch = mc.collate(rows, tok.pad_token_id)
    assert batch["input_ids"].shape[0] == 5  # only real choices are computed
    assert batch["choice_mask"].tolist() == [[True, True, False], [True, True, True]]
    model = mc.BertForMultipleChoice(BertConfig(**TINY, vocab_size=len(tok))).eval()
    scores = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], batch["choice_mask"])
    assert scores.shape == (2, 3) and scores[0, 2] == float("-inf") and torch.isfinite(scores[1]).all()


def test_transformers_loads_the_head_with_the_same_scores(tmp_path):
    import transformers

    model = randomize_(mc.BertForMultipleChoice(BertConfig(**TINY, vocab_size=99)), seed=2).eval()
    model.save_pretrained(tmp_path)
    theirs = transformers.AutoModelForMultipleChoice.from_pretrained(tmp_path).eval()
    assert type(theirs).__name__ == "BertForMultipleChoice"
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 99, (2, 3, 10), generator=generator)  # (B, C, T)
    mask = torch.ones_like(ids)
    mask[0, 1, 6:] = 0
    types = torch.zeros_like(ids)
    types[..., 5:] = 1
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        ours = model(ids.view(6, 10), mask.view(6, 10), types.view(6, 10), torch.ones(2, 3, dtype=torch.bool))
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_tiny_end_to_end_and_predictor(tmp_path):
    # the right choice is the colour the question's word calls up (sky -> blue): each choice is scored with the
    # question, so this needs the two read together; 2 to 4 choices per question
    colours = ["red", "blue", "green", "gray"]
    clue = {"red": "fire", "blue": "sky", "green": "grass", "gray": "ash"}
    rows = []
    for i in range(48):
        k = 2 + i % 3
        choices = [colours[(i + j) % 4] for j in range(k)]
        rows.append({"context": "pick a colour", "question": clue[choices[i % k]], "choices": choices, "label": i % k})
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    Tokenizer.train(["pick a colour " + " ".join(colours) + " " + " ".join(clue.values())], vocab_size=60,
                    min_frequency=1).save_pretrained(tmp_path / "vocab")
    config = TrainConfig(output_dir=str(tmp_path / "run"), batch_size=8, max_steps=200, lr=1e-3, warmup=10,
                         log_every=20, progress=False, bf16=False, seed=0)
    result = mc.finetune(data, config, eval_file=data, tokenizer=tmp_path / "vocab", model_size="tiny", max_seq_len=24)
    assert result.metrics["accuracy"] == 1.0
    predictor = Predictor(tmp_path / "run" / "model", precision="fp32")
    assert predictor.task == "multiple_choice"
    context = "pick a colour"
    out = predictor.predict([{"question": "sky", "choices": ["red", "blue"], "context": context},
                             {"question": "ash", "choices": ["green", "gray", "red", "blue"], "context": context}])
    assert [o["answer"] for o in out] == ["blue", "gray"] and [o["index"] for o in out] == [1, 1]
    assert abs(sum(out[1]["probabilities"].values()) - 1) < 1e-5 and len(out[0]["scores"]) == 2
    with pytest.raises(DataError, match="input 0: 'choices' must be a list of strings, got a list with a non-string"):
        predictor.predict([{"question": "blue", "choices": ["red", 3]}])
    with pytest.raises(DataError, match="input 0: 'choices' needs two or more choices"):
        predictor.predict([{"question": "blue", "choices": ["red"]}])
