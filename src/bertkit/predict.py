"""Predictor: a checkpoint directory -> predictions for raw inputs, for whatever task its spec declares (no HTTP)."""

from __future__ import annotations

import json
import re
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from bertkit.checkpoint import check_directory
from bertkit.config import BertConfig
from bertkit.device import resolve_device
from bertkit.errors import BertkitError, CheckpointError, DataError, DeviceError
from bertkit.precision import prepare_for_inference
from bertkit.tasks import TASKS, default_task, pretrained_tasks, task_spec
from bertkit.tasks.base import TASK_FILE, check_task_fits_config, read_task_info
from bertkit.tasks.derived import DerivedTask, derive_task
from bertkit.tasks.spec import Work
from bertkit.tokenizer import Tokenizer

# Checkpoints a pre-training run (bertkit's or transformers') writes: served without task.json
PRETRAINED_ARCHITECTURES = {"BertModel", "BertForPreTraining", "BertForMaskedLM"}


class Predictor:
    """`Predictor(dir).predict([{"text": ...}, ...])`; strings are accepted as {"text": string} where the task's
    only required input is a text."""

    def __init__(self, directory: str | Path, dtype: torch.dtype | None = None, onnx: str | Path | None = None,
                 device: str | torch.device | None = "auto", precision: str = "fp32",
                 int8_keep: tuple[str, ...] | list[str] = (), compile: bool | None = False, task: str | None = None,
                 fingerprint: bool = False) -> None:
        """`directory`: a fine-tuned checkpoint (its task.json names the task), or any pre-trained one: fill-mask
        where it has an MLM head, else sentence embeddings (`task` picks one of those two explicitly).
        `onnx`: an encoder exported by `bertkit export --onnx` from this checkpoint (its fingerprint is checked);
        the encoder then runs in onnxruntime, on the CPU. `device`: auto (CUDA where available), cpu, cuda, cuda:N;
        inputs are batched on the CPU and moved there. `precision`: fp32, bf16, int8 (CPU: int8 encoder Linears, see
        `bertkit.quantize`) or auto (`precision.plan_inference`: int8 with VNNI or AMX, bf16 on AMX uncompiled,
        bf16 where native, else fp32); `int8_keep`: encoder layers (names or globs) kept in float32 under int8;
        `compile`: int8 layers through torch.compile (see `precision.int8`), compiled here rather than in
        the first request; None: where `auto` compiles (`precision.plan_inference`: a server's default). A
        checkpoint transformers fine-tuned (a `BertFor*` head, no task.json) has its task info derived from
        config.json (`bertkit.tasks.derived`; `self.derived` says how). `fingerprint`: also take the
        encoder's fingerprint (`export.fingerprint`, of its float32 weights, before any precision change) as
        `self.fingerprint`: what binds a file made with this model (a search index) to it.

        Loading is strict: task.json, config.json and the weights must describe one model, every weight of the
        task's model must be present (no randomly initialised head) and all of them finite; else CheckpointError.
        """
        self.directory = Path(directory)
        self.derived: DerivedTask | None = None  # the task info derived from a transformers config.json, if so
        self.device = resolve_device("cpu" if onnx is not None and device in (None, "auto") else device)
        if onnx is not None and self.device.type != "cpu":
            raise DeviceError(f"--onnx runs the encoder in onnxruntime on the CPU; --device {device} does not apply")
        check_directory(self.directory)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # strict: anything the weight warnings would say is an error instead
            config = BertConfig.from_pretrained(self.directory)
            if (self.directory / TASK_FILE).is_file():
                self.spec, self.info = read_task_info(self.directory)
                if task is not None and task != self.spec.name:
                    raise CheckpointError(f"{self.directory} is a fine-tuned {self.spec.name} checkpoint; it cannot "
                                          f"be used for {task}")
                check_task_fits_config(self.directory, self.spec, self.info, config)
            elif (derived := derive_task(self.directory, config)) is not None:
                if task is not None and task != derived.spec.name:
                    raise CheckpointError(f"{self.directory} is a fine-tuned {derived.architecture} "
                                          f"({derived.spec.name}); it cannot be used for {task}")
                self.spec, self.info, self.derived = derived.spec, derived.info, derived
            else:
                tuned = sorted(k for k in config.extra if k.startswith("bertkit_") or k == "id2label")
                if tuned or not set(config.architectures) <= PRETRAINED_ARCHITECTURES:
                    raise CheckpointError(f"{self.directory / TASK_FILE}: not found, but {self.directory} holds a "
                                          f"fine-tuned model ({', '.join(config.architectures)}"
                                          f"{'; config.json has ' + ', '.join(tuned) if tuned else ''}); its task.json "
                                          "was lost (copy it back from the run's checkpoints)")
                if task is not None and (task not in TASKS or not task_spec(task).serves_pretrained):
                    raise CheckpointError(f"{self.directory} has no task.json: a pre-trained checkpoint serves "
                                          f"{' or '.join(pretrained_tasks())}, not {task}")
                self.spec = task_spec(task or default_task(config.architectures))
                self.info = self.spec.pretrained_info(self.directory, config)
            if self.spec.load is not None:
                self.model = self.spec.load(self.directory, config).eval()
            else:
                model_class = self.spec.model_for(self.info)
                self.model = model_class.from_pretrained(self.directory, strict=True, config=config).eval()
        self.task = self.spec.name
        encoder = self.model.bert if hasattr(self.model, "bert") else self.model
        self.fingerprint: str | None = None
        if fingerprint:
            from bertkit.export import fingerprint as encoder_fingerprint

            self.fingerprint = encoder_fingerprint(encoder)
        if onnx is not None:
            from bertkit.export import OnnxEncoder

            # before any dtype change: the fingerprint is of the float32 weights the file was exported from
            onnx_encoder = OnnxEncoder(onnx, encoder)
            if encoder is self.model:
                self.model = onnx_encoder
            else:
                self.model.bert = onnx_encoder
        if dtype is not None:
            self.model.to(dtype)
        self.plan = prepare_for_inference(self.model, encoder, self.device, precision, int8_keep, compile,
                                          onnx is not None)
        self.precision, self.precision_reason = self.plan.precision, self.plan.why
        self.tokenizer = Tokenizer.from_pretrained(self.directory)
        self.loaded_at = time.time()

    @property
    def labels(self) -> list[str]:
        return list(getattr(self.info, "labels", []))

    def normalise(self, inputs: list[Any]) -> list[dict[str, Any]]:
        """Check every input against the task's input schema before any model work; errors say which input and
        what was expected."""
        fields = {f.name: f for f in self.spec.inputs}
        required = [f.name for f in self.spec.inputs if f.required]
        out = []
        for index, item in enumerate(inputs):
            if isinstance(item, str) and self.spec.plain_text:
                item = {"text": item}
            if not isinstance(item, dict):
                raise DataError(f"input {index}: expected an object with {required}, got {type(item).__name__}")
            unknown = sorted(set(item) - set(fields))
            if unknown:
                raise DataError(f"input {index}: unknown field(s) {unknown}; this {self.task} model reads "
                                f"{list(fields)}")
            for key, spec_field in fields.items():
                expected = "a list of strings" if spec_field.kind == "list" else "a string"
                if spec_field.required and key not in item:
                    raise DataError(f"input {index}: missing {key!r}")
                value = item.get(key)
                if spec_field.required and value is None:
                    raise DataError(f"input {index}: {key!r} must be {expected}, got null")
                if value is None:
                    continue
                if spec_field.kind == "list":
                    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                        raise DataError(f"input {index}: {key!r} must be {expected}, got {_json_type(value)}")
                    for v in value:
                        check_encodable(v, index, key)
                elif not isinstance(value, str):
                    raise DataError(f"input {index}: {key!r} must be {expected}, got {type(value).__name__}")
                else:
                    check_encodable(value, index, key)
            for key in required:
                if isinstance(item[key], str) and not item[key].strip():
                    raise DataError(f"input {index}: {key!r} is empty")
            if self.spec.validate is not None:
                self.spec.validate(item, index)
            out.append(item)
        return out

    def work(self, items: list[dict[str, Any]]) -> Work:
        """At most how many sequences and tokens the model encodes for these (normalised) inputs: counted from
        their characters, before any tokenizing (the server's per-request budget)."""
        total = Work()
        for item in items:
            total += self.spec.work(item, self.info)
        return total

    @torch.no_grad()
    def predict(self, inputs: list[Any]) -> list[dict[str, Any]]:
        """Predictions for `inputs` (any mix of shapes the task reads); an error if the model gives NaN or inf."""
        items = self.normalise(inputs)
        if not items:
            return []
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="inputs longer than max_length")
            results = self.spec.predict(self.model, self.tokenizer, self.info, items)
        for index, result in enumerate(results):
            # NaN is not JSON: the predict CLI would write an unreadable file and the server a 500.
            if not _all_finite(result):
                raise BertkitError(f"input {index}: the model produced non-finite values (NaN or infinity); its "
                                   f"weights in {self.directory} may be corrupt")
        return results

    def evaluate(self, path: str | Path, fmt: str | None = None) -> dict[str, float]:
        if self.spec.evaluate is None:
            raise BertkitError(f"the {self.task} task has no labelled evaluation")
        with torch.no_grad():
            return self.spec.evaluate(self.model, self.tokenizer, self.info, path, fmt or self.spec.default_format)


def failed_input(exc: BertkitError) -> tuple[int, str] | None:
    """(index in the batch, the message without its "input N: " prefix) of a Predictor error about one input of a
    batch; None for an error about the whole batch. Callers number inputs as their user does (a file's lines)."""
    where = re.match(r"input (\d+): ", str(exc))
    return (int(where.group(1)), str(exc)[where.end():]) if where else None


def predict_file(predictor: Predictor, input: str, output: str, batch_size: int = 32, progress: bool = True
                 ) -> int:
    """Predict for JSONL inputs (objects, or plain lines of text; blank lines skipped) of a file or stdin ('-'),
    `batch_size` at a time, writing JSONL to a file or stdout ('-'); returns how many inputs. An error names the line
    of the input. A file output is written under a temporary name and renamed at the end: a run that stops at a bad
    line leaves the previous output in place, not a truncated one."""
    import json
    import os
    import sys
    import tempfile

    from tqdm.auto import tqdm

    from bertkit.fileio import input_lines, process_umask

    tmp: Path | None = None
    if output == "-":
        out = sys.stdout
    else:
        target = Path(output)
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        tmp, out = Path(name), os.fdopen(fd, "w", encoding="utf-8")
    source = "<stdin>" if input == "-" else input
    count = 0
    try:
        batch: list[Any] = []
        lines: list[int] = []
        bar = tqdm(desc="predict", unit="input", disable=output == "-" or not progress)

        def flush() -> None:
            try:
                results = predictor.predict(batch)
            except BertkitError as exc:
                # the Predictor names the input by its place in the batch; the user needs the line of the file
                failed = failed_input(exc)
                if failed and failed[0] < len(lines):
                    raise DataError(failed[1], source, lines[failed[0]]) from exc
                raise DataError(f"lines {lines[0]}-{lines[-1]}: {exc}", source) from exc
            for result in results:
                # allow_nan=False: NaN is not JSON (the Predictor refuses non-finite outputs; this keeps it so)
                out.write(json.dumps(result, ensure_ascii=False, allow_nan=False) + "\n")
            bar.update(len(batch))
            batch.clear()
            lines.clear()

        for number, text in input_lines(input):
            if not text.strip():
                continue
            try:
                item = json.loads(text) if text.lstrip().startswith("{") else text
            except json.JSONDecodeError as exc:
                raise DataError(f"not a JSON object: {exc.msg}", source, number) from exc
            batch.append(item)
            lines.append(number)
            count += 1
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
        bar.close()
        if not count:
            raise DataError("no inputs: every line is empty or blank (give one JSON object or text per line)", source)
        if tmp is not None:
            out.close()
            os.chmod(tmp, 0o666 & ~process_umask())
            os.replace(tmp, output)
            tmp = None
    finally:
        if out is not sys.stdout:
            out.close()
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return count


def check_encodable(text: str, index: int, key: str) -> None:
    """Text the tokenizer cannot take (a lone surrogate such as "\\ud800", which UTF-8 cannot encode) is this
    input's error, found before it is batched with other inputs it would otherwise fail."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DataError(f"input {index}: {key!r} has a lone surrogate (U+{ord(text[exc.start]):04X}) at character "
                        f"{exc.start}; send valid Unicode text") from None


def _json_type(value: Any) -> str:
    return {list: "a list with a non-string item", dict: "an object"}.get(type(value), type(value).__name__)


def _all_finite(value: Any) -> bool:
    """No NaN or infinity anywhere in a result: json's C encoder walks it (64 results holding 38,844 nested
    records: 0.06 s; a recursive walk in Python took ten times as long); a value json cannot encode is left to the
    caller."""
    try:
        json.dumps(value, allow_nan=False)
    except ValueError:
        return False
    except TypeError:
        return True
    return True
