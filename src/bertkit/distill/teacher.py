"""The teacher of a distillation: a fine-tuned checkpoint loaded for inference (eval mode, no gradients) at the
precision chosen for its device, its fingerprint, and its soft-target logits computed once into `.npy` files that
every epoch, and a resumed run, read by memory map.

Shape legend: R rows of a soft-target term (examples, words or questions), C classes.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bertkit.checkpoint import check_directory
from bertkit.config import BertConfig
from bertkit.device import for_model
from bertkit.distill.losses import ABSENT
from bertkit.errors import CheckpointError, DataError
from bertkit.fileio import atomic_write, atomic_write_text, sha256_file
from bertkit.precision import quantize, resolve_precision
from bertkit.tasks.base import TASK_FILE, check_task_fits_config, read_task_info
from bertkit.tasks.derived import derive_task
from bertkit.tokenizer import Tokenizer

CACHE_DIR = "teacher"  # under the run directory: one subdirectory of logits per teacher and training data
COMPLETE = "complete.json"  # written last: a cache without it was cut short and is computed again


@dataclass
class Teacher:
    directory: Path
    model: nn.Module
    spec: Any  # the TaskSpec of its task: the student's task
    info: Any  # its task info (labels, max_seq_len, ...): the student's
    config: BertConfig
    tokenizer: Tokenizer
    precision: str
    why: str  # why that precision
    fingerprint: str  # sha256 of its files and precision: which logits a cache holds


def load_teacher(directory: str | Path, device: torch.device, precision: str = "auto", layers: bool = False
                 ) -> Teacher:
    """A fine-tuned checkpoint (task.json, or a transformers `BertFor*` head) as a teacher on `device`, at
    `precision` ("auto": what `--precision auto` picks for inference there). `layers`: its intermediate layers are
    read too, which int8 layers cannot give (they fuse their steps), so `auto` then means fp32 where it would mean
    int8, and an explicit int8 is an error."""
    directory = Path(directory)
    check_directory(directory)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # loaded strictly: what the weight warnings would say is an error instead
        config = BertConfig.from_pretrained(directory)
        if (directory / TASK_FILE).is_file():
            spec, info = read_task_info(directory)
            check_task_fits_config(directory, spec, info, config)
        else:
            derived = derive_task(directory, config)
            if derived is None:
                raise CheckpointError(f"{directory}: not a fine-tuned checkpoint (no {TASK_FILE}, no BertFor* head "
                                      "in config.json); a teacher is a model fine-tuned for a task")
            spec, info = derived.spec, derived.info
        model = spec.load(directory, config) if spec.load is not None else \
            spec.model_for(info).from_pretrained(directory, strict=True, config=config)
    model.eval().requires_grad_(False).to(device)
    chosen, why = resolve_precision(precision, device)
    if layers and chosen == "int8":
        if precision == "int8":
            raise DataError("--teacher-precision int8 cannot give the teacher's intermediate layers (int8 layers "
                            "fuse their steps); use fp32 or bf16, or distil the soft targets only")
        chosen, why = "fp32", "intermediate layers are read from float layers, and int8 layers fuse theirs"
    if chosen != "fp32":
        quantize(model, chosen)
    files = sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))
    digest = hashlib.sha256(chosen.encode())
    for path in files:
        digest.update(f"{path.name}:{sha256_file(path)};".encode())
    return Teacher(directory, model, spec, info, config, Tokenizer.from_pretrained(directory), chosen, why,
                   digest.hexdigest())


class LogitsCache:
    """The teacher's logits of every training example: per term `<term>.npy`, every example's rows stacked (R, C),
    float32, and `<term>.index.npy`, each example's first row and row count. Read by memory map, so batch-building
    worker processes share the pages."""

    def __init__(self, directory: Path, terms: list[str]) -> None:
        self.directory = directory
        self.values = {t: np.load(directory / f"{t}.npy", mmap_mode="r") for t in terms}
        self.index = {t: np.load(directory / f"{t}.index.npy") for t in terms}

    def targets(self, indices: list[int]) -> dict[str, Tensor]:
        """Term -> (R, C) logits of these examples, rows in example order (as the task's `logits` gives them)."""
        out = {}
        for term, values in self.values.items():
            spans = [self.index[term][i] for i in indices]
            out[term] = torch.from_numpy(np.concatenate([values[start : start + rows] for start, rows in spans]))
        return out


def cache_key(teacher: Teacher, data: str) -> str:
    return hashlib.sha256(f"{teacher.fingerprint}:{data}".encode()).hexdigest()[:16]


@torch.no_grad()
def build_cache(teacher: Teacher, head: Any, task: Any, root: Path, data: str, batch_size: int = 64,
                write: bool = True) -> LogitsCache:
    """The teacher's logits of every training example of `task` (its `make_batch` order of examples), computed in
    batches and written under `root`/<key> (the key: the teacher's fingerprint and `data`, the examples' digest);
    an existing complete cache of the same key is read instead. `write`: False on the processes of a run that
    only read (the first process writes; the others wait for it)."""
    directory = root / cache_key(teacher, data)
    count = len(task.train)
    marker = directory / COMPLETE
    if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")).get("examples") == count:
        return LogitsCache(directory, json.loads(marker.read_text(encoding="utf-8"))["terms"])
    if not write:
        raise DataError(f"{directory}: the teacher's logits are not there (the first process writes them)")
    started = time.perf_counter()
    blocks: dict[str, list[np.ndarray]] = {}
    for start in range(0, count, batch_size):
        indices = list(range(start, min(count, start + batch_size)))
        batch = for_model(teacher.model, task.make_batch(0, indices))
        logits = head.logits(head.forward(teacher.model, batch), batch)
        rows = head.rows(batch)
        for term, values in logits.items():
            array = values.float().clamp(min=ABSENT).cpu().numpy()  # -inf (a missing choice) kept finite
            blocks.setdefault(term, []).extend(np.split(array, np.cumsum(rows[term])[:-1]))
    for term, parts in blocks.items():
        width = max(p.shape[1] for p in parts)  # choices per question vary: the narrower rows padded as absent
        values = np.concatenate([np.pad(p, ((0, 0), (0, width - p.shape[1])), constant_values=ABSENT)
                                 for p in parts]).astype(np.float32)  # (R, C)
        lengths = np.array([len(p) for p in parts], dtype=np.int64)
        index = np.stack([np.cumsum(lengths) - lengths, lengths], axis=1)  # (examples, 2): first row, rows
        atomic_write(directory / f"{term}.npy", lambda path, v=values: _save(path, v))
        atomic_write(directory / f"{term}.index.npy", lambda path, v=index: _save(path, v))
    atomic_write_text(marker, json.dumps({"examples": count, "terms": sorted(blocks), "teacher": str(teacher.directory),
                                          "precision": teacher.precision,
                                          "seconds": round(time.perf_counter() - started, 1)}) + "\n")
    return LogitsCache(directory, sorted(blocks))


def _save(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:  # np.save on a name would append ".npy" to the temporary file's
        np.save(handle, array)


def fit_width(teacher: Tensor, width: int) -> Tensor:
    """(R, C') teacher logits as (R, width): a question's missing choices are the columns cut or added (absent)."""
    if teacher.shape[-1] > width:
        return teacher[..., :width]
    if teacher.shape[-1] < width:
        return torch.nn.functional.pad(teacher, (0, width - teacher.shape[-1]), value=ABSENT)
    return teacher
