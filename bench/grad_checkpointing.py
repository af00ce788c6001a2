"""Peak training memory and step time of BERT-base pre-training, with and without `--gradient-checkpointing`
(batch 32 x 128).

    .venv/bin/python bench/grad_checkpointing.py [--steps 4] [--size base] [--device cpu|cuda]

Each setting runs in a process of its own, so each peak is its own. A step is the one `train.fit` takes: MLM (15%
of the positions, logits at those only) + NSP loss, autocast as `fit` picks it (bf16 where the hardware has it
natively, else fp32), backward, clipping, fused AdamW. The first step is a warm-up (it also creates AdamW's
state); the step time is the median of the others.

Memory: on the CPU, the process's peak RSS (`getrusage`'s ru_maxrss, the kernel's high-water mark), whole and above
the resident memory once the model and the batch exist; on CUDA, `torch.cuda.max_memory_allocated` over the steps.
On both, the bytes autograd keeps for backward during one forward pass (a `saved_tensors_hooks` count: what
checkpointing drops, exactly). Time: each step's wall time, and its CPU time (`time.process_time`, all threads), which
other processes on the same cores disturb less. Writes bench/results/grad_checkpointing.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results"
MIB = 1024 * 1024


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def child(size: str, checkpointing: bool, steps: int, device_name: str, batch: int, seq_len: int) -> dict:
    import torch
    import torch.nn.functional as F

    from bertkit import BertConfig, BertForPreTraining
    from bertkit.model import set_gradient_checkpointing
    from bertkit.train import autocast_dtype, parameter_groups

    device = torch.device(device_name)
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig.preset(size, vocab_size=21128)).to(device).train()
    set_gradient_checkpointing(model, checkpointing)
    amp = autocast_dtype(device, None)
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.01), lr=1e-4, eps=1e-6, fused=True)
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 21128, (batch, seq_len), generator=generator).to(device)
    mask, types = torch.ones_like(ids), torch.zeros_like(ids)
    types[:, seq_len // 2 :] = 1
    masked = (torch.rand(batch, seq_len, generator=generator) < 0.15).to(device)
    masked[:, 0] = False  # [CLS]
    next_label = torch.randint(0, 2, (batch,), generator=generator).to(device)

    def loss_of() -> torch.Tensor:
        with torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
            out = model(ids, mask, types, mlm_positions=masked)
            return (F.cross_entropy(out.mlm_logits.float(), ids[masked])
                    + F.cross_entropy(out.nsp_logits.float(), next_label))

    def step() -> tuple[float, float]:
        """(wall seconds, CPU seconds of the process's threads) of one training step."""
        start, cpu = time.perf_counter(), time.process_time()
        loss = loss_of()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, time.process_time() - cpu

    before = _rss_mib()  # the weights and the batch
    kept = []  # bytes autograd keeps for backward in one forward pass

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        kept.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss_of().backward()
    optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    measured = [step() for _ in range(steps)]
    times, cpu_times = [wall for wall, _ in measured], [cpu for _, cpu in measured]
    result = {"size": size, "checkpointing": checkpointing, "device": device.type, "batch": [batch, seq_len],
              "autocast": str(amp).replace("torch.", "") if amp else "fp32", "threads": torch.get_num_threads(),
              "steps": steps, "step_s": times, "median_step_s": statistics.median(times[1:] or times),
              "step_cpu_s": cpu_times, "median_step_cpu_s": statistics.median(cpu_times[1:] or cpu_times),
              "saved_for_backward_mib": sum(kept) / MIB,
              "parameters_mib": sum(p.numel() * p.element_size() for p in model.parameters()) / MIB}
    if device.type == "cuda":
        result["peak_allocated_mib"] = torch.cuda.max_memory_allocated(device) / MIB
        result["gpu"] = torch.cuda.get_device_name(device)
    else:
        result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result["rss_weights_mib"] = before
    return result


def table(runs: list[dict], date: str, machine: str, command: str) -> str:
    off, on = runs
    cuda = off["device"] == "cuda"
    lines = [f"Measured {date} on {machine} ({off['threads']} threads), torch {off['torch']}: BERT-{off['size']} "
             f"pre-training (MLM + NSP), batch {off['batch'][0]} x {off['batch'][1]}, autocast {off['autocast']}, "
             f"{off['steps']} steps a setting, the first a warm-up (`{command}`).", "",
             "| gradient checkpointing | " + ("peak GPU memory allocated" if cuda else
                                             "peak RSS | peak RSS above the weights")
             + " | kept for backward (one forward) | step time | step CPU time |",
             "|---|---|---|---|---|" + ("" if cuda else "---|")]
    for run in runs:
        memory = (f"{run['peak_allocated_mib']:,.0f} MiB" if cuda else
                  f"{run['peak_rss_mib']:,.0f} MiB | {run['peak_rss_mib'] - run['rss_weights_mib']:,.0f} MiB")
        lines.append(f"| {'on' if run['checkpointing'] else 'off'} | {memory} | "
                     f"{run['saved_for_backward_mib']:,.0f} MiB | {run['median_step_s']:.2f} s | "
                     f"{run['median_step_cpu_s']:.2f} s |")
    key = "peak_allocated_mib" if cuda else "peak_rss_mib"
    above = ""
    if not cuda:
        ratio = (on[key] - on["rss_weights_mib"]) / (off[key] - off["rss_weights_mib"])
        above = f" (above the weights {ratio:.2f}x)"
    lines += ["", f"Checkpointing on / off: peak {'GPU memory' if cuda else 'RSS'} **{on[key] / off[key]:.2f}x**"
              + above
              + f", kept for backward {on['saved_for_backward_mib'] / off['saved_for_backward_mib']:.2f}x, step time "
              f"**{on['median_step_s'] / off['median_step_s']:.2f}x** (CPU time "
              f"{on['median_step_cpu_s'] / off['median_step_cpu_s']:.2f}x).", ""]
    if cuda:
        lines.append("Peak GPU memory: `torch.cuda.max_memory_allocated` over the timed steps.")
    else:
        lines.append("Peak RSS: the process's high-water mark (`getrusage` ru_maxrss), whole and above the resident "
                     "memory after the model and the batch are made (so the gradients, AdamW's moments and the "
                     "activations). Step CPU time: `time.process_time` over the step, every thread of the process "
                     "summed; it moves less than the wall time when other processes share the cores.")
    lines.append("Kept for backward: the bytes of the tensors autograd saves during one forward pass "
                 "(`torch.autograd.graph.saved_tensors_hooks`).")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", default="base")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--name", default="grad_checkpointing", help="results file name (bench/results/NAME.md)")
    parser.add_argument("--child", choices=("on", "off"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import torch

        result = child(args.size, args.child == "on", args.steps, args.device, args.batch, args.seq_len)
        print(json.dumps({**result, "torch": torch.__version__}))
        return 0
    sys.path.insert(0, str(ROOT / "src"))
    from bertkit.hardware import cpu_name

    runs = []
    for setting in ("off", "on"):
        done = subprocess.run([sys.executable, __file__, "--child", setting, "--steps", str(args.steps), "--size",
                               args.size, "--device", args.device, "--batch", str(args.batch), "--seq-len",
                               str(args.seq_len)], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            return 1
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(runs[-1]), flush=True)
    date = time.strftime("%Y-%m-%d %H:%M")
    machine = runs[0].get("gpu") or cpu_name()
    command = "python bench/grad_checkpointing.py" + "".join(
        f" --{k.replace('_', '-')} {v}" for k, v in vars(args).items()
        if k not in ("child", "name") and v != parser.get_default(k))
    text = table(runs, date, machine, command)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{args.name}.json").write_text(json.dumps({"date": date, "machine": machine, "runs": runs}, indent=2)
                                          + "\n")
    (OUT / f"{args.name}.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
