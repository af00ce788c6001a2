"""int8 modules: an encoder Linear (`Int8Linear`), a whole encoder layer (`Int8EncoderLayer`) and the layer stack
(`Int8LayerStack`), each running the pure functions of `int8_ops`, eagerly or through torch.compile (`compile`).

Three ways an int8 encoder runs, each kept because it is the fastest somewhere (bench/int8.py):
- eagerly: the functions one op at a time;
- compiled: the same functions through torch.compile, the element-wise passes around each GEMM fused; a batch
  without padding runs a few whole layers (attention included) a compiled call;
- frozen (AMX only, compiled): a batch without padding runs through `FrozenInt8Layers`, the weights constants to
  inductor, which packs them and times its own AMX GEMM against oneDNN's.
A batch with padding runs layer by layer (attention over the packed tokens between the fused blocks).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from bertkit import hardware
from bertkit.compiled import compile_cache, compiling_options, failure_line
from bertkit.model import LayerStack, Layout
from bertkit.precision.int8_ops import (
    COMPILED_FORM,
    Int8LayerWeights,
    Int8Weights,
    Norm,
    int8_attention_output,
    int8_dense_layer,
    int8_dense_stack,
    int8_feed_forward,
    int8_linear,
    packed_int8_available,
    quantize_rows,
    run_int8,
)
from bertkit.precision.state import STATE

# The largest activation one call makes at once: glibc's malloc maps every block over 32 MiB afresh and unmaps it
# when freed (a page fault per 4 KiB at each call). A batch whose widest activation (tokens x width x 4 bytes)
# passes this runs in groups of whole sequences (or of rows) under it.
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


def _joined(parts: list[Tensor]) -> Tensor:
    return torch.cat(parts) if len(parts) > 1 else parts[0]


class Int8Linear(nn.Module):
    """y = x W^T + b with int8 W (symmetric, one scale per output channel) and int8 x (asymmetric, one scale and
    fractional zero point per token, at run time), int32 accumulation:

        x ≈ s (q - z),  W ≈ diag(w) Q  =>  x W^T ≈ s w (q Q^T - z colsum(Q))

    Asymmetric rows use all 256 levels on one-sided inputs (the GELU output feeding the FFN's second layer).
    `compile`: `int8_linear` through torch.compile (`run_int8`)."""

    def __init__(self, linear: nn.Linear, compile: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.compile = compile
        packed_int8_available()  # decided now, not while torch.compile traces int8_linear
        weight, scale = quantize_rows(linear.weight.detach().float())  # (N, K) int8, (N, 1)
        self.register_buffer("weight_t", weight.t().contiguous())  # (K, N): _int_mm's layout
        self.register_buffer("weight_scale", scale.reshape(1, -1))  # (1, N)
        self.register_buffer("weight_sum", (weight.sum(dim=1, dtype=torch.int32).float() * scale.reshape(-1)))
        bias = linear.bias.detach().float().clone() if linear.bias is not None else torch.zeros(self.out_features)
        self.register_buffer("bias", bias)

    @property
    def weights(self) -> Int8Weights:
        """This layer's tensors (read from the buffer dict: this runs at every call)."""
        b = self._buffers
        return Int8Weights(b["weight_t"], b["weight_scale"], b["weight_sum"], b["bias"])

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        rows = x.reshape(-1, self.in_features).float()
        y = run_int8(int8_linear, rows, self.weights, compile=self.compile)
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights per channel, " \
               f"int8 activations per token{', compiled' if self.compile else ''}"


class Int8EncoderLayer(nn.Module):
    """An encoder layer at int8 (same submodule names as `EncoderLayer`; inference only): QKV, attention over the
    batch's layout, then the attention output + residual + LayerNorm and the feed-forward block (two int8 GEMMs,
    the activation, residual, LayerNorm) as two pure functions, compiled with `compile` (the element-wise passes
    between the GEMMs fuse). A batch without padding runs whole layers through the Int8LayerStack around it."""

    def __init__(self, layer: nn.Module, compile: bool = False) -> None:
        super().__init__()
        self.num_heads = layer.num_heads
        self.compile = compile
        self.qkv = Int8Linear(layer.qkv, compile=compile)
        self.attn_out = Int8Linear(layer.attn_out, compile=compile)
        self.attn_norm = layer.attn_norm
        self.ffn_in = Int8Linear(layer.ffn_in, compile=compile)
        self.ffn_out = Int8Linear(layer.ffn_out, compile=compile)
        self.ffn_norm = layer.ffn_norm
        self.act = layer.act
        self.eval()

    @property
    def weights(self) -> Int8LayerWeights:
        """The layer's tensors by name (read from the module dicts: this runs at every call)."""
        m = self._modules

        def norm(name: str) -> Norm:
            module = m[name]
            return Norm(module._parameters["weight"], module._parameters["bias"], module.eps)

        return Int8LayerWeights(m["qkv"].weights, m["attn_out"].weights, norm("attn_norm"), m["ffn_in"].weights,
                                m["ffn_out"].weights, norm("ffn_norm"))

    @property
    def widest(self) -> int:
        """The widest activation a token has in this layer (the FFN's inner size, or QKV's 3 x hidden)."""
        return max(self.qkv.out_features, self.ffn_in.out_features)

    def forward(self, x: Tensor, layout: Layout) -> Tensor:
        return self._layer(x, layout, first_only=False)

    def forward_first(self, x: Tensor, layout: Layout) -> Tensor:
        """(S, H) -> (B, H): the layer at each sequence's first token only (as `EncoderLayer.forward_first`)."""
        return self._layer(x, layout, first_only=True)

    def _layer(self, x: Tensor, layout: Layout, first_only: bool) -> Tensor:
        if self.training:
            raise RuntimeError("Int8EncoderLayer is for inference (quantize puts the model in eval mode)")
        dtype, x = x.dtype, x.float()
        w, compile = self.weights, self.compile
        qkv = self.qkv(x)
        if first_only:  # (B, H): the [CLS] rows and their attention output
            x, y = layout.first_tokens(x), layout.first_token_attention(qkv, self.num_heads, 0.0)
        else:
            y = layout.attention(qkv, self.num_heads, 0.0)  # (S, H)
        # the rest is row by row: groups of rows, evened out (no 1-row remainder to compile anew in a request)
        step = evened(x.shape[0], GROUP_BYTES // (4 * self.widest))
        parts = []
        for i in range(0, x.shape[0], step):
            h = run_int8(int8_attention_output, x[i:i + step], y[i:i + step], w.attn_out, w.attn_norm,
                         compile=compile)
            parts.append(run_int8(int8_feed_forward, h, w.ffn_in, w.ffn_out, w.ffn_norm, act=self.act,
                                  compile=compile))
        return _joined(parts).to(dtype)


def _flat(weights: Int8LayerWeights) -> Iterator[tuple[str, Tensor]]:
    """(field, tensor) of a layer's tensors in Int8LayerWeights order (the eps floats left out)."""
    for part in weights:
        for name, value in zip(part._fields, part, strict=True):
            if isinstance(value, Tensor):
                yield name, value


def _unflat(tensors: Iterator[Tensor], eps: tuple[float, float]) -> Int8LayerWeights:
    """The inverse of `_flat`: a layer's tensors back into their named places."""
    def linear() -> Int8Weights:
        return Int8Weights(*(next(tensors) for _ in Int8Weights._fields))

    def norm(epsilon: float) -> Norm:
        return Norm(next(tensors), next(tensors), epsilon)

    return Int8LayerWeights(linear(), linear(), norm(eps[0]), linear(), linear(), norm(eps[1]))


# Frozen stacks compile with max_autotune (inductor times its AMX GEMM template against oneDNN's at the compiled
# shape) and, around each call, `freezing` (weights as constants) and multiply-adds contracted to FMAs in the
# generated C++ (GELU's rational erf is a chain of them). Passed as torch.compile options, `freezing` does not take.
FROZEN_OPTIONS = {"max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN",
                  "max_autotune_report_choices_stats": False, "autotune_num_choices_displayed": 0}
FROZEN_CONFIG = {"freezing": True, "cpp.enable_floating_point_contract_flag": "fast"}


def frozen_int8_available() -> bool:
    """Whether compiled int8 layers without padding run as frozen modules: AMX int8 here (`packed_int8_available`)
    and no compile failure yet in this process."""
    return packed_int8_available() and STATE.frozen_failed is None and STATE.compile_failed is None


def _own_code(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` with a code object of its own: torch.compile keeps compiled graphs per code object, up to
    `recompile_limit` for all callers, so each frozen stack gets its own (2 graphs: one sequence, any number)."""
    import types

    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)


class FrozenInt8Layers(nn.Module):
    """Consecutive Int8EncoderLayers over a batch without padding, their tensors held as parameters (sharing the
    layers' storage) so that torch.compile with freezing treats them as constants; `compiled` runs them. Made again
    when a layer's tensor changed in place or moved (`load_state_dict`), since the compiled graph keeps its own
    packed copies of the weights. Attention's two products run in bf16 where bf16 is native (AMX, which frozen
    stacks need anyway): its output feeds an int8 quantization in steps of 1/255 of each row's range, and bf16's own
    rounding is 1/256 of each value."""

    def __init__(self, layers: list[Int8EncoderLayer]) -> None:
        super().__init__()
        self.num_heads, self.act = layers[0].num_heads, COMPILED_FORM.get(layers[0].act, layers[0].act)
        named = [pair for layer in layers for pair in _flat(layer.weights)]
        self.sources = [t for _, t in named]
        self.versioned = [t for t in self.sources if not t.is_inference()]
        self.state = self.source_state()
        # weight scales 1-D: the form of inductor's int8 GEMM pattern
        self.weights = nn.ParameterList([nn.Parameter(t.reshape(-1) if name == "weight_scale" else t,
                                                      requires_grad=False) for name, t in named])
        self.eps = [(layer.attn_norm.eps, layer.ffn_norm.eps) for layer in layers]
        self.attention = torch.bfloat16 if hardware.native_bf16() else torch.float32

        def frozen_layers(x: Tensor, batch: int) -> Tensor:
            return self.run(x, batch)

        compile_cache()
        self.compiled = torch.compile(_own_code(frozen_layers), dynamic=True, options=FROZEN_OPTIONS)

    def source_state(self) -> list[int]:
        """Each source's data pointer and version (an inference tensor has none: its pointer only)."""
        return [t.data_ptr() for t in self.sources] + [t._version for t in self.versioned]

    def current(self, layers: list[Int8EncoderLayer]) -> bool:
        """Whether these are still `layers`' tensors, unchanged since this module was made."""
        now = [t for layer in layers for _, t in _flat(layer.weights)]
        return (len(now) == len(self.sources) and all(a is b for a, b in zip(now, self.sources, strict=True))
                and self.source_state() == self.state)

    def run(self, x: Tensor, batch: int) -> Tensor:
        """As int8_dense_stack, over the parameters."""
        tensors = iter(list(self.weights))
        for eps in self.eps:
            x = int8_dense_layer(x, batch, self.num_heads, _unflat(tensors, eps), self.act, self.attention)
        return x

    def forward(self, x: Tensor, batch: int) -> Tensor:
        """The layers over (B * T, H) rows of `batch` sequences, compiled with freezing (inference only)."""
        import torch._inductor.config as inductor_config

        with torch.no_grad(), inductor_config.patch(FROZEN_CONFIG), compiling_options():
            return self.compiled(x, batch)


class Int8LayerStack(LayerStack):
    """Encoder layers of which some (or all) are Int8EncoderLayers. A batch without padding runs each run of
    consecutive Int8EncoderLayers `chunk` layers a call (`int8_dense_stack`, compiled with `compile`; frozen where
    `frozen_int8_available()`), in groups of whole sequences; a float layer between them (one with a Linear kept in
    float32) runs as itself. A padded batch runs layer by layer. Same state-dict names as the LayerStack it
    replaces."""

    # Layers a compiled call: one compiled function of 4 layers serves every run of 4 (BERT-base: 3 calls), so
    # compiling costs 4 layers' graph, not 12.
    chunk = 4

    def __init__(self, layers: LayerStack, compile: bool = False) -> None:
        super().__init__(layers)
        self.compile = compile

    def chunks(self, layers: list[nn.Module] | None = None) -> list[list[nn.Module]]:
        """The layers (all of them by default) in calls: runs of Int8EncoderLayers cut every `chunk` layers, any
        other layer alone."""
        out: list[list[nn.Module]] = []
        for layer in self if layers is None else layers:
            if isinstance(layer, Int8EncoderLayer) and out and isinstance(out[-1][0], Int8EncoderLayer) \
                    and len(out[-1]) < self.chunk:
                out[-1].append(layer)
            else:
                out.append([layer])
        return out

    def forward(self, x: Tensor, layout: Layout, first_only: bool = False) -> Tensor:
        if not unpadded(layout):
            return super().forward(x, layout, first_only)
        if self.training:
            raise RuntimeError("Int8EncoderLayer is for inference (quantize puts the model in eval mode)")
        dtype, start = x.dtype, x
        x = x.float()
        frozen = self.frozen() if self.compile and frozen_int8_available() else None
        # the last layer at the first tokens only, after the others (not where frozen stacks hold every layer)
        last = self[len(self) - 1] if first_only and frozen is None else None
        chunks = self.chunks(list(self)[:-1]) if last is not None else self.chunks()
        for i, layers in enumerate(chunks):
            first = layers[0]
            if not isinstance(first, Int8EncoderLayer):
                x = first(x, layout).float()
                continue
            parts = []
            for rows, count in sequence_groups(x, layout.batch, max(layer.widest for layer in layers)):
                if frozen is not None:
                    try:
                        rows = frozen[i](rows, count)
                    except torch.OutOfMemoryError:
                        raise
                    except Exception as exc:  # compiling happens at the first call
                        return self.frozen_failed(exc, start, layout)
                else:
                    weights = [layer.weights for layer in layers]
                    rows = run_int8(int8_dense_stack, rows, count, first.num_heads, weights, act=first.act,
                                    compile=self.compile)
                parts.append(rows)
            x = _joined(parts)
        if last is not None:
            x, layout.first_only = last.forward_first(x, layout).float(), True
        return x.to(dtype)

    def frozen(self) -> list[FrozenInt8Layers | None]:
        """A frozen compiled module per chunk of Int8EncoderLayers (None for a float layer); made at the first call,
        again where a layer's tensors changed since."""
        chunks = self.chunks()
        made = self.__dict__.get("_frozen")  # not a submodule: no state-dict entries, not moved by .to()
        if made is None or len(made) != len(chunks) or not all(
                (m is None) == (not isinstance(c[0], Int8EncoderLayer)) and (m is None or m.current(c))
                for m, c in zip(made, chunks, strict=True)):
            made = self.__dict__["_frozen"] = [FrozenInt8Layers(c) if isinstance(c[0], Int8EncoderLayer) else None
                                               for c in chunks]
        return made

    def frozen_failed(self, exc: Exception, x: Tensor, layout: Layout) -> Tensor:
        """Compiling a frozen stack failed: the function path from then on in this process, with one warning."""
        STATE.frozen_failed = failure_line(exc)
        self.__dict__.pop("_frozen", None)
        warnings.warn(f"int8 --compile: compiling the layers with frozen weights failed ({STATE.frozen_failed[:200]});"
                      " compiling them as functions of their weights instead", stacklevel=3)
        return self.forward(x, layout)
