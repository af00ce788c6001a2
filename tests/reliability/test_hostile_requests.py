"""Requests that multiply their own cost (choices, windows, entity occurrences), wrong answers to degenerate inputs,
keys that can never authenticate, refusals at the connection cap, unchecked tokenizer settings and careless command
lines: each one refused early with a message naming the limit or the field."""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import time
import tracemalloc
import warnings

import pytest
from bench._serving import Server, random_checkpoint

from bertkit.cli import main, parse_args
from bertkit.errors import BertkitError, CheckpointError, DataError
from bertkit.predict import Predictor
from bertkit.serve import ServeConfig, check_api_key, check_exposure
from bertkit.tasks import multiple_choice, qa, relation, spelling, triples
from bertkit.tasks.tagging import encode_sentences, words_of
from bertkit.tokenizer import Tokenizer

MAX_SEQ_LEN = 512  # the widest a BERT reads: the most each sequence can cost


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    warnings.simplefilter("ignore")
    return {task: random_checkpoint(task, root / task, MAX_SEQ_LEN)
            for task in ("multiple_choice", "qa", "relation", "ner", "spelling", "triples", "fill_mask")}


@pytest.fixture(scope="module")
def predictors(checkpoints):
    return {task: Predictor(path, precision="fp32", task="fill_mask" if task == "fill_mask" else None)
            for task, path in checkpoints.items()}


# ---- the work budget ---------------------------------------------------------------------------------------------

def _encoded_tokens(task: str, predictor: Predictor, item: dict) -> tuple[int, int]:
    """(sequences, tokens) the task's own encoding really produces for one input."""
    tok, info = predictor.tokenizer, predictor.info
    if task == "multiple_choice":
        rows, _ = multiple_choice.encode(tok, [multiple_choice.Question(item.get("context") or "", item["question"],
                                                                        item["choices"], None, 0)], info.max_seq_len)
        return len(rows[0][0]), sum(len(ids) for ids in rows[0][0])
    if task == "qa":
        windows = qa.make_windows(tok, [qa.Question("0", item["question"], item["context"], [], -1)],
                                  info.max_seq_len, info.doc_stride)
        return len(windows), sum(len(w.input_ids) for w in windows)
    if task == "spelling":
        rows = spelling.encode_windows(tok, item["text"], None, info.max_seq_len)
        return len(rows), sum(len(r[0]) for r in rows)
    words, _ = words_of(item["text"], "char")
    pieces = encode_sentences(tok, [words], None, info.max_seq_len)
    return len(pieces), sum(len(p.input_ids) for p in pieces)


@pytest.mark.parametrize("task", ["multiple_choice", "qa", "spelling", "ner", "triples"])
def test_the_work_bound_is_never_below_what_the_task_encodes(task, predictors):
    predictor, rng = predictors[task], random.Random(0)
    alphabet = [*"的一是不了人我在有他这中大来上国个到说们", "cat ", "sat ", "unbelievable ", "mat. ", "  "]
    for trial in range(12):
        text = "".join(rng.choice(alphabet) for _ in range(rng.choice([0, 3, 50, 700, 3000])))
        item = {"text": text or "x"}
        if task == "multiple_choice":
            item = {"context": text, "question": "为什么" * rng.randrange(1, 30),
                    "choices": [f"choice {i} " * rng.randrange(1, 9) for i in range(rng.randrange(2, 9))]}
        elif task == "qa":
            item = {"question": "谁" * rng.randrange(1, 200), "context": text or "x"}
        sequences, tokens = _encoded_tokens(task, predictor, item)
        bound = predictor.work(predictor.normalise([item]))
        assert sequences <= bound.sequences and tokens <= bound.tokens, (trial, task, sequences, tokens, bound)


def test_multiple_choice_request_that_repeats_its_context_is_refused_before_encoding(checkpoints):
    # the report: a 9,000-character context and 2,000 one-character choices took 36 s and 3.96 GB on BERT-tiny
    server = Server(checkpoints["multiple_choice"])
    try:
        context = "今天天气很好我们去公园散步" * 700
        many = {"question": "哪个", "context": context[:9000], "choices": [chr(0x4E00 + i) for i in range(2000)]}
        started = time.perf_counter()
        status, body, _ = server.post("/predict", {"inputs": [many]})
        assert status == 413 and "'choices' has 2000 items; the limit is 32" in body["error"]
        assert time.perf_counter() - started < 5
        # within the choice limit, but 3 questions x 32 choices x 512 tokens: over the token budget, said so
        full = {**many, "choices": many["choices"][:32]}
        status, body, _ = server.post("/predict", {"inputs": [full] * 3})
        assert status == 413 and "up to 49152 tokens in 96 sequences" in body["error"]
        assert "limit per request is 32768 tokens" in body["error"]
        status, body, _ = server.post("/predict", {"inputs": [full]})  # one such question is served
        assert status == 200 and len(body["predictions"][0]["scores"]) == 32
    finally:
        server.stop()


def test_work_budget_counts_windows_and_chunks(predictors):
    config = ServeConfig()
    # QA: a 10,000-character context is ~ 40 windows of 512; 3 of them pass the budget no more
    item = {"question": "谁", "context": "小明住在北京" * 1667}
    work = predictors["qa"].work(predictors["qa"].normalise([item] * 3))
    assert work.sequences >= 3 * 10000 // 508 and work.tokens > config.max_request_tokens
    # NER: ten 10,000-character texts, chunked
    work = predictors["ner"].work(predictors["ner"].normalise(["北京" * 5000] * 10))
    assert work.tokens > config.max_request_tokens
    # fill-mask: every [MASK] sends back top_k whole sequences: 16 masks x 5 x ~500 tokens is over the budget
    fill = predictors["fill_mask"]
    text = "[MASK]" * 16 + "北" * 400
    assert fill.work(fill.normalise([text])).tokens == (len(text) + 3) * (1 + 16 * fill.info.top_k)
    assert fill.work(fill.normalise([text])).tokens > config.max_request_tokens
    # a plain request of 64 full-length texts fits, as before the budget
    classification_like = predictors["relation"].normalise(["a <e1> b </e1> c <e2> d </e2>" * 20] * 64)
    assert predictors["relation"].work(classification_like).tokens <= config.max_request_tokens


# ---- relation: entity occurrences --------------------------------------------------------------------------------

def _mark_reference(sentence: str, head: str, tail: str) -> tuple[int, int]:
    """The quadratic definition: every pair of occurrences, the earliest apart, else nested, else crossing."""
    heads = [i for i in range(len(sentence)) if sentence.startswith(head, i)]
    tails = [i for i in range(len(sentence)) if sentence.startswith(tail, i)]
    pairs = [(h, t) for h in heads for t in tails if t + len(tail) <= h or t >= h + len(head)]
    if not pairs:
        pairs = [(h, t) for h in heads for t in tails
                 if (t <= h and h + len(head) <= t + len(tail)) or (h <= t and t + len(tail) <= h + len(head))]
    if not pairs:
        pairs = [(h, t) for h in heads for t in tails]
    return min(pairs, key=lambda p: (max(p), min(p)))


def test_relation_locates_the_pair_as_the_quadratic_definition_does():
    rng = random.Random(0)
    for _ in range(3000):
        sentence = "".join(rng.choice("abc") for _ in range(rng.randrange(1, 14)))
        head = sentence[(i := rng.randrange(len(sentence))) : i + rng.randrange(1, 4)]
        tail = sentence[(j := rng.randrange(len(sentence))) : j + rng.randrange(1, 4)]
        assert relation.locate_pair(sentence, head, tail) == _mark_reference(sentence, head, tail), \
            (sentence, head, tail)


def test_relation_with_thousands_of_occurrences_marks_one_pair_in_linear_memory(predictors):
    # the report: 10,000 characters whose head and tail occur thousands of times took 11 s and +1.7 GB, then 422
    text = "张三" * 2500 + "北京" * 2500
    tracemalloc.start()
    try:
        h, t = relation.locate_pair(text, "张", "京")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (h, t) == (0, 5001) and peak < 5_000_000  # 2,500 x 2,500 pairs listed: over 500 MB
    predictor = predictors["relation"]
    with pytest.raises(DataError, match="more than max_seq_len=512"):  # found fast, refused as before
        predictor.predict([{"text": text, "head": "张", "tail": "京"}])
    result = predictor.predict([{"text": "京张三" * 40 + "北京" * 40, "head": "张", "tail": "京"}])[0]
    # the result says which occurrences were marked: the earliest pair apart
    assert result["head"] == {"start": 1, "end": 2} and result["tail"] == {"start": 0, "end": 1}
    assert set(result["probabilities"]) == set(predictor.labels)


@pytest.mark.parametrize(("item", "message"), [
    ({"text": "the fire caused smoke", "head": "", "tail": "smoke"}, "'head' is empty|head entity is blank"),
    ({"text": "the fire caused smoke", "head": "fire", "tail": " "}, "tail entity is blank"),
    ({"text": "the fire caused smoke", "head": "fire"}, "give both 'head' and 'tail'"),
    ({"text": "the fire caused smoke", "head": "rain", "tail": "smoke"}, "head entity 'rain' not found"),
])
def test_relation_degenerate_entities_are_refused(item, message, predictors):
    with pytest.raises(DataError, match=rf"input 0: .*({message})"):
        predictors["relation"].normalise([item])


# ---- wrong answers to degenerate inputs ------------------------------------------------------------------------

@pytest.mark.parametrize(("choices", "message"), [
    (["yes", "no", "yes"], "choices 0 and 2 are the same text 'yes'"),
    (["yes", "  "], "choice 1 is blank"),
    (["only"], "'choices' needs two or more choices, got 1"),
])
def test_multiple_choice_refuses_choices_that_cannot_each_get_a_probability(choices, message, predictors):
    with pytest.raises(DataError, match=f"input 0: {message}"):
        predictors["multiple_choice"].normalise([{"question": "which?", "choices": choices}])
    ok = predictors["multiple_choice"].predict([{"question": "which?", "choices": ["yes", "no", "maybe"]}])[0]
    assert len(ok["probabilities"]) == len(ok["scores"]) == 3


def test_qa_with_an_empty_context_is_refused(predictors):
    for context in ("", "   \n"):
        with pytest.raises(DataError, match="input 0: 'context' is empty"):
            predictors["qa"].normalise([{"question": "where?", "context": context}])


# ---- API keys and the connection cap -----------------------------------------------------------------------------

@pytest.mark.parametrize(("key", "message"), [
    ("ключ-ключ-ключ-ключ", r"the character 'к' \(U\+043A\) at position 0"),
    (" ", "a space at position 0"),
    ("abc def ghi jkl mno", "a space at position 3"),
    ("short-key", "9 characters; it needs at least 16"),
    ("", "0 characters"),
])
def test_api_keys_that_cannot_authenticate_or_guard_are_refused_at_start(key, message):
    with pytest.raises(BertkitError, match=message):
        check_api_key(key)
    with pytest.raises(BertkitError, match=message):
        check_exposure("0.0.0.0", key, False)
    check_api_key("Aa0-_.~!" * 2)  # 16 printable characters


def test_serve_with_a_blank_key_exits_before_loading(checkpoints):
    done = subprocess.run([sys.executable, "-m", "bertkit.cli", "serve", str(checkpoints["qa"]), "--host", "0.0.0.0",
                           "--api-key", " "], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "a space at position 0" in done.stderr


def test_connections_over_the_cap_get_json_503_with_retry_after(checkpoints):
    server = Server(checkpoints["qa"], "--max-connections", "4", "--header-timeout", "5")
    held = []
    try:
        for _ in range(4):
            held.append(socket.create_connection(("127.0.0.1", server.port)))
        time.sleep(0.3)
        replies = []
        for _ in range(3):  # over the cap, up to twice it: answered, not reset
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
                replies.append(data.decode())
        for reply in replies:
            head, _, body = reply.partition("\r\n\r\n")
            assert head.startswith("HTTP/1.1 503") and "retry-after: 1" in head.lower()
            assert "application/json" in head and "--max-connections" in json.loads(body)["error"]
    finally:
        for sock in held:
            sock.close()
    try:
        deadline = time.time() + 10
        while server.get("/health")[0] != 200 and time.time() < deadline:
            time.sleep(0.2)
        assert server.get("/health")[0] == 200  # the held connections gone, the server answers again
    finally:
        server.stop()


# ---- tokenizer_config.json, the command line, readers ----------------------------------------------------------

@pytest.mark.parametrize(("content", "message"), [
    ({"model_max_length": "abc"}, "model_max_length must be a positive integer, got 'abc'"),
    ({"model_max_length": 0}, "model_max_length must be a positive integer, got 0"),
    ({"do_lower_case": "yes"}, "do_lower_case must be true or false, got 'yes'"),
    ({"strip_accents": 1}, r"strip_accents must be true or false \(or null\), got 1"),
    ({"mask_token": 5}, "mask_token must be a non-empty string"),
    ({"additional_special_tokens": "<e1>"}, "additional_special_tokens must be a list"),
    (["do_lower_case", True], "expected a JSON object of tokenizer settings, got list"),
])
def test_tokenizer_config_is_validated(content, message, tmp_path):
    Tokenizer.train(["the cat sat"], vocab_size=40, min_frequency=1).save_pretrained(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(content))
    with pytest.raises(CheckpointError, match=rf"tokenizer_config\.json: {message}"):
        Tokenizer.from_pretrained(tmp_path)


def test_tokenizer_config_as_transformers_writes_it_still_loads(tmp_path):
    Tokenizer.train(["the cat sat"], vocab_size=40, min_frequency=1).save_pretrained(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "do_lower_case": False, "strip_accents": None, "model_max_length": 1000000000000000019884624838656,
        "mask_token": {"content": "[MASK]", "lstrip": False}, "tokenizer_class": "BertTokenizer"}))
    tok = Tokenizer.from_pretrained(tmp_path)
    assert tok.model_max_length == 512 and tok.options.do_lower_case is False


def test_fill_mask_takes_texts_after_its_options(checkpoints, capsys):
    assert parse_args(["fill-mask", "DIR", "--top-k", "3", "a [MASK] b"]).texts == ["a [MASK] b"]
    assert parse_args(["fill-mask", "DIR", "x [MASK]", "--top-k", "3", "y [MASK]"]).texts == ["x [MASK]", "y [MASK]"]
    assert main(["fill-mask", str(checkpoints["fill_mask"]), "--top-k", "3", "the [MASK] sat",
                 "--precision", "fp32"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 1 and len(rows[0]) == 3
    with pytest.raises(SystemExit):
        parse_args(["fill-mask", "DIR", "--top-k", "3", "--no-such-flag"])


def test_reader_errors_name_the_missing_field(tmp_path):
    path = tmp_path / "mc.jsonl"
    path.write_text(json.dumps({"choices": ["a", "b"], "label": 0}) + "\n")
    with pytest.raises(DataError, match=r"mc\.jsonl:1: bad jsonl record: missing field 'question'$"):
        multiple_choice.read_questions(path)
    path = tmp_path / "squad.json"
    path.write_text(json.dumps({"version": "1.1"}))
    with pytest.raises(DataError, match=r"squad\.json: not SQuAD-format JSON \(missing field 'data'\)"):
        qa.read_questions(path)


# ---- outputs that grow faster than the input ---------------------------------------------------------------------

def test_triples_scores_at_most_max_pairs_per_chunk_nearest_first():
    few = [("X", i, i) for i in range(0, 46, 2)]  # 23 entities: every ordered pair (506)
    assert len(triples.candidate_pairs(few)) == 23 * 22 <= triples.MAX_PAIRS
    many = [("X", i, i) for i in range(0, 1020, 2)]  # 510 entities: 259,590 ordered pairs
    pairs = triples.candidate_pairs(many)
    assert len(pairs) == triples.MAX_PAIRS == len(set(pairs)) and all(a != b for a, b in pairs)
    assert {abs(a - b) for a, b in pairs} == {1}  # the 512 nearest: neighbours, nearest first
    assert pairs[:2] == [(0, 1), (1, 0)]


def test_fill_mask_refuses_more_masks_than_it_can_answer(predictors):
    predictor = predictors["fill_mask"]
    assert len(predictor.predict(["the [MASK] sat " * 16])[0]["masks"]) == 16
    with pytest.raises(DataError, match=r"input 0: 17 \[MASK\] tokens; at most 16"):
        predictor.predict(["the [MASK] sat " * 17])


def test_a_forward_pass_holds_at_most_max_tokens_padded_tokens():
    import torch

    from bertkit.tasks.base import pad_sequences, run_batches

    rng = random.Random(0)
    rows = [[rng.randrange(5, 100) for _ in range(rng.choice([3, 40, 512]))] for _ in range(100)]
    shapes = []

    def forward(_model, batch):
        shapes.append(tuple(batch["input_ids"].shape))
        return batch["input_ids"].sum(1).tolist()

    out = run_batches(torch.nn.Linear(1, 1), rows, lambda chunk: pad_sequences(chunk, 0), forward, 64, 2048)
    assert out == [sum(r) for r in rows]  # every row once, in order
    assert all(b * t <= 2048 or b == 1 for b, t in shapes) and sum(b for b, _ in shapes) == 100
