"""int8 (and bf16) against fp32 on the task rows: each fine-tuned checkpoint `bench/tasks.py` left in
runs/tasks/NAME/model, evaluated on the row's own eval file with the task's metric, once in fp32, once at int8 and,
on a CPU with native bf16 (AMX, AVX512-BF16; `auto` picks bf16 on AMX), once in bf16 (same checkpoint, same
process). A row that loses more than 1.0 point is evaluated again with layers kept in fp32 (the fallback), first
every FFN output, then the last two layers whole; the table names what it needed.

    .venv/bin/python bench/int8_accuracy.py [--only NAME ...]      (after `make bench-tasks`)
    .venv/bin/python bench/int8_accuracy.py --compiled [--only NAME ...]

`--compiled` adds int8 through `--compile` (torch.compile'd layers: their own rounding of the quantization, and on
AMX bf16 attention for batches without padding) to the rows' earlier results, against fp32 evaluated again in the
same process, with the row's fallback layers; the other columns stay as they were measured.

Writes bench/results/int8_accuracy.{json,md}; rows without a checkpoint here are listed as such; with --only, the
other rows keep their earlier results (each row records when and where it was measured).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "src"))
warnings.filterwarnings("ignore")
OUT = ROOT / "bench" / "results"
FALLBACKS = ((), ("*.ffn_out",), ("*.layers.{last1}.*", "*.layers.{last}.*"))


def percent(value: float) -> float:
    """A metric in points: fractions (accuracy 0.9) times 100; metrics already in percent (CMRC2018's EM / F1)
    as they are (the task table's rule)."""
    return 100 * value if abs(value) <= 1 else value


def score(model: Path, eval_path: Path, fmt: str, headline: str, **options: object) -> float:
    """The checkpoint's headline metric on the eval file, in points, through `Predictor(model, **options)`."""
    from bertkit.predict import Predictor

    return percent(Predictor(model, device="cpu", **options).evaluate(eval_path, fmt)[headline])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--compiled", action="store_true", help="add int8 --compile to the earlier results")
    args = parser.parse_args()
    import torch

    from bertkit.config import BertConfig
    from bertkit.hardware import cpu_name, native_bf16
    from bertkit.precision import choose_precision
    from tasks import DATA, RUNS

    results = json.loads((OUT / "tasks.json").read_text()) if (OUT / "tasks.json").is_file() else {}
    previous = OUT / "int8_accuracy.json"
    # --only re-measures the rows it names and keeps the others' earlier results
    kept = json.loads(previous.read_text())["rows"] if (args.only or args.compiled) and previous.is_file() else {}
    with_bf16 = native_bf16()
    rows = {}
    for name, spec in RUNS.items():
        if args.only and name not in args.only:
            if name in kept:
                rows[name] = kept[name]
            continue
        model = ROOT / "runs" / "tasks" / name / "model"
        headline = results.get(name, {}).get("headline")
        if not (model / "config.json").is_file() or headline is None:
            rows[name] = kept[name] if args.compiled and name in kept else {"missing": True}
            print(f"{name}: no checkpoint in {model}", flush=True)
            continue
        task = (model, DATA / spec["eval"], spec["fmt"], headline)
        if args.compiled:
            if name in kept and not kept[name].get("missing"):
                rows[name] = row = dict(kept[name])
                started = time.perf_counter()
                fp32 = score(*task, precision="fp32")
                compiled = score(*task, precision="int8", int8_keep=row["fallback"], compile=True)
                row.update({"compiled fp32": fp32, "int8 compiled": compiled, "compiled delta": compiled - fp32,
                            "compiled seconds": round(time.perf_counter() - started, 1),
                            "compiled date": time.strftime("%Y-%m-%d %H:%M"), "compiled cpu": cpu_name()})
                print(name, json.dumps(row), flush=True)
            continue
        started = time.perf_counter()
        fp32 = score(*task, precision="fp32")
        row = {"metric": headline, "fp32": fp32, "fallback": [],
               "bench_tasks_fp32": percent(results[name]["metrics"][headline])}
        layers = BertConfig.from_pretrained(model).num_hidden_layers
        for keep in FALLBACKS:
            keep = [k.format(last=layers - 1, last1=layers - 2) for k in keep]
            int8 = score(*task, precision="int8", int8_keep=keep)
            row.update(int8=int8, fallback=keep)
            if abs(int8 - fp32) <= 1.0:  # points
                break
        row["delta"] = row["int8"] - row["fp32"]
        if with_bf16:
            row["bf16"] = score(*task, precision="bf16")
            row["bf16 delta"] = row["bf16"] - row["fp32"]
        row["seconds"] = round(time.perf_counter() - started, 1)
        row["date"], row["cpu"] = time.strftime("%Y-%m-%d %H:%M"), cpu_name()
        rows[name] = row
        print(name, json.dumps(row), flush=True)
    precision, why = choose_precision()
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu_name(), "threads": torch.get_num_threads(),
              "auto": [precision, why], "rows": rows}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "int8_accuracy.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"Measured {result['date']} on {result['cpu']} ({result['threads']} threads): each checkpoint of the "
             "task table evaluated on its eval file in fp32, at int8 and (where bf16 is native) in bf16 "
             "(`Predictor(precision=...)`), and at int8 with `--compile` (`--compiled`: against fp32 evaluated "
             "again in that run); each row measured when and where its json entry says.", "",
             "| row | metric | fp32 | int8 | int8 - fp32 | layers kept in fp32 | bf16 - fp32 | int8 compiled - fp32 |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        if r.get("missing"):
            lines.append(f"| {name} | – | no checkpoint here | – | – | – | – | – |")
            continue
        bf16 = f"{r['bf16 delta']:+.1f}" if "bf16 delta" in r else "–"
        compiled = f"{r['compiled delta']:+.1f}" if "compiled delta" in r else "–"
        lines.append(f"| {name} | {r['metric']} | {r['fp32']:.1f} | {r['int8']:.1f} | **{r['delta']:+.1f}** | "
                     f"{', '.join(r['fallback']) or 'none'} | {bf16} | {compiled} |")
    (OUT / "int8_accuracy.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
