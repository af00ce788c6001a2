"""Taps on an encoder: what its layers compute inside one forward (the embeddings' output, each layer's output, each
layer's fused QKV projections) recorded by forward hooks and handed back padded, for the intermediate-layer losses.

Shape legend: B batch, T tokens, S rows the layers work on (see bertkit.model), H hidden.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from bertkit.model import EncoderLayer, Layout


class Taps:
    """Forward hooks on `encoder` (a BertModel whose layers are float `EncoderLayer`s: int8 layers fuse their inner
    steps and expose none). The recordings are the state of the last forward: `_start` resets them when the layer
    stack begins, so a Taps serves one forward at a time and its reader takes them before the next one."""

    def __init__(self, encoder: nn.Module) -> None:
        if not all(isinstance(layer, EncoderLayer) for layer in encoder.layers):
            raise ValueError("intermediate layers can be read from float (fp32 or bf16) encoder layers only")
        self.encoder = encoder
        self.narrowed = getattr(encoder, "narrow_last_layer", True)  # put back by `remove`
        encoder.narrow_last_layer = False  # every layer's every row, the last one's too
        self.layout: Layout | None = None
        self.rows: list[Tensor] = []  # (S, H): the embeddings' output, then each layer's
        self.qkv: list[Tensor] = []  # (S, 3H) per layer
        self.handles = [encoder.layers.register_forward_pre_hook(self._start)]
        for layer in encoder.layers:
            self.handles.append(layer.register_forward_hook(self._layer))
            self.handles.append(layer.qkv.register_forward_hook(self._qkv))

    def _start(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        x, layout = args
        self.layout, self.rows, self.qkv = layout, [x], []

    def _layer(self, module: nn.Module, args: tuple[Any, ...], output: Tensor) -> None:
        self.rows.append(output)

    def _qkv(self, module: nn.Module, args: tuple[Any, ...], output: Tensor) -> None:
        self.qkv.append(output)

    def hidden(self) -> list[Tensor]:
        """(B, T, H) per layer, the embeddings' output first; zeros at padding."""
        assert self.layout is not None, "no forward recorded"
        return [self.layout.pad(x) for x in self.rows]

    def projections(self) -> list[Tensor]:
        """(B, T, 3H) fused QKV projections per layer; zeros at padding."""
        assert self.layout is not None, "no forward recorded"
        return [self.layout.pad(x) for x in self.qkv]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        self.encoder.narrow_last_layer = self.narrowed
