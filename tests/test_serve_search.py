"""`bertkit serve INDEX`: POST /search against a real server process, under concurrent clients (the answers the CLI
gives), with the request limits, the API key and a cross-encoder."""

from __future__ import annotations

import json
import threading

import pytest
from bench._serving import Server

from bertkit.cli import main
from tests.test_search import SENTENCES, tiny_cross_encoder, tiny_encoder

pytest.importorskip("faiss")

QUERIES = ["someone plays music", "a kitten naps", "the economy", "cooking dinner", "sports news", "bad weather",
           "coding", "art gallery", "animals", "breakfast", "travel by rail", "health advice"]


def _cli(capsys, index, *argv):
    capsys.readouterr()
    assert main(["search", str(index), *map(str, argv)]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


@pytest.fixture(scope="module")
def minilm_index(tmp_path_factory, minilm_dir):
    root = tmp_path_factory.mktemp("serve-search")
    (root / "corpus.txt").write_text("".join(f"{s}\n" for s in SENTENCES), encoding="utf-8")
    assert main(["index", str(minilm_dir), "--input", str(root / "corpus.txt"), "--output", str(root / "idx"),
                 "--no-progress"]) == 0
    return root / "idx"


@pytest.fixture(scope="module")
def server(minilm_index):
    s = Server(minilm_index, "--max-inputs", "8", "--max-request-tokens", "600")
    yield s
    s.stop()


def test_search_under_concurrent_clients_answers_as_the_cli_does(server, minilm_index, capsys):
    status, health, _ = server.get("/health")
    assert status == 200 and health["task"] == "sentence_embedding"
    assert health["search"] == {"index": "idx", "count": 12, "kind": "flat", "dimension": 384, "pooling": "mean",
                                "max_top_k": 1000, "rerank": None}
    expected = {k: _cli(capsys, minilm_index, *QUERIES, "--top-k", k) for k in (1, 3, 12)}
    answers, failures = [], []

    def client(number):
        for round_ in range(3):
            k = (1, 3, 12)[(number + round_) % 3]
            chosen = [(number * 5 + round_ * 7 + j) % len(QUERIES) for j in range(1 + (number + round_) % 4)]
            status, body, _ = server.post("/search", {"queries": [QUERIES[i] for i in chosen], "top_k": k})
            if status != 200:
                failures.append((status, body))
                continue
            answers.extend((expected[k][i], hits) for i, hits in zip(chosen, body["results"], strict=True))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures and len(answers) >= 8 * 3
    for want, got in answers:
        assert [(h["id"], h["text"]) for h in got] == [(h["id"], h["text"]) for h in want]
        assert [h["score"] for h in got] == pytest.approx([h["score"] for h in want], abs=1e-4)
    status, metrics, _ = server.get("/metrics")
    assert metrics["requests"]["/search 200"] == 24


@pytest.mark.parametrize(
    ("payload", "status", "message"),
    [
        ({"queries": ["x" * 10**6]}, 413, "has a text of 1000000 characters; the limit is 10000"),
        ({"queries": ["a"], "top_k": 0}, 422, "top_k must be an integer from 1 to 1000, got 0"),
        ({"queries": ["a"], "top_k": 10**9}, 422, "top_k must be an integer from 1 to 1000, got 1000000000"),
        ({"queries": ["a"], "top_k": "5"}, 422, "top_k must be an integer from 1 to 1000, got '5'"),
        ({"queries": ["a"], "top_k": True}, 422, "top_k must be an integer from 1 to 1000, got True"),
        ({"queries": []}, 422, '"queries" must be a non-empty list of strings'),
        ({"queries": "a text"}, 422, '"queries" must be a non-empty list of strings'),
        ({"queries": ["ok", 5]}, 422, "query 1 must be a string, got int"),
        ({"queries": ["ok", "  "]}, 422, "query 1 is empty"),
        ({"queries": ["\ud800"]}, 422, "query 0 has a lone surrogate (U+D800)"),
        ({"inputs": ["a"]}, 422, 'expected a JSON object {"queries": ["...", ...], "top_k": K (optional, default 10)}'),
        ({"queries": ["a"], "k": 3}, 422, "unknown field(s) ['k']"),
        ({"queries": ["a"] * 9}, 413, "9 inputs in one request; the limit is 8"),
        ({"queries": ["a" * 200] * 5}, 413, "would encode up to 640 tokens in 5 sequences"),
    ],
)
def test_bad_search_requests_get_readable_4xx(server, payload, status, message):
    body = json.dumps(payload).encode()  # json.dumps writes the lone surrogate as the escape \ud800
    got, answer, _ = server.request("POST", "/search", body)
    assert got == status and message in answer["error"], answer


def test_rerank_and_api_key_in_the_server(tmp_path, capsys):
    model = tiny_encoder(tmp_path / "model")
    cross = tiny_cross_encoder(tmp_path / "cross", seed=3)
    (tmp_path / "corpus.txt").write_text("".join(f"{s}\n" for s in SENTENCES), encoding="utf-8")
    assert main(["index", str(model), "--input", str(tmp_path / "corpus.txt"), "--output", str(tmp_path / "idx"),
                 "--no-progress"]) == 0
    key = "search-key-0123456789"
    server = Server(tmp_path / "idx", "--rerank", str(cross), "--rerank-candidates", "6", "--api-key", key,
                    "--precision", "fp32")
    try:
        status, body, _ = server.post("/search", {"queries": ["a"]})
        assert status == 401 and "API key" in body["error"]
        server.headers["Authorization"] = f"Bearer {key}"
        status, health, _ = server.get("/health")
        assert health["search"]["rerank"] == {"model": "cross", "label": "1", "candidates": 6}
        status, body, _ = server.post("/search", {"queries": QUERIES[:3], "top_k": 4})
        assert status == 200
        want = _cli(capsys, tmp_path / "idx", *QUERIES[:3], "--top-k", "4", "--rerank", cross, "--rerank-candidates",
                    "6", "--precision", "fp32")
        for got, expected in zip(body["results"], want, strict=True):
            assert [(h["id"], h["text"]) for h in got] == [(h["id"], h["text"]) for h in expected], (got, expected)
            for key in ("score", "vector_score"):
                assert [h[key] for h in got] == pytest.approx([h[key] for h in expected], abs=1e-5)
    finally:
        server.stop()
