"""Span-annotated files: doccano, Label Studio and CMeEE read from hand-made files into the same texts and spans, the
tagged formats converted to spans, and every bad span an error naming the file, the line and the entity."""

from __future__ import annotations

import json

import pytest

from bertkit import DataError
from bertkit.tasks import ner
from bertkit.tasks.spans import SpanText, json_array, read_span_texts
from bertkit.tasks.tagging import flatten_spans

TEXT = "我在北京大学读书"
# ORG 北京大学 with LOC 北京 inside it, and 北京 a second time with another type (multi-label)
SPANS = [("ORG", 2, 6), ("LOC", 2, 4), ("CITY", 2, 4)]


def _doccano(path, rows):
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


def _cmeee(path, records):
    path.write_text(json.dumps(records, ensure_ascii=False, indent=2), encoding="utf-8")  # one array, indented
    return path


def _label_studio(path, tasks):
    path.write_text(json.dumps(tasks, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def _starts(path, opening):
    """The lines where the array's objects open (an indented dump puts each at its own line)."""
    return [n for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1) if line == opening]


def _region(start, end, *labels):
    return {"from_name": "label", "to_name": "text", "type": "labels",
            "value": {"start": start, "end": end, "text": TEXT[start:end], "labels": list(labels)}}


def test_the_three_span_formats_read_to_the_same_spans(tmp_path):
    doccano = _doccano(tmp_path / "d.jsonl", [
        {"id": 1, "text": TEXT, "label": [[2, 6, "ORG"], [2, 4, "LOC"], [2, 4, "CITY"], [2, 4, "LOC"]]},
        {"text": "你好", "label": []}])
    entities = _doccano(tmp_path / "e.jsonl", [
        {"text": TEXT, "entities": [{"id": 7, "label": "ORG", "start_offset": 2, "end_offset": 6},
                                    {"id": 8, "label": "LOC", "start_offset": 2, "end_offset": 4},
                                    {"id": 9, "label": "CITY", "start_offset": 2, "end_offset": 4}]}])
    studio = _label_studio(tmp_path / "ls.json", [
        {"id": 1, "data": {"text": TEXT}, "annotations": [
            {"was_cancelled": True, "result": []},
            {"result": [_region(2, 6, "ORG"), _region(2, 4, "LOC", "CITY"),
                        {"type": "choices", "value": {"choices": ["news"]}}]}]},
        {"id": 2, "data": {"text": "没有标注"}, "annotations": []},
        {"id": 3, "data": {"sentence": "你好"}, "annotations": [{"result": []}]}])
    cmeee = _cmeee(tmp_path / "c.json", [
        {"text": TEXT, "entities": [{"start_idx": 2, "end_idx": 5, "type": "ORG", "entity": "北京大学"},
                                    {"start_idx": 2, "end_idx": 3, "type": "LOC", "entity": "北京"},
                                    {"start_idx": 2, "end_idx": 3, "type": "CITY", "entity": "北京"}]},
        {"text": "你好", "entities": []}])
    want = SpanText(TEXT, SPANS, 1)
    assert read_span_texts(doccano, "doccano") == [want, SpanText("你好", [], 2)]  # the repeated LOC kept once
    assert read_span_texts(entities, "doccano") == [want]
    with pytest.warns(UserWarning, match=r"skipped 1 task\(s\) without an annotation"):
        read = read_span_texts(studio, "label_studio")
    assert [(t.text, t.spans) for t in read] == [(TEXT, SPANS), ("你好", [])]
    assert [t.line for t in read] == [_starts(studio, " {")[i] for i in (0, 2)]  # where each task's object starts
    read = read_span_texts(cmeee, "cmeee")  # end_idx inclusive
    assert [(t.text, t.spans, t.line) for t in read] == [(TEXT, SPANS, 2), ("你好", [], _starts(cmeee, "  {")[1])]


def test_the_tagged_formats_become_texts_with_character_spans(tmp_path):
    chars = tmp_path / "zh.txt"
    chars.write_text("北 B-LOC\n京 I-LOC\n欢 O\n迎 O\n\n张 B-PER\n三 I-PER\n", encoding="utf-8")
    assert ner.read_texts(chars, "conll") == [SpanText("北京欢迎", [("LOC", 0, 2)], 1),
                                              SpanText("张三", [("PER", 0, 2)], 6)]
    words = tmp_path / "en.txt"
    words.write_text("EU B-ORG\nrejects O\nGerman B-MISC\ncall O\n", encoding="utf-8")
    (text,) = ner.read_texts(words, "conll")
    assert text.text == "EU rejects German call" and text.spans == [("ORG", 0, 2), ("MISC", 11, 17)]


def test_a_tagger_reads_a_span_file_one_word_per_character_keeping_the_outermost(tmp_path):
    path = _doccano(tmp_path / "d.jsonl", [{"text": "我 在北京大学", "label": [[3, 7, "ORG"], [3, 5, "LOC"]]},
                                           {"text": "New York City", "label": [[0, 8, "LOC"], [4, 13, "X"]]}])
    first, _ = ner.read_sentences(path, "doccano")
    assert first.words == list("我在北京大学")  # the space has no word
    assert first.tags == ["O", "O", "B-ORG", "I-ORG", "I-ORG", "I-ORG"]
    assert first.entities == [("ORG", 2, 5), ("LOC", 2, 3)]  # every entity is still gold for evaluation
    spaced = ner.read_sentences(path, "doccano", word_level="space")[1]
    assert spaced.words == ["New", "York", "City"] and spaced.entities == [("LOC", 0, 1), ("X", 1, 2)]
    assert spaced.tags == ["B-LOC", "I-LOC", "O"]  # X crosses LOC: dropped
    assert flatten_spans([("A", 0, 3), ("B", 1, 2), ("C", 2, 5), ("D", 1, 2), ("E", 6, 6)]) == (
        [("A", 0, 3), ("E", 6, 6)], 2, 1)


def test_the_tagger_drops_nested_entities_with_a_warning_that_counts_them(tmp_path):
    from bertkit.train import TrainConfig

    path = _cmeee(tmp_path / "c.json", [
        {"text": "肺部感染", "entities": [{"start_idx": 0, "end_idx": 3, "type": "dis"},
                                      {"start_idx": 0, "end_idx": 1, "type": "bod"}]},
        {"text": "发热", "entities": [{"start_idx": 0, "end_idx": 1, "type": "sym"}]}])
    from bertkit import Tokenizer

    Tokenizer.train(["肺部感染", "发热"], vocab_size=30, min_frequency=1).save_pretrained(tmp_path / "vocab")
    config = TrainConfig(output_dir=str(tmp_path / "run"), batch_size=2, max_steps=1, progress=False, bf16=False)
    with pytest.warns(UserWarning, match=r"c\.json: one tag per word cannot hold an entity inside another: the "
                                         r"tagger drops 1 of 3 entities \(1 inside another entity, 0 crossing one\) in "
                                         r"1 texts"):
        ner.finetune(path, config, fmt="cmeee", tokenizer=tmp_path / "vocab", model_size="tiny", max_seq_len=16)


@pytest.mark.parametrize(("fmt", "record", "message"), [
    ("doccano", {"text": "北京", "label": [[0, 3, "LOC"]]},
     r"d:1: bad doccano record: entity 1 \('LOC'\): end 3 is past the end of the text \(2 characters\)"),
    ("doccano", {"text": "北京", "label": [[-1, 1, "LOC"]]}, r"d:1: .*entity 1 \('LOC'\): start -1 is negative"),
    ("doccano", {"text": "北京", "label": [[0, 1, "LOC"], [2, 1, "LOC"]]},
     r"d:1: .*entity 2 \('LOC'\): end 1 is not after start 2 \(a reversed or empty span\)"),
    ("doccano", {"text": "北京", "label": [[0, 1, ""]]}, r"d:1: .*entity 1 \(''\): the type must be a non-empty"),
    ("doccano", {"text": "北京", "label": [[0, "1", "LOC"]]}, r"d:1: .*entity 1 \('LOC'\): end must be an integer"),
    ("doccano", {"text": "北京", "label": [[0, 1]]}, r"d:1: .*entity 1: expected \[start, end, type\]"),
    ("cmeee", [{"text": "好"}, {"text": "北京", "entities": [{"start_idx": 0, "end_idx": 2, "type": "LOC",
                                                             "entity": "北京"}]}],
     r"d:5: bad CMeEE record: entity 1 \('LOC' '北京'\): end 3 is past the end of the text \(2 characters\)"),
    ("cmeee", [{"text": "北京", "entities": [{"start_idx": 0, "end_idx": 0, "type": "LOC", "entity": "北京"}]}],
     r"d:2: .*entity 1 \('LOC' '北京'\): characters 0\.\.1 of the text are '北', not '北京'"),
    ("cmeee", {"text": "北京"}, r"d:1: expected one JSON array of records"),
    ("label_studio", [{"data": {"text": "北京"}, "annotations": [{"result": [
        {"type": "labels", "value": {"start": 1, "end": 0, "labels": ["LOC"]}}]}]}],
     r"d:2: bad Label Studio task: result 1 \('LOC' ''\): end 0 is not after start 1"),
    ("label_studio", [{"data": {"text": "北京"}, "annotations": [{"result": [
        {"type": "labels", "value": {"start": 0, "end": 1}}]}]}],
     r"d:2: .*result 1: expected value\.start, value\.end and a non-empty value\.labels"),
])
def test_bad_spans_name_the_file_the_line_and_the_entity(tmp_path, fmt, record, message):
    path = tmp_path / "d"
    if fmt == "doccano":
        path.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    else:
        path.write_text(json.dumps(record, ensure_ascii=False, indent=1), encoding="utf-8")
    with pytest.raises(DataError, match=message):
        read_span_texts(path, fmt)


def test_json_array_names_the_line_of_broken_json(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('[\n {"text": "a"},\n {"text": "b",}\n]', encoding="utf-8")
    items = json_array(path)
    assert next(items) == (2, {"text": "a"})
    with pytest.raises(DataError, match=r"a\.json:3: not valid JSON"):
        next(items)
    path.write_text('[{"text": "a"} {"text": "b"}]', encoding="utf-8")
    with pytest.raises(DataError, match=r"a\.json:1: expected ',' or '\]'"):
        list(json_array(path))
    path.write_text("[]", encoding="utf-8")
    assert list(json_array(path)) == []


def test_an_evaluation_file_with_a_type_the_model_lacks_names_it(tmp_path):
    from bertkit.tasks.spans import check_types

    texts = [(3, [("LOC", 0, 2)]), (9, [("DRUG", 4, 6)])]
    with pytest.raises(DataError, match=r"e\.json:9: entity 'DRUG' at 4\.\.6 has a type that is not among the "
                                        r"model's entity types \(LOC, ORG\)"):
        check_types(texts, ["LOC", "ORG"], tmp_path / "e.json", "the model's entity types")


@pytest.mark.parametrize("fmt", ["doccano", "cmeee", "label_studio"])
def test_skip_bad_lines_skips_and_counts_a_malformed_record(tmp_path, fmt):
    good = {"doccano": {"text": "北京", "label": [[0, 2, "LOC"]]},
            "cmeee": {"text": "北京", "entities": [{"start_idx": 0, "end_idx": 1, "type": "LOC", "entity": "北京"}]},
            "label_studio": {"data": {"text": "北京"}, "annotations": [{"result": [
                {"type": "labels", "value": {"start": 0, "end": 2, "labels": ["LOC"]}}]}]}}[fmt]
    broken = {"doccano": {"text": "北京", "label": [[0, 9, "LOC"]]},  # past the end of the text
              "cmeee": {"text": "北京", "entities": [{"start_idx": 0, "end_idx": 8, "type": "LOC"}]},  # inclusive
              "label_studio": {"data": {"text": "北京"}, "annotations": [{"result": [
                  {"type": "labels", "value": {"start": 0, "end": 9, "labels": ["LOC"]}}]}]}}[fmt]
    path = tmp_path / "d"

    def write(records):
        if fmt == "doccano":
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        else:
            path.write_text("[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n]",
                            encoding="utf-8")

    write([good, broken, good])
    first = 1 if fmt == "doccano" else 2  # an array's first record is on the line after its "["
    with pytest.raises(DataError, match=rf"d:{first + 1}: bad .*end 9 is past the end of the text"):
        read_span_texts(path, fmt)
    with pytest.warns(UserWarning, match=rf"skipped 1 malformed record\(s\) \(line {first + 1}\)"):
        read = read_span_texts(path, fmt, skip_bad_lines=True)
    assert [(t.text, t.spans, t.line) for t in read] == [("北京", [("LOC", 0, 2)], first),
                                                          ("北京", [("LOC", 0, 2)], first + 2)]
    with pytest.warns(UserWarning, match="skipped 1 malformed"):  # the NER task's readers pass it on
        assert len(ner.read_sentences(path, fmt, skip_bad_lines=True)) == 2
    with pytest.warns(UserWarning, match="skipped 1 malformed"):
        assert len(ner.read_texts(path, fmt, skip_bad_lines=True)) == 2
    write([broken])
    with pytest.raises(DataError, match="every record was skipped"):
        read_span_texts(path, fmt, skip_bad_lines=True)
