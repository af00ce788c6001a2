"""TaskSpec: what one task is (name, model, formats, input schema, options, the info that lives in task.json, and its
functions), declared in the task's own file; the CLI, Predictor, server and web page iterate over specs."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from torch import nn

from bertkit.config import SIZE_LIMITS
from bertkit.errors import CheckpointError

MAX_POSITIONS = SIZE_LIMITS["max_position_embeddings"]  # no sequence can be longer than the largest position table


@dataclass(frozen=True)
class InputField:
    """One field of a prediction input: a string, or (`kind="list"`) a list of strings."""

    name: str
    help: str
    required: bool = True
    multiline: bool = False  # the web page shows a text area rather than a one-line box
    kind: str = "text"  # "text" or "list" (the page takes one item per line)


@dataclass(frozen=True)
class TaskSpec:
    """A task, as data. Functions:

    - `predict(model, tokenizer, info, inputs) -> results`: one result dict per input (inputs already checked
      against `inputs`);
    - `evaluate(model, tokenizer, info, path, fmt) -> metrics` on a labelled file;
    - `finetune(train, train_config, *, eval_file, fmt, init_from, tokenizer, model_size, max_seq_len, limit,
      options)`: `options` is an instance of the `options` dataclass (each of its flag fields one `finetune --flag`;
      its defaults are the task's), given only to a task that has one;
    - `config_extra(info) -> dict`: the config.json entries derived from info (id2label for transformers), written
      when the model is saved and checked when it is loaded;
    - `load(directory, config) -> model`, for tasks whose model class depends on the checkpoint (else the model
      class, `model_for(info)`, is loaded strictly);
    - `pretrained_info(directory, config) -> info`, for a task that runs on any pre-trained checkpoint (one without
      task.json: fill-mask, sentence vectors): its info for that checkpoint (`defaults_for` gives the info class's
      defaults, max_seq_len at most the checkpoint's positions);
    - `work(item, info) -> Work`: an upper bound of what the model encodes for one (checked) input, found without
      tokenizing (each token covers at least one character): how many sequences, how many tokens in all. The
      server refuses a request whose work is over its budget before any encoding (default: one sequence of all
      the input's characters and the special tokens, at most max_seq_len);
    - `validate(item, index)`: task-specific checks of one input beyond the schema (DataError naming the input),
      run before the input is batched with others.
    `view` tells the web page how to show a result: which result keys hold a label, probabilities, spans (and over
    which input field), a corrected text, fill-mask candidates, graph edges (subject, predicate, object with
    their types) or a vector. `heads`: a task with more than one head names each head's model class, and its
    info's `head` field says which one a checkpoint holds (`model` is the default head's class).
    """

    name: str
    description: str
    model: type[nn.Module]
    info: type  # a dataclass: everything besides the weights that predict and evaluate read (task.json)
    inputs: tuple[InputField, ...]
    predict: Callable[..., list[dict[str, Any]]]
    view: dict[str, str]
    example: dict[str, str]  # a typical input: the web page's placeholder
    formats: tuple[str, ...] = ()
    default_format: str | None = None
    options: type | None = None  # a dataclass whose fields are the task's finetune flags
    finetune: Callable[..., Any] | None = None  # None: the task needs no training (fill-mask)
    evaluate: Callable[..., dict[str, float]] | None = None
    # The evaluation metric that ranks checkpoints unless --best-metric names another. None: the info's `metric`
    # field where the info has one (a headline that follows the data format), else the evaluation's first metric.
    headline: str | None = None
    config_extra: Callable[[Any], dict[str, Any]] = field(default=lambda info: {})
    load: Callable[[Path, Any], nn.Module] | None = None
    pretrained_info: Callable[[Path, Any], Any] | None = None  # None: a pre-trained checkpoint cannot run this task
    work: Callable[[dict[str, Any], Any], Work] = field(default=lambda item, info: one_sequence(item, info))
    validate: Callable[[dict[str, Any], int], None] | None = None
    distill: DistillHead | None = None  # how `bertkit distill` teaches this task to a student; None: it does not
    not_distilled: str = ""  # where `distill` is None: why (said to a user who asks to distil the task)
    heads: dict[str, type[nn.Module]] = field(default_factory=dict)

    def model_for(self, info: Any) -> type[nn.Module]:
        """The model class of a checkpoint with this info: the head its `head` field names, else `model`."""
        return self.heads.get(getattr(info, "head", ""), self.model)

    @property
    def trainable(self) -> bool:
        return self.finetune is not None

    @property
    def serves_pretrained(self) -> bool:
        """Whether a pre-trained checkpoint (no task.json) runs this task."""
        return self.pretrained_info is not None

    @property
    def plain_text(self) -> bool:
        """Whether a bare string is an input (it is then {"text": string})."""
        return [f.name for f in self.inputs if f.required] == ["text"]

    def schema(self) -> dict[str, Any]:
        """What a client needs to call this task (the server's /health): input fields, result view, an example."""
        return {"name": self.name, "description": self.description, "plain_text": self.plain_text,
                "inputs": [dataclasses.asdict(f) for f in self.inputs], "view": self.view, "example": self.example}

    def read_info(self, data: dict[str, Any], source: str) -> Any:
        """The info dataclass from task.json's object: every field checked (type, range); unknown keys are left
        alone (newer writers may add some). Raises CheckpointError naming the file, the field and what was
        expected."""
        missing = [f.name for f in fields(self.info)
                   if f.name not in data and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise CheckpointError(f"{source}: a {self.name} task.json needs {missing}; it has {sorted(data)}")
        values = {}
        for f in fields(self.info):
            if f.name not in data:
                continue
            check, expected = f.metadata.get("check"), f.metadata.get("expected", "")
            if check is not None and not check(data[f.name]):
                raise CheckpointError(f"{source}: {f.name} must be {expected}, got {data[f.name]!r:.200}")
            values[f.name] = data[f.name]
        return self.info(**values)

    def write_info(self, info: Any) -> dict[str, Any]:
        """task.json's object: the task's name and its info."""
        return {"task": self.name, **dataclasses.asdict(info)}


@dataclass(frozen=True)
class DistillHead:
    """How `bertkit distill` reads a task whose head gives logits over classes (`TaskSpec.distill`, declared in the
    task's file). `task` is the task's TrainTask; an unlabeled or augmented example's label is IGNORE_INDEX.

    - `build(tokenizer, info, train, heldout, fmt, limit)`: the TrainTask on the teacher's info, its training and
      held-out files read in format `fmt` (None: the task's default); a label the teacher does not know is an error
      naming the file and line;
    - `forward(model, batch)`: the model's output on a batch;
    - `logits(output, batch)`: term -> (R, C) logits the soft targets apply to, rows in example order;
    - `rows(batch)`: term -> how many of those rows each example of the batch has;
    - `hard(model, output, batch, info)` / `hard_counts(batch, info)`: term -> the summed loss over the labelled
      examples, and its count;
    - `augment(task, index, change)`: append a copy of training example `index`, unlabeled, whose token ids went
      through `change` (which keeps their length);
    - `unlabeled(task, lines, source)`: append unlabeled texts ((line number, text) pairs of file `source`); None
      where an input is more than a text."""

    build: Callable[..., Any]
    forward: Callable[[nn.Module, dict[str, Any]], Any]
    logits: Callable[[Any, dict[str, Any]], dict[str, Any]]
    rows: Callable[[dict[str, Any]], dict[str, list[int]]]
    hard: Callable[[nn.Module, Any, dict[str, Any], Any], dict[str, Any]]
    hard_counts: Callable[[dict[str, Any], Any], dict[str, float]]
    augment: Callable[[Any, int, Callable[[list[int]], list[int]]], None]
    unlabeled: Callable[[Any, list[tuple[int, str]], str], Any] | None = None


def defaults_for(info: type) -> Callable[[Path, Any], Any]:
    """`pretrained_info` giving the info class's defaults, max_seq_len cut to the checkpoint's position table."""
    return lambda directory, config: info(max_seq_len=min(info().max_seq_len, config.max_position_embeddings))


# ---- work: what one input costs the model, bounded before any tokenizing ------------------------------------------

@dataclass(frozen=True)
class Work:
    """What the model encodes for some inputs, at most: `sequences` rows of `tokens` tokens in all."""

    sequences: int = 0
    tokens: int = 0

    def __add__(self, other: Work) -> Work:
        return Work(self.sequences + other.sequences, self.tokens + other.tokens)


def characters(item: dict[str, Any]) -> int:
    """The characters of every text (and every list item) of an input."""
    return sum(len(v) if isinstance(v, str) else sum(len(x) for x in v) if isinstance(v, list) else 0
               for v in item.values())


def sequence(chars: int, max_seq_len: int, specials: int = 3) -> Work:
    """One sequence of `chars` characters: at most one token a character, plus [CLS] and [SEP]s, cut at
    max_seq_len."""
    return Work(1, min(max_seq_len, chars + specials))


def one_sequence(item: dict[str, Any], info: Any) -> Work:
    return sequence(characters(item), info.max_seq_len)


def windows(chars: int, width: int, stride: int, max_seq_len: int) -> Work:
    """Windows of `width` tokens every `stride` over a text of `chars` characters (at most as many tokens)."""
    count = 1 if chars <= width else 1 + -(-(chars - width) // max(1, stride))
    return Work(count, count * min(max_seq_len, chars + max_seq_len - width))  # windows overlap: no better sum


def chunks(item: dict[str, Any], info: Any) -> Work:
    """A text cut into consecutive pieces of max_seq_len - 2 tokens at word boundaries: a piece may end early at
    a word that does not fit, so at most twice as many pieces as full ones."""
    chars, width = characters(item), info.max_seq_len - 2
    count = max(1, 2 * -(-chars // width))
    return Work(count, min(count * info.max_seq_len, chars + 2 * count))


# ---- info fields: each knows how to check a value read back from task.json -------------------------------------

def _label_list(value: Any) -> bool:
    return (isinstance(value, list) and bool(value) and all(isinstance(v, str) and v for v in value)
            and len(set(value)) == len(value))


def _int_in(low: int, high: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def _float_in(low: float, high: float) -> Callable[[Any], bool]:
    return lambda v: (isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                      and low <= v <= high)


def labels_field(help: str = "the label set, in id order") -> Any:
    return field(metadata={"check": _label_list, "expected": "a non-empty list of distinct, non-empty strings",
                           "help": help})


def seq_len_field(default: Any = dataclasses.MISSING) -> Any:
    return field(default=default, metadata={"check": _int_in(8, MAX_POSITIONS),
                                            "expected": f"an integer from 8 to {MAX_POSITIONS}"})


def int_field(low: int, high: int, default: Any = dataclasses.MISSING, help: str = "") -> Any:
    return field(default=default, metadata={"check": _int_in(low, high),
                                            "expected": f"an integer from {low} to {high}", "help": help})


def float_field(low: float, high: float, default: Any = dataclasses.MISSING, help: str = "") -> Any:
    return field(default=default, metadata={"check": _float_in(low, high),
                                            "expected": f"a number from {low:g} to {high:g}", "help": help})


def choice_field(choices: Sequence[str], default: Any = dataclasses.MISSING, help: str = "") -> Any:
    return field(default=default, metadata={"check": lambda v: v in choices, "choices": tuple(choices),
                                            "expected": " or ".join(f'"{c}"' for c in choices), "help": help})


def bool_field(default: Any = dataclasses.MISSING, help: str = "") -> Any:
    return field(default=default, metadata={"check": lambda v: isinstance(v, bool), "expected": "true or false",
                                            "help": help})


def name_field(default: Any = dataclasses.MISSING, help: str = "") -> Any:
    return field(default=default, metadata={"check": lambda v: isinstance(v, str) and bool(v),
                                            "expected": "a non-empty string", "help": help})


def id2label(labels: Sequence[str]) -> dict[str, Any]:
    """config.json's label entries as transformers writes them."""
    return {"id2label": {str(i): label for i, label in enumerate(labels)},
            "label2id": {label: i for i, label in enumerate(labels)}}
