"""Search indexes: build time and memory, query latency p50/p99, queries/s and recall@10 against exact search, for
the exact index (FAISS IndexFlatIP) and two approximate ones (HNSW, the one `bertkit index` builds beyond
EXACT_MAX_VECTORS; IVF, measured beside it) at 10k, 100k and 1M vectors of 384 dimensions (MiniLM's); then recall on
real sentence vectors, and what `bertkit index` and `search` cost end to end with MiniLM.

    .venv/bin/python bench/search.py [--sizes 10000 100000 1000000] [--real 100000]

The index-level rows use random unit vectors: encoding a million real texts on 2 cores takes hours. Isotropic
random vectors are the hardest case for an approximate index (no neighbourhood is closer than any other), so their
recall is a floor; the recall rows on real vectors use MiniLM's vectors of English sentences from ../shared/data
(SST-2, GoEmotions, STS-B, MRPC), queried with sentences held out of the index. Each configuration is built and
queried in its own process: its peak RSS less the RSS before the build is the index's memory.

Writes bench/results/search.json and .md (copied into docs/search.md by bench/readme_tables.py).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "results"
WORK = ROOT / "runs" / "bench-search"
DIMENSION = 384
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


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


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

    base, queries = dataset(source, n)
    before = rss_mb()
    started = time.perf_counter()
    index = make_index(kind, n, base)
    build_s = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
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
        latencies = []
        found = np.empty((len(queries), K), dtype=np.int64)
        for i, query in enumerate(queries):
            started = time.perf_counter()
            _, found[i : i + 1] = index.search(query[None], K)
            latencies.append(time.perf_counter() - started)
        started = time.perf_counter()
        for start in range(0, len(queries), BATCH):
            index.search(queries[start : start + BATCH], K)
        qps = len(queries) / (time.perf_counter() - started)
        recall = float(np.mean([len(set(a) & set(b)) / K for a, b in zip(found, truth, strict=True)]))
        rows.append({"setting": setting, "p50_ms": 1000 * float(np.percentile(latencies, 50)),
                     "p99_ms": 1000 * float(np.percentile(latencies, 99)), "qps_batched": qps, "recall": recall})
    return {"kind": kind, "source": source, "n": n, "build_s": build_s, "memory_mb": max(peak - before, 0.0),
            "index_mb": size_mb, "rows": rows}


def ground_truth(source: str, n: int) -> Path:
    """Exact top-10 of the queries (flat inner product), saved for the children."""
    import faiss

    path = WORK / f"truth-{source}-{n}.npy"
    if not path.exists():
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


def real_vectors(minilm: Path, count: int) -> dict:
    """MiniLM's vectors of `count` + QUERIES real sentences, through `bertkit index` (timed: end to end), kept as
    real.npy for the recall rows; then `bertkit search` on that index, one query at a time."""
    from bertkit.search import Searcher, build_index

    texts = real_texts()[: count + QUERIES]
    corpus = WORK / "real.txt"
    corpus.write_text("".join(f"{t}\n" for t in texts), encoding="utf-8")
    index_dir = WORK / "real-index"
    started = time.perf_counter()
    info = build_index(minilm, corpus, index_dir, overwrite=True, progress=False)
    build_s = time.perf_counter() - started
    import faiss

    vectors = faiss.read_index(str(index_dir / "vectors.faiss"))
    flat = vectors.reconstruct_n(0, vectors.ntotal) if info.kind == "flat" else None
    if flat is None:  # an HNSW index stores its vectors flat too
        flat = faiss.downcast_index(vectors.storage).reconstruct_n(0, vectors.ntotal)
    np.save(WORK / "real.npy", flat)
    searcher = Searcher(index_dir)
    latencies = []
    for text in texts[:200]:
        started = time.perf_counter()
        searcher.search([text], K)
        latencies.append(time.perf_counter() - started)
    started = time.perf_counter()
    for start in range(0, 512, BATCH):
        searcher.search(texts[start : start + BATCH], K)
    return {"texts": len(texts), "kind": info.kind, "precision": info.precision, "build_s": build_s,
            "texts_per_s": len(texts) / build_s, "query_p50_ms": 1000 * float(np.percentile(latencies, 50)),
            "query_p99_ms": 1000 * float(np.percentile(latencies, 99)),
            "queries_per_s_batched": 512 / (time.perf_counter() - started)}


def machine() -> str:
    from bertkit.hardware import cpu_name

    return f"{cpu_name()}, {os.cpu_count()} cores"


def report(results: dict) -> str:
    def best(record: dict, kind: str) -> dict:
        """The setting the product uses (HNSW: HNSW_EF_SEARCH) or, for IVF, the smallest with recall >= 0.95."""
        from bertkit.search import HNSW_EF_SEARCH

        rows = record["rows"]
        if kind == "hnsw":
            return next(r for r in rows if r["setting"] == HNSW_EF_SEARCH)
        if kind == "ivf":
            return next((r for r in rows if r["recall"] >= 0.95), rows[-1])
        return rows[0]

    names = {"flat": "flat (exact)", "hnsw": "HNSW, M 32, efSearch {}", "ivf": "IVF, {} lists, nprobe {}"}

    def label(record: dict, row: dict) -> str:
        if record["kind"] == "ivf":
            return names["ivf"].format(max(16, int(4 * np.sqrt(record["n"]))), row["setting"])
        return names[record["kind"]].format(row["setting"])

    lines = [f"{results['machine']}, {results['date']}, load average {results['load']} (a shared machine: other "
             f"jobs ran beside it). `{results['command']}`. 384-d vectors, top {K}, {QUERIES} queries timed one at a "
             f"time (p50, p99) and in batches of {BATCH} (queries/s); recall@{K} against the exact index.", "",
             "Random unit vectors (the hardest case for an approximate index):", "",
             "| vectors | index | build (s) | memory (MB) | p50 (ms) | p99 (ms) | queries/s (batched) | "
             f"recall@{K} |", "|---|---|---|---|---|---|---|---|"]
    for record in results["index"]:
        if record["source"] != "random":
            continue
        row = best(record, record["kind"])
        lines.append(f"| {record['n']:,} | {label(record, row)} | {record['build_s']:.1f} | "
                     f"{record['memory_mb']:,.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | "
                     f"{row['qps_batched']:,.0f} | {row['recall']:.3f} |")
    lines += ["", f"Recall@{K} and p50 per search setting, random and real vectors (MiniLM's, of English sentences; "
                  "queries held out of the index):", "",
              "| vectors | source | index | " + " | ".join(f"setting {i + 1}" for i in range(4)) + " |",
              "|---|---|---|---|---|---|---|"]
    for record in results["index"]:
        if record["kind"] == "flat":
            continue
        cells = [f"{r['setting']}: {r['recall']:.3f}, {r['p50_ms']:.2f} ms" for r in record["rows"]]
        kind = "HNSW efSearch" if record["kind"] == "hnsw" else "IVF nprobe"
        lines.append(f"| {record['n']:,} | {record['source']} | {kind} | " + " | ".join(cells) + " |")
    end = results.get("end_to_end")
    if end:
        lines += ["", f"End to end with MiniLM (`--precision auto`: {end['precision']}): `bertkit index` on "
                      f"{end['texts']:,} real sentences ({end['kind']}) in {end['build_s']:.0f} s "
                      f"(**{end['texts_per_s']:,.0f} texts/s**, encoding included); `Searcher.search` one query at "
                      f"a time (encoding, search, texts read from disk): p50 **{end['query_p50_ms']:.1f} ms**, "
                      f"p99 {end['query_p99_ms']:.1f} ms; {end['queries_per_s_batched']:,.0f} queries/s in "
                      f"batches of {BATCH}."]
    million = [r for r in results["index"] if r["n"] == 1_000_000 and r["kind"] == "hnsw"]
    if million:
        row = best(million[0], "hnsw")
        lines += ["", f"At 1M random vectors the HNSW index `bertkit index` builds answers a query in "
                      f"**{row['p50_ms']:.2f} ms** (p50) with recall@{K} **{row['recall']:.3f}** against exact "
                      "search (a floor: random vectors are its hardest case)."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--real", type=int, nargs="+", default=[10_000, 100_000],
                        help="sizes of the real-vector recall rows (their largest is encoded with MiniLM)")
    parser.add_argument("--kinds", nargs="+", default=["flat", "hnsw", "ivf"])
    parser.add_argument("--child", nargs=4, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, source, n, truth = args.child
        print(json.dumps(child(kind, source, int(n), truth)))
        return 0
    WORK.mkdir(parents=True, exist_ok=True)
    from tests.conftest import minilm_path

    command = "python bench/search.py" + ("" if sys.argv[1:] == [] else " " + " ".join(sys.argv[1:]))
    results: dict = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "command": command, "index": []}
    if args.real:
        results["end_to_end"] = real_vectors(minilm_path(), max(args.real))
        print(results["end_to_end"], flush=True)
    for source, sizes in (("real", args.real), ("random", args.sizes)):
        for n in sizes:
            for kind in args.kinds:
                results["index"].append(measure(kind, source, n))
    results["load"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "search.json").write_text(json.dumps(results, indent=1) + "\n")
    (OUT / "search.md").write_text(report(results))
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
