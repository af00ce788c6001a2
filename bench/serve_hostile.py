"""Bounded loopback load test with hostile clients: 8 valid clients (mixed input shapes: texts, objects, pairs, several
inputs per request) and 2 hostile ones (lone surrogates, maximum-size pairs, over-long inputs, deep JSON, wrong
content types) against one `bertkit serve` for 60 s. Promise: 0 valid requests fail, server RSS grows < 200 MB.

    .venv/bin/python bench/serve_hostile.py [--seconds 60]      (~1.5 minutes; a tiny pair classifier made here)

Writes bench/results/serve_hostile.json and .md.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "results"
VALID_CLIENTS, HOSTILE_CLIENTS = 8, 2
VALID = [["it is raining"], [{"text": "the cat sat", "text_pair": "a cat sat"}],
         [{"text": "dogs run fast"}, {"text": "he won the race", "text_pair": "he lost"}, "the street is wet"],
         [{"text": "a " * 200, "text_pair": "b " * 200}]]  # longer than max_seq_len: truncated, still valid


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def hostile_request(rng: random.Random) -> tuple[bytes, dict[str, str]]:
    """(body, headers) of one hostile request."""
    json_type = {"Content-Type": "application/json"}
    kind = rng.randrange(5)
    if kind == 0:  # lone surrogates, beside a valid input in the same request
        return b'{"inputs": ["fine", "\\ud800", {"text": "x", "text_pair": "\\udfff"}]}', json_type
    if kind == 1:  # maximum-size pairs: 10,000 + 10,000 characters, three per request (inside the char budget)
        pair = {"text": "字" * 10_000, "text_pair": "词" * 10_000}
        return json.dumps({"inputs": [pair] * 3}).encode(), json_type
    if kind == 2:  # over-long: one text over the per-text limit
        return json.dumps({"inputs": ["x" * 10_001]}).encode(), json_type
    if kind == 3:  # deep JSON
        depth = rng.choice([100, 10_000, 100_000])
        return b"[" * depth + b"]" * depth, json_type
    return b'{"inputs": ["a cross-site form post"]}', {"Content-Type": "text/plain"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    from bench._serving import Server, make_pair_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            checkpoint = make_pair_checkpoint(Path(tmp))
        server = Server(checkpoint, "--max-queue", "1024")
        try:
            for inputs in VALID:  # warm-up: first forward passes of each shape allocate their buffers
                server.post("/predict", {"inputs": inputs})
            baseline = rss_mib(server.process.pid)
            peak = baseline
            latencies: list[float] = []
            valid_failures: list[tuple[int, object]] = []
            hostile_statuses: dict[int, int] = {}
            lock = threading.Lock()
            stop = time.perf_counter() + args.seconds

            def valid_client(k: int) -> None:
                i = k
                while time.perf_counter() < stop:
                    started = time.perf_counter()
                    status, body, _ = server.post("/predict", {"inputs": VALID[i % len(VALID)]})
                    with lock:
                        if status == 200:
                            latencies.append(time.perf_counter() - started)
                        else:
                            valid_failures.append((status, body))
                    i += 1

            def hostile_client(k: int) -> None:
                rng = random.Random(k)
                while time.perf_counter() < stop:
                    body, headers = hostile_request(rng)
                    try:
                        status = server.request("POST", "/predict", body, headers)[0]
                    except OSError:
                        status = -1  # the server may close a connection it refused before reading the body
                    with lock:
                        hostile_statuses[status] = hostile_statuses.get(status, 0) + 1

            threads = [threading.Thread(target=valid_client, args=(k,)) for k in range(VALID_CLIENTS)]
            threads += [threading.Thread(target=hostile_client, args=(k,)) for k in range(HOSTILE_CLIENTS)]
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads):
                peak = max(peak, rss_mib(server.process.pid))
                time.sleep(0.5)
            for t in threads:
                t.join()
            growth = rss_mib(server.process.pid) - baseline
        finally:
            log = server.stop()
    latencies.sort()
    result = {
        "seconds": args.seconds, "valid_clients": VALID_CLIENTS, "hostile_clients": HOSTILE_CLIENTS,
        "valid_requests": len(latencies) + len(valid_failures), "valid_failed": len(valid_failures),
        "valid_failures_sample": valid_failures[:3],
        "p50_ms": round(1000 * latencies[len(latencies) // 2], 1) if latencies else None,
        "p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 1) if latencies else None,
        "hostile_requests": sum(hostile_statuses.values()),
        "hostile_statuses": {str(k): v for k, v in sorted(hostile_statuses.items())},
        "server_rss_baseline_mib": round(baseline, 1), "server_rss_growth_mib": round(growth, 1),
        "server_rss_peak_growth_mib": round(peak - baseline, 1),
        "server_tracebacks": log.count("Traceback"),
    }
    ok = result["valid_failed"] == 0 and growth < 200 and result["server_tracebacks"] == 0
    lines = [f"{VALID_CLIENTS} valid clients (mixed shapes) + {HOSTILE_CLIENTS} hostile clients (lone surrogates, "
             f"10k+10k pairs, over-long texts, deep JSON, text/plain posts), {args.seconds:.0f} s, tiny pair "
             "classifier, loopback:", "",
             "| valid requests | failed | p50 | p99 | hostile requests (statuses) | server RSS growth (peak) | "
             "tracebacks |", "|---|---|---|---|---|---|---|",
             f"| {result['valid_requests']} | {result['valid_failed']} | {result['p50_ms']} ms | "
             f"{result['p99_ms']} ms | {result['hostile_requests']} ({result['hostile_statuses']}) | "
             f"{result['server_rss_growth_mib']} MiB ({result['server_rss_peak_growth_mib']} MiB) | "
             f"{result['server_tracebacks']} |", "", f"Promise held: **{'yes' if ok else 'NO'}**."]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "serve_hostile.json").write_text(json.dumps(result, indent=2) + "\n")
    (OUT / "serve_hostile.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
