"""Inference precision on the CPU: bf16 on AMX, int8 where the CPU has integer dot products without AMX, bf16 only
where native.

int8 (`quantize(model, "int8")`): every encoder Linear (fused QKV, attention output, FFN in and out) holds int8
weights with one scale per output channel; its input is quantized per token at run time (one scale and zero
point per row, so an outlier token does not flatten the others); the product accumulates in int32 on oneDNN's
VNNI/AMX kernels (on AMX, `int8_matmul` on the weight packed once: every product compiled, large ones eagerly;
else `torch._int_mm`) and is rescaled to float32; a batch too large for one piece runs in groups (GROUP_BYTES).
Compiled on AMX, a batch without padding runs the layers as FrozenInt8Layers: their weights constants to inductor,
which packs them and times its own AMX GEMM (rescaling and GELU in its epilogue) against oneDNN's.
Embeddings, LayerNorm, softmax, GELU, the residual stream, the pooler and the task heads stay float32 (frozen stacks
run attention's two products in bf16 where bf16 is native); the packed (no-padding) layout is unchanged.
Layers named in `keep` stay float32 (the layer-wise fallback for a model that loses accuracy).

bf16 (`quantize(model, "bf16")`): the whole model in bf16; on a CPU with native bf16, each encoder Linear's weight
is packed once into oneDNN's layout for this CPU and the activation runs inside ffn_in's GEMM (`Bf16Linear`).

`choose_precision` is the one place that decides what `--precision auto` means on this machine; it reads CPU
features, never assumes them (an Ice Lake has VNNI but emulates bf16 at a quarter of fp32's speed; on a Sapphire
Rapids, AMX runs bf16 matmuls about as fast as int8 ones, and bf16 skips int8's quantize and rescale passes).
"""

from __future__ import annotations

import fnmatch
import sys
import types
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertkit import hardware
from bertkit.hardware import BF16_FEATURES
from bertkit.model import _ACTIVATIONS, EncoderLayer, LayerStack, Layout, dense_attention, gelu_tanh

PRECISIONS = ("auto", "fp32", "bf16", "int8")
INT8_FEATURES = ("amx_int8", "avx512_vnni", "avx_vnni")  # /proc/cpuinfo flags with int8 dot products
# With AMX, bf16 matmuls run on the tiles at about int8's speed (2048^2: 2.0 TFLOP/s bf16, 2.3 TOP/s int8, fp32 0.31)
# and a bf16 model makes none of int8's passes around each GEMM: bench/int8.py on a 2-core Sapphire Rapids measured
# bertkit bf16 (weights packed for oneDNN) at 1.33-2.83x its compiled int8 and 2.1-5.0x its eager int8, so auto
# picks bf16 there.
AMX_BF16 = "amx_bf16"
ENCODER_LINEARS = ("qkv", "attn_out", "ffn_in", "ffn_out")


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
    import warnings

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


def quantize_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric int8 per row: (q, scale) with x ≈ q * scale, scale of shape (rows, 1)."""
    scale = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12).div_(127.0)
    return torch.round(x / scale).clamp_(-127, 127).to(torch.int8), scale


# M x K x N below which eager int8_linear uses torch._int_mm: oneDNN's packed GEMM costs ~25 us a call before any
# work (here: 128 x 768 x 768 packed 61 us vs 73; 128 x 256 x 768 41 us vs 38; 512 x 256 x 1024 131 us vs 209).
# Compiled int8 uses the packed GEMM at every size (BERT-mini: 0.9x at 1 x 128, 1.3x at 32 x 128 against _int_mm).
PACKED_INT8_MIN_WORK = 50_000_000
_PACKED_INT8: list[bool] = []  # whether this process runs int8 GEMMs on oneDNN-packed weights (decided once)
# id(weight_t) -> (a weak reference to it, its data pointer and version when packed, the packed weight): the
# packed twin of each int8 weight tensor, made at its first product, made again when the weight changed, dropped
# with the tensor
_INT8_PACKS: dict[int, tuple[Any, int, int, Tensor]] = {}


def packed_int8_available() -> bool:
    """Whether int8 products run on oneDNN's GEMM with pre-packed weights (onednn::qlinear_pointwise, what
    inductor's freezing makes of torch._int_mm): oneDNN built in, AMX here, and a trial product equal to
    torch._int_mm's. Decided once a process. Measured on a 2-core Sapphire Rapids at BERT-base's shapes: 1.7-2.3x
    torch._int_mm, which reorders the weight at every call; on an AMD EPYC with VNNI and no AMX 0.87-1.11x, so
    there torch._int_mm stays."""
    if not _PACKED_INT8:
        ok = False
        if torch.backends.mkldnn.is_available() and "amx_int8" in hardware.cpu_flags():
            try:
                gen = torch.Generator().manual_seed(0)
                q = torch.randint(-128, 128, (20, 64), dtype=torch.int8, generator=gen)
                w = torch.randint(-127, 128, (48, 64), dtype=torch.int8, generator=gen)
                scale = torch.rand(48, generator=gen) + 0.5
                y = torch.ops.onednn.qlinear_pointwise(q, 1.0, 0, torch.ops.onednn.qlinear_prepack(w, None), scale,
                                                       None, None, 1.0, 0, torch.float32, "none", [], "")
                ok = bool(torch.allclose(y, torch._int_mm(q, w.t().contiguous()).float() * scale, rtol=1e-6))
            except (RuntimeError, AttributeError, NotImplementedError):
                ok = False
        _PACKED_INT8.append(ok)
    return _PACKED_INT8[0]


def _int8_pack(weight_t: Tensor) -> Tensor:
    """The oneDNN-packed twin of an int8 (K, N) weight, made once per weight tensor, again when its data moved or
    changed in place (its version, e.g. load_state_dict; a write through `.data` or numpy bypasses the version, as
    for autograd, and an inference tensor has none: both are packed once), and dropped with the tensor."""
    key = id(weight_t)
    state = (weight_t.data_ptr(), 0 if weight_t.is_inference() else weight_t._version)
    entry = _INT8_PACKS.get(key)
    if entry is None or entry[0]() is not weight_t:  # a tensor not seen before
        weakref.finalize(weight_t, _INT8_PACKS.pop, key, None)
        entry = None
    if entry is None or entry[1:3] != state:
        entry = (weakref.ref(weight_t), *state, torch.ops.onednn.qlinear_prepack(weight_t.t().contiguous(), None))
        _INT8_PACKS[key] = entry
    return entry[3]


@torch.library.custom_op("bertkit::int8_matmul", mutates_args=())
def int8_matmul(q: Tensor, weight_t: Tensor, weight_scale: Tensor) -> Tensor:
    """(M, K) int8 x (K, N) int8 -> (M, N) float32 (q weight_t) * weight_scale, accumulated in int32: on oneDNN's
    packed weights where `packed_int8_available()` (a torch.library op, so torch.compile calls it as one kernel
    between the fused passes around it; the packed weight, an opaque oneDNN tensor, never enters the graph), else
    torch._int_mm."""
    if q.device.type == "cpu" and weight_t.device.type == "cpu" and packed_int8_available():
        return torch.ops.onednn.qlinear_pointwise(q, 1.0, 0, _int8_pack(weight_t),
                                                  weight_scale.reshape(-1).float().contiguous(), None, None, 1.0,
                                                  0, torch.float32, "none", [], "")
    return torch._int_mm(q, weight_t).float().mul_(weight_scale)


@int8_matmul.register_fake
def _int8_matmul_shape(q: Tensor, weight_t: Tensor, weight_scale: Tensor) -> Tensor:
    return q.new_empty((q.shape[0], weight_t.shape[1]), dtype=torch.float32)


def quantize_tokens(rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Asymmetric int8 per row (token): (q, scale, zero), each (M, 1) but q, with rows ≈ scale (q - zero). Under
    torch.compile, `quantize_range`'s form (a fractional zero point: the same step, another rounding grid)."""
    low, high = torch.aminmax(rows, dim=-1, keepdim=True)
    if torch.compiler.is_compiling():
        return quantize_range(rows, low, high)
    scale = (high.clamp(min=0) - low.clamp(max=0)).div(255.0).clamp(min=1e-12)  # (M, 1)
    zero = torch.round(low.clamp(max=0) / scale).neg().sub(128.0)  # (M, 1): q = round(x / s) + z
    return torch.addcmul(zero, rows, scale.reciprocal()).round_().clamp_(-128, 127).to(torch.int8), scale, zero


def quantize_range(values: Tensor, low: Tensor, high: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(q, scale, zero) as quantize_tokens, for rows whose values lie within (M, 1) bounds [low, high]: low maps to
    -128 and high to 127, so zero = -128 - low / scale is fractional (the quantization step is the same, the error
    at most half a step) and q needs no clamp. The form for compiled layers: in inductor's fused kernel every
    per-row step (the clamps, the rounded zero point, the divisions) was evaluated again at each vector of the row,
    and the clamps of the result cost as much again: quantizing 4096 x 1024 rows took 1.5 ms in quantize_tokens'
    eager form, 0.85-0.88 ms in this one (compiled, here)."""
    inverse = 255.0 / (high - low).clamp(min=1e-12)
    q = ((values - low) * inverse - 128.0).round_().to(torch.int8)  # values - low first: exact where |low| >> range
    return q, inverse.reciprocal(), -128.0 - low * inverse


# Each activation's global minimum and (rounded up) where it is reached: act is increasing from there on, so a
# row's smallest activation is act(its smallest input) where that input is at least the second number, and never
# below the first.
ACTIVATION_MINIMA: dict[Callable[[Tensor], Tensor], tuple[float, float]] = {
    F.gelu: (-0.1699713, -0.7517),  # exact GELU: -0.16997121 at -0.75179
    gelu_tanh: (-0.1700408, -0.7524),  # tanh GELU: -0.17004075 at -0.75246
    F.relu: (0.0, 0.0),
}


def quantize_activation(rows: Tensor, act: Callable[[Tensor], Tensor], minimum: tuple[float, float]
                        ) -> tuple[Tensor, Tensor, Tensor]:
    """quantize_tokens(act(rows)) for an activation with `minimum` (ACTIVATION_MINIMA) in the compiled form, the
    bounds taken from the rows before the activation: the largest act value is act(max) (at least 0), the smallest
    act(min) where min is past the activation's own minimum (exactly the row's, since act is increasing there),
    else that minimum (BERT's FFN rows pass near it: on random rows of 1024 the step is the row's own within 0.1%,
    the test). The fused kernel then evaluates the activation once an element, not once for the row's range and
    again to quantize it (GELU's rational erf is the kernel's largest cost: BERT-mini 32 x 128 compiled 1.14x
    faster)."""
    low, high = torch.aminmax(rows, dim=-1, keepdim=True)
    floor, start = minimum
    low = torch.where(low >= start, act(low), floor)
    return quantize_range(act(rows), low, act(high).clamp(min=0))


def int8_linear(rows: Tensor, weight_t: Tensor, weight_scale: Tensor, weight_sum: Tensor, bias: Tensor) -> Tensor:
    """(M, K) float32 rows -> (M, N): per-token asymmetric int8 rows times the int8 weight, rescaled (a pure
    function, so torch.compile can fuse the quantization before the int8 GEMM and the rescaling after it)."""
    return int8_product(*quantize_tokens(rows), weight_t, weight_scale, weight_sum, bias)


def int8_product(q: Tensor, scale: Tensor, zero: Tensor, weight_t: Tensor, weight_scale: Tensor, weight_sum: Tensor,
                 bias: Tensor) -> Tensor:
    """int8_linear after the quantization: (M, K) int8 rows with their (M, 1) scales and zero points -> (M, N)."""
    if isinstance(weight_t, nn.Parameter) and torch.compiler.is_compiling():
        # a constant of a frozen compiled module (FrozenInt8Layers): the product written as inductor's freezing
        # pass recognizes it, which packs the weight once and puts in an AMX GEMM with the w and s products
        y = torch._int_mm(q, weight_t).to(torch.float32) * scale * weight_scale
    # Compiled, always the packed GEMM where there is one: a test on the number of rows would be a guard, and each
    # batch crossing it would compile the layers again (in a request); eagerly, only for large products.
    elif _PACKED_INT8 and _PACKED_INT8[0] and (torch.compiler.is_compiling()
                                               or q.shape[0] * q.shape[1] * weight_t.shape[1] >= PACKED_INT8_MIN_WORK):
        y = int8_matmul(q, weight_t, weight_scale).mul_(scale)  # s w (q Q^T), oneDNN-packed
    else:
        y = torch._int_mm(q, weight_t).float().mul_(weight_scale).mul_(scale)  # s w (q Q^T)
    return torch.addr(y, (zero * scale).reshape(-1), weight_sum, alpha=-1).add_(bias)  # - s z w colsum(Q) + b


def int8_attention_output(x: Tensor, y: Tensor, out: tuple[Tensor, ...], norm: tuple[Tensor, Tensor, float]
                          ) -> Tensor:
    """LayerNorm(x + attn_out(y)): an encoder layer's attention output, residual and norm in one pure function
    (`out`: an Int8Linear's buffers, `norm`: weight, bias, eps), so torch.compile fuses the passes around the GEMM."""
    return F.layer_norm(x + int8_linear(y, *out), x.shape[-1:], norm[0], norm[1], norm[2])


def gelu_rational(x: Tensor) -> Tensor:
    """Exact (erf) GELU, x Φ(x), with erf as a rational function: inside a compiled int8 layer it costs ~15
    multiply-adds and one division an element; ATen's vectorized erf (Abramowitz-Stegun with an exp) cost 1.4-2x
    as much in the fused kernel here. Its GELU differs from F.gelu's by under 2e-6, while the int8 rows it feeds
    are quantized in steps of 1/255 of their range.

    erf(z) ≈ z P(z²) / Q(z²) on z clamped to [-4, 4] (float32 erf is ±1 beyond): the rational approximation of
    Eigen's and XLA's float erf, error under 5e-7 against float64 erf. The coefficients are literals on purpose:
    torch.compile(dynamic=True) turns floats read from a global into run-time inputs (a load and a conversion from
    double in the kernel's inner loop: a compiled GELU over 4096 x 1024 took 1.35x as long here)."""
    z = (x * 0.7071067811865476).clamp(-4.0, 4.0)
    z2 = z * z
    p = z2 * -2.72614225801306e-10 + 2.77068142495902e-08
    p = p * z2 + -2.10102402082508e-06
    p = p * z2 + -5.69250639462346e-05
    p = p * z2 + -7.34990630326855e-04
    p = p * z2 + -2.95459980854025e-03
    p = p * z2 + -1.60960333262415e-02
    q = z2 * -1.45660718464996e-05 + -2.13374055278905e-04
    q = q * z2 + -1.68282697438203e-03
    q = q * z2 + -7.37332916720468e-03
    q = q * z2 + -1.42647390514189e-02
    return 0.5 * x * (1.0 + z * p / q)


def int8_feed_forward(x: Tensor, first: tuple[Tensor, ...], second: tuple[Tensor, ...],
                      norm: tuple[Tensor, Tensor, float], act: Callable[[Tensor], Tensor]) -> Tensor:
    """LayerNorm(x + ffn_out(act(ffn_in(x)))): an encoder layer's feed-forward block at int8, one pure function.
    Eagerly, the activation and then quantize_tokens; under torch.compile, `quantize_activation` (the activation
    evaluated once an element), with exact GELU as `gelu_rational`."""
    h = int8_linear(x, *first)
    if torch.compiler.is_compiling() and act in ACTIVATION_MINIMA:
        quantized = quantize_activation(h, gelu_rational if act is F.gelu else act, ACTIVATION_MINIMA[act])
    else:
        quantized = quantize_tokens(act(h))
    return F.layer_norm(x + int8_product(*quantized, *second), x.shape[-1:], norm[0], norm[1], norm[2])


def int8_dense_layer(x: Tensor, batch: int, num_heads: int, qkv: tuple[Tensor, ...], out: tuple[Tensor, ...],
                     attn_norm: tuple[Tensor, Tensor, float], first: tuple[Tensor, ...], second: tuple[Tensor, ...],
                     ffn_norm: tuple[Tensor, Tensor, float], act: Callable[[Tensor], Tensor],
                     attention: torch.dtype = torch.float32) -> Tensor:
    """A whole encoder layer at int8 over a batch without padding ((B * T, H) rows, B = `batch`), attention
    included: one compiled function a layer instead of three, so the QKV rescaling fuses with the head split and
    the attention output's transpose with the next quantization. `attention`: the dtype of attention's two
    products (bf16 in FrozenInt8Layers where bf16 is native; softmax accumulates in float32 either way)."""
    y = dense_attention(int8_linear(x, *qkv).to(attention), batch, num_heads).float()
    return int8_feed_forward(int8_attention_output(x, y, out, attn_norm), first, second, ffn_norm, act)


def int8_dense_stack(x: Tensor, batch: int, num_heads: int, layers: list[tuple[Any, ...]],
                     act: Callable[[Tensor], Tensor]) -> Tensor:
    """Consecutive encoder layers at int8 over a batch without padding ((B * T, H) rows), as one function: compiled,
    one call for several layers instead of one a layer (torch.compile's guards and wrappers cost ~60 us a call),
    and each layer's last LayerNorm fuses with the next layer's first quantization. `layers`: each layer's
    `int8_dense_layer` arguments after `num_heads` (Int8EncoderLayer.arguments); Int8LayerStack passes 4 at a
    time."""
    for arguments in layers:
        x = int8_dense_layer(x, batch, num_heads, *arguments, act)
    return x


_COMPILED: dict[str, Any] = {}  # name -> the compiled function (one per process), or None once compiling failed
COMPILE_FAILED: list[str] = []  # why compiling failed in this process (then everything runs eagerly)


def compile_failure(exc: Exception) -> str:
    """One line for a compile failure's warning: the exception's type and its message's first line."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def run_compiled(fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` through torch.compile (compiled at its first call, cached on disk by torch); where compiling
    fails (no C++ compiler, an unsupported op), eager from then on for every function, with one warning."""
    import warnings

    if not COMPILE_FAILED:
        compiled = _COMPILED.get(fn.__name__)
        if compiled is None:
            compiled = _COMPILED[fn.__name__] = torch.compile(fn, dynamic=True)
        try:
            return compiled(*args)
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:  # compiling happens at the first call
            COMPILE_FAILED.append(compile_failure(exc))
            _COMPILED.clear()
            warnings.warn(f"int8 --compile: torch.compile failed ({COMPILE_FAILED[0][:200]}); running the int8 "
                          "layers eagerly", stacklevel=3)
    return fn(*args)


class Int8Linear(nn.Module):
    """y = x W^T + b with int8 W (symmetric, one scale per output channel) and int8 x (asymmetric, one scale and
    zero point per token, at run time), int32 accumulation:

        x ≈ s (q - z),  W ≈ diag(w) Q  =>  x W^T ≈ s w (q Q^T - z colsum(Q))

    Asymmetric rows use all 256 levels on one-sided inputs (the GELU output feeding the FFN's second layer): on
    MiniLM's hidden states the worst-token cosine to fp32 is 0.995, where symmetric rows give 0.989.

    `compile`: run `int8_linear` through torch.compile (fusing the element-wise passes around the GEMM; ~1.7x on
    BERT-base here), compiled at the first call and cached on disk by torch; where compiling fails (no C++
    compiler), eager from then on, with one warning."""

    def __init__(self, linear: nn.Linear, compile: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.compile = compile
        packed_int8_available()  # decided now, not while torch.compile traces int8_linear
        weight, scale = quantize_rows(linear.weight.detach().float())  # (N, K) int8, (N, 1)
        self.register_buffer("weight_t", weight.t().contiguous())  # (K, N): _int_mm's layout
        self.register_buffer("weight_scale", scale.reshape(1, -1))  # (1, N)
        # w * colsum(Q): the zero-point correction, per output channel
        self.register_buffer("weight_sum", (weight.sum(dim=1, dtype=torch.int32).float() * scale.reshape(-1)))
        bias = linear.bias.detach().float().clone() if linear.bias is not None else torch.zeros(self.out_features)
        self.register_buffer("bias", bias)

    @property
    def buffers_(self) -> tuple[Tensor, ...]:
        """The arguments of `int8_linear` after the rows."""
        return self.weight_t, self.weight_scale, self.weight_sum, self.bias

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        rows = x.reshape(-1, self.in_features).float()
        y = run_compiled(int8_linear, rows, *self.buffers_) if self.compile else int8_linear(rows, *self.buffers_)
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights per channel, " \
               f"int8 activations per token{', compiled' if self.compile else ''}"


class Int8EncoderLayer(nn.Module):
    """An encoder layer at int8 for `--compile`: attention output + residual + LayerNorm, and the feed-forward
    block (two int8 GEMMs, the activation, residual, LayerNorm) each one compiled function, so the element-wise
    passes between the int8 GEMMs fuse too (they dominate at small hidden sizes). Attention over a packed or masked
    batch runs as in the float layer; a batch without padding runs the whole layer, attention included, as one
    compiled function (`int8_dense_layer`; inside an Int8LayerStack, several layers as one). Same submodule names as
    `EncoderLayer`; inference only."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.num_heads = layer.num_heads
        self.qkv = Int8Linear(layer.qkv, compile=True)
        self.attn_out = Int8Linear(layer.attn_out, compile=True)
        self.attn_norm = layer.attn_norm
        self.ffn_in = Int8Linear(layer.ffn_in, compile=True)
        self.ffn_out = Int8Linear(layer.ffn_out, compile=True)
        self.ffn_norm = layer.ffn_norm
        self.act = layer.act
        self.whole_layer = True  # an unpadded batch runs int8_dense_layer (False: as a padded one; for A/B timing)
        self.eval()

    @property
    def arguments(self) -> tuple[Any, ...]:
        """The arguments of `int8_dense_layer` after `num_heads` and before the activation."""
        return (self.qkv.buffers_, self.attn_out.buffers_, (self.attn_norm.weight, self.attn_norm.bias,
                self.attn_norm.eps), self.ffn_in.buffers_, self.ffn_out.buffers_,
                (self.ffn_norm.weight, self.ffn_norm.bias, self.ffn_norm.eps))

    def forward(self, x: Tensor, layout: Any) -> Tensor:
        if self.training:
            raise RuntimeError("Int8EncoderLayer is for inference (quantize puts the model in eval mode)")
        dtype, x = x.dtype, x.float()
        arguments = self.arguments
        if self.whole_layer and unpadded(layout):
            parts = [run_compiled(int8_dense_layer, rows, count, self.num_heads, *arguments, self.act)
                     for rows, count in sequence_groups(x, layout.batch, self.widest)]
            return (torch.cat(parts) if len(parts) > 1 else parts[0]).to(dtype)
        _, out, attn, first, second, ffn = arguments
        y = layout.attention(self.qkv(x), self.num_heads, 0.0)  # (S, H)
        # the rest is row by row: groups of rows, evened out (no 1-row remainder to compile anew in a request)
        step = evened(x.shape[0], GROUP_BYTES // (4 * self.widest))
        parts = [run_compiled(int8_feed_forward, run_compiled(int8_attention_output, x[i:i + step], y[i:i + step],
                                                              out, attn), first, second, ffn, self.act)
                 for i in range(0, x.shape[0], step)]
        return (torch.cat(parts) if len(parts) > 1 else parts[0]).to(dtype)

    @property
    def widest(self) -> int:
        """The widest activation a token has in this layer (the FFN's inner size, or QKV's 3 x hidden)."""
        return max(self.qkv.out_features, self.ffn_in.out_features)


# The largest activation a compiled call makes at once: glibc's malloc maps every block over 32 MiB afresh and
# unmaps it when freed, so a tensor above that costs a page fault per 4 KiB at each call (and oneDNN's int8 GEMM
# writing 24 MiB ran at a quarter of its speed at 12 MiB here). A batch whose widest activation (tokens x width x
# 4 bytes) passes this runs in groups of whole sequences (or of rows) under it (BERT-base, 32 x 128 tokens: 1.6x
# faster compiled int8 here than in one piece).
GROUP_BYTES = 16 << 20


def evened(total: int, most: int) -> int:
    """The size of each group when `total` items go in as few groups of at most `most` (at least 1) as possible,
    evened out: 32 by at most 10 -> 8 (8, 8, 8, 8, not 10, 10, 10, 2)."""
    most = max(1, min(total, most))
    return -(-total // -(-total // most))


def sequence_groups(x: Tensor, batch: int, width: int) -> list[tuple[Tensor, int]]:
    """(rows, sequences) pieces of an unpadded (B * T, H) batch: whole sequences, each piece's widest activation
    (rows x `width` float32) at most GROUP_BYTES."""
    length = x.shape[0] // batch
    per = evened(batch, GROUP_BYTES // (4 * width * length))
    return [(x[start * length:(start + min(per, batch - start)) * length], min(per, batch - start))
            for start in range(0, batch, per)]


def unpadded(layout: Layout) -> bool:
    """A batch without padding (dense, no mask) whose attention maps are not recorded."""
    return layout.indices is None and layout.bias is None and layout.record is None


# On AMX, compiled int8 layers over a batch without padding run as modules whose int8 weights are constants to
# inductor ("freezing"): it packs each weight once and, with max_autotune, times its own AMX GEMM template against
# oneDNN's at the shape it compiles for, fusing the rescaling (and GELU) into the template's epilogue; no Python op
# between the kernels. Exploratory A/B, one process, against the layers compiled as functions of their weights
# (bertkit.int8_matmul between fused passes): a BERT-base FFN block 1.33x at 128 rows, 1.32x at 4096; whole
# BERT-mini 1 x 128 1.45x, base 1 x 128 1.25x. (Passed as torch.compile options, `freezing` did not take: it is set
# around each call instead.)
FROZEN_OPTIONS = {"max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN",
                  "max_autotune_report_choices_stats": False, "autotune_num_choices_displayed": 0}
# Set around each call of a frozen stack: `freezing`, and multiply-adds contracted to FMAs in the generated C++
# (inductor's default is -ffp-contract=off; GELU's rational erf is a chain of multiply-adds: a compiled GELU over
# 4096 x 1024 took 0.80 ms with FMAs, 1.28 ms without, here).
FROZEN_CONFIG = {"freezing": True, "cpp.enable_floating_point_contract_flag": "fast"}
FROZEN_FAILED: list[str] = []  # why compiling a frozen stack failed in this process (then the function path runs)


def frozen_int8_available() -> bool:
    """Whether compiled int8 layers without padding run as frozen modules (FrozenInt8Layers): AMX int8 here
    (`packed_int8_available`) and no compile failure yet in this process."""
    return packed_int8_available() and not FROZEN_FAILED and not COMPILE_FAILED


def _own_code(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` with a code object of its own: torch.compile keeps compiled graphs per code object, up to
    `recompile_limit` (8) for all callers, so each frozen stack gets its own (2 graphs: one sequence, any number)."""
    import types

    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)


class FrozenInt8Layers(nn.Module):
    """Consecutive Int8EncoderLayers over a batch without padding, their tensors held as parameters (sharing the
    layers' storage) so that torch.compile with freezing treats them as constants; `compiled` runs them. Made again
    when a layer's tensor changed in place or moved (`load_state_dict`), since the compiled graph keeps its own
    packed copies of the weights. Attention's two products run in bf16 where bf16 is native (AMX, which frozen
    stacks need anyway; softmax accumulates in float32 inside the kernel): its output feeds an int8 quantization
    (steps of 1/255 of each row's range) and bf16's own rounding is 1/256 of each value; BERT-mini's compiled
    32 x 128 1.3x, 1 x 128 1.15x faster than with float32 attention (exploratory A/B, here)."""

    def __init__(self, layers: list[Int8EncoderLayer]) -> None:
        super().__init__()
        self.num_heads, self.act = layers[0].num_heads, layers[0].act
        self.sources = [t for layer in layers for t in self.tensors(layer)]
        self.versioned = [t for t in self.sources if not t.is_inference()]
        self.state = self.source_state()
        self.weights = nn.ParameterList([nn.Parameter(t.reshape(-1) if i % 20 in (1, 5, 9, 13) else t,
                                                      requires_grad=False) for i, t in enumerate(self.sources)])
        self.eps = [(layer.attn_norm.eps, layer.ffn_norm.eps) for layer in layers]
        self.attention = torch.bfloat16 if hardware.native_bf16() else torch.float32

        def frozen_layers(x: Tensor, batch: int) -> Tensor:
            return self.run(x, batch)

        self.compiled = torch.compile(_own_code(frozen_layers), dynamic=True, options=FROZEN_OPTIONS)

    @staticmethod
    def tensors(layer: Int8EncoderLayer) -> list[Tensor]:
        """A layer's 20 tensors: qkv, attn_out, ffn_in, ffn_out (weight_t, weight_scale, weight_sum, bias each),
        then the two LayerNorms' weight and bias. Read from the modules' dicts: this runs at every call, and
        nn.Module's attribute lookup made the check ~300 us a BERT-base forward."""
        modules, out = layer._modules, []
        for name in ENCODER_LINEARS:
            b = modules[name]._buffers
            out += (b["weight_t"], b["weight_scale"], b["weight_sum"], b["bias"])
        for name in ("attn_norm", "ffn_norm"):
            p = modules[name]._parameters
            out += (p["weight"], p["bias"])
        return out

    def source_state(self) -> list[int]:
        """Each source's data pointer and version (an inference tensor has none: its pointer only)."""
        return [t.data_ptr() for t in self.sources] + [t._version for t in self.versioned]

    def current(self, layers: list[Int8EncoderLayer]) -> bool:
        """Whether these are still `layers`' tensors, unchanged since this module was made."""
        now = [t for layer in layers for t in self.tensors(layer)]
        return (len(now) == len(self.sources) and all(a is b for a, b in zip(now, self.sources, strict=True))
                and self.source_state() == self.state)

    def run(self, x: Tensor, batch: int) -> Tensor:
        """As int8_dense_stack."""
        w = list(self.weights)
        for i, (attn_eps, ffn_eps) in enumerate(self.eps):
            p = w[20 * i:20 * i + 20]
            x = int8_dense_layer(x, batch, self.num_heads, tuple(p[0:4]), tuple(p[4:8]), (p[16], p[17], attn_eps),
                                 tuple(p[8:12]), tuple(p[12:16]), (p[18], p[19], ffn_eps), self.act, self.attention)
        return x

    def forward(self, x: Tensor, batch: int) -> Tensor:
        """The layers over (B * T, H) rows of `batch` sequences, compiled with freezing (inference only)."""
        import torch._inductor.config as inductor_config

        with torch.no_grad(), inductor_config.patch(FROZEN_CONFIG):
            return self.compiled(x, batch)


class Int8LayerStack(LayerStack):
    """Encoder layers that are all Int8EncoderLayers: a batch without padding runs through them `chunk` layers at a
    time, each run one compiled function (`int8_dense_stack`); a padded one layer by layer (packed attention
    between the fused blocks). Same state-dict names as the LayerStack it replaces."""

    fused = True  # False: layer by layer for every batch (for A/B timing)
    # Layers a call: one compiled function of 4 layers serves every run of 4 (BERT-base: 3 calls), so compiling
    # costs 4 layers, not 12 (BERT-base here: a 12-layer function took 69 s to compile, 4 layers ~25 s, 1 layer ~12 s).
    chunk = 4

    def forward(self, x: Tensor, layout: Layout) -> Tensor:
        if not (self.fused and unpadded(layout)):
            return super().forward(x, layout)
        if self.training:
            raise RuntimeError("Int8EncoderLayer is for inference (quantize puts the model in eval mode)")
        first, dtype, x = self[0], x.dtype, x.float()
        frozen = self.frozen() if frozen_int8_available() else None
        arguments = [layer.arguments for layer in self] if frozen is None else []
        parts = []
        for rows, count in sequence_groups(x, layout.batch, max(layer.widest for layer in self)):
            if frozen is not None:
                try:
                    for stack in frozen:
                        rows = stack(rows, count)
                except torch.OutOfMemoryError:
                    raise
                except Exception as exc:  # compiling happens at the first call
                    return self.frozen_failed(exc, x, layout, dtype)
            else:
                for start in range(0, len(arguments), self.chunk):
                    rows = run_compiled(int8_dense_stack, rows, count, first.num_heads,
                                        arguments[start:start + self.chunk], first.act)
            parts.append(rows)
        return (torch.cat(parts) if len(parts) > 1 else parts[0]).to(dtype)

    def frozen(self) -> list[FrozenInt8Layers]:
        """This stack's frozen compiled modules, `chunk` layers each; made at the first call, again where a
        layer's tensors changed since."""
        layers = list(self)
        chunks = [layers[i:i + self.chunk] for i in range(0, len(layers), self.chunk)]
        made = self.__dict__.get("_frozen")  # not a submodule: no state-dict entries, not moved by .to()
        if made is None or len(made) != len(chunks) or not all(m.current(c) for m, c in zip(made, chunks, strict=True)):
            made = self.__dict__["_frozen"] = [FrozenInt8Layers(c) for c in chunks]
        return made

    def frozen_failed(self, exc: Exception, x: Tensor, layout: Layout, dtype: torch.dtype) -> Tensor:
        """Compiling a frozen stack failed: the function path from then on in this process, with one warning."""
        import warnings

        FROZEN_FAILED.append(compile_failure(exc))
        self.__dict__.pop("_frozen", None)
        warnings.warn(f"int8 --compile: compiling the layers with frozen weights failed ({FROZEN_FAILED[0][:200]}); "
                      "compiling them as functions of their weights instead", stacklevel=3)
        return self.forward(x, layout).to(dtype)


def quantize(model: nn.Module, precision: str = "int8", keep: Iterable[str] = (), compile: bool = False
             ) -> nn.Module:
    """Convert `model` in place for inference at `precision` ("int8", "bf16" or "fp32") and return it.

    int8 replaces the encoder's Linear layers (names ending in qkv, attn_out, ffn_in, ffn_out); `keep`: layer names
    or glob patterns (e.g. "bert.layers.5.*", "*.ffn_out") that stay float32; `compile`: each encoder layer with no
    kept Linear becomes an Int8EncoderLayer (fused through torch.compile), other int8 layers compile alone (see
    Int8Linear). bf16: the model in bf16, its encoder Linears packed for oneDNN on a CPU with native bf16
    (`pack_bf16`). The model is put in eval mode."""
    if precision not in ("int8", "bf16", "fp32"):
        raise ValueError(f"precision must be int8, bf16 or fp32, got {precision!r}")
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
            if compile and isinstance(child, EncoderLayer):
                linears = [f"{full}.{n}" for n in ENCODER_LINEARS]
                if not any(fnmatch.fnmatchcase(n, p) or n == p for n in linears for p in patterns):
                    setattr(module, child_name, Int8EncoderLayer(child))  # the whole layer, fused
                    replaced.add(id(child))
                    converted += len(ENCODER_LINEARS)
                continue  # a layer with a kept Linear: its other Linears one by one, when it is visited
            if not isinstance(child, nn.Linear) or child_name not in ENCODER_LINEARS:
                continue
            if any(fnmatch.fnmatchcase(full, p) or full == p for p in patterns):
                kept.append(full)
                continue
            setattr(module, child_name, Int8Linear(child, compile=compile))
            converted += 1
    if compile:  # stacks of fused layers: an unpadded batch runs through them a few layers a compiled call
        for module in list(model.modules()):
            for child_name, child in list(module.named_children()):
                if type(child) is LayerStack and len(child) and all(isinstance(m, Int8EncoderLayer) for m in child):
                    setattr(module, child_name, Int8LayerStack(child).eval())
    if converted == 0 and not kept:
        raise ValueError(f"{type(model).__name__} has no encoder Linear layers ({', '.join(ENCODER_LINEARS)}) to "
                         "quantize")
    model.precision = "int8"  # type: ignore[assignment]
    model.int8_kept = kept  # type: ignore[assignment]
    return model


# Activations oneDNN applies inside the GEMM (post-ops): model.py's activation -> (attr, algorithm) of
# mkldnn::_linear_pointwise. Others run after the GEMM, as in the float layer.
_FUSED_ACTIVATIONS = {"gelu": ("gelu", "none"), "gelu_new": ("gelu", "tanh"), "gelu_pytorch_tanh": ("gelu", "tanh"),
                      "relu": ("relu", "")}
_PACKED_BF16: list[bool] = []  # whether this process packs bf16 weights for oneDNN (decided once, by a trial)


def packed_bf16_available() -> bool:
    """Whether this CPU runs oneDNN's bf16 GEMM on pre-packed weights (mkldnn::_linear_pointwise, what inductor's
    freezing emits): oneDNN built in, bf16 native here (AMX or AVX512-BF16), and a trial product equal to
    F.linear's. Decided once a process; False where bf16 is emulated (packing would not make it fast)."""
    if not _PACKED_BF16:
        ok = False
        if torch.backends.mkldnn.is_available() and hardware.native_bf16():
            try:
                ok = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
                if ok:
                    gen = torch.Generator().manual_seed(0)
                    x, w, b = (torch.randn(shape, generator=gen).to(torch.bfloat16)
                               for shape in ((3, 40), (24, 40), (24,)))
                    y = torch.ops.mkldnn._linear_pointwise(x, torch.ops.mkldnn._reorder_linear_weight(w, None), b,
                                                           "none", [], "")
                    ok = bool(torch.allclose(y.float(), F.linear(x, w, b).float(), atol=0.1, rtol=0.02))
            except (RuntimeError, AttributeError, NotImplementedError):
                ok = False
        _PACKED_BF16.append(ok)
    return _PACKED_BF16[0]


def _identity(x: Tensor) -> Tensor:
    """An encoder layer's activation once it runs inside ffn_in's GEMM (a Bf16Linear post-op)."""
    return x


class Bf16Linear(nn.Module):
    """y = act(x W^T + b) in bf16 on the CPU, W packed once into oneDNN's blocked layout for this CPU (AMX tiles or
    AVX512-BF16), instead of at every call as F.linear does; `activation` (a name in model._ACTIVATIONS, or None)
    runs as the GEMM's post-op, not as a pass of its own. Same state-dict names and values as the nn.Linear it
    replaces (the packed weight is written out in the plain layout, and a loaded one is packed anew); inference
    only, CPU only."""

    def __init__(self, linear: nn.Linear, activation: str | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().to(torch.bfloat16)
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)  # opaque tensor: not a buffer
        bias = linear.bias.detach() if linear.bias is not None else torch.zeros(self.out_features)
        self.register_buffer("bias", bias.to(torch.bfloat16).clone())
        self.activation = activation
        self.attr, self.algorithm = _FUSED_ACTIVATIONS[activation] if activation else ("none", "")
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            raise RuntimeError("Bf16Linear is for inference (quantize puts the model in eval mode)")
        return torch.ops.mkldnn._linear_pointwise(x.to(torch.bfloat16), self.packed, self.bias, self.attr, [],
                                                  self.algorithm)

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        destination[prefix + "weight"] = self.packed.to_dense()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any],
                              strict: bool, missing_keys: list[str], unexpected_keys: list[str],
                              error_msgs: list[str]) -> None:
        key = prefix + "weight"
        weight = state_dict.get(key)
        if weight is None:
            missing_keys.append(key)
        elif tuple(weight.shape) != (self.out_features, self.in_features):
            error_msgs.append(f"size mismatch for {key}: copying a param with shape {tuple(weight.shape)}, the "
                              f"shape in current model is {(self.out_features, self.in_features)}.")
        else:  # packed anew, as at construction
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().to(torch.bfloat16), None)
        rest = {k: v for k, v in state_dict.items() if k != key}
        super()._load_from_state_dict(rest, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def __deepcopy__(self, memo: dict[int, Any]) -> Bf16Linear:
        plain = nn.Linear(self.in_features, self.out_features, dtype=torch.bfloat16)
        with torch.no_grad():
            plain.weight.copy_(self.packed.to_dense())
            plain.bias.copy_(self.bias)
        return Bf16Linear(plain, self.activation)

    def extra_repr(self) -> str:
        act = f", {self.activation} fused" if self.activation else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, bf16 packed for oneDNN{act}"


def pack_bf16(model: nn.Module) -> int:
    """Swap every encoder Linear of a bf16 `model` on the CPU for a Bf16Linear (weights packed once, the
    activation fused into ffn_in's GEMM) where `packed_bf16_available()`; returns how many were swapped (0: the
    model runs as plain bf16 modules). bench/int8.py measured 1.06-1.36x over plain bf16 on a 2-core Sapphire
    Rapids; the outputs differ from plain bf16's by its rounding (worst-token cosine 0.9999)."""
    if not packed_bf16_available():
        return 0
    names: dict[Any, str] = {}
    for name, fn in _ACTIVATIONS.items():
        names.setdefault(fn, name)  # gelu_new and gelu_pytorch_tanh are one function: the first name
    swapped = 0
    for layer in [m for m in model.modules() if isinstance(m, EncoderLayer)]:
        if any(not isinstance(getattr(layer, n), nn.Linear) or getattr(layer, n).weight.device.type != "cpu"
               or getattr(layer, n).weight.dtype != torch.bfloat16 for n in ENCODER_LINEARS):
            continue
        activation = names.get(layer.act)
        layer.qkv, layer.attn_out, layer.ffn_out = (Bf16Linear(getattr(layer, n)) for n in ("qkv", "attn_out",
                                                                                             "ffn_out"))
        layer.ffn_in = Bf16Linear(layer.ffn_in, activation)
        if activation is not None:
            layer.act = _identity
        swapped += len(ENCODER_LINEARS)
    return swapped


@torch.no_grad()
def warm_up(encoder: nn.Module) -> None:
    """Run an int8 encoder once on a small padded batch and once on an unpadded one (the packed path and the fused
    layer stack), so `--compile`'s one-time compilation (up to a minute cold) happens at start-up, not in the
    first request."""
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


class _CallableModule(types.ModuleType):
    """This module, callable as its main function: `bertkit.quantize(model, "int8")`. The module and the function
    share a name, and importing `bertkit.quantize` binds the module as the package's attribute, so the package's
    `quantize` is this module whichever import ran first; `from bertkit.quantize import ...` is unchanged."""

    def __call__(self, model: nn.Module, precision: str = "int8", keep: Iterable[str] = (), compile: bool = False
                 ) -> nn.Module:
        return quantize(model, precision, keep, compile)


sys.modules[__name__].__class__ = _CallableModule
