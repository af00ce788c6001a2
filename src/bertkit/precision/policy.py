"""What `--precision` means on this machine, and the conversion of a model to it.

`choose_precision` is the one place that decides what `auto` means: it reads CPU features, never assumes them (an
Ice Lake has VNNI but emulates bf16 at a fraction of fp32's speed). Where a C++ compiler is at hand and the caller
lives long enough to compile (a server, `bertkit compile`, the Python API's `quantize(model, "auto")`), `auto`
compiles int8 (`plan_inference`): AUTO_TABLE says what runs fastest for each batch shape on each CPU family it was
measured on. `quantize(model, precision)` converts a model in place; `prepare_for_inference` is the one inference
set-up (the Predictor's, `bertkit embed`'s).
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from bertkit import hardware
from bertkit.hardware import BF16_FEATURES
from bertkit.model import ENCODER_LINEARS, EncoderLayer, LayerStack
from bertkit.precision.bf16 import pack_bf16
from bertkit.precision.int8 import Int8EncoderLayer, Int8LayerStack, Int8Linear

PRECISIONS = ("auto", "fp32", "bf16", "int8")
INT8_FEATURES = ("amx_int8", "avx512_vnni", "avx_vnni")  # /proc/cpuinfo flags with int8 dot products
AMX_BF16 = "amx_bf16"


SHAPES = ("one sequence", "batch without padding", "batch with padding")

# The fastest of bertkit's engines for each batch shape (SHAPES) on each CPU family measured, BERT-base and mini
# alike, against onnxruntime int8 in the same process (bench/int8.py; the file each row cites keeps the run).
# `auto` takes a row's engine where it can run it (compiled int8 needs a C++ compiler and a caller that compiles).
AUTO_TABLE: dict[str, tuple[dict[str, str], str]] = {
    "AMX (amx_int8, amx_bf16)": (
        {"one sequence": "int8 compiled", "batch without padding": "int8 compiled", "batch with padding": "bf16"},
        "bench/results/int8_amx.json, Intel Xeon (Sapphire Rapids), 2026-12-02: BERT-base 1 x 128 compiled int8 "
        "1.22x onnxruntime int8, bf16 0.94x; 32 x 128 1.49x and 1.44x; padded batches 2.13x and 2.81x"),
    "int8 dot products without AMX (avx512_vnni, avx_vnni)": (
        {shape: "int8 compiled" for shape in SHAPES},
        "bench/results/int8_vnni.json, AMD EPYC (avx512_vnni, avx512_bf16), 2026-12-07"),
}
AMX_FAMILY, VNNI_FAMILY = AUTO_TABLE


def cpu_family(flags: Iterable[str] | None = None) -> str | None:
    """The AUTO_TABLE row of this CPU (None: a CPU without int8 dot products)."""
    flags = frozenset(hardware.cpu_flags() if flags is None else flags)
    if "amx_int8" in flags and AMX_BF16 in flags:
        return AMX_FAMILY
    return VNNI_FAMILY if any(f in flags for f in INT8_FEATURES) else None


def choose_precision(flags: Iterable[str] | None = None, *, cuda: bool = False, cuda_bf16: bool = False,
                     compiled: bool = False) -> tuple[str, str]:
    """(precision, why) for `auto`: on a GPU bf16 where it has bf16, else fp32; on a CPU with AMX bf16 (int8 where
    the caller compiles it: `compiled`), else int8 where it has VNNI, else bf16 where bf16 is native (AVX512-BF16),
    else fp32. Never a precision the machine emulates."""
    if cuda:
        return ("bf16", "CUDA with bf16") if cuda_bf16 else ("fp32", "CUDA without bf16 (int8 is a CPU path)")
    flags = frozenset(hardware.cpu_flags() if flags is None else flags)
    if AMX_BF16 in flags and not (compiled and "amx_int8" in flags):
        return "bf16", "CPU with AMX (amx_bf16): bf16 matmuls on AMX tiles, faster here than bertkit's eager int8"
    int8 = [f for f in INT8_FEATURES if f in flags]
    if int8:
        return "int8", f"CPU with int8 dot products ({', '.join(int8)})"
    bf16 = [f for f in BF16_FEATURES if f in flags]
    if bf16:
        return "bf16", f"CPU with native bf16 ({', '.join(bf16)}), no int8 dot products"
    return "fp32", "CPU without int8 dot products (VNNI/AMX) or native bf16"


def resolve_precision(precision: str, device: torch.device, onnx: bool = False, compiled: bool = False
                      ) -> tuple[str, str]:
    """(precision, why) for a model about to run on `device`: `auto` by `choose_precision` (`compiled`: the caller
    compiles int8); an explicit choice the device cannot run (int8 on a GPU or on an ONNX encoder) is an error, one
    it runs slowly a warning."""
    from bertkit.errors import DeviceError

    if precision not in PRECISIONS:
        raise DeviceError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if onnx:
        if precision not in ("auto", "fp32"):
            raise DeviceError(f"--onnx runs an fp32 encoder in onnxruntime; --precision {precision} does not apply "
                              "(quantize the ONNX file instead: bertkit export --onnx FILE --precision int8)")
        return "fp32", "ONNX encoder (onnxruntime)"
    cuda = device.type == "cuda"
    if precision == "auto":
        return choose_precision(cuda=cuda, cuda_bf16=cuda and torch.cuda.is_bf16_supported(including_emulation=False),
                                compiled=compiled)
    if precision == "int8" and cuda:
        raise DeviceError("--precision int8 is a CPU path (int8 GEMMs through oneDNN); on a GPU use bf16 or fp32")
    if precision == "bf16" and not cuda and not hardware.native_bf16():
        warnings.warn("--precision bf16 on a CPU without native bf16 (AMX or AVX512-BF16): bf16 is emulated there "
                      "and runs slower than fp32", stacklevel=3)
    return precision, "chosen explicitly"


@dataclass(frozen=True)
class Plan:
    """What a model runs at inference: its precision, whether its int8 layers compile, and why."""

    precision: str
    compile: bool
    why: str

    def shapes(self) -> dict[str, str]:
        """What runs for each of SHAPES."""
        if self.precision != "int8":
            return {shape: f"{self.precision}, the whole model" for shape in SHAPES}
        how = "int8 compiled (fused around each GEMM)" if self.compile else "int8 eager"
        stack = f", {Int8LayerStack.chunk} layers a call" if self.compile else ""
        return {"one sequence": how + stack, "batch without padding": f"{how}, whole sequences{stack}",
                "batch with padding": f"{how}, layer by layer, attention over the real tokens only"}

    def shape_lines(self, indent: str = "") -> list[str]:
        """`shapes()` as aligned lines (`bertkit info`, `bertkit compile`)."""
        return [f"{indent}{shape:23s}{what}" for shape, what in self.shapes().items()]


def plan_inference(precision: str, device: torch.device, onnx: bool = False, compile: bool | None = False) -> Plan:
    """The Plan for a model about to run on `device` at `precision`. `compile`: True or False as the caller says;
    None (a server's default, `quantize(model, "auto")`): compiled int8 where this CPU's AUTO_TABLE row runs it and
    a C++ compiler is at hand."""
    from bertkit.compiled import compile_cache, compiler_available

    family = cpu_family() if device.type == "cpu" and not onnx else None
    fastest = AUTO_TABLE[family][0] if family else {}
    table_compiles = "int8 compiled" in fastest.values()
    want = compile if compile is not None else table_compiles and compiler_available()
    chosen, why = resolve_precision(precision, device, onnx, compiled=want)
    compiled = want and chosen == "int8"
    if compile is None and compiled:
        why += f"; compiled, as AUTO_TABLE's row {family} says ({AUTO_TABLE[family][1]}); graphs cached in " \
               f"{compile_cache()}"
        other = [f"{shape}: {engine}" for shape, engine in fastest.items() if engine != "int8 compiled"]
        if other:
            why += f"; one precision a model, so not the row's {', '.join(other)}"
    elif compile is None and table_compiles and not want:
        why += "; not compiled int8 (AUTO_TABLE's fastest here): no C++ compiler for torch.compile"
    return Plan(chosen, compiled, why)


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or name == p for p in patterns)


def quantize(model: nn.Module, precision: str = "int8", keep: Iterable[str] = (), compile: bool | None = None
             ) -> nn.Module:
    """Convert `model` in place for inference at `precision` ("int8", "bf16" or "fp32") and return it, in eval mode.

    int8: each encoder layer becomes an Int8EncoderLayer (its four Linears int8 weights, per-token int8 activations,
    int32 products) and the layer stack an Int8LayerStack; embeddings, LayerNorm, softmax, the residual stream, the
    pooler and the task heads stay float32. `keep`: Linear names or glob patterns (e.g. "bert.layers.5.*",
    "*.ffn_out") that stay float32 (the layer-wise fallback for a model that loses accuracy): a layer with a kept
    Linear stays a float layer whose other Linears are Int8Linears. `compile`: the int8 functions run through
    torch.compile (compiled at their first call; `warm_up` does it ahead). bf16: the model in bf16, its encoder
    Linears packed for oneDNN on a CPU with native bf16 (`pack_bf16`). "auto": what `bertkit serve --precision auto`
    runs for the model's device (`plan_inference`: compiled int8 where this CPU's AUTO_TABLE row says so and a C++
    compiler is here); `compile` None: as "auto" decides (False for an explicit precision)."""
    if precision == "auto":
        plan = plan_inference(precision, next(model.parameters()).device, compile=compile)
        precision, compile = plan.precision, plan.compile
    if precision not in ("int8", "bf16", "fp32"):
        raise ValueError(f"precision must be auto, int8, bf16 or fp32, got {precision!r}")
    model.eval()
    if precision == "bf16":
        model.to(torch.bfloat16)
        pack_bf16(model)
        return model
    if precision == "fp32":
        return model
    compile = bool(compile)
    patterns = list(keep)
    kept, converted = [], 0
    replaced: set[int] = set()  # layers swapped for an Int8EncoderLayer: their old children are not visited
    for name, module in list(model.named_modules()):
        if id(module) in replaced:
            continue
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, EncoderLayer) and not any(_matches(f"{full}.{n}", patterns) for n in ENCODER_LINEARS):
                setattr(module, child_name, Int8EncoderLayer(child, compile=compile))
                replaced.add(id(child))
                converted += len(ENCODER_LINEARS)
            elif isinstance(child, nn.Linear) and child_name in ENCODER_LINEARS:  # in a layer with a kept Linear
                if _matches(full, patterns):
                    kept.append(full)
                else:
                    setattr(module, child_name, Int8Linear(child, compile=compile))
                    converted += 1
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is LayerStack and any(isinstance(m, Int8EncoderLayer) for m in child):
                setattr(module, child_name, Int8LayerStack(child, compile=compile).eval())
    if converted == 0 and not kept:
        raise ValueError(f"{type(model).__name__} has no encoder Linear layers ({', '.join(ENCODER_LINEARS)}) to "
                         "quantize")
    model.precision = "int8"  # type: ignore[assignment]
    model.int8_kept = kept  # type: ignore[assignment]
    return model


@torch.no_grad()
def warm_up(encoder: nn.Module) -> None:
    """Run an int8 encoder once on a small padded batch and once on unpadded ones (the layer-by-layer path and the
    layer stack), every row and (with a pooler) the [CLS]-only last layer of `pooled`, so `--compile`'s one-time
    compilation happens at start-up, not in the first request."""
    vocab = encoder.config.vocab_size
    ids = torch.arange(24, dtype=torch.long).remainder(vocab).view(2, 12)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    passes = [encoder] + ([encoder.pooled] if getattr(encoder, "pooler", None) is not None else [])
    for run in passes:
        run(ids, mask, torch.zeros_like(ids))
        for rows in (2, 1):  # torch.compile specialises a batch of one: both sizes compiled now
            run(ids[:rows], torch.ones_like(ids[:rows]), torch.zeros_like(ids[:rows]))


def prepare_for_inference(model: nn.Module, encoder: nn.Module, device: torch.device, precision: str,
                          keep: Iterable[str] = (), compile: bool | None = False, onnx: bool = False) -> Plan:
    """The one inference set-up of a loaded model (the Predictor's, `bertkit embed`'s): moved to `device`, converted
    to `precision` (`plan_inference`: "auto" picks one, and `compile` None lets it pick whether int8 compiles), and
    compiled int8 warmed up now rather than in the first request. Returns the Plan."""
    model.to(device)
    plan = plan_inference(precision, device, onnx, compile)
    if plan.precision != "fp32":
        quantize(model, plan.precision, keep=keep, compile=plan.compile)
        if plan.compile:
            warm_up(encoder)  # quantize converted it in place
    return plan
