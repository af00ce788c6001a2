"""NER: readers (real files and malformed lines), BIO/BIOES, a tiny end-to-end run with and without a CRF."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from bertkit import DataError, Tokenizer
from bertkit.metrics import get_entities
from bertkit.tasks import ner
from bertkit.tasks.tagging import convert_scheme, encode_sentences, spans_to_tags, words_of
from bertkit.train import TrainConfig
from tests.conftest import shared_data


def test_real_files_read_with_standard_counts():
    msra = ner.read_sentences(shared_data("msra_ner", "train1.txt"), "msra")
    assert len(msra) == 46364
    counts = Counter(kind for s in msra for kind, _, _ in get_entities(s.tags))
    # SOURCE.md: nr 17615 / ns 36517 / nt 20571 (adjacent same-type chunks merge under BIO: allow a few)
    assert abs(counts["PER"] - 17615) < 40 and abs(counts["LOC"] - 36517) < 80 and abs(counts["ORG"] - 20571) < 40
    resume = ner.read_sentences(shared_data("resume_ner", "train.char.bmes"), "conll")
    assert len(resume) == 3821 and sum(len(s.words) for s in resume) == 124099
    cluener = ner.read_sentences(shared_data("cluener2020", "dev.json"), "cluener")
    assert len(cluener) == 1343
    assert sum(len(s.entities) for s in cluener) == 3072  # SOURCE.md's count
    train = ner.read_sentences(shared_data("cluener2020", "train.json"), "cluener")
    assert sum(len(s.entities) for s in train) == 23971  # two of them inside another: not in the tags
    assert sum(len(get_entities(s.tags)) for s in train) == 23969


def test_reader_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("北 B-LOC\n京 I-LOC\n\n上 X-LOC\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.txt:4: tag 'X-LOC' is not O or B-/I-/E-/S-/M-TYPE"):
        ner.read_sentences(bad, "conll")
    with pytest.warns(UserWarning, match="skipped 1 line\\(s\\) with a malformed tag \\(line 4\\)"):
        assert len(ner.read_sentences(bad, "conll", skip_bad_lines=True)) == 1  # its only line was bad
    msra = tmp_path / "msra.txt"
    msra.write_text("北京/ns 欢迎/o\n你好/xx\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"msra\.txt:2: expected space-separated chunk/TAG"):
        ner.read_sentences(msra, "msra")
    cluener = tmp_path / "c.json"
    cluener.write_text('{"text": "浙商银行", "label": {"company": {"浙商银": [[0, 3]]}}}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"c\.json:1: bad CLUENER record: span 0\.\.3 is '浙商银行', not '浙商银'"):
        ner.read_sentences(cluener, "cluener")


def test_space_tokens_and_bmes_are_read(tmp_path):
    path = tmp_path / "cais.txt"
    path.write_text("播 O\n  O\n周 B-singer\n杰 M-singer\n伦 E-singer\n", encoding="utf-8")
    (s,) = ner.read_sentences(path, "conll")
    assert s.words == ["播", " ", "周", "杰", "伦"] and s.tags[3] == "I-singer"
    assert get_entities(s.tags) == [("singer", 2, 4)]


def test_scheme_conversion_keeps_entities():
    tags = spans_to_tags(6, [("PER", 0, 1), ("LOC", 3, 3), ("ORG", 4, 5)])
    bioes = convert_scheme(tags, "bioes")
    assert bioes == ["B-PER", "E-PER", "O", "S-LOC", "B-ORG", "E-ORG"]
    assert get_entities(bioes) == get_entities(tags) and convert_scheme(bioes, "bio") == tags


def test_long_sentences_are_chunked_not_truncated():
    tok = Tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"甲乙丙"])
    words = list("甲乙丙" * 30)  # 90 characters, max_seq_len 32 -> 3 chunks of <= 30
    pieces = encode_sentences(tok, [words], [[0] * 90], 32)
    assert len(pieces) == 3 and sum(len(p.positions) for p in pieces) == 90
    assert all(len(p.input_ids) <= 32 for p in pieces)
    text = "北京 欢迎你"
    assert words_of(text, "char") == (["北", "京", "欢", "迎", "你"], [(0, 1), (1, 2), (3, 4), (4, 5), (5, 6)])
    assert words_of("New York  city", "space") == (["New", "York", "city"], [(0, 3), (4, 8), (10, 14)])


@pytest.mark.parametrize("crf", [False, True])
def test_tiny_end_to_end_learns_and_predicts_from_the_checkpoint(tmp_path, crf):
    lines = []
    for name, place in [("张三", "北京"), ("李四", "上海"), ("王五", "广州"), ("赵六", "深圳")] * 6:
        sentence = f"{name}去{place}了"
        tags = ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O"]
        lines += [f"{c} {t}" for c, t in zip(sentence, tags, strict=True)] + [""]
    data = tmp_path / "train.txt"
    data.write_text("\n".join(lines), encoding="utf-8")
    tok = Tokenizer.train([data], vocab_size=60, min_frequency=1)
    tok.save_pretrained(tmp_path / "vocab")
    config = TrainConfig(output_dir=str(tmp_path / "run"), batch_size=8, max_steps=40, lr=3e-3, warmup=2,
                         log_every=5, progress=False, bf16=False)
    result = ner.finetune(data, config, eval_file=data, tokenizer=tmp_path / "vocab", model_size="tiny",
                          options=ner.NerOptions(crf=crf, scheme="bioes"))
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert losses[-1] < losses[0] * 0.5
    assert result.metrics["f1"] > 0.9
    info = json.loads((tmp_path / "run" / "model" / "task.json").read_text())
    assert info["task"] == "ner" and info["crf"] is crf and "S-LOC" in info["labels"]
    model = ner.BertForTokenClassification.from_pretrained(tmp_path / "run" / "model")
    assert (model.head.crf is not None) is crf
    info = ner.SPEC.read_info(info, "task.json")
    out = ner.predict(model, Tokenizer.from_pretrained(tmp_path / "run" / "model"), info,
                      [{"text": "王五去上海了"}, {"text": ""}])
    assert {"type": "LOC", "start": 3, "end": 5, "text": "上海"} in out[0]["entities"]
    assert out[1]["entities"] == []
