"""Exact GELU inside the compiled int8 layers: erf as a rational function (`int8_ops.gelu_rational`, the default
under `--compile`) against ATen's erf (F.gelu), in one process, same weights and batches, timings alternating.

    .venv/bin/python bench/int8_gelu.py            (~6 minutes on 2 cores: four models compile)

Writes bench/results/int8_gelu.{json,md}. The fused dequantize-GELU-quantize kernel of the layer stack evaluates
GELU twice per element (for each row's range, then to quantize), so the cost of erf shows twice. The process keeps
freed memory (`keep_freed_memory`) so that page faults add noise to neither.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "src"))
warnings.filterwarnings("ignore")
OUT = ROOT / "bench" / "results"


def aten_gelu(x: torch.Tensor) -> torch.Tensor:
    """F.gelu behind a name of its own, so the compiled layers keep ATen's erf (they swap only F.gelu itself)."""
    return F.gelu(x)


def main() -> int:
    import speed
    from bertkit import BertConfig, BertModel
    from bertkit.hardware import cpu_name
    from bertkit.memory import keep_freed_memory
    from bertkit.precision import quantize
    from bertkit.precision.int8_ops import ACTIVATION_MINIMA
    from int8 import one_by_128

    ACTIVATION_MINIMA[aten_gelu] = ACTIVATION_MINIMA[F.gelu]  # both quantized from bounds: only the erf differs

    keep_freed_memory()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        for size in ("base", "mini"):
            config = BertConfig.preset(size, vocab_size=speed.VOCAB)
            torch.manual_seed(0)
            directory = Path(tmp) / size
            BertModel(config).save_pretrained(directory)
            rational = quantize(BertModel.from_pretrained(directory), "int8", compile=True)
            aten = quantize(BertModel.from_pretrained(directory), "int8", compile=True)
            for layer in aten.layers:
                layer.act = aten_gelu
            for kind in ("full", "1x128"):
                batch = one_by_128(speed.VOCAB) if kind == "1x128" else speed.make_batch(kind)
                args = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
                out = {name: model(*args).last_hidden_state for name, model in (("rational", rational),
                                                                                  ("aten", aten))}
                times: dict[str, list[float]] = {"rational": [], "aten": []}
                calls = 3 if size == "base" and kind == "full" else 10
                for _ in range(12 if size == "base" else 20):  # rounds, alternating
                    for name, model in (("rational", rational), ("aten", aten)):
                        model(*args)
                        start = time.perf_counter()
                        for _ in range(calls):
                            model(*args)
                        times[name].append((time.perf_counter() - start) / calls)
                ratio = statistics.median(a / r for r, a in zip(times["rational"], times["aten"], strict=True))
                cosine = F.cosine_similarity(out["rational"].flatten(0, 1), out["aten"].flatten(0, 1), dim=-1)
                row = {"size": size, "batch": kind, "rational ms": 1e3 * statistics.median(times["rational"]),
                       "aten ms": 1e3 * statistics.median(times["aten"]), "speed-up": ratio,
                       "worst-token cosine": float(cosine.min())}
                rows.append(row)
                print(json.dumps(row), flush=True)
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu_name(), "threads": torch.get_num_threads(),
              "rows": rows}
    lines = [f"Measured {result['date']} on {result['cpu']} ({result['threads']} threads): compiled int8 "
             "(`--compile`), exact GELU with the rational erf against ATen's erf; median of rounds alternating "
             "between the two.", "",
             "| size | batch | rational erf, ms | ATen erf, ms | speed-up (median of per-round ratios) | "
             "worst-token cosine between the two |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['size']} | {r['batch']} | {r['rational ms']:.1f} | {r['aten ms']:.1f} | **{r['speed-up']:.2f}x** "
              f"| {r['worst-token cosine']:.6f} |" for r in rows]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "int8_gelu.json").write_text(json.dumps(result, indent=2) + "\n")
    (OUT / "int8_gelu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
