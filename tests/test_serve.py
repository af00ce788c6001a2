"""The HTTP API against a real server process on loopback: every endpoint and every error code."""

from __future__ import annotations

import json
import threading
import urllib.request

import pytest
from bench._serving import Server

from tests.serving import make_ner_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_ner_checkpoint(tmp_path_factory.mktemp("ner"))


@pytest.fixture(scope="module")
def server(checkpoint):
    s = Server(checkpoint, "--max-inputs", "8", "--max-queue", "16")
    yield s
    s.stop()


def test_health_predict_metrics_page(server):
    status, health, _ = server.get("/health")
    assert status == 200 and health["task"] == "ner" and "B-PER" in health["labels"]
    assert health["version"] and health["backend"].startswith("torch")
    from bertkit.precision import choose_precision

    assert [health["precision"], health["precision_reason"]] == list(choose_precision())  # --precision auto
    assert health["device"].startswith("cpu (")
    status, body, _ = server.post("/predict", {"inputs": ["张三去北京了", {"text": "李四去上海了"}]})
    assert status == 200 and body["task"] == "ner" and len(body["predictions"]) == 2
    entities = body["predictions"][0]["entities"]
    assert {"type": "LOC", "start": 3, "end": 5, "text": "北京"} in entities
    status, attention, _ = server.post("/attention", {"text": "张三去北京了"})
    assert status == 200 and attention["tokens"][0] == "[CLS]" and attention["layers"] == 2
    n = len(attention["tokens"])
    assert len(attention["attention"][0][0]) == n and abs(sum(attention["attention"][1][1][0]) - 1) < 1e-3
    status, metrics, _ = server.get("/metrics")
    assert status == 200 and metrics["inputs_predicted"] >= 2 and metrics["latency_ms"]["p50"] is not None
    assert metrics["batch_size"]["forward_passes"] >= 1
    assert metrics["threads"]["adaptive"] is True and metrics["threads"]["one_thread_passes"] >= 0  # bertkit.threads
    with urllib.request.urlopen(server.url + "/") as response:
        page = response.read().decode()
    assert "<canvas id=\"heatmap\"" in page and "http" not in page.split("<script>")[1].split("fetch(")[0]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "malformed JSON: Expecting property name"),
        (b"\xff\xfe", 400, "not UTF-8"),
        (b"", 400, "empty request body"),
        (b'["just", "a list"]', 422, 'expected a JSON object {"inputs": [...]}'),
        (b'{"inputs": []}', 422, '"inputs" must be a non-empty list'),
        (b'{"inputs": [42]}', 422, "input 0: expected an object"),
        (b'{"inputs": [{"text": 5}]}', 422, "'text' must be a string, got int"),
        (b'{"inputs": [{"text": null}]}', 422, "input 0: 'text' must be a string, got null"),
        (b'{"inputs": [{"txt": "a"}]}', 422, "unknown field(s) ['txt']"),
        (b'{"inputs": ["   "]}', 422, "'text' is empty"),
        (json.dumps({"inputs": ["x"] * 9}).encode(), 413, "9 inputs in one request; the limit is 8"),
        (json.dumps({"inputs": ["字" * 10_001]}).encode(), 413, "10001 characters; the limit is 10000"),
        (b'{"inputs": ["' + b"a" * 2_100_000 + b'"]}', 413, "request body of"),
    ],
)
def test_bad_requests_get_readable_4xx(server, body, status, message):
    if len(body) > 1_000_000:  # refused by its declared length, before the body is read
        got, payload = server.request_declaring("/predict", body)
    else:
        got, payload, _ = server.request("POST", "/predict", body)
    assert got == status and message in payload["error"]


def test_search_needs_an_index(server):
    status, body, _ = server.post("/search", {"queries": ["张三"]})
    assert status == 404 and "this server holds no search index" in body["error"]
    assert server.get("/health")[1]["search"] is None


def test_attention_errors(server):
    assert server.post("/attention", {"text": ""})[0] == 422
    assert server.post("/attention", {"text": "a", "text_pair": 3})[0] == 422


def test_full_queue_answers_503_with_retry_after(checkpoint):
    s = Server(checkpoint, "--max-queue", "4", "--max-wait-ms", "200", "--max-batch", "4")
    try:
        results = []

        def send():
            results.append(s.post("/predict", {"inputs": ["张三去北京了"] * 4}))

        threads = [threading.Thread(target=send) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        statuses = sorted(r[0] for r in results)
        assert 200 in statuses and 503 in statuses
        busy = next(r for r in results if r[0] == 503)
        assert busy[2].get("retry-after") == "1" and "server busy" in busy[1]["error"]
        assert s.get("/health")[0] == 200  # still up
    finally:
        s.stop()


def test_dynamic_batching_groups_concurrent_requests(checkpoint):
    s = Server(checkpoint, "--max-wait-ms", "100", "--max-batch", "32")
    try:
        threads = [threading.Thread(target=s.post, args=("/predict", {"inputs": ["张三去北京了"]})) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        metrics = s.get("/metrics")[1]
        assert metrics["inputs_predicted"] == 8
        assert metrics["batch_size"]["max"] > 1 and metrics["batch_size"]["forward_passes"] < 8
    finally:
        s.stop()
