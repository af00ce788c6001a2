"""Does glibc's malloc slow CPU inference down? The same GEMMs timed in two processes: one with glibc's defaults,
one after `bertkit.memory.keep_freed_memory()` (what the CLI does when BERTKIT_MALLOC=keep). A GEMM that allocates
its output (as every layer of a forward pass does) against the same GEMM writing into a kept buffer (`out=`), in
alternation.

    .venv/bin/python bench/malloc.py            (~3 minutes)

Writes bench/results/malloc.{json,md}. glibc maps each block over 32 MiB afresh and unmaps it at free, so a large
output is paged in at its first write on every call; with the kept heap it is reused. The price is measured too:
resident memory while batches of ever new shapes fragment the kept heap.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results"
# (rows, K, N): BERT-base's QKV and FFN GEMMs at 32 x 128 tokens (outputs of 38, 50 and 13 MB) and at 1 x 128
SHAPES = ((4096, 768, 2304), (4096, 768, 3072), (4096, 3072, 768), (128, 768, 3072))


def child(keep: bool) -> dict:
    import statistics

    import torch

    from bertkit.memory import keep_freed_memory

    took = keep_freed_memory() if keep else False
    rows = []
    for m, k, n in SHAPES:
        a = torch.randint(-128, 127, (m, k), dtype=torch.int8)
        b = torch.randint(-127, 127, (k, n), dtype=torch.int8)
        x, w = torch.randn(m, k), torch.randn(k, n)
        out, fout = torch.empty(m, n, dtype=torch.int32), torch.empty(m, n)
        fns = {"int8 allocating": lambda: torch._int_mm(a, b),
               "int8 into a kept buffer": lambda: torch._int_mm(a, b, out=out),
               "fp32 allocating": lambda: torch.mm(x, w),
               "fp32 into a kept buffer": lambda: torch.mm(x, w, out=fout)}
        times: dict[str, list[float]] = {name: [] for name in fns}
        for fn in fns.values():
            fn()
        for _ in range(9 if m > 1000 else 40):  # in alternation: the VM's speed drifts from second to second
            for name, fn in fns.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        cell = {"shape": [m, k, n], "output MB": m * n * 4 / 1e6}
        for name, t in times.items():
            cell[name] = 2 * m * k * n / statistics.median(t) / 1e12  # TOP/s (TFLOP/s for fp32)
        for kind in ("int8", "fp32"):  # per round, so that drift cancels
            pairs = zip(times[f"{kind} allocating"], times[f"{kind} into a kept buffer"], strict=True)
            cell[f"{kind} allocating / kept buffer"] = statistics.median(kept / alloc for alloc, kept in pairs)
        rows.append(cell)
    return {"kept": took, "threads": torch.get_num_threads(), "rows": rows, "varied": varied_batches()}


def varied_batches(count: int = 120) -> dict:
    """Resident memory while eager int8 BERT-base runs `count` batches of random shapes (1-32 sequences of 16-128
    tokens, most padded), as a server sees them: what keeping freed memory costs."""
    import random

    import torch

    from bertkit import BertConfig, BertModel
    from bertkit.precision import quantize

    def status(key: str) -> int:  # MB
        return int(next(line for line in open("/proc/self/status") if line.startswith(key)).split()[1]) // 1024

    torch.manual_seed(0)
    model = quantize(BertModel(BertConfig.preset("base", vocab_size=30522)), "int8")
    rng, resident = random.Random(0), []
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(count):
            rows, length = rng.randint(1, 32), rng.randint(16, 128)
            ids = torch.randint(1000, 30000, (rows, length))
            mask = torch.ones_like(ids)
            for row in range(rows):
                if rng.random() < 0.7:
                    mask[row, rng.randint(8, length):] = 0
            model(ids, mask, torch.zeros_like(ids))
            if (i + 1) % (count // 4) == 0:
                resident.append(status("VmRSS"))
    return {"batches": count, "resident MB": resident, "peak MB": status("VmHWM"),
            "seconds": time.perf_counter() - start}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2] == "keep")))
        return 0
    sys.path.insert(0, str(ROOT / "src"))
    from bertkit.hardware import cpu_name

    runs = {}
    for mode in ("system", "keep"):
        done = subprocess.run([sys.executable, __file__, "--child", mode], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
        runs[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu_name(), **runs}
    lines = [f"Measured {result['date']} on {result['cpu']} ({runs['keep']['threads']} threads); "
             f"keep_freed_memory took effect: {runs['keep']['kept']}.",
             "", "An allocating GEMM's speed as a fraction of the same GEMM writing into a buffer it keeps (`out=`), "
             "timed in alternation in one process; 1.00 = no cost from allocating.", "",
             "| GEMM (rows x K x N) | output | int8, glibc default | int8, kept heap | fp32, glibc default | "
             "fp32, kept heap | int8 TOP/s into a kept buffer |", "|---|---|---|---|---|---|---|"]
    for plain, kept in zip(runs["system"]["rows"], runs["keep"]["rows"], strict=True):
        cells = [f"{plain[f'{kind} allocating / kept buffer']:.2f} | **{kept[f'{kind} allocating / kept buffer']:.2f}**"
                 for kind in ("int8", "fp32")]
        lines.append(f"| {' x '.join(map(str, plain['shape']))} | {plain['output MB']:.0f} MB | {cells[0]} | "
                     f"{cells[1]} | {kept['int8 into a kept buffer']:.2f} |")
    varied = {mode: runs[mode]["varied"] for mode in ("system", "keep")}
    lines += ["", f"Resident memory while eager int8 BERT-base runs {varied['keep']['batches']} batches of random "
              "shapes (1-32 sequences of 16-128 tokens, most padded), at each quarter of the run:", "",
              "| malloc | resident MB | peak MB | seconds |", "|---|---|---|---|"]
    for mode, label in (("system", "glibc default"), ("keep", "kept heap")):
        v = varied[mode]
        lines.append(f"| {label} | {', '.join(map(str, v['resident MB']))} | {v['peak MB']} | {v['seconds']:.0f} |")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "malloc.json").write_text(json.dumps(result, indent=2) + "\n")
    (OUT / "malloc.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
