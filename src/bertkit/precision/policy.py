"""What `--precision` means on this machine, and the conversion of a model to it.

`choose_precision` is the one place that decides what `auto` means: it reads CPU features, never assumes them (an
Ice Lake has VNNI but emulates bf16 at a fraction of fp32's speed; with AMX, bf16 matmuls run on the tiles at about
int8's speed and skip int8's quantize and rescale passes: bench/int8.py). `quantize(model, precision)` converts a
model in place; `prepare_for_inference` is the one inference set-up (the Predictor's, `bertkit embed`'s).
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Iterable

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


def choose_precision(flags: Iterable[str] | None = None, *, cuda: bool = False,
                     cuda_bf16: bool = False) -> tuple[str, str]:
    """(precision, why) for `auto`: on a GPU bf16 where it has bf16, else fp32; on a CPU bf16 with AMX, else int8
    where it has VNNI, else bf16 where bf16 is native (AVX512-BF16), else fp32. Never a precision the machine
    emulates."""
    if cuda:
        return ("bf16", "CUDA with bf16") if cuda_bf16 else ("fp32", "CUDA without bf16 (int8 is a CPU path)")
    flags = frozenset(hardware.cpu_flags() if flags is None else flags)
    if AMX_BF16 in flags:
        return "bf16", "CPU with AMX (amx_bf16): bf16 matmuls on AMX tiles, faster here than bertkit's eager int8"
    int8 = [f for f in INT8_FEATURES if f in flags]
    if int8:
        return "int8", f"CPU with int8 dot products ({', '.join(int8)})"
    bf16 = [f for f in BF16_FEATURES if f in flags]
    if bf16:
        return "bf16", f"CPU with native bf16 ({', '.join(bf16)}), no int8 dot products"
    return "fp32", "CPU without int8 dot products (VNNI/AMX) or native bf16"


def resolve_precision(precision: str, device: torch.device, onnx: bool = False) -> tuple[str, str]:
    """(precision, why) for a model about to run on `device`: `auto` by `choose_precision`; an explicit choice the
    device cannot run (int8 on a GPU or on an ONNX encoder) is an error, one it runs slowly a warning."""
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
        return choose_precision(cuda=cuda, cuda_bf16=cuda and torch.cuda.is_bf16_supported(including_emulation=False))
    if precision == "int8" and cuda:
        raise DeviceError("--precision int8 is a CPU path (int8 GEMMs through oneDNN); on a GPU use bf16 or fp32")
    if precision == "bf16" and not cuda and not hardware.native_bf16():
        warnings.warn("--precision bf16 on a CPU without native bf16 (AMX or AVX512-BF16): bf16 is emulated there "
                      "and runs slower than fp32", stacklevel=3)
    return precision, "chosen explicitly"


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or name == p for p in patterns)


def quantize(model: nn.Module, precision: str = "int8", keep: Iterable[str] = (), compile: bool = False
             ) -> nn.Module:
    """Convert `model` in place for inference at `precision` ("int8", "bf16" or "fp32") and return it, in eval mode.

    int8: each encoder layer becomes an Int8EncoderLayer (its four Linears int8 weights, per-token int8 activations,
    int32 products) and the layer stack an Int8LayerStack; embeddings, LayerNorm, softmax, the residual stream, the
    pooler and the task heads stay float32. `keep`: Linear names or glob patterns (e.g. "bert.layers.5.*",
    "*.ffn_out") that stay float32 (the layer-wise fallback for a model that loses accuracy): a layer with a kept
    Linear stays a float layer whose other Linears are Int8Linears. `compile`: the int8 functions run through
    torch.compile (compiled at their first call; `warm_up` does it ahead). bf16: the model in bf16, its encoder
    Linears packed for oneDNN on a CPU with native bf16 (`pack_bf16`). "auto": what `--precision auto` runs for the
    model's device (`resolve_precision`)."""
    if precision == "auto":
        device = next(model.parameters()).device
        precision, _ = resolve_precision(precision, device)
    if precision not in ("int8", "bf16", "fp32"):
        raise ValueError(f"precision must be auto, int8, bf16 or fp32, got {precision!r}")
    model.eval()
    if precision == "bf16":
        model.to(torch.bfloat16)
        pack_bf16(model)
        return model
    if precision == "fp32":
        return model
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
    layer stack), so `--compile`'s one-time compilation happens at start-up, not in the first request."""
    vocab = encoder.config.vocab_size
    ids = torch.arange(24, dtype=torch.long).remainder(vocab).view(2, 12)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    encoder(ids, mask, torch.zeros_like(ids))
    for rows in (2, 1):  # torch.compile specialises a batch of one: both sizes compiled now
        encoder(ids[:rows], torch.ones_like(ids[:rows]), torch.zeros_like(ids[:rows]))


def prepare_for_inference(model: nn.Module, encoder: nn.Module, device: torch.device, precision: str,
                          keep: Iterable[str] = (), compile: bool = False, onnx: bool = False) -> tuple[str, str]:
    """The one inference set-up of a loaded model (the Predictor's, `bertkit embed`'s): moved to `device`, converted
    to `precision` (`resolve_precision`: "auto" picks one), and with int8 and `compile`, its `encoder` compiled now
    rather than in the first request. Returns (precision, why it was chosen)."""
    model.to(device)
    chosen, why = resolve_precision(precision, device, onnx)
    if chosen != "fp32":
        quantize(model, chosen, keep=keep, compile=compile)
        if compile and chosen == "int8":
            warm_up(encoder)  # quantize converted it in place
    return chosen, why
