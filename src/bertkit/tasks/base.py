"""What every fine-tuning task shares: the task.json that makes a checkpoint self-describing, loading an encoder to
fine-tune (pre-trained or fresh), batching token sequences, and a line-numbered file reader."""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertkit.config import BertConfig
from bertkit.errors import CheckpointError, DataError, reason
from bertkit.fileio import atomic_write_text
from bertkit.masking import IGNORE_INDEX
from bertkit.tokenizer import Tokenizer

TASK_FILE = "task.json"


def save_task(spec: Any, info: Any, model: nn.Module, tokenizer: Tokenizer, directory: Path) -> None:
    """A self-describing task checkpoint: weights and config.json (its label entries derived from `info`, so
    transformers sees the labels too), the vocabulary, and task.json (`info`, the one place labels and task settings
    live)."""
    model.config.extra.update(spec.config_extra(info))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    write_task_json(directory, spec.write_info(info))


class FinetuneTask(Protocol):
    """What every fine-tuning task's TrainTask (`train.fit`'s protocol) shares, written once. A task class lists
    this Protocol among its bases and sets `task_name` (its SPEC's name), `tokenizer`, `info` and `train` (its
    encoded training examples, a list); it writes what is its own: batches, loss and evaluation (and `fingerprint`,
    where its training data is more than `train`)."""

    task_name: ClassVar[str]
    tokenizer: Tokenizer
    info: Any
    train: list[Any]
    find_unused_parameters: bool = False  # every parameter of a task model gets a gradient (DDP need not search)

    def fingerprint(self) -> str:
        """A digest of the encoded training examples: `--resume` refuses other data."""
        from bertkit.resume import data_fingerprint

        return data_fingerprint(self.train)

    def num_examples(self, epoch: int) -> int:
        return len(self.train)

    @property
    def headline_metric(self) -> str | None:
        """The metric that ranks evaluations unless --best-metric names another (`TaskSpec.headline`)."""
        from bertkit.tasks import task_spec

        spec = task_spec(self.task_name)
        if spec.headline is not None:
            return spec.headline
        if "metric" in {f.name for f in dataclasses.fields(self.info)}:
            return self.info.metric
        return None

    def save(self, model: nn.Module, directory: Path) -> None:
        from bertkit.tasks import task_spec

        save_task(task_spec(self.task_name), self.info, model, self.tokenizer, directory)


def write_task_json(directory: Path, data: dict[str, Any]) -> None:
    atomic_write_text(Path(directory) / TASK_FILE, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def read_task_info(directory: str | Path) -> tuple[Any, Any]:
    """(spec, info) of a fine-tuned checkpoint, from its task.json; errors name the file and the field."""
    from bertkit.tasks import TASKS, task_spec

    path = Path(directory) / TASK_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: not found; is {directory} a fine-tuned bertkit checkpoint? "
                              "(pre-trained encoders have no task; fine-tune one with `bertkit finetune`)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or "task" not in data:
        raise CheckpointError(f"{path}: expected an object with a 'task' key")
    if data["task"] not in TASKS:
        raise CheckpointError(f"{path}: task must be one of {sorted(TASKS)}, got {data['task']!r:.100}")
    spec = task_spec(data["task"])
    return spec, spec.read_info(data, str(path))


def check_task_fits_config(directory: str | Path, spec: Any, info: Any, config: BertConfig) -> None:
    """task.json and config.json describe the same model: its class (config `architectures`), the label entries
    config.json derives from task.json, and length. A mismatch means files from two checkpoints were mixed, and
    loading would predict nonsense."""
    task_path, config_path = Path(directory) / TASK_FILE, Path(directory) / "config.json"
    problems = []
    architecture = spec.model_for(info).hf_architecture
    if spec.load is None and architecture not in config.architectures:
        problems.append(f"{task_path} says task {spec.name!r} (a {architecture}) but {config_path} says "
                        f"architectures {config.architectures}")
    for key, ours in spec.config_extra(info).items():
        if key == "label2id":
            continue  # derived from id2label, as transformers derives it
        theirs = config.extra.get(key)
        if isinstance(ours, dict):  # id2label: compare the label lists
            ours = [ours[str(i)] for i in range(len(ours))]
            theirs = [theirs.get(str(i)) for i in range(len(theirs))] if isinstance(theirs, dict) else theirs
        if theirs is None and ours not in (False, None):
            problems.append(f"{config_path} has no {key}, which {task_path} implies ({ours!r:.200})")
        elif isinstance(ours, list):
            if theirs != ours:
                count = len(theirs) if isinstance(theirs, list) else 0
                problems.append(f"{task_path} has {len(ours)} labels {ours!r:.200} but {config_path} has {count} "
                                f"in {key} {theirs!r:.200}")
        elif (bool(theirs) != ours) if isinstance(ours, bool) else (theirs is not None and theirs != ours):
            problems.append(f"{task_path} implies {key}={ours!r} but {config_path} has {key}={theirs!r}")
    max_seq_len = getattr(info, "max_seq_len", None)
    if max_seq_len is not None and max_seq_len > config.max_position_embeddings:
        problems.append(f"{task_path} says max_seq_len={max_seq_len} but {config_path} has only "
                        f"max_position_embeddings={config.max_position_embeddings}")
    if problems:
        raise CheckpointError(f"{directory}: task.json and config.json do not describe the same model:\n  "
                              + "\n  ".join(problems))


def finetune_tokenizer(init_from: str | Path | None, tokenizer: str | Path | None) -> Tokenizer:
    """The vocabulary to fine-tune with: the pre-trained checkpoint's, or (training from scratch) `tokenizer`."""
    directory = init_from if tokenizer is None else tokenizer
    if directory is None:
        raise DataError("give --init-from (a pre-trained checkpoint) or --tokenizer (to train from scratch)")
    return Tokenizer.from_pretrained(directory)


def encoder_config(init_from: str | Path | None, tokenizer: Tokenizer, size: str = "mini",
                   max_seq_len: int = 128, **extra: Any) -> BertConfig:
    """Config for the model to fine-tune: the pre-trained checkpoint's, or a fresh preset (training from scratch).

    `extra` lands in config.json (e.g. id2label), so transformers sees the labels too.
    """
    if init_from is not None:
        config = BertConfig.from_pretrained(init_from)
        if tokenizer.vocab_size > config.vocab_size:
            raise CheckpointError(f"the vocabulary has {tokenizer.vocab_size} tokens but {init_from} has only "
                                  f"{config.vocab_size} embeddings")
        if max_seq_len > config.max_position_embeddings:
            raise DataError(f"max_seq_len {max_seq_len} exceeds {init_from}'s max_position_embeddings "
                            f"{config.max_position_embeddings}")
    else:
        config = BertConfig.preset(size, vocab_size=tokenizer.vocab_size, pad_token_id=tokenizer.pad_token_id,
                                   max_position_embeddings=max(max_seq_len, 128))
    config.extra.update(extra)
    return config


def build_task_model(cls: type[nn.Module], init_from: str | Path | None, config: BertConfig, seed: int,
                     **kwargs: Any) -> nn.Module:
    """The task model: encoder weights from `init_from` (head newly initialised), or all fresh."""
    torch.manual_seed(seed)
    if init_from is None:
        return cls(config, **kwargs)
    with warnings.catch_warnings():
        # a pre-trained encoder has no task head and may carry MLM/NSP heads: both are expected here
        warnings.filterwarnings("ignore", message=".*(newly initialised|not used by).*")
        model = cls.from_pretrained(init_from, config=config, **kwargs)
    model.train()
    return model


def pad_sequences(rows: Sequence[Sequence[int]], pad_id: int, types: Sequence[Sequence[int]] | None = None
                  ) -> dict[str, torch.Tensor]:
    """(input_ids, token_type_ids, attention_mask), padded to the longest row."""
    T = max(len(r) for r in rows)
    if types is not None and [len(t) for t in types] != [len(r) for r in rows]:
        raise ValueError("pad_sequences: every row needs one segment id per token")
    # padded Python lists, then one tensor each: a tensor per row costs more than the model's embedding lookup
    ids = [[*row, *[pad_id] * (T - len(row))] for row in rows]
    mask = [[1] * len(row) + [0] * (T - len(row)) for row in rows]
    segments = (torch.tensor([[*kinds, *[0] * (T - len(kinds))] for kinds in types], dtype=torch.long)
                if types is not None else torch.zeros(len(rows), T, dtype=torch.long))
    return {"input_ids": torch.tensor(ids, dtype=torch.long), "token_type_ids": segments,
            "attention_mask": torch.tensor(mask, dtype=torch.long)}


# Padded tokens per forward pass at most: a batch of 64 rows of 512 tokens held 64 x heads x 512 x 512 attention
# scores and every layer's activations at once (+300 MiB on BERT-tiny, far more on base); as many long rows in
# smaller passes cost the same time per token on a CPU.
MAX_BATCH_TOKENS = 8192


def run_batches(model: nn.Module, rows: Sequence[Any], collate: Callable[[Sequence[Any]], dict[str, Any]],
                forward: Callable[[nn.Module, dict[str, Any]], Sequence[Any]], batch_size: int = 64,
                max_tokens: int = MAX_BATCH_TOKENS) -> list[Any]:
    """The one batched-inference loop every task uses: `rows` in batches of `batch_size`, each collated on the CPU,
    moved to the model's device and run through `forward(model, batch)`, which returns one output per row. A batch
    whose padded `input_ids` hold more than `max_tokens` is halved until it fits (a single row runs as it is)."""
    out: list[Any] = []
    for start in range(0, len(rows), batch_size):
        out.extend(_run_batch(model, rows[start : start + batch_size], collate, forward, max_tokens))
    return out


def _run_batch(model: nn.Module, rows: Sequence[Any], collate: Callable[[Sequence[Any]], dict[str, Any]],
               forward: Callable[[nn.Module, dict[str, Any]], Sequence[Any]], max_tokens: int) -> list[Any]:
    from bertkit.device import for_model

    batch = collate(rows)
    if len(rows) > 1 and batch["input_ids"].numel() > max_tokens:
        half = len(rows) // 2
        return (_run_batch(model, rows[:half], collate, forward, max_tokens)
                + _run_batch(model, rows[half:], collate, forward, max_tokens))
    return list(forward(model, for_model(model, batch)))


def label_results(labels: Sequence[str], probabilities: Sequence[torch.Tensor]) -> list[dict[str, Any]]:
    """The result of a labelling head: the most probable label and every label's probability, per input."""
    return [{"label": labels[int(p.argmax())], "probabilities": dict(zip(labels, p.tolist(), strict=True))}
            for p in probabilities]


class SkipReport:
    """Counts input lines skipped and why, so no data is dropped silently; printed once at the end of reading."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.reasons: dict[str, list[int]] = {}

    def skip(self, line: int, why: str) -> None:
        self.reasons.setdefault(why, []).append(line)

    def bad(self, skip: bool, what: str, exc: Exception, line: int, why: str = "malformed record(s)") -> None:
        """A malformed record at `line` (`exc` says why): the DataError naming the file, the line and `what` was
        bad, or, with `skip` (a reader's `skip_bad_lines`), skipped and counted under `why`."""
        if not skip:
            raise DataError(f"bad {what}: {reason(exc)}", self.path, line) from exc
        self.skip(line, why)

    def summary(self) -> str:
        return "; ".join(f"{len(lines)} {reason} (line{'s' if len(lines) > 1 else ''} "
                         f"{', '.join(map(str, lines[:5]))}{', ...' if len(lines) > 5 else ''})"
                         for reason, lines in self.reasons.items())

    def report(self, kept: int | None = None) -> str | None:
        """Warn with what was skipped; with `kept` (how many records were read) 0, a DataError saying that every
        record was skipped, and why (not an empty file)."""
        if not self.reasons:
            return None
        if kept == 0:
            raise DataError(f"every record was skipped, so none is left: {self.summary()}", self.path)
        message = f"{self.path}: skipped {self.summary()}"
        warnings.warn(message, stacklevel=3)
        return message


def take(examples: list[Any], limit: int | None) -> list[Any]:
    """The first `limit` examples (all with None); a limit of 0 or less is an error, since `examples[:-30]` would
    silently drop the last 30 instead."""
    if limit is None:
        return examples
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        raise DataError(f"limit must be a positive number of examples, got {limit!r}")
    return examples[:limit]


def require_examples(examples: list[Any], path: str | Path | None, role: str) -> list[Any]:
    """An empty training or evaluation set is an error naming the file (an empty eval file used to exit 0 with
    no metrics, which reads as success)."""
    if not examples:
        raise DataError(f"no examples in the {role} file (empty, or every line blank)",
                        str(path) if path is not None else None)
    return examples


def normalise_label(value: Any, path: str | Path, line: int) -> str | None:
    """A JSON label as the string it is stored under: strings stripped; integers and integral floats as digits
    (1 and 1.0 are one class, "1"); other finite floats as Python writes them ("0.5"); booleans as JSON writes
    them ("true", "false"); null and blank strings are no label (as an empty TSV cell is). Lists, objects and
    NaN / infinity are errors naming file and line."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise DataError(f"label {value!r} is not a finite number", str(path), line)
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str):
        return value.strip() or None  # a class named "" would be refused by task.json's checks at load time
    raise DataError(f"label must be a string, number or boolean, got a JSON {_json_type(value)}: {value!r:.60}",
                    str(path), line)


def _json_type(value: Any) -> str:
    return {list: "array", dict: "object"}.get(type(value), type(value).__name__)


def warn_truncated(source: str | Path | None, count: int, total: int, max_len: int, what: str = "examples",
                   limit_name: str = "max_seq_len", hint: str = "; raise --max-seq-len to keep them whole") -> None:
    """One warning per file read that counts the examples cut to `max_len` tokens (the model never sees their end)."""
    if count:
        where = f"{source}: " if source is not None else ""
        warnings.warn(f"{where}{count} of {total} {what} were longer than {limit_name}={max_len} tokens and were "
                      f"truncated{hint}", stacklevel=3)


def inconsistent_tags(tags: Sequence[str]) -> list[int]:
    """Positions of I-/E- tags that do not continue an entity of their type (`O I-PER`, `B-LOC I-PER`): the
    scheme conversion repairs each into the start of a new entity, which changes the data, so callers count them."""
    bad = []
    previous = "O"
    for i, tag in enumerate(tags):
        if tag[:2] in ("I-", "E-") and not (previous[:2] in ("B-", "I-") and previous[2:] == tag[2:]):
            bad.append(i)
        previous = tag
    return bad


def report_inconsistent_tags(sequences: Sequence[tuple[Sequence[str], int]], path: str | Path) -> int:
    """Warn once with how many I-/E- tags (and in which lines' sentences) start an entity without its B- tag."""
    lines = []
    count = 0
    for tags, line in sequences:
        bad = inconsistent_tags(tags)
        if bad:
            count += len(bad)
            lines.append(line)
    if count:
        shown = ", ".join(map(str, lines[:5])) + (", ..." if len(lines) > 5 else "")
        warnings.warn(f"{path}: repaired {count} I-/E- tag(s) that continue no entity of their type (read as the "
                      f"start of a new entity) in {len(lines)} sentence(s) (line{'s' if len(lines) > 1 else ''} "
                      f"{shown})", stacklevel=3)
    return count


# ---- what the distillation heads of several tasks share (`TaskSpec.distill`) ----------------------------------------

def one_row_each(batch: dict[str, Any], key: str = "input_ids") -> list[int]:
    """Soft-target rows per example of a head with one distribution per example (`key`: a tensor with a row per
    example)."""
    return [1] * len(batch[key])


def labelled_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Summed cross-entropy over the examples that have a label (IGNORE_INDEX: an unlabeled one)."""
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")


def labelled_count(labels: Tensor) -> float:
    return float((labels != IGNORE_INDEX).sum())
