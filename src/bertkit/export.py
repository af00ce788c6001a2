"""ONNX export of a bertkit encoder (dynamic batch and sequence axes) for onnxruntime."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from bertkit.errors import BertkitError
from bertkit.fileio import atomic_write
from bertkit.model import BertModel

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


class _Traceable(nn.Module):
    """Wraps a model for export: the masked dense path (a fixed graph), outputs as a plain tuple."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).float().eval()
        encoder = self.model if isinstance(self.model, BertModel) else self.model.bert
        encoder.unpad = False  # packing is data-dependent control flow; ONNX needs one graph for every input

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.model(input_ids, attention_mask, token_type_ids))


def export_onnx(model: nn.Module, path: str | Path, opset: int = 17) -> Path:
    """Write `model` as ONNX with inputs (input_ids, attention_mask, token_type_ids), all int64 (B, T)."""
    wrapper = _Traceable(model)
    # A batch with padding, so the traced graph keeps the attention mask for every input.
    ids = torch.tensor([[2, 5, 6, 3], [2, 7, 3, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    types = torch.zeros_like(ids)
    with torch.no_grad():
        names = [f"output_{i}" for i in range(len(wrapper(ids, mask, types)))]
    if isinstance(wrapper.model, BertModel):
        names = ["last_hidden_state", "pooler_output"]
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES}
    axes.update({name: {0: "batch"} for name in names})
    for name in names[:1]:
        axes[name] = {0: "batch", 1: "sequence"}

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Python-side input checks, which are not exported
            try:
                torch.onnx.export(wrapper, (ids, mask, types), str(tmp), input_names=list(INPUT_NAMES),
                                  output_names=names, dynamic_axes=axes, opset_version=opset, dynamo=False)
            except Exception as exc:  # pragma: no cover - depends on the installed exporter
                raise BertkitError(f"ONNX export failed: {type(exc).__name__}: {exc}") from exc

    return atomic_write(Path(path), write)
