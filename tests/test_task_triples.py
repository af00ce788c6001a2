"""Knowledge-graph triples: the DuIE / WebNLG readers and entity location by hand, the exact-match metric by hand,
pair targets and what cannot be learnt (counted), the tagger in transformers, and a tiny end-to-end fine-tune with
`bertkit predict` emitting triples as JSON and the schema constraint."""

from __future__ import annotations

import json

import pytest
import torch

from bertkit import BertConfig, DataError, Tokenizer
from bertkit.cli import main
from bertkit.predict import Predictor
from bertkit.tasks import triples as kg
from bertkit.tasks import triples_data as kgdata
from tests.conftest import randomize_, shared_data
from tests.serving import duie_line, make_triples_checkpoint

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)


_duie = duie_line


def test_duie_reader_and_its_errors(tmp_path):
    path = tmp_path / "duie.json"
    path.write_text(_duie("许巍：曾经的你", ("曾经的你", "歌曲", "歌手", "许巍", "人物")) + "\n\n"
                    + json.dumps({"text": "无", "spo_list": [{"subject": "a", "predicate": "p", "object": "b"}]}))
    first, second = kgdata.read_records(path, "duie")
    assert first.triples == [kgdata.Triple("曾经的你", "歌手", "许巍", "歌曲", "人物")] and first.line == 1
    assert second.triples == [kgdata.Triple("a", "p", "b", kgdata.UNTYPED, kgdata.UNTYPED)] and second.line == 3
    path.write_text(_duie("x", ("x", "t", "p", "y", "t")) + "\n" + json.dumps({"text": "x", "spo_list": [{}]}))
    with pytest.raises(DataError, match=r"duie.json:2: bad duie record: subject must be a non-empty string"):
        kgdata.read_records(path, "duie")
    with pytest.warns(UserWarning, match=r"duie.json: skipped 1 malformed record\(s\) \(line 2\)"):
        assert len(kgdata.read_records(path, "duie", skip_bad_lines=True)) == 1
    path.write_text(_duie("x", ("x", "t", "p", "y", "t")) + "\n{not json\n")
    with pytest.raises(DataError, match=r"duie.json:2: bad duie record: not JSON \(Expecting property name"):
        kgdata.read_records(path, "duie")
    with pytest.warns(UserWarning, match=r"skipped 1 malformed record\(s\) \(line 2\)"):
        assert len(kgdata.read_records(path, "duie", skip_bad_lines=True)) == 1


def test_webnlg_reader_gives_the_line_each_record_starts_on(tmp_path):
    path = tmp_path / "webnlg.json"
    records = [{"text": "Texas demonym is Tejano .", "triple_list": [["Texas", "demonym", "Tejano"]]},
               {"text": "A is in B .", "triple_list": [["A", "location", "B"], ["B", "contains", "A"]]}]
    path.write_text(json.dumps(records, indent=4))
    texas, other = kgdata.read_records(path, "webnlg")
    assert texas.line == 2 and other.line == 2 + json.dumps(records[0], indent=4).count("\n") + 1
    assert other.triples[1] == kgdata.Triple("B", "contains", "A")
    path.write_text(json.dumps(records[0]) + "\n" + json.dumps({"text": "x", "triple_list": [["x", "r"]]}) + "\n")
    with pytest.raises(DataError, match=r"webnlg.json:2: .*\[subject, relation, object\]"):
        kgdata.read_records(path, "webnlg")
    path.write_text('[{"text": "x", "triple_list": []}')
    with pytest.raises(DataError, match="not closed"):
        kgdata.read_records(path, "webnlg")


def test_locate_counts_what_cannot_be_extracted():
    record = kgdata.Record("The manager of 1 . FC Köln is Peter , 1 . FC Köln won .", [
        kgdata.Triple("1 . FC Köln", "manager", "Peter"),
        kgdata.Triple("1 . FC", "manager", "Peter"),  # only inside the longer entity
        kgdata.Triple("Köln", "country", "Germany"),  # Germany is not in the text; Köln only inside
        kgdata.Triple("Pet", "alias", "Peter")], 7)  # "Pet" is not at word boundaries
    loc = kgdata.locate(record, "space")
    assert [(s[1], s[2], s[3]) for s in loc.spans] == [(3, 6, "1 . FC Köln"), (8, 8, "Peter"), (10, 13, "1 . FC Köln")]
    assert loc.trainable == record.triples[:1]
    assert loc.problems == {"triple(s) with an entity only inside a longer one": 1,
                            "triple(s) with an entity not in the text at word boundaries": 2}
    typed = kgdata.locate(kgdata.Record("张三的父亲是张大", [kgdata.Triple("张三", "父亲", "张大", "人物", "人物"),
                                                   kgdata.Triple("张大", "职业", "张三", "职业", "人物")], 1), "char")
    assert [s[:3] for s in typed.spans] == [("人物", 0, 1), ("人物", 6, 7)]
    assert typed.problems == {"second type(s) of an entity in one record (its first type kept)": 1}


def test_triple_prf_by_hand():
    gold = [{("a", "p", "b"), ("a", "q", "c")}, {("x", "p", "y")}, set()]
    pred = [{("a", "p", "b"), ("b", "p", "a")}, set(), {("m", "p", "n")}]
    # tp 1; fp 2 (b p a, m p n); fn 2 (a q c, x p y)
    metrics = kgdata.triple_prf(gold, pred)
    assert metrics["precision"] == pytest.approx(1 / 3) and metrics["recall"] == pytest.approx(1 / 3)
    assert metrics["f1"] == pytest.approx(1 / 3)
    assert kgdata.triple_prf([set()], [set()]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    with pytest.raises(ValueError, match="2 gold sentences but 1 predicted"):
        kgdata.triple_prf([set(), set()], [set()])


def _info(predicates, max_seq_len=32):
    return kg.TriplesInfo(["O", "B-人物", "I-人物", "B-歌曲", "I-歌曲"], predicates, max_seq_len, "char")


def test_pair_targets_and_chunked_triples_are_counted(tmp_path):
    tok = Tokenizer.train(["张三的父亲是张大，曾经的你是许巍演唱的歌曲"], vocab_size=60, min_frequency=1)
    record = kgdata.Record("张三的父亲是张大", [kgdata.Triple("张三", "父亲", "张大", "人物", "人物")], 4)
    [row] = kg.encode(tok, [record], _info(["歌手", "父亲"]), source="train.json")
    assert [e[1:] for e in row.entities] == [(0, 1, "张三"), (6, 7, "张大")]
    assert row.pairs == [(0, 1, (1,)), (1, 0, ())]  # 张三 -父亲-> 张大; the reverse pair is a negative
    batch = kg.collate([row], tok.pad_token_id, 2)
    assert batch["pairs"].tolist() == [[0, 0, 1, 6, 7], [0, 6, 7, 0, 1]]
    assert batch["pair_labels"].tolist() == [[0.0, 1.0], [0.0, 0.0]]
    assert batch["tags"][0, :8].tolist() == [1, 2, 0, 0, 0, 0, 1, 2]
    # max_seq_len 8: 6 characters a chunk, so 张三 and 张大 land in different chunks: counted, not learnt
    with pytest.warns(UserWarning, match=r"train.json: skipped 1 triple\(s\) whose two entities fall in different"):
        rows = kg.encode(tok, [record], _info(["歌手", "父亲"], max_seq_len=8), source="train.json")
    assert len(rows) == 2 and all(not any(p[2] for p in r.pairs) for r in rows)


def test_the_real_duie_and_webnlg_files_read():
    duie = kgdata.read_records(shared_data("kg", "duie", "duie_train.json"), "duie")
    assert len(duie) == 4000 and sum(len(r.triples) for r in duie) == 7227
    webnlg = kgdata.read_records(shared_data("kg", "webnlg", "test_triples.json"), "webnlg")
    assert len(webnlg) == 703 and sum(len(r.triples) for r in webnlg) == 1607
    schema = kgdata.read_schema(shared_data("kg", "duie", "duie_schema.json"))
    assert len(schema) == 48 and ["娱乐人物", "配音", "人物"] in schema


def test_the_tagger_loads_in_transformers_with_the_same_tag_scores(tmp_path):
    import transformers

    extra = {**kg.id2label(["O", "B-X", "I-X"]), "bertkit_predicates": ["p", "q"]}
    model = randomize_(kg.BertForTriples(BertConfig(**TINY, vocab_size=99, extra=extra)), seed=3).eval()
    model.save_pretrained(tmp_path)
    theirs = transformers.AutoModelForTokenClassification.from_pretrained(tmp_path).eval()
    ids = torch.randint(5, 99, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=mask).logits
        ours, _, _ = model(ids, mask, None, torch.arange(9).expand(2, 9))
    torch.testing.assert_close(ours[mask.bool()], expected[mask.bool()], atol=1e-5, rtol=1e-5)


def test_tiny_end_to_end_predict_json_and_schema(tmp_path, capsys):
    checkpoint = make_triples_checkpoint(tmp_path)
    predictor = Predictor(checkpoint, precision="fp32")
    assert predictor.task == "triples"
    records = kgdata.read_records(tmp_path / "train.json", "duie")
    metrics = kg.score(predictor.model, predictor.tokenizer, predictor.info, records)
    assert metrics["f1"] == 1.0 and metrics["entity_f1"] == 1.0
    assert main(["evaluate", str(checkpoint), "--data", str(tmp_path / "train.json")]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{"):])["f1"] == 1.0
    inputs = tmp_path / "in.txt"
    inputs.write_text("李四的父亲是李老，他爱听光良的《童话》\n")
    assert main(["predict", str(checkpoint), "--input", str(inputs), "--output", "-", "--precision", "fp32",
                 "--no-progress"]) == 0
    [out] = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    got = {(t["subject"], t["subject_type"], t["predicate"], t["object"], t["object_type"]) for t in out["triples"]}
    assert got == {("李四", "人物", "父亲", "李老", "人物"), ("童话", "歌曲", "歌手", "光良", "人物")}
    assert {(e["text"], e["start"]) for e in out["entities"]} == {("李四", 0), ("李老", 6), ("光良", 12), ("童话", 16)}
    # the schema: without (歌曲, 歌手, 人物) the singer edge is not emitted, whatever the pair head says
    predictor.info.schema = [r for r in predictor.info.schema if r[1] != "歌手"]
    [edited] = predictor.predict([{"text": "李四的父亲是李老，他爱听光良的《童话》"}])
    assert {t["predicate"] for t in edited["triples"]} == {"父亲"}


def test_triples_on_an_onnx_encoder_predict_as_in_torch(tmp_path):
    """`export --onnx` then `Predictor(..., onnx=)` for the triples task: the tagger and the pair head read the
    onnxruntime encoder's hidden states and give the same entities and triples as PyTorch."""
    pytest.importorskip("onnxruntime")
    checkpoint = make_triples_checkpoint(tmp_path)
    path = tmp_path / "triples.onnx"
    assert main(["export", str(checkpoint), "--onnx", str(path)]) == 0
    texts = [{"text": "李四的父亲是李老，他爱听光良的《童话》"}, {"text": "光良唱了《童话》"}, {"text": "无"}]
    expected = Predictor(checkpoint, precision="fp32").predict(texts)
    got = Predictor(checkpoint, onnx=path).predict(texts)
    assert got == expected
    assert {t["predicate"] for t in got[0]["triples"]} == {"父亲", "歌手"}
