"""Fuzz round against a live loopback `bertkit serve`: generated request bodies (random JSON of every shape, mutated
valid bodies, random bytes, escapes such as lone surrogates, deep nesting, odd content types) to /predict and
/attention. Promise: 0 responses 5xx, 0 tracebacks in the server's output, every non-200 a JSON error message.

    .venv/bin/python bench/fuzz_server.py [--requests 10000]    (~2 minutes; a tiny pair classifier made here)

Writes bench/results/fuzz_server.json. tests/reliability/test_server_fuzz.py keeps a smaller round in `make test`.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import warnings
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "results"
KEYS = ["inputs", "text", "text_pair", "question", "context", "head", "tail", "x", ""]
STRINGS = ["", " ", "a", "北京", "\ud800", "\udfff", "\x00", "\u200b", "\ufeff", "[CLS]", "[SEP]", "<e1>", "é" * 50,
           "word " * 300, "字" * 2000, "\n\t", "null", "💥", "\u0301" * 20]


def random_value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(10 if depth < 4 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 2**63, 10**30, 1.5, -0.0, 1e308])
    if kind in (3, 4, 5):
        return rng.choice(STRINGS) if rng.random() < 0.7 else "".join(chr(rng.randrange(1, 0x3000))
                                                                      for _ in range(rng.randrange(20)))
    if kind in (6, 7):
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    return {rng.choice(KEYS): random_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def random_body(rng: random.Random) -> tuple[str, bytes, dict[str, str]]:
    """(path, body, headers)."""
    headers = {"Content-Type": "application/json"}
    path = "/predict" if rng.random() < 0.85 else "/attention"
    kind = rng.randrange(8)
    if kind <= 2:  # a plausible shape with random leaves
        item = rng.choice([random_value(rng), {"text": random_value(rng)},
                           {"text": random_value(rng), "text_pair": random_value(rng)}, rng.choice(STRINGS)])
        payload = {"inputs": [item for _ in range(rng.randrange(1, 4))]} if path == "/predict" else item
        body = json.dumps(payload, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
    elif kind == 3:  # any JSON value
        body = json.dumps(random_value(rng)).encode()
    elif kind == 4:  # a valid body, mutated bytes
        raw = bytearray(json.dumps({"inputs": ["it is raining", {"text": "a", "text_pair": "b"}]}).encode())
        for _ in range(rng.randrange(1, 6)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        body = bytes(raw)
    elif kind == 5:  # random bytes
        body = bytes(rng.randrange(256) for _ in range(rng.randrange(300)))
    elif kind == 6:  # nesting, numbers and escapes that stress the parser
        body = rng.choice([b"[" * rng.randrange(30, 5000), b'{"inputs": [' * 50 + b"]}" * 50,
                           b'{"inputs": [' + b"9" * rng.randrange(4000, 6000) + b"]}",
                           b'{"inputs": ["\\ud800\\udc00\\ud800"]}', b'{"inputs": [NaN, Infinity]}',
                           b'{"inputs": ["a"], "inputs": 5}'])
    else:  # odd content types and valid bodies
        body = b'{"inputs": ["it is raining"]}'
        headers = {"Content-Type": rng.choice(["text/plain", "application/x-www-form-urlencoded", "",
                                               "application/json; charset=latin-1", "APPLICATION/JSON"])}
    return path, body, headers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    from bench._serving import Server, make_pair_checkpoint

    statuses: Counter[int] = Counter()
    bad: list[tuple[int, str, bytes]] = []
    lock = threading.Lock()
    with tempfile.TemporaryDirectory() as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            checkpoint = make_pair_checkpoint(Path(tmp))
        server = Server(checkpoint, "--max-queue", "1024")
        try:
            def client(k: int) -> None:
                rng = random.Random(k)
                for _ in range(args.requests // args.clients):
                    path, body, headers = random_body(rng)
                    try:
                        status, payload, _ = server.request("POST", path, body, headers)
                        readable = status == 200 or (isinstance(payload, dict) and isinstance(payload.get("error"),
                                                                                             str) and payload["error"])
                    except (OSError, ValueError) as exc:  # ValueError: a non-JSON answer
                        status, readable = -1, False
                        payload = repr(exc)
                    with lock:
                        statuses[status] += 1
                        if status >= 500 or status < 0 or not readable:
                            bad.append((status, str(payload)[:200], body[:200]))

            threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            alive = server.get("/health")[0] == 200
        finally:
            log = server.stop()
    result = {"requests": sum(statuses.values()), "statuses": {str(k): v for k, v in sorted(statuses.items())},
              "5xx": sum(v for k, v in statuses.items() if k >= 500), "unreadable_or_failed": len(bad),
              "server_tracebacks": log.count("Traceback"), "server_alive_after": alive,
              "server_exceptions": sorted({line for line in log.splitlines() if "Error:" in line})[:10],
              "examples_of_bad": [[s, p, b.decode("latin-1")] for s, p, b in bad[:5]]}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "fuzz_server.json").write_text(json.dumps(result, indent=2) + "\n")
    statuses_text = ", ".join(f"{k}: {v:,}" for k, v in result["statuses"].items())
    (OUT / "fuzz_server.md").write_text(
        f"{result['requests']:,} generated request bodies to /predict and /attention of a live loopback server "
        "(`bench/fuzz_server.py`):\n\n| requests | statuses | 5xx | non-JSON or failed answers | server tracebacks | "
        "server up after |\n|---|---|---|---|---|---|\n"
        f"| {result['requests']:,} | {statuses_text} | {result['5xx']} | {len(bad)} | {result['server_tracebacks']} | "
        f"{'yes' if alive else 'no'} |\n")
    print(json.dumps(result, indent=2))
    ok = result["5xx"] == 0 and not bad and result["server_tracebacks"] == 0 and alive
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
