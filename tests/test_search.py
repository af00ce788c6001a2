"""Search indexes: build and query round trips (MiniLM, exact and HNSW), the model's fingerprint, chunked building
with the texts on disk, atomic output, re-ranking by a cross-encoder, and bad inputs refused with clear errors."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from bertkit import BertConfig, BertModel, Tokenizer
from bertkit.cli import main
from bertkit.predict import Predictor
from bertkit.search import INFO_FILE, VECTORS_FILE, Rerank, Searcher, checkpoint_pooling, read_index_info
from bertkit.textstore import TextStore, TextWriter
from tests.conftest import randomize_
from tests.reliability.tiny_checkpoints import TINY

pytest.importorskip("faiss")

SENTENCES = [
    "A man is playing a guitar on the stage.",
    "The cat is sleeping on the warm sofa.",
    "Stock markets fell sharply after the announcement.",
    "A woman is slicing an onion in the kitchen.",
    "The football team won the championship last night.",
    "Heavy rain caused flooding in the city centre.",
    "He is learning to program in Python.",
    "The museum opens a new exhibition of modern art.",
    "Scientists discovered a new species of frog.",
    "She bought fresh bread at the bakery this morning.",
    "The train to Paris was delayed by two hours.",
    "Doctors recommend drinking more water in summer.",
]


def _corpus(path, lines):
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def tiny_encoder(directory, seed=0):
    """A pre-trained-style encoder (BertModel, random weights) over a vocabulary of SENTENCES."""
    tok = Tokenizer.train(SENTENCES, vocab_size=300, min_frequency=1)
    model = randomize_(BertModel(BertConfig(**TINY, vocab_size=len(tok), pad_token_id=tok.pad_token_id)), seed)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def tiny_cross_encoder(directory, seed=0):
    """A pair classifier with labels 0/1 (random weights) over a vocabulary of SENTENCES, as `finetune` saves one."""
    from bertkit.tasks.base import save_task
    from bertkit.tasks.classification import SPEC, BertForSequenceClassification, ClassificationInfo

    tok = Tokenizer.train(SENTENCES, vocab_size=300, min_frequency=1)
    info = ClassificationInfo(["0", "1"], 64)
    config = BertConfig(**TINY, vocab_size=len(tok), pad_token_id=tok.pad_token_id, extra=SPEC.config_extra(info))
    save_task(SPEC, info, randomize_(BertForSequenceClassification(config), seed), tok, directory)
    return directory


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_encoder(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def minilm_index(tmp_path_factory, minilm_dir):
    """MiniLM's index of SENTENCES with a blank line after the third (ids are line numbers: 1-3, then 5-13)."""
    root = tmp_path_factory.mktemp("minilm")
    corpus = _corpus(root / "corpus.txt", [*SENTENCES[:3], "", *SENTENCES[3:]])
    assert main(["index", str(minilm_dir), "--input", str(corpus), "--output", str(root / "idx"),
                 "--no-progress"]) == 0
    return root / "idx"


def _search(capsys, *argv):
    capsys.readouterr()
    assert main(["search", *map(str, argv)]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def _line_of(i):
    return i + 1 if i < 3 else i + 2  # the blank fourth line is skipped, not renumbered


def test_each_sentence_is_its_own_top_hit_with_minilm(minilm_index, capsys):
    info = read_index_info(minilm_index)
    assert (info.count, info.kind, info.dimension, info.pooling, info.blank_lines) == (12, "flat", 384, "mean", 1)
    results = _search(capsys, minilm_index, *SENTENCES, "--top-k", "3")
    assert len(results) == len(SENTENCES)
    for i, hits in enumerate(results):
        assert [set(h) for h in hits] == [{"id", "text", "score"}] * 3
        assert hits[0]["id"] == _line_of(i) and hits[0]["text"] == SENTENCES[i]
        assert hits[0]["score"] > 0.99 and hits[0]["score"] > hits[1]["score"] >= hits[2]["score"]
    # a paraphrase finds its sentence: the vectors mean something, not only identity
    [hits] = _search(capsys, minilm_index, "a kitten naps on the couch", "--top-k", "1")
    assert hits[0]["text"] == SENTENCES[1]


def test_hnsw_index_round_trip_and_gzip_corpus(tiny, tmp_path, capsys):
    corpus = tmp_path / "corpus.txt.gz"
    with gzip.open(corpus, "wt", encoding="utf-8") as handle:
        handle.write("".join(f"{s}\n" for s in SENTENCES))
    assert main(["index", str(tiny), "--input", str(corpus), "--output", str(tmp_path / "idx"), "--kind", "hnsw",
                 "--precision", "fp32", "--no-progress"]) == 0
    assert read_index_info(tmp_path / "idx").kind == "hnsw"
    results = _search(capsys, tmp_path / "idx", *SENTENCES, "--top-k", "1", "--precision", "fp32")
    assert [hits[0]["id"] for hits in results] == list(range(1, len(SENTENCES) + 1))


def test_corpus_is_encoded_in_chunks_and_gives_the_same_index(tiny, tmp_path, monkeypatch, capsys):
    corpus = _corpus(tmp_path / "corpus.txt", SENTENCES)
    assert main(["index", str(tiny), "--input", str(corpus), "--output", str(tmp_path / "whole"),
                 "--precision", "fp32", "--no-progress"]) == 0
    import bertkit.search as search

    added = []
    monkeypatch.setattr(search, "CHUNK_TEXTS", 5)
    original = search.encode
    monkeypatch.setattr(search, "encode", lambda *a, **k: added.append(len(a[1])) or original(*a, **k))
    assert main(["index", str(tiny), "--input", str(corpus), "--output", str(tmp_path / "chunked"),
                 "--precision", "fp32", "--no-progress"]) == 0
    assert added == [5, 5, 2]  # read, encoded and added five texts at a time
    import faiss

    whole, chunked = (faiss.read_index(str(tmp_path / name / VECTORS_FILE)) for name in ("whole", "chunked"))
    assert np.allclose(whole.reconstruct_n(0, 12), chunked.reconstruct_n(0, 12), atol=1e-5)
    store = TextStore(tmp_path / "chunked")
    assert [store[i] for i in range(len(store))] == [(i + 1, s) for i, s in enumerate(SENTENCES)]


def test_texts_are_encoded_fewest_tokens_first_and_come_back_in_their_order(tiny, monkeypatch):
    import bertkit.search as search

    predictor = search.open_model(tiny, precision="fp32")
    texts = [*SENTENCES, "rain", "the cat is sleeping", " ".join(SENTENCES[:2]), " ".join(SENTENCES[2:5])]
    tokens = {text: len(e.ids) for text, e in zip(texts, predictor.tokenizer.encode_batch(texts), strict=True)}
    texts.sort(key=tokens.get, reverse=True)  # longest first: the encoding order is the reverse
    seen = []
    embed = search.embed
    monkeypatch.setattr(search, "embed", lambda model, tok, batch, *a, **k: seen.extend(batch) or
                        embed(model, tok, batch, *a, **k))
    together = search.encode(predictor, texts, "mean", 64, batch_size=4)
    assert [tokens[t] for t in seen] == sorted(tokens.values()) and len(set(tokens.values())) > 5
    alone = np.concatenate([search.encode(predictor, [text], "mean", 64) for text in texts])
    assert np.allclose(together, alone, atol=1e-5)  # row i is text i, as if encoded by itself


def test_a_build_holds_one_chunk_of_texts_not_the_corpus(tiny, tmp_path, monkeypatch):
    """6 MB of text indexed 100 lines at a time: from the model's loading on, the Python objects alive at the peak
    are a fraction of the corpus (texts kept in memory would be all of it)."""
    import tracemalloc

    import bertkit.search as search

    words = " ".join(SENTENCES).split()
    lines = [" ".join(words[(i + j) % len(words)] for j in range(400))[:2000] for i in range(3000)]
    corpus = _corpus(tmp_path / "big.txt", lines)
    monkeypatch.setattr(search, "CHUNK_TEXTS", 100)
    load = search.open_model

    def loaded(*args, **kwargs):
        model = load(*args, **kwargs)
        tracemalloc.reset_peak()  # the peak of reading, encoding and writing the corpus, not of loading the model
        return model

    monkeypatch.setattr(search, "open_model", loaded)
    tracemalloc.start()
    try:
        search.build_index(tiny, corpus, tmp_path / "idx", max_seq_len=16, precision="fp32", progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert corpus.stat().st_size > 5_900_000 and peak < corpus.stat().st_size / 3, peak
    store = TextStore(tmp_path / "idx")
    assert len(store) == 3000 and store[2999] == (3000, lines[2999])


def test_text_store_reads_each_text_back_by_offset(tmp_path):
    texts = ["plain", "中文，全角标点", "emoji 🙂 and tabs\there", "x" * 10_000]
    writer = TextWriter(tmp_path)
    writer.add([1, 2], texts[:2])
    writer.add([7, 9], texts[2:])
    writer.close()
    store = TextStore(tmp_path)
    assert len(store) == 4 and [store[i] for i in (3, 0, 2, 1)] == [(9, texts[3]), (1, texts[0]), (7, texts[2]),
                                                                      (2, texts[1])]
    with open(tmp_path / "texts.txt", "ab") as handle:  # a texts file that no longer matches its offsets
        handle.write(b"extra\n")
    with pytest.raises(Exception, match="its offsets end at"):
        TextStore(tmp_path)


def test_an_index_refuses_another_model(tiny, tmp_path, capsys):
    _corpus(tmp_path / "corpus.txt", SENTENCES)
    assert main(["index", str(tiny), "--input", str(tmp_path / "corpus.txt"), "--output", str(tmp_path / "idx"),
                 "--no-progress"]) == 0
    other = tiny_encoder(tmp_path / "other", seed=1)  # same shape and vocabulary, other weights
    capsys.readouterr()
    assert main(["search", str(tmp_path / "idx"), "a query", "--model", str(other)]) == 2
    err = capsys.readouterr().err
    assert f"{other} is not the model {tmp_path / 'idx'} was built with" in err and "fingerprint" in err
    # the model moved: the index says so, and a copy of it (same fingerprint) is accepted
    moved = tmp_path / "moved"
    shutil.copytree(tiny, moved)
    info = json.loads((tmp_path / "idx" / INFO_FILE).read_text())
    (tmp_path / "idx" / INFO_FILE).write_text(json.dumps({**info, "model": str(tmp_path / "gone")}))
    assert main(["search", str(tmp_path / "idx"), "a query"]) == 2
    assert "which is not there any more: pass --model DIR" in capsys.readouterr().err
    assert len(_search(capsys, tmp_path / "idx", SENTENCES[0], "--model", moved)[0]) == 10
    # the server refuses it too, before serving anything
    with pytest.raises(Exception, match="is not the model"):
        Searcher(tmp_path / "idx", model=other)


def test_pooling_comes_from_task_json_else_mean(tiny, tmp_path, capsys):
    from bertkit.tasks.base import save_task
    from bertkit.tasks.embed import SPEC, EmbedInfo

    assert checkpoint_pooling(tiny) == "mean"
    model, tok = BertModel.from_pretrained(tiny), Tokenizer.from_pretrained(tiny)
    save_task(SPEC, EmbedInfo(pooling="cls"), model, tok, tmp_path / "cls")
    assert checkpoint_pooling(tmp_path / "cls") == "cls"
    _corpus(tmp_path / "corpus.txt", SENTENCES)
    assert main(["index", str(tmp_path / "cls"), "--input", str(tmp_path / "corpus.txt"), "--output",
                 str(tmp_path / "idx"), "--precision", "fp32", "--no-progress"]) == 0
    assert read_index_info(tmp_path / "idx").pooling == "cls"
    [hits] = _search(capsys, tmp_path / "idx", SENTENCES[4], "--top-k", "12", "--precision", "fp32")
    vectors = Predictor(tmp_path / "cls", task="sentence_embedding", precision="fp32")
    from bertkit.tasks.embed import embed

    query, corpus = (embed(vectors.model, vectors.tokenizer, texts, "cls") for texts in ([SENTENCES[4]], SENTENCES))
    expected = (corpus @ query[0]).round(6)
    assert [h["score"] for h in hits] == pytest.approx(sorted(expected, reverse=True), abs=1e-5)


def test_rerank_orders_hits_by_the_cross_encoders_probability(tiny, tmp_path, capsys):
    _corpus(tmp_path / "corpus.txt", SENTENCES)
    assert main(["index", str(tiny), "--input", str(tmp_path / "corpus.txt"), "--output", str(tmp_path / "idx"),
                 "--precision", "fp32", "--no-progress"]) == 0
    cross = tiny_cross_encoder(tmp_path / "cross", seed=3)
    query = "the cat and the guitar"
    [plain] = _search(capsys, tmp_path / "idx", query, "--top-k", "5", "--precision", "fp32")
    [reranked] = _search(capsys, tmp_path / "idx", query, "--top-k", "5", "--rerank", cross,
                         "--rerank-candidates", "12", "--precision", "fp32")
    pairs = Predictor(cross, precision="fp32").predict([{"text": query, "text_pair": s} for s in SENTENCES])
    probability = {s: p["probabilities"]["1"] for s, p in zip(SENTENCES, pairs, strict=True)}
    assert len(set(probability.values())) == len(SENTENCES)  # no ties: one right order
    best = sorted(SENTENCES, key=lambda s: -probability[s])[:5]  # every sentence is a candidate (12)
    assert [h["text"] for h in reranked] == best
    assert [h["score"] for h in reranked] == pytest.approx([probability[s] for s in best], abs=1e-6)
    assert [h["text"] for h in reranked] != [h["text"] for h in plain]  # the cross-encoder changed the order
    vector_scores = {h["text"]: h["score"] for h in _search(capsys, tmp_path / "idx", query, "--top-k", "12",
                                                             "--precision", "fp32")[0]}
    assert all(h["vector_score"] == vector_scores[h["text"]] for h in reranked)
    # a cross-encoder without the label, or that is not a classifier, is refused with what to do
    assert main(["search", str(tmp_path / "idx"), query, "--rerank", str(cross), "--rerank-label", "yes"]) == 2
    assert "its labels are ['0', '1'], without 'yes'" in capsys.readouterr().err
    assert main(["search", str(tmp_path / "idx"), query, "--rerank", str(tiny)]) == 2
    assert "a sentence_embedding checkpoint; a cross-encoder is a classification checkpoint" in \
        capsys.readouterr().err
    assert main(["search", str(tmp_path / "idx"), query, "--rerank-label", "1"]) == 2
    assert "--rerank-label applies with --rerank" in capsys.readouterr().err
    searcher = Searcher(tmp_path / "idx", precision="fp32", rerank=Rerank(str(cross), candidates=3))
    assert len(searcher.search([query], 5)[0]) == 5  # at least top_k candidates, whatever --rerank-candidates


def _error(capsys, argv):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_bad_inputs_get_clear_errors(tiny, tmp_path, capsys):
    empty = _corpus(tmp_path / "empty.txt", [])
    out = tmp_path / "idx"
    assert f"{empty}: no texts to index: the file is empty" in _error(
        capsys, ["index", str(tiny), "--input", str(empty), "--output", str(out)])
    blank = _corpus(tmp_path / "blank.txt", ["", "   ", ""])
    assert f"{blank}: no texts to index: every line is blank" in _error(
        capsys, ["index", str(tiny), "--input", str(blank), "--output", str(out)])
    assert "nope.txt: file not found" in _error(
        capsys, ["index", str(tiny), "--input", str(tmp_path / "nope.txt"), "--output", str(out)])
    assert "--input -: a corpus is read twice" in _error(
        capsys, ["index", str(tiny), "--input", "-", "--output", str(out)])
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"fine\ncaf\xe9\n")
    assert f"{latin}:2: not UTF-8 text" in _error(
        capsys, ["index", str(tiny), "--input", str(latin), "--output", str(out)])
    assert not out.exists()
    corpus = _corpus(tmp_path / "corpus.txt", SENTENCES)
    assert main(["index", str(tiny), "--input", str(corpus), "--output", str(out), "--no-progress"]) == 0
    assert f"{out}: already exists; choose another name, or pass --overwrite" in _error(
        capsys, ["index", str(tiny), "--input", str(corpus), "--output", str(out)])
    assert f"{corpus}: exists and is not an index" in _error(
        capsys, ["index", str(tiny), "--input", str(corpus), "--output", str(corpus), "--overwrite"])

    queries = tmp_path / "queries.txt"
    queries.write_text(f"{SENTENCES[0]}\n{'x' * 10**6}\n", encoding="utf-8")
    assert f"{queries}:2: the query has 1,000,000 characters; the limit is 10,000" in _error(
        capsys, ["search", str(out), "--input", str(queries)])
    queries.write_text(f"{SENTENCES[0]}\n\n", encoding="utf-8")
    assert f"{queries}:2: the query is empty" in _error(capsys, ["search", str(out), "--input", str(queries)])
    assert "query 2 (command line): the query is empty" in _error(capsys, ["search", str(out), "ok", " "])
    assert "no queries: give them on the command line" in _error(capsys, ["search", str(out)])
    for top_k in ("0", "1000000000", "ten"):
        with pytest.raises(SystemExit) as exit_info:
            main(["search", str(out), "q", "--top-k", top_k])
        assert exit_info.value.code == 2
        assert "argument --top-k: " in capsys.readouterr().err
    assert f"{tmp_path / 'gone'}: no such index directory (build one with `bertkit index`)" in _error(
        capsys, ["search", str(tmp_path / "gone"), "q"])
    assert f"{tiny}: no index.json: not an index written by `bertkit index`" in _error(
        capsys, ["search", str(tiny), "q"])
    (out / VECTORS_FILE).unlink()
    assert f"{out}: vectors.faiss is missing: the index is incomplete" in _error(capsys, ["search", str(out), "q"])
    info = json.loads((out / INFO_FILE).read_text())
    (out / INFO_FILE).write_text(json.dumps({**info, "count": "12", "extra": 1}))
    assert "unknown field(s) ['extra']" in _error(capsys, ["search", str(out), "q"])


def test_a_failed_build_leaves_no_index_and_no_temporary_files(tiny, tmp_path, monkeypatch, capsys):
    import bertkit.search as search

    corpus = _corpus(tmp_path / "corpus.txt", SENTENCES)
    assert main(["index", str(tiny), "--input", str(corpus), "--output", str(tmp_path / "idx"), "--no-progress"]) == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "idx").iterdir()}
    calls = []

    def fail_on_second_chunk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return original(*args, **kwargs)

    original = search.encode
    monkeypatch.setattr(search, "CHUNK_TEXTS", 5)
    monkeypatch.setattr(search, "encode", fail_on_second_chunk)
    assert main(["index", str(tiny), "--input", str(corpus), "--output", str(tmp_path / "idx"), "--overwrite",
                 "--no-progress"]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (tmp_path / "idx").iterdir()} == before  # the old index, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "idx"]


def test_a_killed_build_leaves_no_index_and_its_leftovers_are_removed(tiny, tmp_path):
    """kill -9 mid-build: the output never appears; the next build removes the dead build's directory."""
    corpus = _corpus(tmp_path / "corpus.txt", SENTENCES * 400)
    code = ("import sys, bertkit.search as s\n"
            "original = s.TextWriter.add\n"
            "def add(self, *a):\n"
            "    original(self, *a)\n"
            "    print('chunk', flush=True)\n"
            "    import time; time.sleep(60)\n"
            "s.TextWriter.add = add\n"
            "s.CHUNK_TEXTS = 100\n"
            "from bertkit.cli import main\n"
            f"main(['index', {str(tiny)!r}, '--input', {str(corpus)!r}, '--output', {str(tmp_path / 'idx')!r}, "
            "'--no-progress'])\n")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert process.stdout.readline().strip() == "chunk"
    process.kill()
    process.wait()
    assert not (tmp_path / "idx").exists()
    [leftover] = [p for p in tmp_path.iterdir() if p.name.startswith(".idx.tmp-")]
    small = _corpus(tmp_path / "small.txt", SENTENCES)
    assert main(["index", str(tiny), "--input", str(small), "--output", str(tmp_path / "idx"), "--no-progress"]) == 0
    assert not leftover.exists() and read_index_info(tmp_path / "idx").count == len(SENTENCES)
