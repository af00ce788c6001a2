"""BertConfig: the network's shape, read from and written to a Hugging Face `config.json`, plus named presets."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bertkit.errors import CheckpointError
from bertkit.fileio import atomic_write_text

CONFIG_NAME = "config.json"

# Activations bertkit implements; HF names on the left.
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")

# Keys that transformers writes into BERT configs and that do not change the encoder's math. They are kept in
# `BertConfig.extra` and written back unchanged, so nothing a user had in config.json is lost.
_PASSTHROUGH_KEYS = {
    "_name_or_path", "transformers_version", "torch_dtype", "dtype", "gradient_checkpointing", "use_cache",
    "output_past", "chunk_size_feed_forward", "output_hidden_states", "output_attentions", "return_dict",
    "pruned_heads", "torchscript", "problem_type", "bos_token_id", "eos_token_id",
    "sep_token_id", "directionality", "pooler_fc_size", "pooler_num_attention_heads", "pooler_num_fc_layers",
    "pooler_size_per_head", "pooler_type", "classifier_dropout", "id2label", "label2id", "finetuning_task",
    "tokenizer_class", "prefix", "task_specific_params", "use_return_dict", "embedding_size",
}

# Keys that would make a different network than the one bertkit builds: loading them silently would give wrong
# outputs, so a value other than the one shown is rejected with a message.
_REQUIRED_VALUES: dict[str, Any] = {
    "is_decoder": False,
    "add_cross_attention": False,
    "is_encoder_decoder": False,
    "position_embedding_type": "absolute",
    "tie_word_embeddings": True,
}


# Upper bounds on each size field, checked before any tensor is allocated: a config.json with
# max_position_embeddings 1e12 would otherwise attempt a 512 TB allocation. Each bound is far above any published
# BERT (base: 30522 / 768 / 12 / 12 / 3072 / 512 / 2) while small enough that one field alone stays allocatable.
SIZE_LIMITS = {
    "vocab_size": 2_000_000, "hidden_size": 16_384, "num_hidden_layers": 512, "num_attention_heads": 1024,
    "intermediate_size": 65_536, "max_position_embeddings": 131_072, "type_vocab_size": 1024,
}
# The fields together must stay within this many weights (about 37 GiB in float32; BERT-large has 0.34 B).
MAX_PARAMETERS = 10_000_000_000


@dataclass
class BertConfig:
    """Shape of a BERT encoder; field names are Hugging Face's so `config.json` files move both ways."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    architectures: list[str] = field(default_factory=lambda: ["BertModel"])
    # Keys from config.json that do not change the network (see _PASSTHROUGH_KEYS and unknown ones), kept verbatim.
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, limit in SIZE_LIMITS.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"BertConfig.{name} must be a positive integer, got {value!r}")
            if value > limit:
                raise ValueError(f"BertConfig.{name} must be at most {limit:,}, got {value:,}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "initializer_range", "layer_norm_eps"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"BertConfig.{name} must be a finite number, got {value!r}")
        if not 0.0 < self.layer_norm_eps < 1.0:
            raise ValueError(f"BertConfig.layer_norm_eps must be in (0, 1), got {self.layer_norm_eps!r}")
        if self.initializer_range < 0:
            raise ValueError(f"BertConfig.initializer_range must be >= 0, got {self.initializer_range!r}")
        if not isinstance(self.pad_token_id, int) or isinstance(self.pad_token_id, bool):
            raise ValueError(f"BertConfig.pad_token_id must be an integer, got {self.pad_token_id!r}")
        if not isinstance(self.architectures, list) or not all(isinstance(a, str) for a in self.architectures):
            raise ValueError(f"BertConfig.architectures must be a list of strings, got {self.architectures!r}")
        if not isinstance(self.hidden_act, str):
            raise ValueError(f"BertConfig.hidden_act must be a string, got {self.hidden_act!r}")
        if self.parameter_estimate() > MAX_PARAMETERS:
            raise ValueError(
                f"BertConfig describes about {self.parameter_estimate():,} parameters, more than bertkit's limit of "
                f"{MAX_PARAMETERS:,} ({4 * MAX_PARAMETERS / 2**30:.0f} GiB in float32); refused before allocating"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"BertConfig.hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"BertConfig.hidden_act {self.hidden_act!r} is not supported; use one of {ACTIVATIONS}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"BertConfig.{name} must be in [0, 1), got {getattr(self, name)!r}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(
                f"BertConfig.pad_token_id ({self.pad_token_id}) must be in [0, vocab_size={self.vocab_size})"
            )

    def parameter_estimate(self) -> int:
        """Roughly how many weights this shape allocates: embeddings, layers and pooler (heads are small)."""
        H, I = self.hidden_size, self.intermediate_size
        embeddings = (self.vocab_size + self.max_position_embeddings + self.type_vocab_size) * H
        return embeddings + self.num_hidden_layers * (4 * H * H + 2 * H * I) + H * H

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> BertConfig:
        """One of the named sizes (`tiny`, `mini`, `small`, `medium`, `base`), with optional field overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    # ---- Hugging Face config.json -------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The config.json content: HF keys, `model_type: bert`, and every kept extra key."""
        data = {k: v for k, v in dataclasses.asdict(self).items() if k != "extra"}
        data["model_type"] = "bert"
        data["position_embedding_type"] = "absolute"
        # Extras go first so a field of ours always wins over a stale copy of the same key.
        return {**self.extra, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> BertConfig:
        """Build from a config.json dict; rejects settings that would change the network, keeps harmless extras."""
        data = dict(data)
        model_type = data.pop("model_type", "bert")
        if model_type != "bert":
            raise CheckpointError(f"{source}: model_type is {model_type!r}; bertkit loads only 'bert' checkpoints")
        for key, required in _REQUIRED_VALUES.items():
            value = data.pop(key, required)
            if value != required:
                raise CheckpointError(
                    f"{source}: {key}={value!r} is not supported (bertkit builds the standard "
                    f"bidirectional BERT encoder, which needs {key}={required!r})"
                )
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: data.pop(k) for k in list(data) if k in known}
        extra = dict(data)
        unknown = sorted(k for k in extra if k not in _PASSTHROUGH_KEYS and not k.startswith("bertkit_"))
        if unknown:
            warnings.warn(
                f"{source}: keys {unknown} are not used by bertkit; they are kept and written back on save",
                stacklevel=2,
            )
        _check_label_keys(extra, source)
        try:
            return cls(**kwargs, extra=extra)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{source}: {exc}") from exc

    @classmethod
    def from_json_file(cls, path: str | Path) -> BertConfig:
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: config file not found")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise CheckpointError(f"{path}: not UTF-8 text ({exc})") from exc
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc
        if not isinstance(data, dict):
            raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> BertConfig:
        return cls.from_json_file(Path(directory) / CONFIG_NAME)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        return atomic_write_text(directory / CONFIG_NAME, self.to_json_string())


def _check_label_keys(extra: dict[str, Any], source: str) -> None:
    """The label sets a task head is sized from: id2label must number its labels 0..n-1 (as transformers writes
    them), and bertkit's own lists must hold strings; anything else would size the head wrongly or fail later."""
    id2label = extra.get("id2label")
    if id2label is not None:
        if not isinstance(id2label, dict) or not all(isinstance(v, str) for v in id2label.values()):
            raise CheckpointError(f"{source}: id2label must be an object of label names, got {id2label!r:.200}")
        expected = [str(i) for i in range(len(id2label))]
        if sorted(id2label, key=lambda k: (len(k), k)) != expected:
            raise CheckpointError(f"{source}: id2label keys must be \"0\"..\"{len(id2label) - 1}\", got "
                                  f"{sorted(id2label)!r:.200}")
    for key in ("bertkit_intents", "bertkit_slots"):
        value = extra.get(key)
        if value is not None and (not isinstance(value, list) or not value
                                  or not all(isinstance(v, str) for v in value)):
            raise CheckpointError(f"{source}: {key} must be a non-empty list of strings, got {value!r:.200}")
    if "bertkit_crf" in extra and not isinstance(extra["bertkit_crf"], bool):
        raise CheckpointError(f"{source}: bertkit_crf must be true or false, got {extra['bertkit_crf']!r}")


# Google's BERT miniatures (Turc et al., 2019) and BERT-base: layers, hidden, heads, with intermediate = 4 * hidden;
# nano, half of tiny's width, is no miniature: a student that a tiny teacher can be distilled into.
PRESETS: dict[str, dict[str, int]] = {
    name: {
        "num_hidden_layers": layers,
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "intermediate_size": 4 * hidden,
    }
    for name, (layers, hidden, heads) in {
        "nano": (2, 64, 2),
        "tiny": (2, 128, 2),
        "mini": (4, 256, 4),
        "small": (4, 512, 8),
        "medium": (8, 512, 8),
        "base": (12, 768, 12),
    }.items()
}
