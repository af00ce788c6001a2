"""ONNX export of a bertkit encoder (dynamic batch and sequence axes) for onnxruntime."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

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


class OnnxEncoder(nn.Module):
    """A drop-in for a task model's `.bert` that runs the encoder in onnxruntime; heads stay in PyTorch.

    Exposes what heads use: forward() -> BertOutput, encode()/pool() (dense layout), and the word embeddings
    (the MLM decoder is tied to them).
    """

    def __init__(self, path: str | Path, original: BertModel, threads: int | None = None) -> None:
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BertkitError("onnxruntime is not installed (pip install onnxruntime)") from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.config = original.config
        self.embeddings = original.embeddings
        self._pooled: Tensor | None = None

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None) -> Any:
        from bertkit.model import BertOutput, check_inputs

        check_inputs(self.config, input_ids, attention_mask, token_type_ids)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        types = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        hidden, pooled = self.session.run(None, {"input_ids": input_ids.long().numpy(),
                                                 "attention_mask": mask.long().numpy(),
                                                 "token_type_ids": types.long().numpy()})
        return BertOutput(torch.from_numpy(hidden), torch.from_numpy(pooled))

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None,
               token_type_ids: Tensor | None = None) -> tuple[Tensor, Any]:
        from bertkit.model import Layout

        out = self.forward(input_ids, attention_mask, token_type_ids)
        self._pooled = out.pooler_output
        B, T = input_ids.shape
        return out.last_hidden_state.reshape(B * T, -1), Layout(None, B, T, torch.float32)

    def pool(self, x: Tensor, layout: Any) -> Tensor:
        return self._pooled
