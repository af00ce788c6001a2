"""bertkit beside a busy neighbour: `--precision auto` (as `bertkit serve` runs it) and onnxruntime int8 on the same
batches, in one process, with no neighbour and with a CPU-bound neighbour process (a busy loop, one per
`--neighbours`) at niceness 0 and 19.

    .venv/bin/python bench/colocated.py [--sizes mini base] [--neighbours 1]

A shared machine runs other work beside a server; what matters is whether bertkit keeps its ratio to onnxruntime
when it does. For each neighbour setting the two engines alternate on the same batches (`bench/speed.py`'s
`alternate`): a variable-length batch (32 x 16..128) and one sequence of 128 tokens. Each row gives both engines'
tokens/s and their ratio; the last column divides that ratio by the same batch's ratio with no neighbour (1.00: the
neighbour slows both alike; below 1: bertkit suffers more). Random weights (BERT shapes); the neighbour is a Python
busy loop, started before and stopped after its setting's timings. When the kernel groups processes by session
(/proc/sys/kernel/sched_autogroup_enabled = 1), niceness works only inside a group: the neighbour's group is given
the same niceness through /proc/PID/autogroup where the kernel allows it, and the table says which held.

Writes bench/results/colocated.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))
OUT = ROOT / "bench" / "results"
BUSY = "while True: pass"
SETTINGS = [("none", None), ("busy, nice 0", 0), ("busy, nice 19", 19)]


def autogroup() -> bool:
    path = Path("/proc/sys/kernel/sched_autogroup_enabled")
    return path.is_file() and path.read_text().strip() == "1"


def start_neighbours(count: int, niceness: int) -> list[subprocess.Popen]:
    """`count` busy-loop processes at `niceness`, each in its own session (as another user's job would be)."""
    procs = []
    for _ in range(count):
        proc = subprocess.Popen([sys.executable, "-c", BUSY], start_new_session=True,
                                preexec_fn=lambda n=niceness: os.nice(n))
        with contextlib.suppress(OSError):  # where sessions are scheduled as groups, the group's niceness counts
            Path(f"/proc/{proc.pid}/autogroup").write_text(str(niceness))
        procs.append(proc)
    time.sleep(1.0)  # running before the timings start
    return procs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["mini", "base"])
    parser.add_argument("--neighbours", type=int, default=1, help="busy-loop processes beside the bench")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import onnxruntime as ort
    import torch

    import speed
    from bertkit import BertConfig, BertModel
    from bertkit.export import export_onnx, quantize_onnx
    from bertkit.hardware import cpu_name
    from bertkit.precision import plan_inference, quantize
    from bertkit.threads import GOVERNOR

    plan = plan_inference("auto", torch.device("cpu"), compile=None)  # what `bertkit serve` runs
    precision, why = plan.precision + (" compiled" if plan.compile else ""), plan.why
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            config = BertConfig.preset(size, vocab_size=speed.VOCAB)
            torch.manual_seed(0)
            directory = Path(tmp) / size
            BertModel(config).save_pretrained(directory)
            ours = quantize(BertModel.from_pretrained(directory), "auto")  # compiled at its first (untimed) calls
            exported = export_onnx(BertModel.from_pretrained(directory).eval(), Path(tmp) / f"{size}.onnx")
            quantized = quantize_onnx(exported, Path(tmp) / f"{size}.int8.onnx",
                                      num_heads=config.num_attention_heads, hidden_size=config.hidden_size)
            options = ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            session = ort.InferenceSession(str(quantized), options, providers=["CPUExecutionProvider"])
            batches = {"var 32 x 16..128": speed.make_batch("var"),
                       "1 x 128": {k: v[:1] for k, v in speed.make_batch("full").items() if k != "lengths"}}
            quiet: dict[str, float] = {}
            for setting, niceness in SETTINGS:
                procs = start_neighbours(args.neighbours, niceness) if niceness is not None else []
                try:
                    for name, batch in batches.items():
                        ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
                        feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
                                 "token_type_ids": types.numpy()}
                        fns = {"bertkit": lambda: ours(ids, mask, types),
                               "onnxruntime": lambda feeds=feeds: session.run(None, feeds)}
                        narrowed = GOVERNOR.narrowed
                        with torch.inference_mode():
                            seconds = speed.alternate(fns, args.repeats, min_seconds=4.0, block=2, settle=0.2,
                                                      max_repeats=60)
                        tokens = int(mask.sum())
                        ratio = seconds["onnxruntime"] / seconds["bertkit"]
                        quiet.setdefault(name, ratio)
                        row = {"size": size, "batch": name, "neighbour": setting,
                               "bertkit tokens_per_s": tokens / seconds["bertkit"],
                               "onnxruntime tokens_per_s": tokens / seconds["onnxruntime"],
                               "ratio": ratio, "ratio vs no neighbour": ratio / quiet[name],
                               "one-thread passes": GOVERNOR.narrowed - narrowed}
                        rows.append(row)
                        print(json.dumps(row), flush=True)
                finally:
                    for proc in procs:
                        proc.kill()
                        proc.wait()
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu_name(), "cores": os.cpu_count(),
              "threads": torch.get_num_threads(), "neighbours": args.neighbours, "autogroup": autogroup(),
              "auto": [precision, why], "torch": torch.__version__, "onnxruntime": ort.__version__, "rows": rows}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "colocated.json").write_text(json.dumps(result, indent=1) + "\n")
    (OUT / "colocated.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(result: dict) -> str:
    lines = [f"Measured {result['date']} on {result['cpu']} ({result['cores']} cores, {result['threads']} threads), "
             f"torch {result['torch']}, onnxruntime {result['onnxruntime']}; `--precision auto` here: "
             f"**{result['auto'][0]}**. Neighbour: {result['neighbours']} busy-loop process(es); kernel autogroup "
             f"{'on (the neighbour group niced too)' if result['autogroup'] else 'off'}. "
             "`python bench/colocated.py`. One-thread passes: bertkit's encoder passes that ran on one thread "
             "because the calling thread was measured waiting for a CPU (`bertkit.threads`; packed batches only).",
             "",
             "| size | batch | neighbour | bertkit auto tok/s | onnxruntime int8 tok/s | bertkit / onnxruntime | "
             "that ratio / with no neighbour | one-thread passes |", "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['size']} | {r['batch']} | {r['neighbour']} | {r['bertkit tokens_per_s']:,.0f} | "
                     f"{r['onnxruntime tokens_per_s']:,.0f} | {r['ratio']:.2f}x | {r['ratio vs no neighbour']:.2f} | "
                     f"{r.get('one-thread passes', '–')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
