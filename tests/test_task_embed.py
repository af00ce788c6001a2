"""Sentence embeddings: pooling ignores padding, cosine, AUC, losses and ranks by hand, real MiniLM vectors make
sense; every reader and its errors; each loss beats the frozen model on toy paraphrases; the checkpoint loads in
transformers with the same vectors and resumes exactly."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bertkit import Tokenizer
from bertkit.cli import main
from bertkit.errors import DataError
from bertkit.predict import Predictor
from bertkit.tasks import embed as E
from bertkit.tasks.embed import best_threshold, cosine_similarity, embed, load, roc_auc
from tests.conftest import shared_data


def test_cosine_auc_threshold_by_hand():
    assert cosine_similarity(np.array([1.0, 0.0]), np.array([1.0, 1.0]))[0] == pytest.approx(2**-0.5)
    assert cosine_similarity(np.zeros((1, 2)), np.ones((1, 2)))[0] == 0.0
    # positives 0.9, 0.4; negatives 0.5, 0.1: pairs won 3 of 4
    assert roc_auc(np.array([1, 1, 0, 0]), np.array([0.9, 0.4, 0.5, 0.1])) == pytest.approx(0.75)
    assert best_threshold(np.array([1, 1, 0, 0]), np.array([0.9, 0.8, 0.5, 0.1])) == pytest.approx(0.8)


def test_real_minilm_vectors(minilm_dir):
    model, tok = load(minilm_dir)
    texts = ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply today."]
    vectors = embed(model, tok, texts)
    assert vectors.shape == (3, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    similar = cosine_similarity(vectors[0], vectors[1])[0]
    unrelated = cosine_similarity(vectors[0], vectors[2])[0]
    assert similar > 0.6 and unrelated < 0.2
    # mean pooling ignores padding: one text alone == the same text in a padded batch
    alone = embed(model, tok, [texts[1]])
    assert np.allclose(alone[0], vectors[1], atol=1e-5)
    for pooling in ("cls", "pooler"):
        assert embed(model, tok, texts[:1], pooling).shape == (1, 384)
    with pytest.raises(ValueError, match="pooling must be one of"):
        embed(model, tok, texts, "max")


# ---- training: losses, readers, the three losses against the frozen model ---------------------------------------


def test_losses_by_hand():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])  # cosines 1, 0, 1
    # labels 2 > 1 > 0: pair 0 (cos 1) above pairs 1 (cos 0) and 2 (cos 1); pair 1 (cos 0) above pair 2 (cos 1)
    # -> log(1 + e^{20(0-1)} + e^{20(1-1)} + e^{20(1-0)})
    expected = torch.log(1 + torch.exp(torch.tensor(-20.0)) + 1 + torch.exp(torch.tensor(20.0)))
    assert E.cosent_loss(a, b, torch.tensor([2.0, 1.0, 0.0])).item() == pytest.approx(expected.item(), rel=1e-6)
    # ranked as the labels say, with a wide margin: about zero; equal labels: no term at all
    assert E.cosent_loss(a[:2], b[:2], torch.tensor([1.0, 0.0])).item() == pytest.approx(0.0, abs=1e-8)
    assert E.cosent_loss(a, b, torch.ones(3)).item() == 0.0
    # in-batch: query i's answer is candidate i; the sum of each query's cross-entropy over 20 x cosine
    queries, candidates = torch.randn(3, 4), torch.randn(5, 4)  # 3 positives, then 2 hard negatives
    cosines = F.normalize(queries, dim=-1) @ F.normalize(candidates, dim=-1).T
    by_hand = sum(-torch.log_softmax(20 * cosines[i], 0)[i] for i in range(3))
    assert E.in_batch_loss(queries, candidates).item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_retrieval_ranks_by_hand():
    corpus = np.eye(3, dtype=np.float32)
    queries = np.array([[1, 0, 0], [0.6, 0.8, 0], [0, 0.6, 0.8]], dtype=np.float32)
    # query 0 -> gold 0: first; query 1 -> gold 0 (0.6) loses to row 1 (0.8): 2nd; query 2 -> gold 1 (0.6) loses to
    # row 2 (0.8) unless row 2 is its own text, which does not count against it
    assert E.retrieval_ranks(queries, corpus, [0, 0, 1], [None, None, None]) == [1, 2, 2]
    assert E.retrieval_ranks(queries, corpus, [0, 0, 1], [None, None, 2]) == [1, 2, 1]
    assert E.retrieval_ranks(np.ones((1, 3), np.float32), corpus, [2], [None]) == [1]  # ties rank the gold first


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_every_format_is_read(tmp_path):
    jsonl = _write(tmp_path / "p.jsonl", '{"text": "a", "text_pair": "b", "label": 1}\n\n'
                   '{"text": "c", "text_pair": "d", "label": "3.8", "negative": "e"}\n{"text": "f"}\n')
    assert E.read_pairs(jsonl) == [E.Pair("a", "b", 1.0, None, 1), E.Pair("c", "d", 3.8, "e", 3),
                                   E.Pair("f", None, None, None, 4)]
    afqmc = _write(tmp_path / "a.json", '{"sentence1": "花呗", "sentence2": "借呗", "label": "0"}\n')
    assert E.read_pairs(afqmc, "afqmc") == [E.Pair("花呗", "借呗", 0.0, None, 1)]
    stsb = _write(tmp_path / "s.tsv", "index\tgenre\tsentence1\tsentence2\tscore\n0\tx\tA \"quoted\" one.\tB.\t3.800\n")
    assert E.read_pairs(stsb, "stsb") == [E.Pair('A "quoted" one.', "B.", 3.8, None, 2)]
    unlabelled = _write(tmp_path / "t.tsv", "index\tsentence1\tsentence2\n0\tA.\tB.\n")
    assert E.read_pairs(unlabelled, "stsb") == [E.Pair("A.", "B.", None, None, 2)]
    for header in ("text_a\ttext_b\tlabel\n", ""):
        lcqmc = _write(tmp_path / "l.txt", header + "开初婚未育证明怎么弄？\t初婚未育情况证明怎么开？\t1\n")
        assert [(p.text_pair, p.label) for p in E.read_pairs(lcqmc, "lcqmc")] == [("初婚未育情况证明怎么开？", 1.0)]
    bq = _write(tmp_path / "b.txt", "你好_!_怎么更换_!_1\n")
    assert E.read_pairs(bq, "bq") == [E.Pair("你好", "怎么更换", 1.0, None, 1)]
    lines = _write(tmp_path / "s.txt", "one sentence\n\nanother\n")
    assert [p.text for p in E.read_pairs(lines, "lines")] == ["one sentence", "another"]
    assert E.simcse_sentences(E.read_pairs(jsonl)) == ["a", "b", "c", "d", "f"]


@pytest.mark.parametrize(("fmt", "text", "message"), [
    ("jsonl", '{"text": "a", "text_pair": "b", "label": 1}\n{"text_pair": "b", "label": 0}\n',
     r"bad\.txt:2: missing field 'text'"),
    ("jsonl", '{"text": "a", "text_pair": "b", "label": "yes"}\n',
     r"bad\.txt:1: label must be a number \(0/1 or a similarity score\), got 'yes'"),
    ("jsonl", '{"text": "a", "text_pair": "b", "label": true}\n', r"bad\.txt:1: label must be a number"),
    ("jsonl", '{"text": "a", "text_pair": "", "label": 1}\n', r"bad\.txt:1: 'text_pair' must be a non-empty string"),
    ("jsonl", '{"text": "a"\n', r"bad\.txt:1: bad JSON line"),
    ("jsonl", '["a", "b"]\n', r"bad\.txt:1: expected an object"),
    ("lcqmc", "a\tb\t1\nc\td\n", r"bad\.txt:2: expected 3 fields separated by '\\t', got 2"),
    ("lcqmc", "a\tb\tNaN\n", r"bad\.txt:1: label must be a number"),
    ("bq", "a_!_ _!_1\n", r"bad\.txt:1: empty second text"),
    ("stsb", "index\ttext\tscore\n", r"bad\.txt:1: the header has no column 'sentence1'"),
])
def test_a_malformed_line_is_an_error_naming_file_and_line(tmp_path, fmt, text, message):
    with pytest.raises(DataError, match=message):
        E.read_pairs(_write(tmp_path / "bad.txt", text), fmt)


def test_what_a_loss_cannot_train_on_is_an_error_naming_the_line(tmp_path):
    unlabelled = E.read_pairs(_write(tmp_path / "u.jsonl", '{"text": "a", "text_pair": "b", "label": 1}\n'
                                     '{"text": "c", "text_pair": "d"}\n'))
    with pytest.raises(DataError, match=r"t:2: cosent reads labelled pairs; this pair has no label"):
        E.cosent_examples(unlabelled, "t")
    single = E.read_pairs(_write(tmp_path / "s.jsonl", '{"text": "a"}\n'))
    with pytest.raises(DataError, match=r"t:1: mnr reads sentence pairs; this line has one text"):
        E.mnr_examples(single, "t")
    same = E.read_pairs(_write(tmp_path / "same.jsonl", '{"text": "a", "text_pair": "b", "label": 1}\n' * 2))
    with pytest.raises(DataError, match=r"t: every pair has the label 1: cosent learns"):
        E.cosent_examples(same, "t")
    scored = E.read_pairs(_write(tmp_path / "g.jsonl", '{"text": "a", "text_pair": "b", "label": 1}\n'
                                 '{"text": "c", "text_pair": "d", "label": 3.5}\n'))
    with pytest.raises(DataError, match=r"t:2: mnr reads \(query, positive\) pairs, .*label 3\.5 is a graded"):
        E.mnr_examples(scored, "t")
    binary = E.read_pairs(_write(tmp_path / "b.jsonl", '{"text": "a", "text_pair": "b", "label": 1}\n'
                                 '{"text": "c", "text_pair": "d", "label": 0}\n'))
    with pytest.warns(UserWarning, match=r"t: skipped 1 pair\(s\) labelled 0 \(not a positive\) \(line 2\)"):
        assert [p.line for p in E.mnr_examples(binary, "t")] == [1]
    assert E.positives(binary) == binary[:1] and E.positives(scored) == []


def test_the_shared_datasets_are_read():
    stsb = E.read_pairs(shared_data("sts_b", "dev.tsv"), "stsb")
    assert len(stsb) == 1500 and E.graded(stsb) and all(0 <= p.label <= 5 for p in stsb)
    assert all(p.label is None for p in E.read_pairs(shared_data("sts_b", "test.tsv"), "stsb"))
    lcqmc = E.read_pairs(shared_data("lcqmc", "dev.txt"), "lcqmc")
    assert len(lcqmc) == 8802 and sum(p.label == 1 for p in lcqmc) == 4402 and len(E.positives(lcqmc)) == 4402
    bq = E.read_pairs(shared_data("bq_corpus", "dev.txt"), "bq")
    assert len(bq) == 10000 and sum(p.label == 1 for p in bq) == 5000


# Toy paraphrases: a sentence of three concepts, each written with one of two synonyms; its paraphrase writes the
# same concepts with the other synonyms (no word in common), a non-paraphrase other concepts. A frozen (random)
# model cannot tell them apart; cosent and mnr must learn the synonyms. For simcse (no labels to learn synonyms
# from): words alternate with fillers (the, of, ...); a paraphrase has the same words among other fillers, a
# non-paraphrase other words among the same fillers, as much overlap for a frozen model; simcse must learn that the
# fillers every sentence shares say nothing.
SYNONYMS = [("cat", "kitten"), ("dog", "puppy"), ("car", "automobile"), ("house", "home"), ("big", "large"),
            ("small", "little"), ("buy", "purchase"), ("fast", "quick"), ("happy", "glad"), ("road", "street"),
            ("boat", "ship"), ("film", "movie"), ("begin", "start"), ("end", "finish"), ("shout", "yell"),
            ("rock", "stone")]
WORDS = [w for pair in SYNONYMS for w in pair]
FILLERS = ["the", "of", "and", "to"]


def _synonym_pairs(count: int, seed: int) -> list[tuple[str, str, int]]:
    rng, out = random.Random(seed), []
    for _ in range(count):
        concepts = rng.sample(range(len(SYNONYMS)), 3)
        if rng.random() < 0.5:
            out.append((" ".join(SYNONYMS[c][0] for c in concepts), " ".join(SYNONYMS[c][1] for c in concepts), 1))
        else:
            others = rng.sample([c for c in range(len(SYNONYMS)) if c not in concepts], 3)
            out.append((" ".join(SYNONYMS[c][0] for c in concepts), " ".join(SYNONYMS[c][1] for c in others), 0))
    return out


def _word_pairs(count: int, seed: int) -> list[tuple[str, str, int]]:
    rng, out = random.Random(seed), []

    def sentence(content: list[str], fillers: list[str]) -> str:
        return " ".join(w for pair in zip(content, fillers, strict=True) for w in pair)

    for _ in range(count):
        content, fillers = rng.sample(WORDS, 3), rng.choices(FILLERS, k=3)
        if rng.random() < 0.5:  # the same content words among other fillers
            out.append((sentence(content, fillers), sentence(content, rng.choices(FILLERS, k=3)), 1))
        else:  # other content words among the same fillers
            other = rng.sample([w for w in WORDS if w not in content], 3)
            out.append((sentence(content, fillers), sentence(other, fillers), 0))
    return out


def _jsonl(path: Path, rows: list[tuple[str, str, int]]) -> Path:
    return _write(path, "".join(json.dumps({"text": a, "text_pair": b, "label": label}) + "\n" for a, b, label in rows))


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    Tokenizer.train(WORDS + FILLERS, vocab_size=100, min_frequency=1).save_pretrained(root / "vocab")
    for name, make in (("synonyms", _synonym_pairs), ("words", _word_pairs)):
        _jsonl(root / f"{name}-train.jsonl", make(256, 1))
        _jsonl(root / f"{name}-test.jsonl", make(200, 2))
    # the frozen model: the random initialisation a run from scratch starts from (seed 42, as finetune's)
    from bertkit.tasks.base import build_task_model, encoder_config

    tok = Tokenizer.from_pretrained(root / "vocab")
    frozen = build_task_model(E.BertModel, None, encoder_config(None, tok, "tiny", 24), 42)
    frozen.save_pretrained(root / "frozen")
    tok.save_pretrained(root / "frozen")
    return root


def _finetune(toy: Path, output: Path, loss: str, data: str, *extra: str) -> None:
    assert main(["finetune", "--task", "sentence_embedding", "--loss", loss,
                 "--train", str(toy / f"{data}-train.jsonl"), "--eval", str(toy / f"{data}-test.jsonl"),
                 "--tokenizer", str(toy / "vocab"), "--model-size", "tiny",
                 "--max-seq-len", "24", "--batch-size", "16", "--max-steps", "40", "--warmup", "2", "--no-progress",
                 "--no-bf16", "--output-dir", str(output), *extra]) == 0


def _evaluate(checkpoint: Path, data: Path, capsys) -> dict:
    capsys.readouterr()
    assert main(["evaluate", str(checkpoint), "--data", str(data), "--precision", "fp32"]) == 0
    return json.loads(capsys.readouterr().out)


def _separation(checkpoint: Path, data: Path) -> float:
    """Mean cosine of the paraphrases minus that of the non-paraphrases, from the checkpoint's predicted vectors."""
    pairs = E.read_pairs(data)
    predictor = Predictor(checkpoint, precision="fp32")
    a = np.array([r["vector"] for r in predictor.predict([p.text for p in pairs])])
    b = np.array([r["vector"] for r in predictor.predict([p.text_pair for p in pairs])])
    cosines, labels = cosine_similarity(a, b), np.array([p.label for p in pairs])
    return float(cosines[labels == 1].mean() - cosines[labels == 0].mean())


@pytest.mark.parametrize(("loss", "data", "lr"), [("cosent", "synonyms", "3e-3"), ("mnr", "synonyms", "3e-3"),
                                                  ("simcse", "words", "1e-3")])
def test_each_loss_separates_paraphrases_better_than_the_frozen_model(toy, tmp_path, capsys, loss, data, lr):
    _finetune(toy, tmp_path / "run", loss, data, "--lr", lr)
    model, test = tmp_path / "run" / "model", toy / f"{data}-test.jsonl"
    frozen, trained = _evaluate(toy / "frozen", test, capsys), _evaluate(model, test, capsys)
    assert frozen["task"] == trained["task"] == "sentence_embedding"
    assert set(trained) == {"task", "data", "spearman", "pearson", "recall@1", "recall@10", "mrr@10"}
    # the frozen model's cosines are all near 1 (0.98 for both kinds of pair): every loss opens a gap between them
    assert _separation(model, test) > _separation(toy / "frozen", test) + 0.2
    if loss != "simcse":  # a random model knows no synonyms (Spearman ~0); cosent and mnr learn them (0.85)
        assert trained["spearman"] > frozen["spearman"] + 0.5, (frozen, trained)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r[f"loss_{loss}"] for r in records if r["kind"] == "train"]
    assert losses[-1] < losses[0], losses


@pytest.fixture(scope="module")
def cls_run(toy, tmp_path_factory):
    """A cosent run with [CLS] pooling, checkpointed every 10 of its 20 steps."""
    run = tmp_path_factory.mktemp("cls") / "run"
    assert main(["finetune", "--task", "sentence_embedding", "--pooling", "cls", "--train",
                 str(toy / "synonyms-train.jsonl"), "--eval", str(toy / "synonyms-test.jsonl"), "--tokenizer",
                 str(toy / "vocab"), "--model-size", "tiny", "--max-seq-len", "24", "--batch-size", "16",
                 "--max-steps", "20", "--save-every", "10", "--lr", "3e-3", "--warmup", "2", "--no-progress",
                 "--no-bf16", "--output-dir", str(run)]) == 0
    return run


def test_transformers_loads_the_checkpoint_and_gives_the_same_vectors(cls_run, tmp_path, capsys):
    import transformers

    model = cls_run / "model"
    assert json.loads((model / "task.json").read_text()) == {"task": "sentence_embedding", "pooling": "cls",
                                                             "max_seq_len": 24, "normalize": True}
    assert json.loads((model / "1_Pooling" / "config.json").read_text())["pooling_mode_cls_token"] is True
    texts = ["cat dog car", "kitten puppy automobile", "big small buy fast happy road"]
    theirs_model = transformers.BertModel.from_pretrained(model).eval()
    tokens = transformers.BertTokenizer.from_pretrained(model)(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        theirs = F.normalize(theirs_model(**tokens).last_hidden_state[:, 0], dim=-1).numpy()  # [CLS], as recorded
    predicted = np.array([r["vector"] for r in Predictor(model, precision="fp32").predict(texts)])
    assert np.abs(predicted - theirs).max() < 1e-5
    assert main(["embed", str(model), "--input", str(_write(tmp_path / "in.txt", "\n".join(texts) + "\n")),
                 "--output", str(tmp_path / "v.npy"), "--precision", "fp32"]) == 0
    assert np.abs(np.load(tmp_path / "v.npy") - theirs).max() < 1e-5  # embed pools as recorded, unasked
    assert main(["embed", str(model), "--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "m.npy"),
                 "--pooling", "mean", "--precision", "fp32"]) == 0
    assert "trained with cls pooling; --pooling mean gives vectors it was not trained for" in capsys.readouterr().err
    # without task.json the directory is a pre-trained one; sentence-transformers' files still say [CLS]
    shutil.copytree(model, tmp_path / "lost")
    (tmp_path / "lost" / "task.json").unlink()
    assert Predictor(tmp_path / "lost").info == E.EmbedInfo("cls", 24, True)
    again = np.array([r["vector"] for r in Predictor(tmp_path / "lost", precision="fp32").predict(texts)])
    assert np.abs(again - theirs).max() < 1e-5


def test_the_server_answers_with_the_recorded_pooling(cls_run):
    from bench._serving import Server

    texts = ["cat dog car", "kitten puppy automobile"]
    server = Server(cls_run / "model", "--precision", "fp32")
    try:
        status, body, _ = server.post("/predict", {"inputs": texts})
        health = server.get("/health")[1]
    finally:
        server.stop()
    assert status == 200 and health["info"]["pooling"] == "cls"
    expected = Predictor(cls_run / "model", precision="fp32").predict(texts)
    served = np.array([r["vector"] for r in body["predictions"]])
    assert np.abs(served - np.array([r["vector"] for r in expected])).max() < 1e-5


def test_a_resumed_run_ends_with_the_uninterrupted_runs_weights(cls_run, toy, tmp_path, capsys):
    from safetensors.torch import load_file

    resumed = tmp_path / "run"
    shutil.copytree(cls_run, resumed)
    for later in sorted((resumed / "checkpoints").glob("step-*"))[1:]:
        shutil.rmtree(later)
    shutil.rmtree(resumed / "model")
    assert main(["finetune", "--task", "sentence_embedding", "--pooling", "cls", "--train",
                 str(toy / "synonyms-train.jsonl"), "--eval", str(toy / "synonyms-test.jsonl"), "--tokenizer",
                 str(toy / "vocab"), "--model-size", "tiny", "--max-seq-len", "24", "--batch-size", "16",
                 "--max-steps", "20", "--save-every", "10", "--lr", "3e-3", "--warmup", "2", "--no-progress",
                 "--no-bf16", "--output-dir", str(resumed), "--resume"]) == 0
    ours = load_file(resumed / "model" / "model.safetensors")
    theirs = load_file(cls_run / "model" / "model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    # another loss on the same file is other training data: refused, naming it
    assert main(["finetune", "--task", "sentence_embedding", "--loss", "simcse", "--pooling", "cls", "--train",
                 str(toy / "synonyms-train.jsonl"), "--tokenizer", str(toy / "vocab"), "--model-size", "tiny",
                 "--max-seq-len", "24", "--batch-size", "16", "--max-steps", "20", "--lr", "3e-3", "--warmup", "2",
                 "--no-progress", "--no-bf16", "--output-dir", str(resumed), "--resume"]) == 2
    assert "data (sha256 of the encoded examples)" in capsys.readouterr().err


def test_bad_inputs_are_refused_before_training(toy, tmp_path, capsys):
    def finetune(*flags: str) -> str:
        capsys.readouterr()
        assert main(["finetune", "--task", "sentence_embedding", "--tokenizer", str(toy / "vocab"), "--model-size",
                     "tiny", "--no-progress", "--output-dir", str(tmp_path / "run"), *flags]) == 2
        return capsys.readouterr().err

    lines = _write(tmp_path / "s.txt", "kitten puppy\ncar house\n")
    empty = _write(tmp_path / "empty.jsonl", "\n")
    assert "empty.jsonl: no examples in the training file" in finetune("--train", str(empty))
    assert "s.txt:1: cosent reads sentence pairs; this line has one text" in finetune("--train", str(lines),
                                                                                       "--format", "lines")
    assert "s.txt: an evaluation file holds sentence pairs" in finetune(
        "--loss", "simcse", "--train", str(lines), "--format", "lines", "--eval", str(lines))
    bad = _write(tmp_path / "bad.jsonl", '{"text": "a", "text_pair": "b", "label": 1}\n{"text": "a", "label": "x"}\n')
    assert "bad.jsonl:2: label must be a number" in finetune("--train", str(bad))
    assert not (tmp_path / "run" / "model").exists()
    capsys.readouterr()
    assert main(["finetune", "--task", "classification", "--loss", "mnr", "--train", str(bad)]) == 2
    assert "--loss do(es) not apply to the classification task" in capsys.readouterr().err


def test_simcse_on_sentence_lines_scored_on_pairs_with_eval_format(toy, tmp_path):
    sentences = _write(tmp_path / "s.txt", "".join(f"{a}\n{b}\n" for a, b, _ in _word_pairs(64, 3)))
    assert main(["finetune", "--task", "sentence_embedding", "--loss", "simcse", "--format", "lines", "--train",
                 str(sentences), "--eval", str(toy / "words-test.jsonl"), "--eval-format", "jsonl", "--tokenizer",
                 str(toy / "vocab"), "--model-size", "tiny", "--max-seq-len", "24", "--batch-size", "16",
                 "--max-steps", "4", "--no-progress", "--no-bf16", "--output-dir", str(tmp_path / "run")]) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"spearman", "mrr@10"} <= set([r for r in records if r["kind"] == "eval"][-1])


def test_mnr_batches_hold_queries_positives_then_the_hard_negatives(toy):
    tok = Tokenizer.from_pretrained(toy / "vocab")
    pairs = [E.Pair("cat dog", "kitten puppy", None, "car home", 1), E.Pair("big road", "large street", 1.0, None, 2),
             E.Pair("boat film", "ship movie", 0.0, None, 3), E.Pair("rock end", "stone finish", 1.0, "buy", 4)]
    with pytest.warns(UserWarning, match="skipped 1 pair"):
        task = E.EmbeddingTask(tok, E.EmbedInfo("mean", 24), "mnr", pairs, [])
    batch = task.make_batch(0, [0, 1, 2])  # the kept pairs 1, 2 and 4
    assert batch["input_ids"].shape[0] == 3 + 3 + 2 and int(batch["size"]) == 3
    assert task.counts(batch) == {"mnr": 3.0}
    model = E.BertModel(E.BertConfig.preset("tiny", vocab_size=len(tok), pad_token_id=tok.pad_token_id)).eval()
    with torch.no_grad():
        vectors = E.sentence_vectors(model, batch, "mean")
        expected = E.in_batch_loss(vectors[:3], vectors[3:])  # every query against 3 positives and 2 negatives
        assert task.loss(model, batch)["mnr"].item() == pytest.approx(expected.item(), rel=1e-5)
