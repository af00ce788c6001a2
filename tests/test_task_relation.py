"""Relation extraction: marking, the SemEval official score by hand, real readers, a tiny end-to-end run."""

from __future__ import annotations

import json

import pytest

from bertkit import DataError, Tokenizer
from bertkit.tasks import relation
from bertkit.tasks.relation import macro_f1_without, mark, read_examples, semeval_official_f1
from bertkit.train import TrainConfig
from tests.conftest import shared_data


def test_mark_inserts_markers_around_first_non_overlapping_occurrences():
    assert mark("张三的父亲是张三丰", "张三丰", "张三") == " <e2> 张三 </e2> 的父亲是 <e1> 张三丰 </e1> "
    assert mark("东方航空与上航合并", "东方航空", "上航").startswith(" <e1> 东方航空 </e1> 与 <e2> 上航 </e2> ")
    expected = " <e2> 云天化集团 </e2> 旗下只保留 <e1> 云天化 </e1> "
    assert mark("云天化集团旗下只保留云天化", "云天化", "云天化集团") == expected
    assert mark("莫扎特的歌曲", "莫扎特", "莫扎特的歌曲") == " <e2>  <e1> 莫扎特 </e1> 的歌曲 </e2> "
    with pytest.raises(ValueError, match=r"head entity .北京. not found"):
        mark("上海很大", "北京", "上海")


def test_semeval_official_score_by_hand():
    gold = ["Cause-Effect(e1,e2)", "Cause-Effect(e2,e1)", "Other", "Message-Topic(e1,e2)"]
    pred = ["Cause-Effect(e1,e2)", "Cause-Effect(e1,e2)", "Message-Topic(e1,e2)", "Message-Topic(e1,e2)"]
    # Cause-Effect: correct 1 (the wrong direction is wrong), predicted 2, gold 2 -> P=R=F1=0.5
    # Message-Topic: correct 1, predicted 2 (one is really Other), gold 1 -> P=0.5 R=1 F1=2/3
    score = semeval_official_f1(gold, pred)
    assert score["official_macro_f1"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert score["accuracy"] == pytest.approx(0.5)
    # FinRE/SanWen: macro over relations, the no-relation class excluded
    result = macro_f1_without(["a", "b", "unknown", "a"], ["a", "unknown", "unknown", "b"], "unknown")
    # a: tp1 fp0 fn1 -> 2/3; b: tp0 fp1 fn1 -> 0
    assert result["macro_f1"] == pytest.approx(1 / 3)


def test_real_files_read():
    assert len(read_examples(shared_data("semeval2010_task8", "train.tsv"), "semeval")) == 8000
    assert len(read_examples(shared_data("semeval2010_task8", "test.tsv"), "semeval")) == 2717
    finre = read_examples(shared_data("chinese_re_finre", "valid.txt"), "chinese_nre")
    assert len(finre) == 1489 and all("<e1>" in e.text and "<e2>" in e.text for e in finre)
    assert len(read_examples(shared_data("chinese_re_sanwen", "test.txt"), "chinese_nre")) == 2220


def test_malformed_lines(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("Other\tno markers here\n")
    with pytest.raises(DataError, match=r"bad\.tsv:1: the sentence must contain each of <e1>"):
        read_examples(bad, "semeval")
    bad.write_text("a\tb\tunknown\n")
    with pytest.raises(DataError, match=r"bad\.tsv:1: expected 4 tab-separated columns"):
        read_examples(bad, "chinese_nre")


def test_tiny_end_to_end(tmp_path):
    rows = [("Cause-Effect(e1,e2)", "the <e1> fire </e1> caused the <e2> smoke </e2> ."),
            ("Cause-Effect(e2,e1)", "the <e1> smoke </e1> came from the <e2> fire </e2> ."),
            ("Other", "the <e1> cat </e1> sat near the <e2> door </e2> ."),
            ("Cause-Effect(e1,e2)", "a <e1> virus </e1> caused the <e2> flu </e2> ."),
            ("Cause-Effect(e2,e1)", "the <e1> flu </e1> came from a <e2> virus </e2> .")] * 5
    data = tmp_path / "train.tsv"
    data.write_text("".join(f"{a}\t{b}\n" for a, b in rows))
    tok = Tokenizer.train([r[1] for r in rows], vocab_size=80, min_frequency=1)
    tok.save_pretrained(tmp_path / "vocab")
    config = TrainConfig(output_dir=str(tmp_path / "run"), batch_size=5, max_steps=40, lr=3e-3, warmup=2,
                         log_every=10, progress=False, bf16=False)
    result = relation.finetune(data, config, eval_file=data, tokenizer=tmp_path / "vocab", model_size="tiny")
    assert result.metrics["accuracy"] == 1.0 and result.metrics["official_macro_f1"] == 1.0
    directory = tmp_path / "run" / "model"
    loaded_tok = Tokenizer.from_pretrained(directory)
    assert loaded_tok.tokenize("<e1> fire </e1>") == ["<e1>", "fire", "</e1>"]  # markers stay whole
    model = relation.BertForRelation.from_pretrained(directory)
    info = relation.SPEC.read_info(json.loads((directory / "task.json").read_text()), "task.json")
    out = relation.predict(model, loaded_tok, info, [{"text": "the <e1> smoke </e1> came from the <e2> fire </e2> ."}])
    assert out[0]["label"] == "Cause-Effect(e2,e1)"


def test_wsc_spans_are_marked_at_their_token_index_or_the_nearest_occurrence(tmp_path):
    from bertkit.tasks.relation import mark_spans

    def target(s1, i1, s2, i2):
        return {"span1_text": s1, "span1_index": i1, "span2_text": s2, "span2_index": i2}

    assert mark_spans("John hired Bill to take care of him .", target("Bill", 2, "him", 7)) == \
        "John hired <e1> Bill </e1> to take care of <e2> him </e2> ."
    # the index is one off (WSC val idx 42): the nearest occurrence of the word is marked
    assert mark_spans("it said to use it now", target("said", 1, "it", 3)) == \
        "it <e1> said </e1> to use <e2> it </e2> now"
    # a possessive token ("Emma's") holds the span "Emma"; a span inside the other nests its markers
    assert mark_spans("Emma's dog saw her", target("Emma", 0, "her", 3)) == "<e1> Emma's </e1> dog saw <e2> her </e2>"
    assert mark_spans("and their mothers cried", target("their mothers", 1, "their", 1)) == \
        "and <e1> <e2> their </e2> mothers </e1> cried"
    rows = [{"text": "John hired Bill .", "target": target("Bill", 2, "John", 0), "label": True},
            {"text": "John hired Bill .", "target": target("Stalin", 2, "John", 0), "label": False}]
    path = tmp_path / "wsc.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.warns(UserWarning, match=r"skipped 1 row\(s\) whose span is not in the text \('Stalin'\) \(line 2\)"):
        [example] = read_examples(path, "wsc")
    assert (example.text, example.label) == ("<e2> John </e2> hired <e1> Bill </e1> .", "true")


def test_the_real_wsc_files_read_every_row():
    train = read_examples(shared_data("superglue", "WSC", "train.jsonl"), "wsc")
    val = read_examples(shared_data("superglue", "WSC", "val.jsonl"), "wsc")
    assert (len(train), len(val)) == (554, 104)
    assert sum(e.label == "false" for e in val) == 66  # the majority class: 63.5%


def cluewsc_rows() -> list[dict]:
    """CLUEWSC2020's layout: character offsets, labels as the strings "true"/"false", an idx per row."""
    rows = []
    for giver, taker in [("小明", "小红"), ("老王", "小李"), ("张三", "李四"), ("妈妈", "姐姐")]:
        text = f"{giver}把书给了{taker}，因为她想看。"
        pronoun = text.index("她")
        for noun, label in ((taker, "true"), (giver, "false")):
            rows.append({"target": {"span2_index": pronoun, "span1_index": text.index(noun), "span1_text": noun,
                                    "span2_text": "她"}, "idx": len(rows), "label": label, "text": text})
    return rows


def test_cluewsc_spans_are_located_by_character_offset_and_its_labels_read(tmp_path):
    from bertkit.tasks.relation import mark_spans

    text = "这时候放在床上枕头旁边的手机响了，我感到奇怪，因为欠费已被停机两个月，现在它突然响了。"
    target = {"span2_index": 37, "span1_index": 5, "span1_text": "床", "span2_text": "它"}  # CLUEWSC2020 train idx 0
    assert text[37] == "它" and mark_spans(text, target) == (
        "这时候放在 <e1> 床 </e1> 上枕头旁边的手机响了，我感到奇怪，因为欠费已被停机两个月，"
        "现在 <e2> 它 </e2> 突然响了。")
    # one off: the nearest occurrence; a spaced text whose spans sit at character offsets, not token indices
    assert mark_spans("他说他会来", {**target, "span1_index": 1, "span1_text": "他", "span2_index": 2,
                                  "span2_text": "他"}) == " <e1> 他 </e1> 说 <e2> 他 </e2> 会来"
    assert mark_spans("ab 是 cd", {"span1_index": 0, "span1_text": "ab", "span2_index": 5, "span2_text": "cd"}) == \
        " <e1> ab </e1>  是  <e2> cd </e2> "
    path = tmp_path / "train.json"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in cluewsc_rows()), encoding="utf-8")
    examples = read_examples(path, "wsc")
    assert [e.label for e in examples[:2]] == ["true", "false"] and len(examples) == 8
    assert examples[0].text == "小明把书给了 <e1> 小红 </e1> ，因为 <e2> 她 </e2> 想看。"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**cluewsc_rows()[0], "label": "maybe"}, ensure_ascii=False) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r'bad\.json:1: label must be true or false \(or "true"/"false"\), got '
                                        r"'maybe'"):
        read_examples(bad, "wsc")


def test_a_file_whose_every_row_is_skipped_says_so_and_why(tmp_path):
    rows = [{**r, "target": {**r["target"], "span1_text": "王五"}} for r in cluewsc_rows()[:3]]
    path = tmp_path / "wsc.json"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(DataError, match=r"wsc\.json: every record was skipped, so none is left: 3 row\(s\) whose span "
                                        r"is not in the text \('王五'\) \(lines 1, 2, 3\)"):
        read_examples(path, "wsc")


def test_a_cluewsc_file_trains_and_evaluates(tmp_path):
    data = tmp_path / "train.json"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in cluewsc_rows() * 3), encoding="utf-8")
    Tokenizer.train([r["text"] for r in cluewsc_rows()], vocab_size=80, min_frequency=1).save_pretrained(
        tmp_path / "vocab")
    config = TrainConfig(output_dir=str(tmp_path / "run"), batch_size=8, max_steps=40, lr=3e-3, warmup=2,
                         log_every=10, progress=False, bf16=False, seed=0)
    result = relation.finetune(data, config, eval_file=data, fmt="wsc", tokenizer=tmp_path / "vocab",
                               model_size="tiny", max_seq_len=32)
    assert result.metrics["accuracy"] == 1.0
    from bertkit.predict import Predictor

    assert Predictor(tmp_path / "run" / "model", device="cpu").evaluate(data, "wsc")["accuracy"] == 1.0
