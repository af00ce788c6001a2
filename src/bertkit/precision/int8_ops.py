"""int8 as pure functions: per-row quantization, the int8 GEMM, and the encoder's blocks at int8.

Every function here runs eagerly or through torch.compile with the same rounding grid: a row is quantized from its
bounds (`quantize_range`: low maps to -128, high to 127, a fractional zero point), whichever way it runs. What
differs under torch.compile is only the kernel that multiplies (`int8_gemm`: oneDNN's packed GEMM or torch._int_mm,
both exact in int32) and the order of float operations inductor picks, so compiled int8 equals eager int8 up to
float reassociation (tests/test_quantize.py says so with a tight tolerance).

Tensor layouts are named (`Int8Weights`, `Norm`, `Int8LayerWeights`): a compiled function takes them as arguments,
so the weights are inputs of one graph shared by every layer. Shapes: M rows (tokens), K inputs, N outputs.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertkit import hardware
from bertkit.compiled import compile_cache, compiling_options, failure_line
from bertkit.model import dense_attention, gelu_tanh
from bertkit.precision.state import STATE

# M x K x N from which an eager int8 product uses the packed GEMM (where there is one): below it the packed call's
# fixed cost exceeds torch._int_mm's weight reorder (bench/int8.py's GEMM rows). Compiled, the packed GEMM runs at
# every size: a test on the number of rows inside a graph would be a guard, and each batch crossing it would compile
# the layers again.
PACKED_INT8_MIN_WORK = 50_000_000


class Int8Weights(NamedTuple):
    """An int8 Linear's tensors: W ≈ diag(w) Q with Q int8, one scale w per output channel."""

    weight_t: Tensor  # (K, N) int8: Q^T, torch._int_mm's layout
    weight_scale: Tensor  # (1, N) float32: w ((N,) inside a frozen stack)
    weight_sum: Tensor  # (N,) float32: w * colsum(Q), the zero-point correction
    bias: Tensor  # (N,) float32


class Norm(NamedTuple):
    """A LayerNorm's arguments."""

    weight: Tensor  # (H,)
    bias: Tensor  # (H,)
    eps: float


class Int8LayerWeights(NamedTuple):
    """An encoder layer at int8: its four Linears and two LayerNorms, in the order the layer uses them."""

    qkv: Int8Weights
    attn_out: Int8Weights
    attn_norm: Norm
    ffn_in: Int8Weights
    ffn_out: Int8Weights
    ffn_norm: Norm


def quantize_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric int8 per row (a weight's output channels): (q, scale) with x ≈ q * scale, scale (rows, 1)."""
    scale = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12).div_(127.0)
    return torch.round(x / scale).clamp_(-127, 127).to(torch.int8), scale


def quantize_range(values: Tensor, low: Tensor, high: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Asymmetric int8 per row for rows whose values lie within (M, 1) bounds [low, high]: (q, scale, zero), each
    (M, 1) but q, with values ≈ scale (q - zero). low maps to -128 and high to 127, so the zero point is fractional
    (the error is at most half a step) and q needs no clamp. `values - low` first: exact where |low| >> the range."""
    inverse = 255.0 / (high - low).clamp(min=1e-12)
    q = (values - low).mul_(inverse).sub_(128.0).round_().to(torch.int8)
    return q, inverse.reciprocal(), -128.0 - low * inverse


def row_bounds(rows: Tensor) -> tuple[Tensor, Tensor]:
    """Each (M, K) row's (min, max), (M, 1) each: two reductions, since torch.aminmax over the last dimension runs
    several times slower than amin and amax apart on a CPU (bench/int8_ops.py)."""
    return rows.amin(dim=-1, keepdim=True), rows.amax(dim=-1, keepdim=True)


def quantize_tokens(rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """`quantize_range` of (M, K) rows over each row's own bounds: per-token int8, so an outlier token does not
    flatten the others."""
    return quantize_range(rows, *row_bounds(rows))


def gelu_rational(x: Tensor) -> Tensor:
    """Exact (erf) GELU, x Φ(x), with erf as a rational function, the form compiled int8 layers use: inside a fused
    kernel it is a chain of multiply-adds and one division an element, cheaper than ATen's vectorized erf. It differs
    from F.gelu by under 2e-6 (float32 GELU's own error against float64; tested).

    erf(z) ≈ z P(z²) / Q(z²) on z clamped to [-4, 4] (float32 erf is ±1 beyond): the rational approximation of
    Eigen's and XLA's float erf. The coefficients are literals on purpose: torch.compile(dynamic=True) turns floats
    read from a global into run-time inputs of the kernel."""
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


# The form of an activation that compiled layers evaluate (the same function, written for a fused kernel).
COMPILED_FORM: dict[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]] = {F.gelu: gelu_rational}

# Each activation's global minimum and (rounded up) where it is reached: act is increasing from there on, so a
# row's smallest activation is act(its smallest input) where that input is at least the second number, and never
# below the first.
ACTIVATION_MINIMA: dict[Callable[[Tensor], Tensor], tuple[float, float]] = {
    F.gelu: (-0.1699713, -0.7517),  # exact GELU: -0.16997121 at -0.75179
    gelu_rational: (-0.1699713, -0.7517),
    gelu_tanh: (-0.1700408, -0.7524),  # tanh GELU: -0.17004075 at -0.75246
    F.relu: (0.0, 0.0),
}


def quantize_activation(rows: Tensor, act: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """`quantize_range(act(rows), ...)` with the bounds taken from the rows before the activation, for an activation
    in ACTIVATION_MINIMA (else the bounds of act(rows)): the largest value is act(max) (at least 0), the smallest
    act(min) where min is past the activation's own minimum (exactly the row's, since act is increasing there), else
    that minimum (BERT's FFN rows pass near it: the step is then the row's own within 0.1%, tested). A fused kernel
    then evaluates the activation once an element, not once for the row's range and again to quantize it."""
    if act not in ACTIVATION_MINIMA:
        return quantize_tokens(act(rows))
    floor, start = ACTIVATION_MINIMA[act]
    low, high = row_bounds(rows)
    low = torch.where(low >= start, act(low), floor)
    return quantize_range(act(rows), low, act(high).clamp(min=0))


def packed_int8_available() -> bool:
    """Whether int8 products run on oneDNN's GEMM with pre-packed weights (onednn::qlinear_pointwise, what
    inductor's freezing makes of torch._int_mm): oneDNN built in, AMX here, and a trial product equal to
    torch._int_mm's. Decided once a process (`STATE.packed_int8`); without AMX torch._int_mm is as fast
    (bench/int8.py's GEMM rows)."""
    if STATE.packed_int8 is None:
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
        STATE.packed_int8 = ok
    return STATE.packed_int8


def _int8_pack(weight_t: Tensor) -> Tensor:
    """The oneDNN-packed twin of an int8 (K, N) weight, made once per weight tensor, again when its data moved or
    changed in place (its version, e.g. load_state_dict; a write through `.data` or numpy bypasses the version, as
    for autograd, and an inference tensor has none: both are packed once), and dropped with the tensor."""
    packs, key = STATE.int8_packs, id(weight_t)
    state = (weight_t.data_ptr(), 0 if weight_t.is_inference() else weight_t._version)
    entry = packs.get(key)
    if entry is None or entry[0]() is not weight_t:  # a tensor not seen before
        weakref.finalize(weight_t, packs.pop, key, None)
        entry = None
    if entry is None or entry[1:3] != state:
        entry = (weakref.ref(weight_t), *state, torch.ops.onednn.qlinear_prepack(weight_t.t().contiguous(), None))
        packs[key] = entry
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


def int8_gemm(q: Tensor, scale: Tensor, weight_t: Tensor, weight_scale: Tensor) -> Tensor | None:
    """(M, K) int8 rows with (M, 1) scales times an int8 weight -> (M, N) float32 s w (q Q^T), accumulated exactly in
    int32, by a kernel other than plain torch._int_mm; None where plain torch._int_mm is the kernel (then
    `int8_product` rescales in place). The one choice of kernel, which changes no number (but the order of float
    products):
    - a frozen stack's weight (an nn.Parameter, a constant to inductor): the form inductor's freezing pass
      recognizes, which packs the weight once and puts in its own AMX GEMM with both products in its epilogue;
    - compiled, or a large eager product, where the packed GEMM is available: `int8_matmul`;
    - else None."""
    if isinstance(weight_t, nn.Parameter):
        return torch._int_mm(q, weight_t).to(torch.float32) * scale * weight_scale
    if STATE.packed_int8 and (torch.compiler.is_compiling()
                              or q.shape[0] * q.shape[1] * weight_t.shape[1] >= PACKED_INT8_MIN_WORK):
        return int8_matmul(q, weight_t, weight_scale).mul_(scale)
    return None


def int8_product(quantized: tuple[Tensor, Tensor, Tensor], weights: Int8Weights) -> Tensor:
    """Quantized (M, K) rows (q, scale, zero) times an int8 Linear -> (M, N):
    x ≈ s (q - z), W ≈ diag(w) Q  =>  x W^T + b ≈ s (w (q Q^T) - z w colsum(Q)) + b.
    On torch._int_mm every pass after the product runs in place on its output (an out-of-place rank-one update
    allocates and writes a second (M, N) array, slower than these four passes: bench/int8_ops.py)."""
    q, scale, zero = quantized
    y = int8_gemm(q, scale, weights.weight_t, weights.weight_scale)
    if y is not None:
        return torch.addr(y, (zero * scale).reshape(-1), weights.weight_sum, alpha=-1).add_(weights.bias)
    y = torch._int_mm(q, weights.weight_t).float().mul_(weights.weight_scale)
    return y.addr_(zero.reshape(-1), weights.weight_sum, alpha=-1).mul_(scale).add_(weights.bias)


def int8_linear(rows: Tensor, weights: Int8Weights) -> Tensor:
    """(M, K) float32 rows -> (M, N): per-token asymmetric int8 rows times the int8 weight, rescaled (a pure
    function, so torch.compile fuses the quantization before the GEMM and the rescaling after it)."""
    return int8_product(quantize_tokens(rows), weights)


def int8_attention_output(x: Tensor, y: Tensor, out: Int8Weights, norm: Norm) -> Tensor:
    """LayerNorm(x + attn_out(y)): an encoder layer's attention output, residual and norm in one pure function."""
    return F.layer_norm(x + int8_linear(y, out), x.shape[-1:], norm.weight, norm.bias, norm.eps)


def int8_feed_forward(x: Tensor, first: Int8Weights, second: Int8Weights, norm: Norm,
                      act: Callable[[Tensor], Tensor]) -> Tensor:
    """LayerNorm(x + ffn_out(act(ffn_in(x)))): an encoder layer's feed-forward block at int8, one pure function; the
    activation's output quantized by `quantize_activation`."""
    h = int8_linear(x, first)
    return F.layer_norm(x + int8_product(quantize_activation(h, act), second), x.shape[-1:], norm.weight,
                        norm.bias, norm.eps)


def int8_dense_layer(x: Tensor, batch: int, num_heads: int, weights: Int8LayerWeights,
                     act: Callable[[Tensor], Tensor], attention: torch.dtype = torch.float32) -> Tensor:
    """A whole encoder layer at int8 over a batch without padding ((B * T, H) rows, B = `batch`), attention
    included: compiled, the QKV rescaling fuses with the head split and the attention output's transpose with the
    next quantization. `attention`: the dtype of attention's two products (softmax accumulates in float32)."""
    y = dense_attention(int8_linear(x, weights.qkv).to(attention), batch, num_heads).float()
    x = int8_attention_output(x, y, weights.attn_out, weights.attn_norm)
    return int8_feed_forward(x, weights.ffn_in, weights.ffn_out, weights.ffn_norm, act)


def int8_dense_stack(x: Tensor, batch: int, num_heads: int, layers: Sequence[Int8LayerWeights],
                     act: Callable[[Tensor], Tensor]) -> Tensor:
    """Consecutive encoder layers at int8 over a batch without padding, as one function: compiled, one call for
    several layers instead of one a layer, and each layer's last LayerNorm fuses with the next one's quantization."""
    for weights in layers:
        x = int8_dense_layer(x, batch, num_heads, weights, act)
    return x


def run_int8(fn: Callable[..., Tensor], *args: Any, act: Callable[[Tensor], Tensor] | None = None,
             compile: bool = False) -> Tensor:
    """`fn(*args)` (with `act` appended where given), through torch.compile with `compile`: compiled at its first
    call (cached on disk: `compiled.compile_cache`), the activation in its compiled form (COMPILED_FORM). Where
    compiling fails (no C++ compiler, an unsupported op), every function runs eagerly from then on in this process,
    with one warning."""
    if compile and STATE.compile_failed is None:
        compiled = STATE.compiled.get(fn.__name__)
        if compiled is None:
            compile_cache()
            compiled = STATE.compiled[fn.__name__] = torch.compile(fn, dynamic=True)
        try:
            with compiling_options():
                return compiled(*args) if act is None else compiled(*args, COMPILED_FORM.get(act, act))
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:  # compiling happens at the first call
            STATE.compile_failed = failure_line(exc)
            STATE.compiled.clear()
            warnings.warn(f"int8 --compile: torch.compile failed ({STATE.compile_failed[:200]}); running the int8 "
                          "layers eagerly", stacklevel=3)
    return fn(*args) if act is None else fn(*args, act)
