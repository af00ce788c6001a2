"""bf16 inference on the CPU: each encoder Linear's weight packed once into oneDNN's layout for this CPU (AMX tiles
or AVX512-BF16), the activation run inside ffn_in's GEMM (`Bf16Linear`, `pack_bf16`), where bf16 is native."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertkit import hardware
from bertkit.model import _ACTIVATIONS, ENCODER_LINEARS, EncoderLayer
from bertkit.precision.state import STATE

# Activations oneDNN applies inside the GEMM (post-ops): model.py's activation -> (attr, algorithm) of
# mkldnn::_linear_pointwise. Others run after the GEMM, as in the float layer.
_FUSED_ACTIVATIONS = {"gelu": ("gelu", "none"), "gelu_new": ("gelu", "tanh"), "gelu_pytorch_tanh": ("gelu", "tanh"),
                      "relu": ("relu", "")}


def packed_bf16_available() -> bool:
    """Whether this CPU runs oneDNN's bf16 GEMM on pre-packed weights (mkldnn::_linear_pointwise, what inductor's
    freezing emits): oneDNN built in, bf16 native here (AMX or AVX512-BF16), and a trial product equal to
    F.linear's. Decided once a process (`STATE.packed_bf16`); False where bf16 is emulated (packing would not make
    it fast)."""
    if STATE.packed_bf16 is None:
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
        STATE.packed_bf16 = ok
    return STATE.packed_bf16


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
    model runs as plain bf16 modules). The outputs differ from plain bf16's by its rounding (tested)."""
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
