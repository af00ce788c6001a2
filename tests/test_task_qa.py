"""Extractive QA: the CMRC2018 scorer by hand, windows with a doc stride, real file reading, a tiny run."""

from __future__ import annotations

import json

import pytest

from bertkit import Tokenizer
from bertkit.tasks import qa
from bertkit.tasks.qa import Question, cmrc_em, cmrc_f1, make_windows, mixed_segmentation, read_questions
from bertkit.train import TrainConfig
from tests.conftest import shared_data


def test_cmrc_scorer_by_hand():
    # as the official script: removed punctuation does not end a non-Chinese run ("games" + "2008")
    assert mixed_segmentation("北京 Olympic Games，2008年", remove_punctuation=True) == [
        "北", "京", "olympic", "games2008", "年"]
    assert mixed_segmentation("北京 Olympic Games，2008年") == ["北", "京", "olympic", "games", "，", "2008", "年"]
    assert cmrc_em(["北京。"], "北京") == 1.0 and cmrc_em(["北京"], "北京市") == 0.0
    # LCS of 北京 / 北京市 = 2: P 2/3, R 1 -> F1 0.8; best over several gold answers
    assert cmrc_f1(["北京"], "北京市") == pytest.approx(0.8)
    assert cmrc_f1(["上海", "北京"], "北京市") == pytest.approx(0.8)
    assert cmrc_f1(["北京"], "上海") == 0.0


def test_cmrc2018_dev_reads_and_repairs_offsets():
    with pytest.warns(UserWarning, match="answer_start offsets did not point at the answer text"):
        questions = read_questions(shared_data("cmrc2018", "cmrc2018_dev.json"))
    assert len(questions) == 3219
    good = [q for q in questions if q.answer_start >= 0]
    assert all(q.context[q.answer_start : q.answer_start + len(q.answers[0])] == q.answers[0] for q in good)


def test_windows_cover_long_contexts_and_locate_the_answer():
    tok = Tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"问题答案文本在这里"])
    context = "文本" * 60 + "答案在这里" + "文本" * 60
    q = Question("1", "问题", context, ["答案"], context.index("答案"))
    windows = make_windows(tok, [q], max_seq_len=48, doc_stride=20, training=True)
    assert len(windows) > 5 and all(len(w.input_ids) <= 48 for w in windows)
    hits = [w for w in windows if w.start]
    assert hits
    for w in hits:
        s, e = w.offsets[w.start][0], w.offsets[w.end][1]
        assert context[s:e] == "答案"
    covered = {o for w in windows for o in w.offsets if o is not None}
    assert len(covered) == len(context)  # every character is in some window
    # a stride longer than a window's room for context would leave gaps: it is capped, nothing is skipped
    wide = make_windows(tok, [q], max_seq_len=48, doc_stride=128)
    assert len({o for w in wide for o in w.offsets if o is not None}) == len(context)


def test_tiny_end_to_end(tmp_path):
    c = "小明住在北京，小红住在上海。"
    items = [("谁住在北京", c, "小明"), ("谁住在上海", c, "小红"), ("小明住在哪", c, "北京"), ("小红住在哪", c, "上海")]
    data = {"data": [{"paragraphs": [{"context": c, "qas": [
        {"id": str(i), "question": q, "answers": [{"text": a, "answer_start": c.index(a)}]}]}
        for i, (q, c, a) in enumerate(items * 6)]}]}
    path = tmp_path / "train.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    tok = Tokenizer.train([q + c for q, c, _ in items], vocab_size=60, min_frequency=1)
    tok.save_pretrained(tmp_path / "vocab")
    config = TrainConfig(output_dir=str(tmp_path / "run"), batch_size=8, max_steps=150, lr=3e-3, warmup=5,
                         log_every=10, progress=False, bf16=False)
    result = qa.finetune(path, config, eval_file=path, tokenizer=tmp_path / "vocab", model_size="tiny",
                         max_seq_len=64)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert losses[-1] < losses[0] * 0.5
    assert result.metrics["em"] >= 50  # chance is ~1/50 spans
    model = qa.BertForQuestionAnswering.from_pretrained(tmp_path / "run" / "model")
    out = qa.predict(model, Tokenizer.from_pretrained(tmp_path / "run" / "model"), qa.QAInfo(64, 128),
                     [{"question": "谁住在上海", "context": "小明住在北京，小红住在上海。"}])
    context = "小明住在北京，小红住在上海。"
    assert out[0]["answer"] and context[out[0]["start"] : out[0]["end"]] == out[0]["answer"]
