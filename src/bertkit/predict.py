"""Predictor: a fine-tuned checkpoint directory -> predictions for raw inputs, whatever the task (no HTTP here)."""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from bertkit.checkpoint import check_directory
from bertkit.config import BertConfig
from bertkit.device import resolve_device
from bertkit.errors import BertkitError, DataError, DeviceError
from bertkit.quantize import quantize, resolve_precision, warm_up
from bertkit.tasks import task_module
from bertkit.tasks.base import check_task_fits_config, read_task_info
from bertkit.tokenizer import Tokenizer

# What each task reads from an input object (besides "text").
INPUT_KEYS = {
    "classification": ("text", "text_pair"),
    "ner": ("text",),
    "intent_slot": ("text",),
    "relation": ("text", "head", "tail"),
    "spelling": ("text",),
    "qa": ("question", "context"),
}


class Predictor:
    """`Predictor(dir).predict([{"text": ...}, ...])`; strings are accepted as {"text": string}."""

    def __init__(self, directory: str | Path, dtype: torch.dtype | None = None, onnx: str | Path | None = None,
                 device: str | torch.device | None = "auto", precision: str = "fp32",
                 int8_keep: tuple[str, ...] | list[str] = (), compile: bool = False) -> None:
        """`onnx`: an encoder exported by `bertkit export --onnx` from this checkpoint (its fingerprint is checked);
        the encoder then runs in onnxruntime, on the CPU. `device`: auto (CUDA where available), cpu, cuda, cuda:N;
        inputs are batched on the CPU and moved there. `precision`: fp32, bf16, int8 (CPU: int8 encoder Linears, see
        `bertkit.quantize`) or auto (`quantize.choose_precision`: int8 on CPUs with VNNI/AMX, bf16 where native,
        else fp32); `int8_keep`: encoder layers (names or globs) kept in float32 under int8; `compile`: int8 layers
        through torch.compile (see `quantize.Int8Linear`).

        Loading is strict: task.json, config.json and the weights must describe one model, every weight of the
        task's model must be present (no randomly initialised head) and all of them finite; else CheckpointError.
        """
        self.directory = Path(directory)
        self.device = resolve_device("cpu" if onnx is not None and device in (None, "auto") else device)
        if onnx is not None and self.device.type != "cpu":
            raise DeviceError(f"--onnx runs the encoder in onnxruntime on the CPU; --device {device} does not apply")
        check_directory(self.directory)
        self.info = read_task_info(self.directory)
        self.task = self.info["task"]
        self.module = task_module(self.task)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # strict: anything the weight warnings would say is an error instead
            config = BertConfig.from_pretrained(self.directory)
            check_task_fits_config(self.directory, self.info, config, self.module.MODEL.hf_architecture)
            self.model = self.module.MODEL.from_pretrained(self.directory, strict=True, config=config).eval()
        if onnx is not None:
            from bertkit.export import OnnxEncoder

            # before any dtype change: the fingerprint is of the float32 weights the file was exported from
            self.model.bert = OnnxEncoder(onnx, self.model.bert)
        if dtype is not None:
            self.model.to(dtype)
        self.model.to(self.device)
        self.precision, self.precision_reason = resolve_precision(precision, self.device, onnx is not None)
        if self.precision != "fp32":
            quantize(self.model, self.precision, keep=int8_keep, compile=compile)
            if compile and self.precision == "int8":
                warm_up(self.model.bert)  # compile now, not in the first request
        self.tokenizer = Tokenizer.from_pretrained(self.directory)
        self.loaded_at = time.time()

    @property
    def labels(self) -> list[str]:
        return list(self.info.get("labels", []))

    def normalise(self, inputs: list[Any]) -> list[dict[str, Any]]:
        """Check every input before any model work; errors say which input and what was expected."""
        keys = INPUT_KEYS[self.task]
        required = ("question", "context") if self.task == "qa" else ("text",)
        out = []
        for index, item in enumerate(inputs):
            if isinstance(item, str) and self.task != "qa":
                item = {"text": item}
            if not isinstance(item, dict):
                raise DataError(f"input {index}: expected an object with {list(required)}, got "
                                f"{type(item).__name__}")
            unknown = sorted(set(item) - set(keys))
            if unknown:
                raise DataError(f"input {index}: unknown field(s) {unknown}; this {self.task} model reads {list(keys)}")
            for key in keys:
                if key in required and key not in item:
                    raise DataError(f"input {index}: missing {key!r}")
                if key in required and item[key] is None:
                    raise DataError(f"input {index}: {key!r} must be a string, got null")
                if key in item and item[key] is not None and not isinstance(item[key], str):
                    raise DataError(f"input {index}: {key!r} must be a string, got {type(item[key]).__name__}")
                if isinstance(item.get(key), str):
                    check_encodable(item[key], index, key)
            if not item[required[0]].strip():
                raise DataError(f"input {index}: {required[0]!r} is empty")
            out.append(item)
        return out

    @torch.no_grad()
    def predict(self, inputs: list[Any]) -> list[dict[str, Any]]:
        """Predictions for `inputs` (any mix of shapes the task reads); an error if the model gives NaN or inf."""
        items = self.normalise(inputs)
        if not items:
            return []
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="inputs longer than max_length")
            results = self.module.predict_inputs(self.model, self.tokenizer, self.info, items)
        for index, result in enumerate(results):
            # NaN is not JSON: the predict CLI would write an unreadable file and the server a 500.
            if not _all_finite(result):
                raise BertkitError(f"input {index}: the model produced non-finite values (NaN or infinity); its "
                                   f"weights in {self.directory} may be corrupt")
        return results

    def evaluate(self, path: str | Path, fmt: str) -> dict[str, float]:
        with torch.no_grad():
            return self.module.evaluate_file(self.model, self.tokenizer, self.info, path, fmt)


def check_encodable(text: str, index: int, key: str) -> None:
    """Text the tokenizer cannot take (a lone surrogate such as "\\ud800", which UTF-8 cannot encode) is this
    input's error, found before it is batched with other inputs it would otherwise fail."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DataError(f"input {index}: {key!r} has a lone surrogate (U+{ord(text[exc.start]):04X}) at character "
                        f"{exc.start}; send valid Unicode text") from None


def _all_finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_all_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(_all_finite(v) for v in value)
    return True
