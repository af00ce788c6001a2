"""The triples task's GPLinker head: targets of every occurrence by hand, the decoding rule on hand-set logits, and
one tiny model fine-tuned through `bertkit finetune --head gplinker` that learns its toy triples (a shared subject,
one pair under two predicates, two parallel pairs whose crossed pairing it scores and rejects), records its head in
the checkpoint, predicts through the CLI and a server, and keeps its answers at int8."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from bench._serving import Server

from bertkit import Tokenizer
from bertkit.cli import main
from bertkit.errors import CheckpointError
from bertkit.global_pointer import NEG, span_loss
from bertkit.predict import Predictor
from bertkit.tasks import gplinker
from bertkit.tasks import triples as kg
from bertkit.tasks import triples_data as kgdata
from tests.serving import duie_line

FAMILIES = [("张三", "张大", "王芳"), ("李四", "李老", "刘梅"), ("王五", "王伯", "陈红"), ("赵六", "赵公", "孙丽")]
SONGS = [("青花瓷", "周杰伦"), ("童话", "光良"), ("后来", "刘若英"), ("平凡之路", "朴树")]
CROSSED = "张三的父亲是张大，李四的父亲是李老"  # 张三 and 李老 are both entities, but not a pair


def toy_corpus() -> list[str]:
    """Per family and song: a subject with two objects, one (subject, object) pair under two predicates, and two
    parallel pairs in one text."""
    lines = []
    for i, ((son, father, mother), (song, singer)) in enumerate(zip(FAMILIES, SONGS, strict=True)):
        other_son, other_father, _ = FAMILIES[(i + 1) % len(FAMILIES)]
        lines += [duie_line(f"{son}的父亲是{father}，母亲是{mother}", (son, "人物", "父亲", father, "人物"),
                            (son, "人物", "母亲", mother, "人物")),
                  duie_line(f"《{song}》由{singer}作曲并演唱", (song, "歌曲", "作曲", singer, "人物"),
                            (song, "歌曲", "歌手", singer, "人物")),
                  duie_line(f"{son}的父亲是{father}，{other_son}的父亲是{other_father}",
                            (son, "人物", "父亲", father, "人物"), (other_son, "人物", "父亲", other_father, "人物"))]
    return lines


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gplinker")
    data = root / "train.json"
    data.write_text("\n".join(toy_corpus()), encoding="utf-8")
    Tokenizer.train([json.loads(line)["text"] for line in toy_corpus()], vocab_size=120, min_frequency=1
                    ).save_pretrained(root / "vocab")
    assert main(["finetune", "--task", "triples", "--head", "gplinker", "--train", str(data), "--eval", str(data),
                 "--tokenizer", str(root / "vocab"), "--model-size", "tiny", "--max-seq-len", "48",
                 "--max-steps", "200", "--batch-size", "4", "--lr", "3e-3", "--warmup", "10", "--no-progress",
                 "--no-bf16", "--output-dir", str(root / "run")]) == 0
    return root


def _info(predicates: list[str], max_seq_len: int = 32) -> kg.TriplesInfo:
    return kg.TriplesInfo(list(gplinker.ROLES), predicates, max_seq_len, "char", head="gplinker")


def test_targets_link_every_occurrence_and_count_what_cannot_be_learnt():
    tok = Tokenizer.train(["张三的父亲是张大，张三的母亲是王芳"], vocab_size=60, min_frequency=1)
    record = kgdata.Record("张三的父亲是张大，张三的母亲是王芳", [kgdata.Triple("张三", "父亲", "张大", "人物", "人物"),
                                                           kgdata.Triple("张三", "母亲", "王芳", "人物", "人物")], 3)
    [window] = gplinker.encode(tok, [record], _info(["母亲", "父亲"]), source="train.json")
    # 张三 twice (0-1, 9-10), 张大 6-7, 王芳 15-16: each occurrence of the subject is linked to its object
    assert window.spans == [(0, 0, 1), (0, 9, 10), (1, 6, 7), (1, 15, 16)]
    assert window.links == [(0, 0, 1, 15, 16), (0, 9, 10, 15, 16), (1, 0, 1, 6, 7), (1, 9, 10, 6, 7)]
    batch = gplinker.collate([window], tok.pad_token_id, 2)
    assert batch["spans"].shape == (1, 2, 17, 17) and int(batch["spans"].sum()) == 4
    assert batch["head_links"][0, 1].nonzero().tolist() == [[0, 6], [9, 6]]  # subject starts -> object start
    assert batch["tail_links"][0, 1].nonzero().tolist() == [[1, 7], [10, 7]]  # subject ends -> object end
    assert int(batch["head_links"].sum()) == 4  # every other cell, 张大 -> 张三 included, is a negative
    # max_seq_len 10: 8 characters a window, so 张三 (0-1) and 王芳 (15-16) never share one: counted, not learnt
    with pytest.warns(UserWarning, match=r"train.json: skipped 1 triple\(s\) whose two entities fall in different"):
        windows = gplinker.encode(tok, [record], _info(["母亲", "父亲"], max_seq_len=10), source="train.json")
    assert len(windows) == 3 and not any(link[0] == 0 for w in windows for link in w.links)


class _Fixed(torch.nn.Module):
    """A stand-in model whose pointers return set logits (words: 甲 乙 丙 丁)."""

    def __init__(self, entity: torch.Tensor, head: torch.Tensor, tail: torch.Tensor) -> None:
        super().__init__()
        self.logits = (entity, head, tail)
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # a device for the batches

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(x[None] for x in self.logits)


def test_a_triple_needs_both_spans_and_both_links():
    tok = Tokenizer.train(["甲乙丙丁"], vocab_size=40, min_frequency=1)
    entity = torch.full((2, 4, 4), -5.0)
    entity[0, 0, 0] = entity[0, 1, 1] = 3.0  # subjects 甲, 乙
    entity[1, 2, 2] = entity[1, 3, 3] = 3.0  # objects 丙, 丁
    head, tail = torch.full((2, 4, 4), -5.0), torch.full((2, 4, 4), -5.0)
    head[0, 0, 2] = tail[0, 0, 2] = 2.0  # 甲 -p-> 丙: both links
    head[0, 1, 3] = 2.0  # 乙 -p-> 丁: the head link only
    head[1, 1, 2] = tail[1, 1, 2] = 1.0  # 乙 -q-> 丙: both links
    head[1, 2, 0] = tail[1, 2, 0] = 4.0  # 丙 -q-> 甲: but 丙 is no subject
    model = _Fixed(entity, head, tail)
    [out] = gplinker.extract(model, tok, _info(["p", "q"]), ["甲乙丙丁"])
    got = {(t["subject"], t["predicate"], t["object"]): t["score"] for t in out["triples"]}
    assert got == {("甲", "p", "丙"): pytest.approx(torch.sigmoid(torch.tensor(2.0)).item(), abs=1e-4),
                   ("乙", "q", "丙"): pytest.approx(torch.sigmoid(torch.tensor(1.0)).item(), abs=1e-4)}
    assert [(e["text"], e["type"]) for e in out["entities"]] == [("甲", "subject"), ("乙", "subject"),
                                                                 ("丙", "object"), ("丁", "object")]
    # a higher threshold (probability 0.8: logit 1.39) drops the weaker link
    [strict] = gplinker.extract(model, tok, kg.TriplesInfo(list(gplinker.ROLES), ["p", "q"], 32, "char",
                                                           threshold=0.8, head="gplinker"), ["甲乙丙丁"])
    assert [(t["subject"], t["object"]) for t in strict["triples"]] == [("甲", "丙")]


def test_each_pointer_s_loss_is_summed_over_its_types_as_gplinker_sums_it():
    """Su's GPLinker sums a pointer's loss over its types (a mean over DuIE's 46 predicates left the link pointers
    unlearned): each term is the sum of the one-type losses."""
    tok = Tokenizer.train(["张三的父亲是张大"], vocab_size=40, min_frequency=1)
    record = kgdata.Record("张三的父亲是张大", [kgdata.Triple("张三", "父亲", "张大", "人物", "人物")], 1)
    task = gplinker.GPLinkerTask(tok, [record], [], _info(["母亲", "父亲"]))
    batch = task.make_batch(0, [0])
    W = batch["word_mask"].shape[1]
    generator = torch.Generator().manual_seed(0)
    entity, head, tail = (torch.randn(2, W, W, generator=generator) for _ in range(3))
    losses = task.loss(_Fixed(entity, head, tail), batch)
    for name, logits, key in (("entity", entity, "spans"), ("head", head, "head_links"),
                              ("tail", tail, "tail_links")):
        alone = sum(float(span_loss(logits[None, c : c + 1], batch[key][:, c : c + 1])) for c in range(2))
        assert float(losses[name]) == pytest.approx(alone, rel=1e-5)


def test_decoding_keeps_the_best_spans_of_an_untrained_model():
    W = 40
    entity = torch.full((2, W, W), NEG)
    upper = torch.ones(W, W, dtype=torch.bool).triu()
    entity[:, upper] = 1.0 + torch.rand(2, int(upper.sum()))  # every one of 820 spans above 0, for both roles
    spans = gplinker.top_spans(entity[0], 0.0)
    best = torch.topk(entity[0].flatten(), gplinker.MAX_SPANS)
    expected = list(zip(best.indices.tolist(), best.values.tolist(), strict=True))
    assert [(s[0] * W + s[1], s[2]) for s in spans] == expected


def test_gplinker_learns_the_toy_triples_and_rejects_crossed_pairs(trained):
    predictor = Predictor(trained / "run" / "model", precision="fp32")
    records = kgdata.read_records(trained / "train.json", "duie")
    metrics = kg.score(predictor.model, predictor.tokenizer, predictor.info, records)
    assert metrics == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "entity_f1": 1.0}
    [crossed] = predictor.predict([CROSSED])
    assert {(t["subject"], t["predicate"], t["object"]) for t in crossed["triples"]} == {
        ("张三", "父亲", "张大"), ("李四", "父亲", "李老")}
    # 张三 is a subject and 李老 an object, and the head-head cell that would link them was scored, below 0
    batch = predictor.tokenizer([CROSSED], max_length=48)
    words = torch.arange(1, len(CROSSED) + 1)[None]
    with torch.no_grad():
        entity, head, _ = predictor.model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                                          words, torch.ones_like(words, dtype=torch.bool))
    father = predictor.info.predicates.index("父亲")
    assert entity[0, 0, 0, 1] > 0 and entity[0, 1, 15, 16] > 0  # 张三 (0-1) subject, 李老 (15-16) object
    assert head[0, father, 0, 15] < 0 < head[0, father, 0, 6]  # 张三 -> 李老 rejected, 张三 -> 张大 linked


def test_the_checkpoint_records_the_head(trained):
    model = trained / "run" / "model"
    task = json.loads((model / "task.json").read_text())
    config = json.loads((model / "config.json").read_text())
    assert task["task"] == "triples" and task["head"] == "gplinker" and task["labels"] == ["subject", "object"]
    assert config["bertkit_head"] == "gplinker" and config["architectures"] == ["BertModel"]
    assert ["歌曲", "作曲", "人物"] in task["schema"]
    ours = Predictor(model, precision="fp32").model
    assert type(ours).__name__ == "BertForGPLinker"
    # transformers reads the encoder (BertModel; the pointers' weights are extra)
    import transformers

    theirs = transformers.AutoModel.from_pretrained(model).eval()
    ids = torch.tensor([[2, 10, 11, 12, 13, 3]])
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        got = ours.bert(ids, torch.ones_like(ids), None).last_hidden_state
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # task.json saying pipeline beside a gplinker config.json: the files of two checkpoints, refused in words
    mixed = trained / "mixed"
    mixed.mkdir()
    for f in model.iterdir():
        (mixed / f.name).write_bytes(f.read_bytes())
    (mixed / "task.json").write_text(json.dumps({**task, "head": "pipeline", "labels": ["O", "B-人物", "I-人物"]}))
    with pytest.raises(CheckpointError, match="do not describe the same model"):
        Predictor(mixed)


def test_predict_cli_and_server_round_trip(trained, capsys):
    model = trained / "run" / "model"
    text = "李四的父亲是李老，母亲是刘梅"
    inputs = trained / "in.txt"
    inputs.write_text(text + "\n", encoding="utf-8")
    assert main(["predict", str(model), "--input", str(inputs), "--output", "-", "--precision", "fp32",
                 "--no-progress"]) == 0
    [out] = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    expected = {("李四", "人物", "父亲", "李老", "人物"), ("李四", "人物", "母亲", "刘梅", "人物")}
    assert {(t["subject"], t["subject_type"], t["predicate"], t["object"], t["object_type"])
            for t in out["triples"]} == expected
    assert main(["evaluate", str(model), "--data", str(trained / "train.json")]) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("{"):])["f1"] == 1.0
    server = Server(model, "--precision", "fp32")
    try:
        status, body, _ = server.post("/predict", {"inputs": [text, {"text": "《童话》由光良作曲并演唱"}]})
        assert status == 200 and body["task"] == "triples", body
        first, second = body["predictions"]
        assert first["triples"] == out["triples"]
        assert {(t["predicate"], t["object"]) for t in second["triples"]} == {("作曲", "光良"), ("歌手", "光良")}
    finally:
        server.stop()


def test_int8_keeps_the_answers_and_the_logits_close(trained):
    model = trained / "run" / "model"
    fp32, int8 = Predictor(model, precision="fp32"), Predictor(model, precision="int8")
    assert int8.precision == "int8"
    texts = [json.loads(line)["text"] for line in toy_corpus()] + [CROSSED]
    for ours, theirs in zip(int8.predict(texts), fp32.predict(texts), strict=True):
        assert ours["entities"] == theirs["entities"]
        assert [{**t, "score": 0} for t in ours["triples"]] == [{**t, "score": 0} for t in theirs["triples"]]
        assert [t["score"] for t in ours["triples"]] == pytest.approx([t["score"] for t in theirs["triples"]],
                                                                      abs=0.02)
    batch = fp32.tokenizer(texts[:1], max_length=48)
    words = torch.arange(1, len(texts[0]) + 1)[None]
    args = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], words,
            torch.ones_like(words, dtype=torch.bool))
    with torch.no_grad():
        for ours, theirs in zip(int8.model(*args), fp32.model(*args), strict=True):
            real = theirs > NEG / 2
            assert (ours[real] - theirs[real]).abs().max() < 0.5  # logits, where a margin of several is learnt
