"""Hostile requests against a real loopback server: each fails only its own request, memory stays bounded."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import pytest
import torch
from bench._serving import Server, make_pair_checkpoint

from bertkit.errors import BertkitError
from bertkit.predict import Predictor
from bertkit.serve import Batcher, ServeConfig, allowed_host_names, check_exposure, json_depth
from bertkit.tokenizer import Tokenizer
from tests.serving import make_intent_checkpoint

VALID = [{"text": "the cat sat", "text_pair": "a cat sat"}, "it is raining", {"text": "dogs run fast"},
         {"text": "he won the race", "text_pair": "he lost"}]


def _rss_mib(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _zh(n: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice("的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年北京上海") for _ in range(n))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_pair_checkpoint(tmp_path_factory.mktemp("pair"))


@pytest.fixture(scope="module")
def server(checkpoint):
    # a 50 ms batching window, so concurrent clients really share forward passes
    s = Server(checkpoint, "--max-wait-ms", "50", "--header-timeout", "1", "--max-queue", "1024")
    yield s
    s.stop()


def test_pair_truncation_equals_longest_first_and_builds_no_overflow(minilm_dir):
    import transformers

    ours = Tokenizer.from_pretrained(minilm_dir)
    fast = transformers.BertTokenizerFast.from_pretrained(minilm_dir)
    rng = random.Random(0)
    words = ["the", "cat", "sat", "unbelievable", "北京", "café", "naïve", "[x]", "hello-world", "123.45"]
    warnings.simplefilter("ignore")
    for a_len, b_len, max_length in [(50, 2, 16), (2, 50, 16), (40, 40, 16), (40, 40, 17), (9, 7, 16), (3, 4, 16),
                                     (100, 100, 64)]:
        a = " ".join(rng.choice(words) for _ in range(a_len))
        b = " ".join(rng.choice(words) for _ in range(b_len))
        for pair in (b, None):
            got = ours.encode_batch([a], None if pair is None else [pair], max_length=max_length)[0]
            want = fast(a, pair, truncation="longest_first", max_length=max_length, return_offsets_mapping=True)
            assert got.ids == want["input_ids"] and list(got.type_ids) == want["token_type_ids"]
            assert [tuple(o) for o in got.offsets] == [tuple(o) for o in want["offset_mapping"]]
            assert list(got.word_ids) == want.word_ids() and list(got.sequence_ids) == want.sequence_ids()
    # 10,000 + 10,000 characters (10,000 tokens a side): was 14.7 s and +2.4 GB through tokenizers' truncation
    a, b = _zh(10_000, 1), _zh(10_000, 2)
    before, started = _rss_mib(), time.perf_counter()
    batch = ours(a, b, max_length=128)
    seconds, growth = time.perf_counter() - started, _rss_mib() - before
    assert batch["input_ids"].shape == (1, 128)
    assert batch["input_ids"][0].tolist() == fast(a, b, truncation="longest_first", max_length=128)["input_ids"]
    assert growth < 100, f"a 10k+10k pair grew memory by {growth:.0f} MiB"
    print(f"10k+10k-char pair truncated to 128 tokens: {seconds:.3f} s, RSS growth {growth:.1f} MiB")


def test_batch_failure_fails_only_the_job_that_caused_it():
    class Fake:
        def predict(self, items):
            if any(item == "boom" for item in items):
                raise ValueError("input 0: boom")
            return [{"echo": item} for item in items]

    async def run():
        batcher = Batcher(Fake(), ServeConfig(max_wait_ms=100))
        batcher.start()
        jobs = [batcher.submit(["a", "b"]), batcher.submit(["boom"]), batcher.submit(["c"])]
        return await asyncio.gather(*jobs, return_exceptions=True), list(batcher.batch_sizes)

    results, sizes = asyncio.run(run())
    assert results[0] == [{"echo": "a"}, {"echo": "b"}] and results[2] == [{"echo": "c"}]
    assert isinstance(results[1], ValueError) and sizes == [4]  # they really were one batch


def test_surrogates_and_mixed_shapes_batched_with_valid_clients(server):
    valid, hostile = [], []
    lock = threading.Lock()

    def client(k: int) -> None:
        for i in range(8):
            inputs = [VALID[(k + i) % 4], VALID[(k + i + 1) % 4]]
            status, body, _ = server.post("/predict", {"inputs": inputs})
            with lock:
                valid.append((status, body))

    def attacker() -> None:
        for _ in range(8):
            raw = b'{"inputs": ["fine", {"text": "x", "text_pair": "\\ud800"}]}'
            with lock:
                hostile.append(server.request("POST", "/predict", raw))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    threads += [threading.Thread(target=attacker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(valid) == 64 and [s for s, _ in valid].count(200) == 64, [b for s, b in valid if s != 200][:2]
    assert all(status == 422 for status, _, _ in hostile)
    assert "input 1: 'text_pair' has a lone surrogate (U+D800)" in hostile[0][1]["error"]
    assert server.get("/metrics")[1]["batch_size"]["max"] > 2  # clients did share forward passes


def test_mixed_pair_and_single_inputs_give_the_same_results_as_alone(server, checkpoint):
    status, body, _ = server.post("/predict", {"inputs": VALID})
    assert status == 200
    for item, got in zip(VALID, body["predictions"], strict=True):
        alone = server.post("/predict", {"inputs": [item]})[1]["predictions"][0]
        assert alone["label"] == got["label"]
        for label, p in alone["probabilities"].items():
            assert abs(p - got["probabilities"][label]) < 1e-5
    # and the predict CLI path (Predictor.predict) takes the same mix
    assert [r["label"] for r in Predictor(checkpoint).predict(VALID)] == [p["label"] for p in body["predictions"]]


def test_maximum_size_pair_is_truncated_with_bounded_server_memory(server):
    before = _rss_mib(server.process.pid)
    for seed in range(4):
        pair = {"text": _zh(10_000, seed), "text_pair": _zh(10_000, 9)}
        status, body, _ = server.post("/predict", {"inputs": [pair]})
        assert status == 200 and len(body["predictions"]) == 1
    growth = _rss_mib(server.process.pid) - before
    assert growth < 200, f"four 10k+10k pairs grew the server by {growth:.0f} MiB (was 7.3 GB)"
    print(f"four 10k+10k pairs: server RSS growth {growth:.1f} MiB")


def test_request_character_budget(server):
    status, body, _ = server.post("/predict", {"inputs": ["字" * 9_000] * 12})
    assert status == 413 and "108000 characters in all; the limit per request is 100000" in body["error"]


def test_deep_json_is_refused_before_parsing(server):
    assert json_depth(b'{"a": "[[[[", "b": [[1]]}') == 3  # brackets in strings do not count
    status, body, _ = server.request("POST", "/predict", b"[" * 100_000 + b"]" * 100_000)
    assert status == 400 and "nested deeper than 32 levels" in body["error"]
    status, body, _ = server.request("POST", "/predict", b'{"inputs": [' + b"1" * 5000 + b"]}")
    assert status == 400 and "JSON value refused" in body["error"]
    assert server.get("/health")[0] == 200


def test_an_unclosed_string_of_escaped_quotes_cannot_stall_the_server(server):
    # found in review: the nesting pre-scan backtracked quadratically on this shape (80 KB: 29 s on the event loop);
    # 1.2 MB of it would have held every client for hours
    body = b"[" * 33 + b'"' + b'\\"' * 600_000
    assert json_depth(body) == 33 and json_depth(b'["\\"]') == 1
    request = urllib.request.Request(server.url + "/predict", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    assert caught.value.code == 400 and "nested deeper than 32 levels" in json.loads(caught.value.read())["error"]
    assert server.post("/predict", {"inputs": ["it is raining"]})[0] == 200


def test_host_names_answered_by_bind_address_and_key():
    assert allowed_host_names("127.0.0.1") >= {"localhost", "127.0.0.1"}
    assert "evil.example" not in allowed_host_names("0.0.0.0")
    assert "10.1.2.3" in allowed_host_names("10.1.2.3") and "box" in allowed_host_names("0.0.0.0", ["Box"])
    # with a key beyond loopback any name is answered: a rebinding page cannot send the key
    assert allowed_host_names("0.0.0.0", (), "key") is None and allowed_host_names("::", ["*"]) is None
    assert allowed_host_names("127.0.0.1", (), "key") is not None  # loopback keeps its rebinding guard


def test_host_header_allow_list_blocks_dns_rebinding(server):
    status, body, _ = server.request("GET", "/health", headers={"Host": "evil.example:8000"})
    assert status == 400 and "Host header 'evil.example' is not one this server answers" in body["error"]
    assert server.request("GET", "/health", headers={"Host": f"localhost:{server.port}"})[0] == 200
    assert server.request("GET", "/health", headers={"Host": f"[::1]:{server.port}"})[0] == 200


def test_posts_must_be_json(server):
    for content_type in ("text/plain", "application/x-www-form-urlencoded", ""):
        status, body, _ = server.request("POST", "/predict", b'{"inputs": ["a"]}',
                                         headers={"Content-Type": content_type})
        assert status == 415 and "Content-Type must be application/json" in body["error"]
    assert server.request("POST", "/predict", b'{"inputs": ["a"]}',
                          headers={"Content-Type": "application/json; charset=utf-8"})[0] == 200


def test_metrics_stay_bounded_under_made_up_paths(server):
    for i in range(3000):
        try:
            urllib.request.urlopen(f"{server.url}/made-up-{i}-{'x' * 50}", timeout=10)
        except urllib.error.HTTPError as error:
            assert error.code == 404
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as response:
        raw = response.read()
    requests = json.loads(raw)["requests"]
    assert requests["other 404"] >= 3000 and all("made-up" not in key for key in requests)
    assert len(raw) < 4000, f"/metrics is {len(raw)} bytes after 3,000 made-up paths (was 655 KB)"


def test_stalled_connection_is_closed_after_the_header_timeout(server):
    with socket.create_connection(("127.0.0.1", server.port)) as silent, \
            socket.create_connection(("127.0.0.1", server.port)) as partial:
        partial.sendall(b"POST /predict HTTP/1.1\r\nHost: localhost\r\n")  # headers never finished
        silent.settimeout(8)
        partial.settimeout(8)
        started = time.perf_counter()
        assert silent.recv(1) == b"" and partial.recv(1) == b""  # closed by the server (1 s timeout)
        assert time.perf_counter() - started < 8
    assert server.get("/health")[0] == 200


def test_many_stalled_connections_are_all_closed_and_the_server_recovers(checkpoint):
    # the failure: 2,200 silent connections held open for 20 s; here 500 against a cap of 200
    s = Server(checkpoint, "--header-timeout", "1", "--max-connections", "200")
    sockets = []
    try:
        for _ in range(500):
            sock = socket.create_connection(("127.0.0.1", s.port))
            sock.settimeout(10)
            sockets.append(sock)
        started = time.perf_counter()
        closed = 0
        for sock in sockets:
            try:
                closed += sock.recv(1) == b""
            except (ConnectionResetError, TimeoutError):
                closed += not isinstance(sys.exc_info()[1], TimeoutError)
        assert closed == 500, f"{500 - closed} of 500 stalled connections still open"
        assert time.perf_counter() - started < 10
        status, body, _ = s.post("/predict", {"inputs": VALID})
        assert status == 200 and len(body["predictions"]) == len(VALID)
    finally:
        for sock in sockets:
            sock.close()
        s.stop()


def test_binding_beyond_loopback_needs_a_key_or_insecure(checkpoint):
    assert check_exposure("127.0.0.1", None, False) is None and check_exposure("::1", None, False) is None
    with pytest.raises(BertkitError, match=r"--host 0\.0\.0\.0 makes the server reachable .* --api-key"):
        check_exposure("0.0.0.0", None, False)
    assert "Bearer" in check_exposure("0.0.0.0", "k" * 16, False)
    assert "WITHOUT authentication" in check_exposure("192.168.1.5", None, True)
    # the CLI refuses before it loads the model or binds anything
    done = subprocess.run([sys.executable, "-m", "bertkit.cli", "serve", str(checkpoint), "--host", "0.0.0.0"],
                          capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"} | _pythonpath())
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "--api-key" in done.stderr


def _pythonpath() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k in ("PYTHONPATH", "HOME", "OMP_NUM_THREADS")}


@pytest.mark.parametrize("how", ["flag", "env"])
def test_api_key_required_on_every_route_but_the_page(checkpoint, how):
    key = "s3cret-key-0123456789"
    s = Server(checkpoint, *(["--api-key", key] if how == "flag" else []),
               env={"BERTKIT_API_KEY": key} if how == "env" else None)
    try:
        for method, path, body in (("GET", "/health", None), ("GET", "/metrics", None),
                                   ("POST", "/predict", b'{"inputs": ["a"]}'),
                                   ("POST", "/attention", b'{"text": "a"}')):
            status, payload, headers = s.request(method, path, body)
            assert status == 401 and "Bearer" in payload["error"] and headers.get("www-authenticate") == "Bearer"
            assert s.request(method, path, body, headers={"Authorization": "Bearer wrong"})[0] == 401
            assert s.request(method, path, body, headers={"Authorization": f"Bearer {key}"})[0] == 200
        with urllib.request.urlopen(s.url + "/") as response:  # the page itself; it asks for the key
            assert response.status == 200 and 'id="api-key"' in response.read().decode()
    finally:
        s.stop()


def test_over_long_intent_utterance_does_not_fail_its_batch(tmp_path):
    s = Server(make_intent_checkpoint(tmp_path), "--max-wait-ms", "50")
    try:
        results = []

        def send(text: str) -> None:
            results.append((text, *s.post("/predict", {"inputs": [text]})[:2]))

        long = " ".join(["fly from boston to denver"] * 20)
        threads = [threading.Thread(target=send, args=(t,)) for t in [long, "show fares to dallas"] * 3]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [status for _, status, _ in results].count(200) == 6
        got = next(body["predictions"][0] for text, _, body in results if text == long)
        assert got["truncated_words"] > 0 and len(got["tags"]) == 100
        assert s.post("/predict", {"inputs": ["\u200b"]})[0] == 200  # no token at all: an intent, no slots
    finally:
        s.stop()


def test_non_finite_outputs_are_an_error_not_nan_json(checkpoint):
    predictor = Predictor(checkpoint)
    with torch.no_grad():
        predictor.model.classifier.bias.fill_(float("nan"))  # after loading: the load-time check is not this one
    with pytest.raises(BertkitError, match="input 0: the model produced non-finite values"):
        predictor.predict(["it is raining"])
