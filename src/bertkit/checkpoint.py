"""Hugging Face-layout checkpoints: load and save models (safetensors; `.bin` only via weights_only), with checks.

bertkit's module names differ from transformers' (one fused QKV projection instead of three); the mapping lives
here and nowhere else. Every load checks the whole checkpoint and reports every problem in one message.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Protocol, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from bertkit.config import CONFIG_NAME, BertConfig
from bertkit.errors import CheckpointError
from bertkit.fileio import atomic_write
from bertkit.tokenizer import TOKENIZER_JSON_NAME, VOCAB_NAME, read_vocabulary

SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
PYTORCH_NAME = "pytorch_model.bin"

# bertkit encoder name -> transformers name (regex substitutions, applied to names inside the encoder).
_ENCODER_RENAMES = [
    (r"^embeddings\.word\.", "embeddings.word_embeddings."),
    (r"^embeddings\.position\.", "embeddings.position_embeddings."),
    (r"^embeddings\.token_type\.", "embeddings.token_type_embeddings."),
    (r"^embeddings\.norm\.", "embeddings.LayerNorm."),
    (r"^layers\.(\d+)\.attn_out\.", r"encoder.layer.\1.attention.output.dense."),
    (r"^layers\.(\d+)\.attn_norm\.", r"encoder.layer.\1.attention.output.LayerNorm."),
    (r"^layers\.(\d+)\.ffn_in\.", r"encoder.layer.\1.intermediate.dense."),
    (r"^layers\.(\d+)\.ffn_out\.", r"encoder.layer.\1.output.dense."),
    (r"^layers\.(\d+)\.ffn_norm\.", r"encoder.layer.\1.output.LayerNorm."),
    (r"^pooler\.", "pooler.dense."),
]
_QKV = re.compile(r"^layers\.(\d+)\.qkv\.(weight|bias)$")
# Buffers transformers stores but that carry no learned state.
_IGNORED_HF_KEYS = re.compile(
    r"(^|\.)embeddings\.(position_ids|token_type_ids)$|^cls\.predictions\.decoder\.(weight|bias)$"
)


class HFMappable(Protocol):
    """A bertkit model that knows its transformers class name and how its head parameters are named there."""

    config: BertConfig
    hf_architecture: str
    hf_head_renames: tuple[tuple[str, str], ...]  # (bertkit prefix, transformers prefix)


M = TypeVar("M", bound=nn.Module)


def _encoder_prefix(model: nn.Module) -> str:
    """'' for a bare BertModel, 'bert.' for a model that holds one as `.bert`."""
    return "" if not hasattr(model, "bert") else "bert."


def hf_names(model: nn.Module, name: str) -> list[str]:
    """transformers key(s) of one bertkit parameter: three for a fused QKV, one otherwise."""
    prefix = _encoder_prefix(model)
    if prefix and not name.startswith(prefix):
        for ours, theirs in getattr(model, "hf_head_renames", ()):
            if name.startswith(ours):
                return [theirs + name[len(ours):]]
        return [name]  # a head with no transformers counterpart keeps its bertkit name
    inner = name[len(prefix):]
    match = _QKV.match(inner)
    if match:
        layer, kind = match.groups()
        return [f"{prefix}encoder.layer.{layer}.attention.self.{part}.{kind}" for part in ("query", "key", "value")]
    for pattern, replacement in _ENCODER_RENAMES:
        renamed, count = re.subn(pattern, replacement, inner)
        if count:
            return [prefix + renamed]
    return [name]


def to_hf_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The model's weights under transformers' names (QKV split into query/key/value), contiguous, on CPU."""
    out: dict[str, Tensor] = {}
    for name, tensor in model.state_dict().items():
        targets = hf_names(model, name)
        parts = tensor.chunk(len(targets), dim=0) if len(targets) > 1 else (tensor,)
        for target, part in zip(targets, parts, strict=True):
            out[target] = part.detach().to("cpu").contiguous().clone()
    return out


def _normalise_hf_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Old Google/TF conversions name LayerNorm parameters gamma/beta; transformers renames them on load, so do we."""
    out = {}
    for key, tensor in state.items():
        key = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", key)
        key = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key)
        out[key] = tensor
    # The MLM output bias is one tensor that transformers saves under either name.
    for prefix in ("", "bert."):
        bias, alias = f"{prefix}cls.predictions.bias", f"{prefix}cls.predictions.decoder.bias"
        if bias not in out and alias in out:
            out[bias] = out[alias]
    return out


def _is_encoder_key(model: nn.Module, name: str) -> bool:
    prefix = _encoder_prefix(model)
    return name.startswith(prefix) and not name[len(prefix):].startswith("pooler")


def from_hf_state_dict(
    model: nn.Module, state: dict[str, Tensor], source: str, *, strict: bool = False
) -> tuple[list[str], list[str]]:
    """Copy transformers-named weights into `model`; returns (newly initialised params, unused checkpoint keys).

    Raises CheckpointError naming every shape mismatch and every missing encoder weight. Missing pooler or head
    weights are allowed unless `strict` (a task head is new when fine-tuning starts from a pre-trained encoder).
    """
    state = _normalise_hf_keys(state)
    prefix = _encoder_prefix(model)
    has_prefix = any(k.startswith("bert.") for k in state)
    if prefix and not has_prefix:
        state = {(k if k.startswith(("cls.",)) else prefix + k): v for k, v in state.items()}
    elif not prefix and has_prefix:
        state = {k[len("bert."):] if k.startswith("bert.") else k: v for k, v in state.items()}
    if not getattr(model, "uses_pooler", True) and not any(k.startswith(f"{prefix}pooler.") for k in state):
        # transformers' class of this head has no pooler, so its checkpoints have none: nor has the model then (a
        # made-up one would be random weights, saved and exported)
        (model.bert if prefix else model).pooler = None

    used: set[str] = set()
    missing: list[str] = []
    mismatched: list[str] = []
    own = model.state_dict()
    to_load: dict[str, Tensor] = {}
    for name, target in own.items():
        keys = hf_names(model, name)
        absent = [k for k in keys if k not in state]
        if absent:
            # bertkit's name, and the checkpoint key it was looked up under when that differs
            missing.append(f"{name} (from {', '.join(absent)})" if absent != [name] else name)
            continue
        used.update(keys)
        tensor = torch.cat([state[k] for k in keys], dim=0) if len(keys) > 1 else state[keys[0]]
        if tuple(tensor.shape) != tuple(target.shape):
            shown = keys[0] if len(keys) == 1 else " + ".join(keys)
            mismatched.append(
                f"{shown}: checkpoint has shape {tuple(tensor.shape)}, model expects {tuple(target.shape)}"
            )
            continue
        to_load[name] = tensor
    unexpected = sorted(k for k in state if k not in used and not _IGNORED_HF_KEYS.search(k))
    missing_encoder = [m for m in missing if _is_encoder_key(model, m.split(" ")[0])]
    problems = []
    if mismatched:
        problems.append("shape mismatches:\n  " + "\n  ".join(mismatched))
    if missing_encoder or (strict and missing):
        problems.append("missing weights:\n  " + "\n  ".join(missing if strict else missing_encoder))
    if strict and unexpected:
        problems.append("unexpected weights:\n  " + "\n  ".join(unexpected))
    if problems:
        raise CheckpointError(f"{source} does not fit {type(model).__name__}:\n" + "\n".join(problems))
    with torch.no_grad():
        for name, tensor in to_load.items():
            own[name].copy_(tensor)
    return [m for m in missing if m not in missing_encoder], unexpected


def read_weights(directory: Path) -> tuple[dict[str, Tensor], str]:
    """Tensors from model.safetensors (or its shards), else pytorch_model.bin loaded with weights_only=True."""
    single = directory / SAFETENSORS_NAME
    index = directory / SAFETENSORS_INDEX_NAME
    try:
        if single.is_file():
            return load_file(single), str(single)
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            state: dict[str, Tensor] = {}
            for shard in shards:
                state.update(load_file(directory / shard))
            return state, str(index)
    except (SafetensorError, OSError, json.JSONDecodeError, KeyError) as exc:
        raise CheckpointError(f"{single if single.is_file() else index}: cannot read weights ({exc})") from exc
    legacy = directory / PYTORCH_NAME
    if legacy.is_file():
        try:
            # weights_only: a pickle that tries to build anything but tensors is refused, so loading runs no code.
            state = torch.load(legacy, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(
                f"{legacy}: refused or unreadable ({type(exc).__name__}: {str(exc).splitlines()[0]}); bertkit loads "
                ".bin files with torch.load(weights_only=True), which refuses anything but plain tensors"
            ) from exc
        if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
            raise CheckpointError(f"{legacy}: expected a dict of tensors (a state_dict)")
        return state, str(legacy)
    raise CheckpointError(f"{directory}: no weights found (expected {SAFETENSORS_NAME} or {PYTORCH_NAME})")


def check_vocab_fits(directory: Path, config: BertConfig) -> None:
    """A vocabulary (vocab.txt, or tokenizer.json) with more tokens than the embedding table would crash
    mid-forward; refuse it at load time."""
    if (directory / VOCAB_NAME).is_file() or (directory / TOKENIZER_JSON_NAME).is_file():
        vocab, _, vocab_path = read_vocabulary(directory)
        size = len(vocab)
        if size > config.vocab_size:
            raise CheckpointError(
                f"{vocab_path} has {size} tokens but {directory / CONFIG_NAME} says vocab_size={config.vocab_size}: "
                "ids at or above vocab_size have no embedding; the vocabulary does not belong to this model"
            )


def check_directory(directory: Path) -> None:
    """A checkpoint is a directory: say which of 'missing' or 'not a directory' it is."""
    if not directory.is_dir():
        what = "is a file, not a checkpoint directory" if directory.exists() else "checkpoint directory not found"
        raise CheckpointError(f"{directory}: {what}")


def nonfinite_tensors(state: dict[str, Tensor]) -> list[str]:
    """Names of the floating-point tensors that hold a NaN or an infinity."""
    return sorted(name for name, tensor in state.items()
                  if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()))


def check_finite(state: dict[str, Tensor], source: str) -> None:
    """A NaN or inf weight makes every output NaN (invalid JSON, a wrong label): refuse it at load, by name."""
    bad = nonfinite_tensors(state)
    if bad:
        shown = ", ".join(bad[:8]) + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")
        raise CheckpointError(f"{source}: {len(bad)} tensor(s) hold NaN or infinite values: {shown} (a diverged "
                              "run's weights; use an earlier checkpoint)")


def load_model(cls: type[M], directory: str | Path, *, strict: bool = False, config: BertConfig | None = None,
               **model_kwargs) -> M:
    """Build `cls` from a checkpoint directory; warns about newly initialised and unused weights.

    `strict`: every weight of `cls` must be in the checkpoint and every checkpoint weight used (how a fine-tuned
    checkpoint is loaded for prediction: a missing head would otherwise predict with random weights).
    Non-finite weights are always refused.
    """
    directory = Path(directory)
    check_directory(directory)
    config = config or BertConfig.from_pretrained(directory)
    check_vocab_fits(directory, config)
    state, source = read_weights(directory)
    check_finite(state, source)
    model = cls(config, **model_kwargs)
    new, unused = from_hf_state_dict(model, state, source, strict=strict)
    if new:
        warnings.warn(f"{source}: newly initialised (not in the checkpoint): {', '.join(new)}", stacklevel=2)
    if unused:
        shown = ", ".join(unused[:8]) + (f" and {len(unused) - 8} more" if len(unused) > 8 else "")
        warnings.warn(f"{source}: weights not used by {cls.__name__}: {shown}", stacklevel=2)
    model.eval()
    return model


def save_model(model: nn.Module, directory: str | Path) -> Path:
    """Write config.json and model.safetensors (transformers' names), each atomically."""
    if getattr(model, "precision", None) == "int8":
        raise CheckpointError("this model was quantized to int8 for inference; save the fp32 model (int8 is applied "
                              "when a checkpoint is loaded: --precision int8, Predictor(precision='int8'))")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config: BertConfig = model.config
    config.architectures = [getattr(model, "hf_architecture", type(model).__name__)]
    # CPU copies: a checkpoint written on a GPU loads anywhere
    state = {name: tensor.detach().cpu() for name, tensor in to_hf_state_dict(model).items()}
    atomic_write(directory / SAFETENSORS_NAME, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
    config.save_pretrained(directory)
    return directory
