"""Property-based tests (hypothesis): the tokenizer and every task reader give a result or a clear error for
arbitrary input -- never a crash deep in torch, never a silent loss of lines."""

from __future__ import annotations

import json
import re
import string
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bertkit import BertConfig, BertModel, DataError, Tokenizer
from bertkit.tasks import classification, intent_slot, ner, qa, relation, spelling

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=400)
MIXED = st.text(alphabet=st.sampled_from(list("北京欢迎你abc XYZ123，。！?\t\u00e9\u0301😀\x00\x7f\u200b")),
                max_size=200)
TALLY: dict[str, int] = {}


def _count(name: str) -> None:
    TALLY[name] = TALLY.get(name, 0) + 1


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(["北京欢迎你", "hello world", "abc xyz 123"] * 3, vocab_size=80, min_frequency=1)


@pytest.fixture(scope="module")
def model(tok):
    return BertModel(BertConfig.preset("tiny", vocab_size=len(tok), max_position_embeddings=64)).eval()


@SETTINGS
@given(texts=st.lists(st.one_of(TEXT, MIXED), min_size=1, max_size=4), pairs=st.booleans(),
       max_length=st.integers(4, 64))
def test_tokenizer_then_model_never_crash(tok, model, texts, pairs, max_length):
    _count("tokenizer + model")
    batch = tok(texts, list(reversed(texts)) if pairs else None, max_length=max_length)
    assert batch["input_ids"].shape[1] <= max_length
    assert int(batch["input_ids"].max()) < len(tok)
    assert (batch["input_ids"][:, 0] == tok.cls_token_id).all()
    with torch.no_grad():
        out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    assert torch.isfinite(out.last_hidden_state).all()
    for text in texts:
        assert tok.decode(tok.encode(text)) is not None  # round trip never raises


def _line_strategy(columns: int) -> st.SearchStrategy[str]:
    cell = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\t\n\r"),
                   max_size=30)
    return st.lists(cell, min_size=1, max_size=columns + 2).map("\t".join)


def _check_reader(name: str, tmp_path_factory, read, content: str, expected_lines: int) -> None:
    """A reader either returns examples (never more than the non-blank lines it was given) or raises DataError
    naming the file and line; with skip_bad_lines it reads, and a warning counts every skipped line."""
    _count(name)
    path = tmp_path_factory.mktemp("prop") / "data.txt"
    path.write_text(content, encoding="utf-8")
    try:
        result = read(path)
        assert len(result) <= expected_lines
    except DataError as exc:
        assert "data.txt" in str(exc)


@SETTINGS
@given(lines=st.lists(_line_strategy(2), max_size=8))
def test_classification_reader(tmp_path_factory, lines):
    content = "label\ttext\n" + "\n".join(lines) + "\n"
    _check_reader("classification tsv", tmp_path_factory, lambda p: classification.read_examples(p, "tsv"),
                  content, len(lines))
    path = tmp_path_factory.mktemp("prop") / "d.tsv"
    path.write_text(content, encoding="utf-8")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kept = classification.read_examples(path, "tsv", skip_bad_lines=True)
    messages = [str(w.message) for w in caught if "skipped" in str(w.message)]
    skipped = sum(int(n) for m in messages for n in re.findall(r"(?:skipped |; )(\d+) ", m))
    nonblank = sum(1 for line in lines if line.strip())
    assert len(kept) + skipped == nonblank  # every line is read or counted as skipped: nothing silent


@SETTINGS
@given(lines=st.lists(st.one_of(_line_strategy(1).map(lambda s: s.replace("\t", " ")), st.just("")), max_size=10))
def test_ner_conll_reader(tmp_path_factory, lines):
    _check_reader("ner conll", tmp_path_factory, lambda p: ner.read_sentences(p, "conll"), "\n".join(lines),
                  len(lines))


@SETTINGS
@given(lines=st.lists(st.text(max_size=40), max_size=6))
def test_ner_msra_and_cluener_readers(tmp_path_factory, lines):
    _check_reader("ner msra", tmp_path_factory, lambda p: ner.read_sentences(p, "msra"), "\n".join(lines),
                  len(lines))
    records = [json.dumps({"text": t, "label": {"x": {t[:2]: [[0, 1]]}}}) if len(t) > 2 else t for t in lines]
    _check_reader("ner cluener", tmp_path_factory, lambda p: ner.read_sentences(p, "cluener"), "\n".join(records),
                  len(lines))


@SETTINGS
@given(lines=st.lists(_line_strategy(4), max_size=6), semeval=st.lists(_line_strategy(2), max_size=6))
def test_relation_readers(tmp_path_factory, lines, semeval):
    _check_reader("relation chinese_nre", tmp_path_factory, lambda p: relation.read_examples(p, "chinese_nre"),
                  "\n".join(lines), len(lines))
    marked = [f"{x}\t<e1> a </e1> {x} <e2> b </e2>" if i % 2 else x for i, x in enumerate(semeval)]
    _check_reader("relation semeval", tmp_path_factory, lambda p: relation.read_examples(p, "semeval"),
                  "\n".join(marked), len(marked))


@SETTINGS
@given(lines=st.lists(_line_strategy(2), max_size=6))
def test_spelling_reader(tmp_path_factory, lines):
    _check_reader("spelling tsv", tmp_path_factory, lambda p: spelling.read_pairs(p, "tsv"), "\n".join(lines),
                  len(lines))


@SETTINGS
@given(words=st.lists(st.text(alphabet=string.ascii_lowercase + "北京 ", max_size=12), min_size=1, max_size=5),
       tags=st.lists(st.sampled_from(["O", "B-x", "I-x", "B-", "X-y", ""]), min_size=1, max_size=5),
       intent=st.text(max_size=10))
def test_intent_slot_reader(tmp_path_factory, words, tags, intent):
    _count("intent_slot atis")
    root = tmp_path_factory.mktemp("atis")
    (root / "seq.in").write_text("\n".join(words) + "\n", encoding="utf-8")
    (root / "seq.out").write_text("\n".join(" ".join(tags) for _ in words) + "\n", encoding="utf-8")
    (root / "label").write_text("\n".join(intent.replace("\n", " ") for _ in words) + "\n", encoding="utf-8")
    try:
        assert len(intent_slot.read_utterances(root, "atis")) <= len(words)
    except DataError as exc:
        assert "seq." in str(exc) or "label" in str(exc)


@SETTINGS
@given(payload=st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                            lambda children: st.lists(children, max_size=3) | st.dictionaries(
                                st.sampled_from(["data", "paragraphs", "context", "qas", "id", "question",
                                                 "answers", "text", "answer_start"]), children, max_size=4),
                            max_leaves=12))
def test_qa_reader(tmp_path_factory, payload):
    _count("qa squad")
    path = tmp_path_factory.mktemp("qa") / "data.json"
    path.write_text(json.dumps(payload), encoding="utf-8")
    try:
        qa.read_questions(path)
    except DataError as exc:
        assert "data.json" in str(exc)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children,
                                                                                       max_size=3), max_leaves=6)


@SETTINGS
@given(labels=st.lists(JSON, min_size=1, max_size=6), bom=st.booleans())
def test_classification_jsonl_labels_are_normalised_or_refused(tmp_path_factory, labels, bom):
    _count("classification jsonl labels")
    path = tmp_path_factory.mktemp("labels") / "data.jsonl"
    lines = [json.dumps({"text": "x", "label": value}) for value in labels]
    path.write_text(("\ufeff" if bom else "") + "\n".join(lines) + "\n", encoding="utf-8")
    try:
        examples = classification.read_examples(path, "jsonl")
    except DataError as exc:
        assert re.search(r"data\.jsonl:\d+: label", str(exc)), exc
        return
    for example, value in zip(examples, labels, strict=True):
        assert example.label is None or isinstance(example.label, str)
        if isinstance(value, int | float) and not isinstance(value, bool) and float(value).is_integer():
            assert example.label == str(int(value))  # 1 and 1.0 are one class


@SETTINGS
@given(lengths=st.lists(st.lists(st.integers(1, 400), min_size=1, max_size=4), min_size=2, max_size=6),
       max_seq_len=st.integers(8, 64), seed=st.integers(0, 2**16))
def test_nsp_instances_fit_and_every_multi_piece_document_is_used(lengths, max_seq_len, seed):
    _count("nsp instances")
    from bertkit.masking import ArrayShard, ExampleIndex

    documents = [[[d * 1000 + s] * n for s, n in enumerate(doc)] for d, doc in enumerate(lengths)]
    instances = ExampleIndex([ArrayShard.from_documents(documents)], max_seq_len, nsp=True, seed=seed,
                             epoch=0).instances()
    assert all(len(i.tokens_a) + len(i.tokens_b) <= max_seq_len - 3 and i.tokens_a and i.tokens_b
               for i in instances)
    piece = (max_seq_len - 3 + 1) // 2
    for d, doc in enumerate(lengths):
        pieces = sum(-(-n // piece) if n >= max_seq_len - 3 else 1 for n in doc)
        if pieces >= 2:  # a long sentence alone used to give no instance at all
            assert any(i.source_a == d for i in instances), (doc, max_seq_len)


# ---- every reader, generated files (bench/fuzz_readers.py) -----------------------------------------------------
def _fuzz_readers():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "fuzz_readers.py"
    spec = importlib.util.spec_from_file_location("fuzz_readers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_reader_gives_a_result_or_a_bertkit_error():
    """A small round of the reader fuzz (bench/fuzz_readers.py runs the big one): near-valid and mutated lines,
    invalid UTF-8, BOMs, CRLF, deep JSON, in every format of every task, the corpus readers and tokenizer
    training; anything but a result or a BertkitError is a finding."""
    result = _fuzz_readers().fuzz(lines_per_reader=40, seed=1)
    TALLY["reader fuzz lines"] = result["totals"]["lines"]
    assert len(result["readers"]) >= 38
    assert result["totals"]["tracebacks"] == 0, result["tracebacks"][:3]
    assert all(t["results"] > 0 for name, t in result["readers"].items() if "skip" in name)  # not all errors


@pytest.mark.slow
def test_reader_fuzz_big_round():
    """The acceptance round: 3,000 generated lines per reader (~114,000 lines), 0 tracebacks; writes the tally to
    bench/results/fuzz_readers.json."""
    module = _fuzz_readers()
    assert module.main(["3000"]) == 0


def test_tally_is_reported():
    """Runs last in this module: how many generated cases each property saw (the fuzz figure in docs/reliability.md)."""
    assert sum(TALLY.values()) > 1000, TALLY
    print("property cases:", TALLY)

