"""Time from process start to the first answer of `bertkit serve` (BERT-base, no flags: `--precision auto`): the
first start, with nothing compiled on disk, and the second, loading what the first compiled; an uncompiled start
(`--no-compile`) beside them.

    .venv/bin/python bench/serve_start.py          (~3 minutes on 2 cores)

A BERT-base sentence classifier with random weights and BERT's 30,522-token vocabulary; a fresh compile cache
(`$TORCHINDUCTOR_CACHE_DIR` in a temporary directory) for the first start. Each time is from `Popen` to the first
200 answer of POST /predict (`bertkit serve` answers once the model is loaded and compiled). Writes
bench/results/serve_start.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "src"))
OUT = ROOT / "bench" / "results"


def start(checkpoint: Path, cache: Path, *flags: str) -> dict:
    """Start a server, time its first answer, stop it."""
    from _serving import Server

    began = time.perf_counter()
    server = Server(checkpoint, *flags, env={"OMP_NUM_THREADS": str(torch.get_num_threads()),
                                             "TORCHINDUCTOR_CACHE_DIR": str(cache)},
                    auto_compile=True, start_timeout=600)
    try:
        server.timeout = 600
        status, body, _ = server.post("/predict", {"inputs": ["the cat sat on the mat"]})
        seconds = time.perf_counter() - began
        health = server.get("/health")[1]
        assert status == 200, body
    finally:
        server.stop()
    return {"seconds": seconds, "precision": health["precision"], "compiled": health["compiled"],
            "why": health["precision_reason"]}


def main() -> int:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    from _serving import random_checkpoint
    from bertkit.hardware import cpu_flags, cpu_name

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        checkpoint = random_checkpoint("classification", work / "base", preset="base", vocab_size=30522)
        cache = work / "cache"
        runs = {"first start (nothing cached)": start(checkpoint, cache),
                "second start (cached by the first)": start(checkpoint, cache),
                "--no-compile": start(checkpoint, cache, "--no-compile")}
    for name, run in runs.items():
        print(name, json.dumps(run), flush=True)
    flags = sorted(f for f in cpu_flags() if "vnni" in f or "bf16" in f or "amx" in f)
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu_name(), "flags": flags,
              "threads": torch.get_num_threads(), "torch": torch.__version__, "runs": runs}
    lines = [f"Measured {result['date']} on {result['cpu']} ({result['threads']} threads; "
             f"{', '.join(flags) or 'no VNNI/AMX/bf16 flags'}), torch {result['torch']}: BERT-base (random weights, "
             "30,522-token vocabulary), `bertkit serve DIR`, from process start to the first answer of POST "
             "/predict.", "", "| start | seconds | runs |", "|---|---|---|"]
    for name, run in runs.items():
        lines.append(f"| {name} | **{run['seconds']:.1f}** | {run['precision']}"
                     f"{' compiled' if run['compiled'] else ' eager'} |")
    lines += ["", f"`--precision auto` here: {runs['first start (nothing cached)']['why']}."]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "serve_start.json").write_text(json.dumps(result, indent=2) + "\n")
    (OUT / "serve_start.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
