"""The element-wise passes around an eager int8 GEMM, timed in one process on this CPU: each row's bounds
(torch.aminmax against amin and amax apart) and the rescaling after torch._int_mm (an out-of-place rank-one update
against every pass in place on the product), at BERT's shapes (tokens x width: one sequence of 128, and 8 of them).

    .venv/bin/python bench/int8_ops.py

Writes bench/results/int8_ops.{json,md}. Each variant is timed in turns with the others (median of 9 turns of 50
calls), and each pair is checked to give the same numbers (bounds exactly; the rescaling within float rounding).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
OUT = ROOT / "bench" / "results"
SHAPES = ((128, 768), (128, 3072), (1024, 768), (1024, 3072))


def timed(fns: dict, turns: int = 9, calls: int = 50) -> dict[str, float]:
    """Median microseconds a call of each function, the functions taking turns."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(turns):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            samples[name].append((time.perf_counter() - start) / calls * 1e6)
    return {name: statistics.median(s) for name, s in samples.items()}


def main() -> int:
    from bertkit.hardware import cpu_flags, cpu_name

    gen = torch.Generator().manual_seed(0)
    rows = []
    for m, n in SHAPES:
        x = torch.randn(m, n, generator=gen)
        bounds = timed({"torch.aminmax": lambda x=x: torch.aminmax(x, dim=-1, keepdim=True),
                        "amin, amax": lambda x=x: (x.amin(dim=-1, keepdim=True), x.amax(dim=-1, keepdim=True))})
        low, high = torch.aminmax(x, dim=-1, keepdim=True)
        assert torch.equal(low, x.amin(dim=-1, keepdim=True)) and torch.equal(high, x.amax(dim=-1, keepdim=True))
        acc = torch.randint(-20000, 20000, (m, n), dtype=torch.int32, generator=gen)
        scale, zero = torch.rand(m, 1, generator=gen), torch.rand(m, 1, generator=gen) * 100
        weight_scale, weight_sum, bias = (torch.rand(1, n, generator=gen), torch.rand(n, generator=gen),
                                          torch.rand(n, generator=gen))

        def out_of_place(acc=acc, scale=scale, zero=zero, w=weight_scale, ws=weight_sum, b=bias):
            y = acc.float().mul_(scale).mul_(w)
            return torch.addr(y, (zero * scale).reshape(-1), ws, alpha=-1).add_(b)

        def in_place(acc=acc, scale=scale, zero=zero, w=weight_scale, ws=weight_sum, b=bias):
            y = acc.float().mul_(w)
            return y.addr_(zero.reshape(-1), ws, alpha=-1).mul_(scale).add_(b)

        rescale = timed({"out of place": out_of_place, "in place": in_place})
        torch.testing.assert_close(in_place(), out_of_place(), rtol=1e-5, atol=1e-3)
        rows.append({"shape": [m, n], "bounds_us": bounds, "rescale_us": rescale})
        print(json.dumps(rows[-1]), flush=True)
    flags = sorted(f for f in cpu_flags() if "vnni" in f or "bf16" in f or "amx" in f)
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu_name(), "flags": flags,
              "threads": torch.get_num_threads(), "torch": torch.__version__, "rows": rows}
    lines = [f"Measured {result['date']} on {result['cpu']} ({result['threads']} threads; "
             f"{', '.join(flags) or 'no VNNI/AMX/bf16 flags'}), torch {result['torch']}: "
             "microseconds a call, median of 9 turns of 50 calls.", "",
             "| tokens x width | torch.aminmax | amin, amax | ratio | rescale out of place | in place | ratio |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        b, s = r["bounds_us"], r["rescale_us"]
        lines.append(f"| {r['shape'][0]} x {r['shape'][1]} | {b['torch.aminmax']:,.0f} | {b['amin, amax']:,.0f} | "
                     f"**{b['torch.aminmax'] / b['amin, amax']:.1f}x** | {s['out of place']:,.0f} | "
                     f"{s['in place']:,.0f} | **{s['out of place'] / s['in place']:.1f}x** |")
    lines += ["", "Bounds: each row's (min, max), what per-token int8 quantizes from. Rescale: an int32 product to "
              "float32 rows s (w acc - z colsum) + b, with `torch.addr` out of place (after two products by the "
              "scales) against `addr_` and every other pass in place (bertkit's eager int8 on torch._int_mm)."]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "int8_ops.json").write_text(json.dumps(result, indent=2) + "\n")
    (OUT / "int8_ops.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
