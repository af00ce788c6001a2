"""CPU inference at int8, in one process: bertkit `--precision auto` (what `bertkit serve` runs with no flags:
compiled int8 where the CPU's row of AUTO_TABLE says so and a C++ compiler is here) and bertkit int8 against
onnxruntime int8 (its best: BERT graph optimizer, then
dynamic quantization with int8 weights per channel), transformers fp32 (SDPA) and bertkit fp32, at base and mini,
on var-len (32 x 16..128), full (32 x 128) and 1 x 128 batches; int8 MFU against the int8 GEMM peak (the best of
`torch._int_mm` and oneDNN's GEMM on packed weights) measured in the same run. On a CPU with native bf16 (AMX,
AVX512-BF16), bertkit bf16 (the whole model in bf16, what `--precision bf16` runs; `auto` on AMX: encoder weights
packed once for oneDNN, the GELU fused into the first FFN GEMM) is timed too, and so is plain bf16
(`model.to(torch.bfloat16)`, F.linear at every call) for the packing's gain.

    .venv/bin/python bench/int8.py            (`make bench`; ~10 minutes on 2 cores)

Writes bench/results/int8_<family>.{json,md}, one table per CPU family (amx: AMX; vnni: int8 dot products without
AMX; other). Same weights everywhere (one checkpoint), timings alternate in
turns of 4 calls after 0.3 s idle (a thread pool still spinning from one engine's call slowed the next engine);
each engine is timed for at least 6 s a cell, up to 120 calls (the small cells' medians over 30 turns, since this
VM's speed drifts by tens of percent from second to second). `--keep-freed-memory`: the whole process, every
engine alike, keeps freed memory for reuse (`bertkit.memory.keep_freed_memory()`, the CLI's BERTKIT_MALLOC=keep;
bench/malloc.py); it writes bench/results/int8_keep.{json,md} instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "src"))
warnings.filterwarnings("ignore")
OUT = ROOT / "bench" / "results"
ALLOCATOR = {False: "glibc's malloc defaults", True: "every engine in a process that keeps freed memory for reuse "
             "(`--keep-freed-memory`: `keep_freed_memory()`, BERTKIT_MALLOC=keep)"}


def int8_peak(repeats: int = 10) -> float:
    """Best int8 ops/s over BERT-shaped GEMMs (M = tokens of a batch) of torch._int_mm and, where this CPU has
    it, oneDNN's GEMM on a packed weight (what bertkit's int8 layers run for large products)."""
    from bertkit.precision.int8_ops import int8_matmul, packed_int8_available

    best = 0.0
    for m, k, n in ((1024, 768, 3072), (1024, 3072, 768), (1024, 768, 2304), (2048, 256, 1024)):
        a = torch.randint(-127, 127, (m, k), dtype=torch.int8)
        b = torch.randint(-127, 127, (k, n), dtype=torch.int8)
        scale = torch.ones(1, n)
        kernels = [lambda: torch._int_mm(a, b)]
        if packed_int8_available():
            kernels.append(lambda: int8_matmul(a, b, scale))
        for kernel in kernels:
            for _ in range(2):
                kernel()
            start = time.perf_counter()
            for _ in range(repeats):
                kernel()
            best = max(best, 2 * m * k * n * repeats / (time.perf_counter() - start))
    return best


def torchao_int8(directory: Path):
    """bertkit's encoder with torchao's dynamic int8 (per-token activations, per-channel weights) on the same
    Linear layers, where torchao is installed; else why not (a string)."""
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError as exc:
        return f"torchao not installed ({exc})"
    from torch import nn

    from bertkit import BertModel
    from bertkit.model import ENCODER_LINEARS

    model = BertModel.from_pretrained(directory).eval()
    try:
        quantize_(model, Int8DynamicActivationInt8WeightConfig(),
                  filter_fn=lambda m, fqn: isinstance(m, nn.Linear) and fqn.split(".")[-1] in ENCODER_LINEARS)
    except Exception as exc:  # an API change between torchao versions
        return f"torchao failed: {type(exc).__name__}: {str(exc)[:200]}"
    return model


def one_by_128(vocab: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1000, vocab - 1, (1, 128), generator=g)
    ids[0, 0] = 101
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids),
            "lengths": torch.tensor([128])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", nargs="+", default=["base", "mini"])
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="glibc keeps freed memory for reuse in this process (BERTKIT_MALLOC=keep)")
    args = parser.parse_args()
    import onnxruntime as ort
    import transformers

    import speed
    from bertkit import BertConfig, BertModel
    from bertkit.export import export_onnx, quantize_onnx
    from bertkit.hardware import cpu_flags, cpu_name, native_bf16
    from bertkit.memory import keep_freed_memory
    from bertkit.precision import plan_inference, quantize
    from bertkit.precision.bf16 import packed_bf16_available
    from bertkit.precision.policy import AMX_FAMILY, VNNI_FAMILY, cpu_family

    transformers.logging.set_verbosity_error()
    kept = keep_freed_memory() if args.keep_freed_memory else False  # process-wide: every engine alike
    repeats = 2 if args.quick else 5
    peaks = {"int8": int8_peak(), "fp32": speed.matmul_peak(torch.float32, 5)}
    print(json.dumps({k: v / 1e12 for k, v in peaks.items()}), flush=True)
    time_bf16 = native_bf16()  # emulated bf16 is not worth timing
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for size in args.sizes:
            config = BertConfig.preset(size, vocab_size=speed.VOCAB)
            torch.manual_seed(0)
            directory = work / size
            BertModel(config).save_pretrained(directory)
            fp32 = BertModel.from_pretrained(directory).eval()
            auto = quantize(BertModel.from_pretrained(directory), "auto")
            int8 = quantize(BertModel.from_pretrained(directory), "int8")
            int8c = quantize(BertModel.from_pretrained(directory), "int8", compile=True)
            bf16 = quantize(BertModel.from_pretrained(directory), "bf16") if time_bf16 else None
            plain = (BertModel.from_pretrained(directory).eval().to(torch.bfloat16)
                     if packed_bf16_available() else None)  # implies native bf16
            hf = transformers.BertModel.from_pretrained(directory, attn_implementation="sdpa").eval()
            exported = export_onnx(fp32, work / f"{size}.onnx")
            quantized = quantize_onnx(exported, work / f"{size}.int8.onnx", num_heads=config.num_attention_heads,
                                      hidden_size=config.hidden_size)
            options = ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            session = ort.InferenceSession(str(quantized), options, providers=["CPUExecutionProvider"])
            ao = torchao_int8(directory)
            for kind in ("var", "full", "1x128"):
                batch = one_by_128(speed.VOCAB) if kind == "1x128" else speed.make_batch(kind)
                ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
                feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": types.numpy()}
                fns = {"bertkit auto": lambda: auto(ids, mask, types),
                       "bertkit int8": lambda: int8(ids, mask, types),
                       "bertkit int8 compiled": lambda: int8c(ids, mask, types),
                       "onnxruntime int8": lambda feeds=feeds: session.run(None, feeds),
                       "transformers fp32": lambda: hf(input_ids=ids, attention_mask=mask, token_type_ids=types),
                       "bertkit fp32": lambda: fp32(ids, mask, types)}
                if not isinstance(ao, str):
                    fns["torchao int8"] = lambda: ao(ids, mask, types)
                if bf16 is not None:
                    fns["bertkit bf16"] = lambda: bf16(ids, mask, types)
                if plain is not None:
                    fns["bertkit bf16 plain"] = lambda: plain(ids, mask, types)
                with torch.inference_mode():
                    seconds = speed.alternate(fns, repeats, min_seconds=6.0, block=4, settle=0.3, max_repeats=120)
                    reference = fp32(ids, mask, types).last_hidden_state
                    ours = int8(ids, mask, types).last_hidden_state
                    theirs = torch.from_numpy(session.run(None, feeds)[0])
                    outputs = [("bertkit int8", ours), ("onnxruntime int8", theirs)]
                    if bf16 is not None:
                        outputs.append(("bertkit bf16", bf16(ids, mask, types).last_hidden_state.float()))
                keep = mask.bool()
                cos = {name: float(torch.nn.functional.cosine_similarity(out[keep], reference[keep], dim=-1).min())
                       for name, out in outputs}
                tokens = int(mask.sum())
                flops = speed.forward_flops(config, batch["lengths"])
                row = {"size": size, "batch": kind, "real_tokens": tokens,
                       **{f"{n} tokens_per_s": tokens / s for n, s in seconds.items()},
                       "auto vs onnxruntime int8": seconds["onnxruntime int8"] / seconds["bertkit auto"],
                       "int8 vs onnxruntime int8": seconds["onnxruntime int8"] / seconds["bertkit int8"],
                       "compiled vs onnxruntime int8": seconds["onnxruntime int8"] / seconds["bertkit int8 compiled"],
                       "compiled vs transformers fp32": seconds["transformers fp32"] / seconds["bertkit int8 compiled"],
                       "compiled MFU (int8 peak)": flops / seconds["bertkit int8 compiled"] / peaks["int8"],
                       "int8 vs transformers fp32": seconds["transformers fp32"] / seconds["bertkit int8"],
                       "int8 vs bertkit fp32": seconds["bertkit fp32"] / seconds["bertkit int8"],
                       "bertkit int8 MFU (int8 peak)": flops / seconds["bertkit int8"] / peaks["int8"],
                       **({"bf16 vs onnxruntime int8": seconds["onnxruntime int8"] / seconds["bertkit bf16"],
                           "bf16 vs transformers fp32": seconds["transformers fp32"] / seconds["bertkit bf16"],
                           "bf16 vs bertkit int8 compiled": seconds["bertkit int8 compiled"] / seconds["bertkit bf16"]}
                          if "bertkit bf16" in seconds else {}),
                       **({"bf16 packed vs plain": seconds["bertkit bf16 plain"] / seconds["bertkit bf16"]}
                          if "bertkit bf16 plain" in seconds else {}),
                       "torchao int8 vs bertkit int8": (seconds["bertkit int8"] / seconds["torchao int8"]
                                                        if "torchao int8" in seconds else ao),
                       "worst-token cosine to fp32": cos}
                rows.append(row)
                print(json.dumps(row), flush=True)
    plan = plan_inference("auto", torch.device("cpu"), compile=None)
    precision, why = plan.precision + (" compiled" if plan.compile else ""), plan.why
    family = {AMX_FAMILY: "amx", VNNI_FAMILY: "vnni"}.get(cpu_family(), "other")
    flags = sorted(f for f in cpu_flags() if "vnni" in f or "bf16" in f or "amx" in f)
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu_name(), "flags": flags,
              "threads": torch.get_num_threads(), "torch": torch.__version__, "onnxruntime": ort.__version__,
              "malloc keeps freed memory": kept,
              "peaks_tops": {k: v / 1e12 for k, v in peaks.items()}, "auto": [precision, why], "family": family,
              "rows": rows}
    shown = ", ".join(flags) or "no VNNI/AMX/bf16 flags"
    lines = [f"Measured {result['date']} on {result['cpu']} ({result['threads']} threads; {shown}), "
             f"torch {result['torch']}, onnxruntime {result['onnxruntime']}. int8 GEMM peak "
             f"(best of torch._int_mm and oneDNN on packed weights) {peaks['int8'] / 1e12:.3f} TOP/s, fp32 "
             f"matmul peak {peaks['fp32'] / 1e12:.3f} "
             f"TFLOP/s. `--precision auto` here: **{precision}** ({why}).", "",
             "| size | batch | bertkit auto tok/s | auto vs onnxruntime int8 | bertkit int8 tok/s | + compile | "
             "onnxruntime int8 | transformers fp32 | bertkit fp32 | torchao int8 | int8 vs onnxruntime int8 (eager / "
             "compiled) | vs transformers fp32 (eager / compiled) | "
             "int8 MFU (eager / compiled) | bertkit bf16 | bf16 vs onnxruntime int8 / transformers fp32 | "
             "bf16 packed vs plain |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        torchao = r.get("torchao int8 tokens_per_s")
        bf16_cells = (f"{r['bertkit bf16 tokens_per_s']:,.0f} | **{r['bf16 vs onnxruntime int8']:.2f}x / "
                      f"{r['bf16 vs transformers fp32']:.2f}x** | "
                      + (f"{r['bf16 packed vs plain']:.2f}x" if "bf16 packed vs plain" in r else "– (not packed)")
                      if "bertkit bf16 tokens_per_s" in r else "– | – (bf16 not native here) | –")
        lines.append(
            f"| {r['size']} | {r['batch']} | {r['bertkit auto tokens_per_s']:,.0f} | "
            f"**{r['auto vs onnxruntime int8']:.2f}x** | {r['bertkit int8 tokens_per_s']:,.0f} | "
            f"{r['bertkit int8 compiled tokens_per_s']:,.0f} | {r['onnxruntime int8 tokens_per_s']:,.0f} | "
            f"{r['transformers fp32 tokens_per_s']:,.0f} | {r['bertkit fp32 tokens_per_s']:,.0f} | "
            f"{format(torchao, ',.0f') if torchao else '–'} | "
            f"**{r['int8 vs onnxruntime int8']:.2f}x / {r['compiled vs onnxruntime int8']:.2f}x** | "
            f"**{r['int8 vs transformers fp32']:.2f}x / {r['compiled vs transformers fp32']:.2f}x** | "
            f"{r['bertkit int8 MFU (int8 peak)']:.0%} / {r['compiled MFU (int8 peak)']:.0%} | {bf16_cells} |")
    lines += ["", "`bertkit auto` = `quantize(model, \"auto\")`, what `bertkit serve` runs with no flags (its "
              "compilation, at load, is not timed: bench/serve_start.py times a server's start). tok/s counts real "
              "tokens; `var` = 32 sequences of 16..128 tokens, `full` = 32 x 128, "
              "`1x128` = one sequence. Random weights (BERT-base / mini shapes); `+ compile` = `--compile` "
              "(torch.compile fuses the int8 layers' quantization and rescaling; its one-time compilation is not "
              "timed); on AMX, int8 products run on weights packed once for oneDNN (eager int8: those of at least "
              "50M multiply-adds), compiled int8 on a batch without padding (`full`, `1x128`) runs the layers "
              "with their weights frozen as inductor constants (its AMX GEMM template or oneDNN's, timed at "
              "compilation; attention's two products in bf16), and a batch whose widest activation passes 16 MiB "
              "runs in groups of sequences "
              "under it; `bertkit bf16` = the "
              "whole model in bf16 (`--precision bf16`: encoder weights packed "
              "once for oneDNN, GELU fused into the FFN's first GEMM), timed only where bf16 is native; `packed vs "
              "plain` = its speed over `model.to(torch.bfloat16)` (F.linear at every call). Engines take turns of 4 "
              "timed calls, each turn after 0.3 s idle and one untimed call, so "
              "no engine's still-busy thread pool (onnxruntime's spinning workers, OpenMP's) slows the engine "
              "timed after it; each engine is timed for at least 6 s a cell (up to 120 calls), tok/s from the "
              f"median call. Memory: {ALLOCATOR[kept]}. Accuracy on real models and tasks: the accuracy table and "
              "tests/test_quantize.py."]
    OUT.mkdir(parents=True, exist_ok=True)
    name = "int8_keep" if args.keep_freed_memory else f"int8_{family}"
    (OUT / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (OUT / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
