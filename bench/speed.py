"""bertkit vs transformers (and onnxruntime) on this CPU, in one process: inference, pre-training steps, memory, MFU;
the same on the GPU (bf16, BERT-base) where torch sees one.

    .venv/bin/python bench/speed.py            (run by `make bench`; ~10 minutes on 2 cores)
    .venv/bin/python bench/speed.py --quick    (fewer repetitions, for a smoke run)

Same weights (one checkpoint loaded by both libraries), same batches, same dtype; timings alternate between the
libraries and report the median (CPU inference, where onnxruntime's thread pool takes part, in turns of 4 calls
after 0.3 s idle), and every speed is given as a ratio measured in this run. bertkit bf16 inference is what
`--precision bf16` runs (weights packed for oneDNN where bf16 is native). Peak RSS is measured in
child processes (a process's peak RSS never goes down, so two libraries cannot share one).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import transformers

import bertkit
from bertkit import BertConfig, BertForPreTraining, BertModel
from bertkit.losses import cross_entropy

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results"
VOCAB = 30522
BATCH, MAX_LEN = 32, 128

warnings.filterwarnings("ignore")
transformers.logging.set_verbosity_error()


# ---- workload ------------------------------------------------------------------------------------------------------

def make_batch(kind: str, vocab: int = VOCAB, seed: int = 0) -> dict[str, torch.Tensor]:
    """`var`: 32 sequences with lengths uniform in 16..128 (right-padded); `full`: 32 x 128, no padding."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(16, MAX_LEN + 1, (BATCH,), generator=g) if kind == "var" else torch.full((BATCH,), MAX_LEN)
    T = int(lengths.max())
    ids = torch.randint(1000, vocab - 1, (BATCH, T), generator=g)
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    ids[mask == 0] = 0
    ids[:, 0] = 101
    types = torch.zeros_like(ids)
    for row, n in enumerate(lengths.tolist()):
        types[row, n // 2 : n] = 1
    masked = (torch.rand(BATCH, T, generator=g) < 0.15) & mask.bool()
    masked[:, 0] = False
    labels = torch.full_like(ids, -100)
    labels[masked] = ids[masked]
    nsp = torch.randint(0, 2, (BATCH,), generator=g)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "labels": labels, "masked": masked,
            "nsp": nsp, "lengths": lengths}


def forward_flops(config: BertConfig, lengths: torch.Tensor) -> float:
    """Matmul FLOPs of one encoder forward over the real tokens (projections, FFN, attention scores and values)."""
    H, I, L = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    tokens = float(lengths.sum())
    per_token = 2 * (4 * H * H + 2 * H * I)
    attention = 4 * H * float((lengths.double() ** 2).sum())
    return L * (per_token * tokens + attention) + 2 * H * H * len(lengths)  # + pooler


def pretraining_flops(config: BertConfig, batch: dict) -> float:
    """Forward + backward (x3) of the encoder and of the MLM head on the masked positions, plus NSP."""
    H, V = config.hidden_size, config.vocab_size
    masked = float(batch["masked"].sum())
    head = masked * 2 * (H * H + H * V) + BATCH * 2 * H * 2
    return 3 * (forward_flops(config, batch["lengths"]) + head)


def matmul_peak(dtype: torch.dtype, repeats: int) -> float:
    """Best FLOP/s of torch.mm over GEMM shapes a BERT layer runs (M = tokens in a batch)."""
    best = 0.0
    for m, k, n in ((2304, 768, 3072), (2304, 3072, 768), (4096, 512, 2048), (2304, 768, 2304)):
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        for _ in range(2):
            a @ b
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = max(best, 2 * m * k * n * repeats / (time.perf_counter() - start))
    return best


def alternate(fns: dict[str, callable], repeats: int, min_seconds: float = 3.0, block: int = 1,
              settle: float = 0.0, max_repeats: int = 50) -> dict[str, float]:
    """Median seconds per call of each function, run in alternation so machine noise hits all of them alike;
    fast functions get more rounds (at least `min_seconds` of timing each, at most `max_repeats` calls).

    `block` > 1: each turn is one untimed call, then `block` timed ones, after `settle` seconds idle. For engines
    with their own thread pools: a pool still spinning after one engine's call takes a core from the next engine
    on 2 cores (bertkit int8 at 1 x 128 ran 1.8x slower right after an onnxruntime call than alone; with strict
    alternation, onnxruntime and transformers, timed after bertkit, ran up to 2x slower than in turns)."""
    warm = []
    for fn in fns.values():
        fn()  # warm-up
        start = time.perf_counter()
        fn()
        warm.append(time.perf_counter() - start)
    repeats = max(repeats, min(max_repeats, int(min_seconds / max(min(warm), 1e-3))))
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(-(-repeats // block)):
        for name, fn in fns.items():
            if block > 1:
                time.sleep(settle)
                fn()
            for _ in range(block):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


# ---- inference -----------------------------------------------------------------------------------------------------

def onnx_session(model: BertModel, directory: Path, config: BertConfig):
    try:
        import onnxruntime as ort
        from onnxruntime.transformers.optimizer import optimize_model
    except ImportError:
        return None
    from bertkit.export import export_onnx

    raw = export_onnx(model, directory / "model.onnx")
    optimized = directory / "model.opt.onnx"
    optimize_model(str(raw), model_type="bert", num_heads=config.num_attention_heads,
                   hidden_size=config.hidden_size).save_model_to_file(str(optimized))
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(optimized), options, providers=["CPUExecutionProvider"])


def bench_inference(size: str, repeats: int, work: Path, peaks: dict[str, float]) -> list[dict]:
    config = BertConfig.preset(size, vocab_size=VOCAB)
    torch.manual_seed(0)
    directory = work / f"infer-{size}"
    BertModel(config).save_pretrained(directory)
    rows = []
    from bertkit.precision import quantize

    for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        # bertkit bf16 is what `--precision bf16` runs (on a CPU with native bf16: weights packed for oneDNN)
        ours = quantize(BertModel.from_pretrained(directory), "bf16") if dtype is torch.bfloat16 else \
            BertModel.from_pretrained(directory).eval()
        hf = transformers.BertModel.from_pretrained(directory, attn_implementation="sdpa").to(dtype).eval()
        session = onnx_session(ours, directory, config) if dtype is torch.float32 else None
        for kind in ("var", "full"):
            batch = make_batch(kind)
            ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
            fns = {
                "bertkit": lambda: ours(ids, mask, types),
                "transformers": lambda: hf(input_ids=ids, attention_mask=mask, token_type_ids=types),
            }
            if session is not None:
                feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": types.numpy()}
                fns["onnxruntime"] = lambda feeds=feeds: session.run(None, feeds)
            with torch.inference_mode():  # in turns: onnxruntime's spinning pool must not slow the engine after it
                seconds = alternate(fns, repeats, min_seconds=6.0, block=4, settle=0.3, max_repeats=120)
            tokens = int(mask.sum())
            flops = forward_flops(config, batch["lengths"])
            row = {"bench": "inference", "size": size, "dtype": dtype_name, "batch": kind, "real_tokens": tokens,
                   "padded_tokens": int(mask.numel())}
            for name, s in seconds.items():
                row[f"{name}_tokens_per_s"] = tokens / s
                row[f"{name}_mfu"] = flops / s / peaks[dtype_name]
            row["speedup_vs_transformers"] = seconds["transformers"] / seconds["bertkit"]
            if "onnxruntime" in seconds:
                row["speedup_vs_onnxruntime"] = seconds["onnxruntime"] / seconds["bertkit"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


# ---- pre-training --------------------------------------------------------------------------------------------------

def ours_step(model, optimizer, batch, bf16: bool):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                    mlm_positions=batch["masked"])
        loss = cross_entropy(out.mlm_logits, batch["input_ids"][batch["masked"]]) + cross_entropy(
            out.nsp_logits, batch["nsp"])
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def hf_step(model, optimizer, batch, bf16: bool):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    token_type_ids=batch["token_type_ids"], labels=batch["labels"], next_sentence_label=batch["nsp"])
    out.loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return out.loss


def pretraining_models(directory: Path):
    ours = BertForPreTraining.from_pretrained(directory).train()
    hf = transformers.BertForPreTraining.from_pretrained(directory, attn_implementation="sdpa").train()
    # The same optimizer for both: AdamW, fused kernel (no per-parameter temporaries).
    return (ours, torch.optim.AdamW(ours.parameters(), lr=1e-4, fused=True),
            hf, torch.optim.AdamW(hf.parameters(), lr=1e-4, fused=True))


def pretraining_checkpoint(work: Path) -> tuple[BertConfig, Path]:
    config = BertConfig.preset("small", vocab_size=VOCAB)
    directory = work / "pretrain-small"
    if not directory.is_dir():
        torch.manual_seed(0)
        BertForPreTraining(config).save_pretrained(directory)
    return config, directory


def bench_pretraining(repeats: int, work: Path, peaks: dict[str, float]) -> list[dict]:
    config, directory = pretraining_checkpoint(work)
    rows = []
    for dtype_name, bf16 in (("fp32", False), ("bf16 autocast", True)):
        ours, ours_opt, hf, hf_opt = pretraining_models(directory)
        for kind in ("full", "var"):
            batch = make_batch(kind, seed=1)
            seconds = alternate({
                "bertkit": lambda b=batch: ours_step(ours, ours_opt, b, bf16),
                "transformers": lambda b=batch: hf_step(hf, hf_opt, b, bf16),
            }, repeats)
            tokens = int(batch["attention_mask"].sum())
            flops = pretraining_flops(config, batch)
            peak = peaks["bf16" if bf16 else "fp32"]
            row = {"bench": "pretraining step", "size": "small", "dtype": dtype_name, "batch": kind,
                   "real_tokens": tokens, "padded_tokens": int(batch["attention_mask"].numel())}
            for name, s in seconds.items():
                row[f"{name}_tokens_per_s"] = tokens / s
                row[f"{name}_mfu"] = flops / s / peak
            row["speedup_vs_transformers"] = seconds["transformers"] / seconds["bertkit"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


# ---- CUDA (only where torch sees a GPU) -----------------------------------------------------------------------------

def cuda_matmul_peak(repeats: int = 20) -> float:
    """Best bf16 FLOP/s of torch.mm on this GPU over large square and BERT-shaped GEMMs."""
    best = 0.0
    for m, k, n in ((8192, 8192, 8192), (4096, 4096, 4096), (16384, 768, 3072), (16384, 3072, 768)):
        a = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")
        b = torch.randn(k, n, dtype=torch.bfloat16, device="cuda")
        for _ in range(3):
            a @ b
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        torch.cuda.synchronize()
        best = max(best, 2 * m * k * n * repeats / (time.perf_counter() - start))
    return best


def _synced(fn):
    def run():
        fn()
        torch.cuda.synchronize()
    return run


def bench_cuda(repeats: int, work: Path) -> dict:
    """BERT-base on the GPU, bf16: inference on var-len and full batches (bertkit packed with the var-len kernel,
    bertkit computing on padding, transformers SDPA) and the pre-training step (bertkit vs transformers), MFU
    against the bf16 matmul peak measured here."""
    from bertkit.device import describe

    device = torch.device("cuda", 0)
    torch.backends.cuda.matmul.allow_tf32 = True
    peak = cuda_matmul_peak()
    config = BertConfig.preset("base", vocab_size=VOCAB)
    directory = work / "cuda-base"
    torch.manual_seed(0)
    BertForPreTraining(config).save_pretrained(directory)
    rows = []
    ours = BertModel.from_pretrained(directory).to(device).eval()
    hf = transformers.BertModel.from_pretrained(directory, attn_implementation="sdpa").to(device).eval()
    for kind in ("var", "full"):
        batch = {k: v.to(device) for k, v in make_batch(kind).items()}
        ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]

        def padded(ids=ids, mask=mask, types=types):
            ours.unpad = False
            try:
                return ours(ids, mask, types)
            finally:
                ours.unpad = True

        fns = {"bertkit": _synced(lambda ids=ids, mask=mask, types=types: ours(ids, mask, types)),
               "bertkit on padding": _synced(padded),
               "transformers": _synced(lambda ids=ids, mask=mask, types=types: hf(
                   input_ids=ids, attention_mask=mask, token_type_ids=types))}
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            seconds = alternate(fns, repeats)
        tokens = int(mask.sum())
        flops = forward_flops(config, batch["lengths"].cpu())
        row = {"bench": "inference", "size": "base", "dtype": "bf16 autocast", "batch": kind, "real_tokens": tokens}
        for name, sec in seconds.items():
            row[f"{name}_tokens_per_s"] = tokens / sec
            row[f"{name}_mfu"] = flops / sec / peak
        row["speedup_vs_transformers"] = seconds["transformers"] / seconds["bertkit"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    del ours, hf
    ours = BertForPreTraining.from_pretrained(directory).to(device).train()
    hf = transformers.BertForPreTraining.from_pretrained(directory, attn_implementation="sdpa").to(device).train()
    ours_opt = torch.optim.AdamW(ours.parameters(), lr=1e-4, fused=True)
    hf_opt = torch.optim.AdamW(hf.parameters(), lr=1e-4, fused=True)
    for kind in ("full", "var"):
        batch = {k: v.to(device) for k, v in make_batch(kind, seed=1).items()}

        def ours_cuda(b=batch):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = ours(b["input_ids"], b["attention_mask"], b["token_type_ids"], mlm_positions=b["masked"])
                loss = cross_entropy(out.mlm_logits, b["input_ids"][b["masked"]]) + cross_entropy(out.nsp_logits,
                                                                                                 b["nsp"])
            loss.backward()
            ours_opt.step()
            ours_opt.zero_grad(set_to_none=True)

        def hf_cuda(b=batch):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = hf(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                         token_type_ids=b["token_type_ids"], labels=b["labels"], next_sentence_label=b["nsp"])
            out.loss.backward()
            hf_opt.step()
            hf_opt.zero_grad(set_to_none=True)

        seconds = alternate({"bertkit": _synced(ours_cuda), "transformers": _synced(hf_cuda)}, repeats)
        tokens = int(batch["attention_mask"].sum())
        flops = pretraining_flops(config, {k: v.cpu() for k, v in batch.items()})
        row = {"bench": "pretraining step", "size": "base", "dtype": "bf16 autocast", "batch": kind,
               "real_tokens": tokens}
        for name, sec in seconds.items():
            row[f"{name}_tokens_per_s"] = tokens / sec
            row[f"{name}_mfu"] = flops / sec / peak
        row["speedup_vs_transformers"] = seconds["transformers"] / seconds["bertkit"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {"device": describe(device), "bf16_peak_tflops": peak / 1e12, "rows": rows}


def cuda_markdown(cuda: dict | None) -> list[str]:
    if not cuda:
        return ["", "CUDA: **not measured** (torch saw no GPU in this run)."]
    lines = ["", f"CUDA, {cuda['device']}; bf16 matmul peak in this run {cuda['bf16_peak_tflops']:.1f} TFLOP/s:", "",
             "| bench | size | dtype | batch | bertkit tok/s | bertkit on padding tok/s | transformers tok/s | "
             "speed-up | bertkit MFU | transformers MFU |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in cuda["rows"]:
        padded = f"{r['bertkit on padding_tokens_per_s']:,.0f}" if "bertkit on padding_tokens_per_s" in r else "–"
        lines.append(f"| {r['bench']} | {r['size']} | {r['dtype']} | {r['batch']} | {r['bertkit_tokens_per_s']:,.0f} | "
                     f"{padded} | {r['transformers_tokens_per_s']:,.0f} | **{r['speedup_vs_transformers']:.2f}x** | "
                     f"{r['bertkit_mfu']:.0%} | {r['transformers_mfu']:.0%} |")
    return lines


def memory_child(library: str, directory: str) -> None:
    """Run in a child process: three bf16 pre-training steps at small, batch 32 x 128; print peak RSS."""
    if library == "bertkit":
        model = BertForPreTraining.from_pretrained(directory).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        step = ours_step
    else:
        model = transformers.BertForPreTraining.from_pretrained(directory, attn_implementation="sdpa").train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        step = hf_step
    batch = make_batch("full", seed=1)
    before = peak_rss_mib()
    for _ in range(3):
        step(model, optimizer, batch, True)
    print(json.dumps({"peak_rss_mib": peak_rss_mib(), "rss_before_steps_mib": before}))


def peak_rss_mib() -> float:
    """VmHWM: this process's peak resident set (ru_maxrss would carry the parent's peak across fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_memory(work: Path) -> dict:
    _, directory = pretraining_checkpoint(work)
    result = {"bench": "peak RSS, pre-training small, batch 32 x 128, bf16 autocast, 3 steps"}
    for library in ("bertkit", "transformers"):
        out = subprocess.run([sys.executable, __file__, "--memory-child", library, str(directory)],
                             capture_output=True, text=True, check=True)
        result[library] = json.loads(out.stdout.strip().splitlines()[-1])
    result["ratio_bertkit_over_transformers"] = result["bertkit"]["peak_rss_mib"] / result["transformers"][
        "peak_rss_mib"]
    print(json.dumps(result), flush=True)
    return result


# ---- report --------------------------------------------------------------------------------------------------------

def markdown(result: dict) -> str:
    peaks = result["matmul_peak_tflops"]
    lines = [
        f"Measured {result['date']} on {result['cpu']} ({result['threads']} threads), torch {result['torch']}, "
        f"transformers {result['transformers']}; matmul peak in this run: bf16 {peaks['bf16']:.3f} TFLOP/s, "
        f"fp32 {peaks['fp32']:.3f} TFLOP/s (ratio {peaks['bf16'] / peaks['fp32']:.2f}).",
        "",
        "| bench | size | dtype | batch | bertkit tok/s | transformers tok/s | speed-up | onnxruntime tok/s | "
        "bertkit MFU | transformers MFU |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        ort = f"{r['onnxruntime_tokens_per_s']:,.0f}" if "onnxruntime_tokens_per_s" in r else "–"
        lines.append(
            f"| {r['bench']} | {r['size']} | {r['dtype']} | {r['batch']} | {r['bertkit_tokens_per_s']:,.0f} | "
            f"{r['transformers_tokens_per_s']:,.0f} | **{r['speedup_vs_transformers']:.2f}x** | {ort} | "
            f"{r['bertkit_mfu']:.0%} | {r['transformers_mfu']:.0%} |"
        )
    memory = result.get("memory")
    if memory:
        lines += [
            "",
            f"{memory['bench']}: bertkit {memory['bertkit']['peak_rss_mib']:,.0f} MiB, transformers "
            f"{memory['transformers']['peak_rss_mib']:,.0f} MiB "
            f"(ratio {memory['ratio_bertkit_over_transformers']:.2f}).",
        ]
    lines += ["", "Batches: `var` = 32 sequences, lengths uniform in 16..128 (right-padded); `full` = 32 x 128. "
              "tok/s counts real (non-padding) tokens. MFU = useful matmul FLOPs on real tokens / time / the bf16 "
              "or fp32 peak above."]
    lines += cuda_markdown(result.get("cuda"))
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--memory-child", nargs=2, metavar=("LIBRARY", "DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--skip", nargs="*", default=[], choices=["inference", "pretraining", "memory", "cuda"])
    parser.add_argument("--name", default="speed", help="output file stem in bench/results (default: %(default)s)")
    args = parser.parse_args()
    if args.memory_child:
        memory_child(*args.memory_child)
        return 0
    repeats = 2 if args.quick else 5
    peaks = {"bf16": matmul_peak(torch.bfloat16, 5), "fp32": matmul_peak(torch.float32, 5)}
    print(json.dumps({"matmul_peak_tflops": {k: v / 1e12 for k, v in peaks.items()}}), flush=True)
    rows: list[dict] = []
    memory = None
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "inference" not in args.skip:
            for size in ("base", "mini"):
                rows += bench_inference(size, repeats, work, peaks)
        if "pretraining" not in args.skip or "memory" not in args.skip:
            rows += bench_pretraining(repeats, work, peaks) if "pretraining" not in args.skip else []
            if "memory" not in args.skip:
                memory = bench_memory(work)
        cuda = bench_cuda(repeats, work) if torch.cuda.is_available() and "cuda" not in args.skip else None
    cpu = platform.processor() or "unknown CPU"
    if Path("/proc/cpuinfo").is_file():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu, "amx": "amx_bf16" in flags,
        "avx512_bf16": "avx512_bf16" in flags, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "transformers": transformers.__version__, "bertkit": bertkit.__version__,
        "matmul_peak_tflops": {k: v / 1e12 for k, v in peaks.items()}, "rows": rows, "memory": memory, "cuda": cuda,
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (OUT / f"{args.name}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
