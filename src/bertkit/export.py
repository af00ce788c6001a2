"""ONNX export of a bertkit encoder (dynamic batch and sequence axes) for onnxruntime."""

from __future__ import annotations

import copy
import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bertkit.errors import BertkitError, CheckpointError
from bertkit.fileio import atomic_write
from bertkit.model import BertModel

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


class _Traceable(nn.Module):
    """Wraps a model for export: the masked dense path (a fixed graph), outputs as a plain tuple."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).float().cpu().eval()  # traced on the CPU: the file is the same
        encoder = self.model if isinstance(self.model, BertModel) else self.model.bert
        encoder.unpad = False  # packing is data-dependent control flow; ONNX needs one graph for every input

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.model(input_ids, attention_mask, token_type_ids))


FINGERPRINT_KEY = "bertkit_fingerprint"
# The config fields that change the encoder's outputs; dropout and initialisation do not, so editing them does not
# orphan an exported file.
_FINGERPRINT_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                       "hidden_act", "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "pad_token_id")


def fingerprint(encoder: nn.Module) -> str:
    """sha256 of an encoder's shape-defining config fields and its float32 weights (transformers' names, sorted):
    what binds an ONNX file to the checkpoint it was exported from."""
    from bertkit.checkpoint import to_hf_state_dict

    digest = hashlib.sha256()
    config = encoder.config
    digest.update(json.dumps({k: getattr(config, k) for k in _FINGERPRINT_FIELDS}, sort_keys=True).encode())
    for name, tensor in sorted(to_hf_state_dict(encoder).items()):
        digest.update(f"{name}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.float().numpy().tobytes())
    return digest.hexdigest()


def _add_metadata(path: Path, values: dict[str, str]) -> None:
    import onnx

    proto = onnx.load(str(path))
    for key, value in values.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def export_onnx(model: nn.Module, path: str | Path, opset: int = 17) -> Path:
    """Write `model` as ONNX with inputs (input_ids, attention_mask, token_type_ids), all int64 (B, T); its
    metadata carries the encoder's fingerprint, which OnnxEncoder checks against the checkpoint it runs beside."""
    path = Path(path)
    if path.is_dir():
        raise BertkitError(f"{path}: is a directory; give the ONNX file's name (e.g. {path / 'model.onnx'})")
    wrapper = _Traceable(model)
    encoder = wrapper.model if isinstance(wrapper.model, BertModel) else wrapper.model.bert
    stamp = fingerprint(encoder)
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
        _add_metadata(tmp, {FINGERPRINT_KEY: stamp})

    return atomic_write(path, write)


def quantize_onnx(source: str | Path, path: str | Path, *, optimize: bool = True,
                  num_heads: int | None = None, hidden_size: int | None = None) -> Path:
    """onnxruntime's int8 for an exported encoder: optionally its BERT graph optimizer first (it fuses LayerNorm and
    GELU; its attention fusion does not match bertkit's fused-QKV graph, and transformers' graph with the fused
    QAttention ran 0.88-1.04x as fast here: bench/onnx_anchor.py), then dynamic quantization (int8 weights per
    output channel, activations quantized at run time); the fingerprint metadata is carried over."""
    import tempfile

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source, path = Path(source), Path(path)
    stamp = {p.key: p.value for p in onnx.load(str(source), load_external_data=False).metadata_props}
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        graph = source
        if optimize:
            from onnxruntime.transformers.optimizer import optimize_model

            graph = Path(tmp) / "optimized.onnx"
            optimize_model(str(source), model_type="bert", num_heads=num_heads or 0,
                           hidden_size=hidden_size or 0).save_model_to_file(str(graph))

        def write(target: Path) -> None:
            quantize_dynamic(str(graph), str(target), per_channel=True, weight_type=QuantType.QInt8,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})  # for fused ops
            proto = onnx.load(str(target))
            present = {p.key for p in proto.metadata_props}
            for key, value in stamp.items():
                if key not in present:
                    entry = proto.metadata_props.add()
                    entry.key, entry.value = key, value
            onnx.save(proto, str(target))

        return atomic_write(path, write)


def export_checked(checkpoint: str | Path, onnx: str | Path, precision: str = "fp32", device: str = "auto"
                   ) -> tuple[str, bool]:
    """Export `checkpoint`'s encoder to the ONNX file `onnx` (int8: then quantized by `quantize_onnx`) and run it in
    onnxruntime beside PyTorch on a sentence pair: fp32 must agree within 1e-4, int8 in direction (worst-token
    cosine >= 0.95). Returns (what was written and how it compared, whether the check passed); without
    onnxruntime the file is written and not checked."""
    import tempfile

    import numpy as np

    from bertkit.checkpoint import check_directory, read_weights
    from bertkit.device import resolve_device
    from bertkit.tokenizer import Tokenizer

    if Path(onnx).is_dir():
        raise BertkitError(f"--onnx {onnx}: is a directory; give the file to write (e.g. {Path(onnx) / 'model.onnx'})")
    target = resolve_device(device)
    check_directory(Path(checkpoint))
    # An encoder fine-tuned without a pooler (token-level heads such as triples) is exported without one: a pooler
    # made up here would be random weights in the file, and its fingerprint would not match the checkpoint's.
    pooler = any(".pooler." in f".{name}" for name in read_weights(Path(checkpoint))[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = BertModel.from_pretrained(checkpoint, pooler=pooler).to(target)
    if precision == "int8":
        with tempfile.TemporaryDirectory(dir=Path(onnx).resolve().parent) as tmp:
            fp32 = export_onnx(model, Path(tmp) / "fp32.onnx")
            path = quantize_onnx(fp32, onnx, num_heads=model.config.num_attention_heads,
                                 hidden_size=model.config.hidden_size)
    else:
        path = export_onnx(model, onnx)  # traced on the CPU; the file does not depend on the device
    tok = Tokenizer.from_pretrained(checkpoint)
    batch = tok(["a first check sentence", "二"], ["with a pair", "第二"])
    try:
        import onnxruntime as ort
    except ImportError:
        return f"{path}: written (onnxruntime not installed: not checked)", True
    providers = ["CPUExecutionProvider"]
    if target.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    session = ort.InferenceSession(str(path), providers=providers)
    hidden, pooled = session.run(None, {k: v.numpy() for k, v in batch.items()})
    with torch.no_grad():
        expected = model(*(batch[k].to(target) for k in INPUT_NAMES))
    keep = batch["attention_mask"].bool().numpy()
    reference = expected.last_hidden_state.cpu().numpy()[keep]
    if precision == "int8":  # quantized: compare directions, not digits
        got = hidden[keep]
        cosine = (got * reference).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(reference, axis=-1))
        return (f"{path}: written (int8); worst-token cosine to PyTorch fp32 = {float(cosine.min()):.4f}",
                float(cosine.min()) >= 0.95)
    worst = max(float(np.abs(hidden[keep] - reference).max()),
                float(np.abs(pooled - expected.pooler_output.cpu().numpy()).max()) if pooler else 0.0)
    return f"{path}: written; max |onnxruntime - torch| = {worst:.1e}", worst <= 1e-4


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
        path = Path(path)
        if not path.is_file():
            raise BertkitError(f"{path}: ONNX file not found")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable or invalid files
            raise CheckpointError(f"{path}: not a loadable ONNX model ({str(exc).splitlines()[0][:300]})") from exc
        stored = self.session.get_modelmeta().custom_metadata_map.get(FINGERPRINT_KEY)
        # A file without a fingerprint is refused rather than warned about: nothing else shows that it belongs to
        # this checkpoint, a wrong encoder changes predictions silently, and re-exporting costs seconds.
        if stored is None:
            raise CheckpointError(f"{path}: has no {FINGERPRINT_KEY} in its metadata (exported by an older bertkit "
                                  "or another tool), so it cannot be matched to this checkpoint; re-export it with "
                                  "`bertkit export CHECKPOINT --onnx FILE`")
        expected = fingerprint(original)
        if stored != expected:
            raise CheckpointError(f"{path}: exported from a different model than this checkpoint (fingerprint "
                                  f"{stored[:12]}... in the file, {expected[:12]}... for these weights and "
                                  "config); re-export it from this checkpoint")
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

    def pooled(self, input_ids: Tensor, attention_mask: Tensor | None = None,
               token_type_ids: Tensor | None = None) -> Tensor:
        return self.forward(input_ids, attention_mask, token_type_ids).pooler_output
