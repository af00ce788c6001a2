"""How to run attention over a variable-length batch on this CPU: measured, so the engine's choice has a number.

    .venv/bin/python bench/attention.py     (run by `make bench`)

Strategies over the packed (S, 3H) projections of 32 sequences with lengths uniform in 16..128 (BERT-base dims):
pad + masked SDPA (scatter to (B, T), one call, gather back), one SDPA call per sequence (what bertkit does on
CPU), and nested (jagged) tensors.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

import bertkit.model as model_module
from bertkit.model import varlen_attention

OUT = Path(__file__).resolve().parents[1] / "bench" / "results"
B, N, D = 32, 12, 64
H = N * D


def timed(fn, repeats: int = 20) -> float:
    for _ in range(3):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e3


def main() -> int:
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(16, 129, (B,), generator=g)
    T, S = int(lengths.max()), int(lengths.sum())
    keep = torch.arange(T)[None] < lengths[:, None]
    indices = keep.flatten().nonzero().squeeze(1)
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        qkv = torch.randn(S, 3 * H, generator=g).to(dtype)
        bias = torch.zeros(B, 1, 1, T, dtype=dtype).masked_fill(~keep[:, None, None, :], torch.finfo(dtype).min)

        def padded():
            buffer = qkv.new_zeros(B * T, 3 * H).index_copy_(0, indices, qkv)
            q, k, v = buffer.view(B, T, 3, N, D).permute(2, 0, 3, 1, 4)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
            return y.transpose(1, 2).reshape(B * T, H).index_select(0, indices)

        def per_sequence():
            out = []
            for part in torch.split(qkv, lengths.tolist()):
                q, k, v = part.view(1, -1, 3, N, D).permute(2, 0, 3, 1, 4)
                out.append(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(-1, H))
            return torch.cat(out)

        offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
        longest = int(lengths.max())

        def nested():  # bertkit's var-len path (model.varlen_attention): one SDPA call over nested jagged tensors
            y = varlen_attention(qkv, offsets, longest, N, 0.0)
            if y is None:
                raise RuntimeError(model_module._varlen_failed)
            return y

        reference = per_sequence().float()
        row = {"dtype": str(dtype).removeprefix("torch."), "tokens": S, "padded_tokens": B * T}
        for name, fn in (("pad + masked SDPA", padded), ("SDPA per sequence", per_sequence), ("nested", nested)):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    error = (fn().float() - reference).abs().max().item()
                    row[name] = {"ms": timed(fn), "max_abs_diff": error}
            except Exception as exc:  # nested SDPA has no CPU kernel in some torch builds
                row[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"}
        rows.append(row)
        print(json.dumps(row), flush=True)
    lines = [f"Attention over 32 sequences, lengths uniform in 16..128 ({S} tokens), 12 heads x 64, one layer, "
             f"torch {torch.__version__}, {torch.get_num_threads()} threads (median ms):", "",
             "| dtype | pad + masked SDPA | SDPA per sequence | one var-len call (nested jagged SDPA) |",
             "|---|---|---|---|"]
    for row in rows:
        cells = [f"{row[k]['ms']:.1f} ms" if "ms" in row[k] else row[k]["error"][:60]
                 for k in ("pad + masked SDPA", "SDPA per sequence", "nested")]
        lines.append(f"| {row['dtype']} | " + " | ".join(cells) + " |")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "attention.json").write_text(json.dumps(rows, indent=2) + "\n")
    (OUT / "attention.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
