"""`bertkit distill`: a fine-tuned teacher's task taught to a smaller student by `train.fit`: the options, the student
(built with the teacher's task, labels and vocabulary), the TrainTask that wraps the teacher's task with the
distillation losses, and `distill()`, which runs it all and publishes an ordinary task checkpoint.

Shape legend: B batch, T tokens, H hidden.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from bertkit.argtypes import flag, float_range, int_range
from bertkit.config import BertConfig
from bertkit.distill.augment import PieceSampler, augment_ids
from bertkit.distill.losses import attention_loss, attention_probabilities, hidden_loss, layer_map, soft_target_loss
from bertkit.distill.taps import Taps
from bertkit.distill.teacher import CACHE_DIR, LogitsCache, Teacher, build_cache, fit_width, load_teacher
from bertkit.errors import CheckpointError, DataError
from bertkit.fileio import atomic_write
from bertkit.model import init_weights
from bertkit.tasks.base import build_task_model, save_task
from bertkit.tasks.spec import DistillHead, TaskSpec
from bertkit.tokenizer import read_vocabulary

# Weights a checkpoint carries for --resume only: the publish step leaves out every `training_*` file.
PROJECTION_NAME = "training_projection.safetensors"
WEIGHT = float_range(0.0)


@dataclass
class DistillOptions:
    """How to distil; every field is a `bertkit distill --flag`."""

    temperature: float = flag("softmax temperature of the soft targets (the KL term is scaled by its square)", 2.0,
                              type=float_range(0.0, low_open=True))
    soft_weight: float = flag("weight of the soft-target loss (KL divergence to the teacher's distribution)", 1.0,
                              type=WEIGHT)
    hard_weight: float = flag("weight of the hard-label loss on the labelled examples (0: soft targets only)", 1.0,
                              type=WEIGHT)
    hidden_weight: float = flag("weight of the hidden-state MSE between mapped layers, through a learned "
                                "projection where the widths differ (0: off)", 0.0, type=WEIGHT)
    attention_weight: float = flag("weight of the attention-map MSE between mapped layers (0: off)", 0.0,
                                   type=WEIGHT)
    augment: int = flag("augmented copies of each training example for the soft targets (some word pieces "
                        "replaced by [MASK] or by a piece drawn from the training data; unlabeled)", 0,
                        type=int_range(0, 100))
    augment_prob: float = flag("with --augment: the chance that a word piece is replaced", 0.15,
                               type=float_range(0.0, 1.0, low_open=True))
    teacher_precision: str = flag("the teacher's inference precision (auto: what --precision auto picks on this "
                                  "device; fp32 where intermediate layers are distilled and auto would be int8)",
                                  "auto", choices=("auto", "fp32", "bf16", "int8"))

    @property
    def layers(self) -> bool:
        """Whether intermediate layers are distilled (the teacher then runs beside the student, uncached)."""
        return self.hidden_weight > 0 or self.attention_weight > 0


class Student(nn.Module):
    """What distillation trains: the student task model and, where hidden states are distilled between different
    widths, the projection of its hidden states to the teacher's (learned with it, saved for --resume, not published).
    `forward(batch)`: the task's output, the hidden states (projected) and the QKV projections of every layer."""

    def __init__(self, model: nn.Module, head: DistillHead, teacher_hidden: int, options: DistillOptions) -> None:
        super().__init__()
        self.model = model
        self.head = head
        width = model.config.hidden_size
        self.projection = None
        if options.hidden_weight > 0 and width != teacher_hidden:
            self.projection = nn.Linear(width, teacher_hidden)
            init_weights(self.projection, model.config)
        self.taps = Taps(model.bert) if options.layers else None

    def forward(self, batch: dict[str, Any]) -> tuple[Any, list[Tensor], list[Tensor]]:
        output = self.head.forward(self.model, batch)
        if self.taps is None:
            return output, [], []
        hidden = self.taps.hidden()  # (B, T, H_student) per layer, the embeddings' output first
        if self.projection is not None:
            hidden = [self.projection(h) for h in hidden]  # (B, T, H_teacher)
        return output, hidden, self.taps.projections()


class DistillTask:
    """TrainTask for `train.fit`: the teacher's task's batches (with its cached logits), evaluation and checkpoint;
    the losses of distillation: soft targets, hard labels, hidden states and attention maps of mapped layers."""

    find_unused_parameters = False

    def __init__(self, task: Any, head: DistillHead, teacher: Teacher, student: Student, options: DistillOptions,
                 cache: LogitsCache | None) -> None:
        self.task, self.head, self.teacher, self.options, self.cache = task, head, teacher, options, cache
        self.student = student
        self.info = teacher.info
        student_layers = student.model.config.num_hidden_layers
        self.mapping = layer_map(teacher.config.num_hidden_layers, student_layers)
        self.heads = (teacher.config.num_attention_heads, student.model.config.num_attention_heads)
        self.teacher_taps = Taps(teacher.model.bert) if options.layers else None

    def fingerprint(self) -> str:
        from bertkit.resume import data_fingerprint  # the examples, the teacher and the losses: --resume refuses others

        return data_fingerprint([self.task.train, getattr(self.task, "train_intents", None), self.teacher.fingerprint,
                                 dataclasses.asdict(self.options)])

    @property
    def headline_metric(self) -> str | None:
        return self.task.headline_metric  # the student's evaluations ranked as the teacher's task ranks its own

    def num_examples(self, epoch: int) -> int:
        return len(self.task.train)

    def make_batch(self, epoch: int, indices: list[int]) -> dict[str, Any]:
        batch = self.task.make_batch(epoch, indices)
        if self.cache is not None:
            batch.update({f"teacher_{term}": t for term, t in self.cache.targets(indices).items()})
        return batch

    def tokens(self, batch: dict[str, Any]) -> int:
        return self.task.tokens(batch)

    def counts(self, batch: dict[str, Any]) -> dict[str, float]:
        o = self.options
        rows = self.head.rows(batch) if o.soft_weight else {}
        out = {f"soft_{term}": float(sum(counts)) for term, counts in rows.items()}
        if o.hard_weight:
            out.update(self.head.hard_counts(batch, self.info))
        tokens = float(batch["attention_mask"].sum())
        out.update({name: tokens for name, weight in (("hidden", o.hidden_weight), ("attention", o.attention_weight))
                    if weight})
        return out

    def _teacher(self, batch: dict[str, Any]) -> tuple[dict[str, Tensor], list[Tensor], list[Tensor]]:
        """The teacher's logits (cached, or computed now) and, when distilled, its hidden states and QKV."""
        if self.cache is not None and self.teacher_taps is None:
            return {term[len("teacher_"):]: v for term, v in batch.items() if term.startswith("teacher_")}, [], []
        model = self.teacher.model
        with torch.no_grad(), torch.autocast(batch["input_ids"].device.type, enabled=False):
            logits = self.head.logits(self.head.forward(model, batch), batch)
            taps = self.teacher_taps
            return logits, (taps.hidden() if taps else []), (taps.projections() if taps else [])

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        o = self.options
        output, hidden, qkv = model(batch)
        teacher_logits, teacher_hidden, teacher_qkv = self._teacher(batch)
        parts: dict[str, Tensor] = {}
        if o.soft_weight:
            for term, logits in self.head.logits(output, batch).items():
                target = fit_width(teacher_logits[term].to(logits.device), logits.shape[-1])
                parts[f"soft_{term}"] = o.soft_weight * soft_target_loss(logits, target, o.temperature)
        if o.hard_weight:
            for term, value in self.head.hard(self.student.model, output, batch, self.info).items():
                parts[term] = o.hard_weight * value
        mask = batch["attention_mask"]
        if o.hidden_weight:
            pairs = zip(range(len(self.mapping) + 1), [0, *self.mapping], strict=True)  # the embeddings, then layers
            parts["hidden"] = o.hidden_weight * sum(hidden_loss(hidden[m], teacher_hidden[t], mask) for m, t in pairs)
        if o.attention_weight:
            teacher_heads, student_heads = self.heads
            parts["attention"] = o.attention_weight * sum(
                attention_loss(attention_probabilities(qkv[m - 1], mask, student_heads),
                               attention_probabilities(teacher_qkv[t - 1], mask, teacher_heads), mask)
                for m, t in enumerate(self.mapping, start=1))
        return parts

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return self.task.evaluate(model.model)

    def save(self, model: nn.Module, directory: Path) -> None:
        save_task(self.teacher.spec, self.info, model.model, self.task.tokenizer, directory)
        if model.projection is not None:
            state = {k: v.detach().cpu().contiguous() for k, v in model.projection.state_dict().items()}
            atomic_write(directory / PROJECTION_NAME, lambda path: save_file(state, str(path)))

    def load(self, model: nn.Module, directory: Path) -> None:
        """What `save` wrote, back into `model` (a resumed run)."""
        from bertkit.checkpoint import from_hf_state_dict, read_weights

        weights, source = read_weights(directory)
        from_hf_state_dict(model.model, weights, source, strict=True)
        if model.projection is not None:
            model.projection.load_state_dict(load_file(directory / PROJECTION_NAME))


def distill_head(spec: TaskSpec) -> DistillHead:
    """How distillation reads the teacher's task (its spec's `distill`); for a task it does not cover, an error that
    says why (its spec's `not_distilled`)."""
    if spec.distill is not None:
        return spec.distill
    from bertkit.tasks import TASKS, task_spec

    covered = [name for name in TASKS if task_spec(name).distill is not None]
    why = spec.not_distilled or "its head is not one of logits over classes"
    raise DataError(f"distillation covers {', '.join(covered)}; not {spec.name}: {why}")


def build_student(teacher: Teacher, size: str | None, init: str | Path | None, seed: int,
                  layers: int | None = None) -> nn.Module:
    """The student task model: the teacher's task, labels (config.json's entries) and vocabulary; a `size` preset
    (random weights), the encoder of pre-trained checkpoint `init` (its vocabulary must be the teacher's, or its
    beginning: the teacher's added tokens are appended), or the teacher's own encoder cut to `layers` layers
    (`teacher_layers_kept`, `load_teacher_layers`). The task head starts fresh; a CRF starts from the teacher's
    transitions."""
    spec, tc = teacher.spec, teacher.config
    if sum(x is not None for x in (size, init, layers)) != 1:
        raise DataError("give the student one of: a size (--student-size), a pre-trained checkpoint (--student-init) "
                        "or a number of the teacher's layers (--student-layers)")
    if layers is not None:
        if not 1 <= layers < tc.num_hidden_layers:
            raise DataError(f"--student-layers {layers}: the teacher has {tc.num_hidden_layers} layers; a student "
                            f"keeps 1 to {tc.num_hidden_layers - 1}")
        config = copy.deepcopy(tc)
        config.num_hidden_layers = layers
    elif init is None:
        config = BertConfig.preset(size, vocab_size=tc.vocab_size, pad_token_id=tc.pad_token_id,
                                   type_vocab_size=tc.type_vocab_size,
                                   max_position_embeddings=tc.max_position_embeddings)
    else:
        config = BertConfig.from_pretrained(init)
        theirs, ours = read_vocabulary(init)[0], read_vocabulary(teacher.directory)[0]
        if ours[: len(theirs)] != theirs:
            raise CheckpointError(f"--student-init {init}: its vocabulary ({len(theirs)} tokens) is not the teacher's "
                                  f"({len(ours)}); a student reads the teacher's token ids")
        if config.type_vocab_size < tc.type_vocab_size or config.max_position_embeddings < teacher.info.max_seq_len:
            raise CheckpointError(f"--student-init {init}: it has {config.type_vocab_size} segment types and "
                                  f"{config.max_position_embeddings} positions; the teacher's task needs "
                                  f"{tc.type_vocab_size} and {teacher.info.max_seq_len}")
    config.extra.update(spec.config_extra(teacher.info))
    model = build_task_model(spec.model, init, config, seed)
    if layers is not None:
        load_teacher_layers(model, teacher, teacher_layers_kept(tc.num_hidden_layers, layers))
    if model.bert.embeddings.word.num_embeddings < tc.vocab_size:
        model.bert.resize_token_embeddings(tc.vocab_size)
    student_crf, teacher_crf = (getattr(getattr(m, "head", None), "crf", None) for m in (model, teacher.model))
    if student_crf is not None and teacher_crf is not None:
        student_crf.load_state_dict({k: v.float() for k, v in teacher_crf.state_dict().items()})
    return model


def teacher_layers_kept(total: int, layers: int) -> list[int]:
    """Which of the teacher's `total` layers a student of `layers` keeps: every total/layers-th from the first, as
    DistilBERT initialises its student (6 of 12: 0, 2, ..., 10; 1 of 6: 0)."""
    return [i * total // layers for i in range(layers)]


def load_teacher_layers(model: nn.Module, teacher: Teacher, kept: list[int]) -> None:
    """Give a student's encoder the teacher's float32 weights (read from its checkpoint): its embeddings and pooler,
    and teacher layer `kept[i]` as student layer i."""
    from bertkit.model import BertModel

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(newly initialised|not used by).*")  # the task head's weights
        source = BertModel.from_pretrained(teacher.directory)
    state = {name: value for name, value in source.state_dict().items() if not name.startswith("layers.")}
    for new, old in enumerate(kept):
        state.update({f"layers.{new}.{name}": value for name, value in source.layers[old].state_dict().items()})
    model.bert.load_state_dict(state)


def add_augmented(task: Any, head: DistillHead, options: DistillOptions, seed: int) -> int:
    """`options.augment` copies of each training example, token-level augmented (seeded: the same copies in every
    run), appended unlabeled. Returns how many."""
    tok = task.tokenizer
    protected = tok.special_token_ids
    count = len(task.train)
    rng = np.random.default_rng([seed, 7])
    sampler = PieceSampler(_token_rows(task.train), protected)

    def change(ids: list[int]) -> list[int]:
        return augment_ids(ids, rng, options.augment_prob, tok.mask_token_id, protected, sampler)

    for _ in range(options.augment):
        for index in range(count):
            head.augment(task, index, change)
    return options.augment * count


def _token_rows(rows: list[Any]) -> list[list[int]]:
    """The token id lists of a task's encoded examples, whatever their layout (tuples, Pieces, choice lists,
    Encoded sequences)."""
    out = []
    for row in rows:
        if hasattr(row, "rows"):
            out.extend(ids for ids, _ in row.rows)
            continue
        first = row.input_ids if hasattr(row, "input_ids") else row[0]
        out.extend(first if first and isinstance(first[0], list) else [first])
    return out


def distill(teacher_dir: str | Path, train_file: str | Path, config: Any, *, eval_file: str | Path | None = None,
            fmt: str | None = None, unlabeled: str | Path | None = None, student_size: str | None = None,
            student_init: str | Path | None = None, limit: int | None = None,
            options: DistillOptions | None = None, student_layers: int | None = None) -> Any:
    """Distil the fine-tuned checkpoint `teacher_dir` into a student (a `student_size` preset, `student_init`, or
    `student_layers` of the teacher's own layers) on
    `train_file` (read as the teacher's task reads it, `fmt` its format), plus the texts of `unlabeled` (one a line)
    and `options.augment` augmented copies for the soft targets; evaluated on `eval_file`. `config`: the TrainConfig
    of `fit`, whose run directory gets the student as `model/`, an ordinary checkpoint of the teacher's task."""
    from bertkit import distributed
    from bertkit.device import resolve_device
    from bertkit.distributed import distributed_setup
    from bertkit.fileio import read_lines
    from bertkit.resume import data_fingerprint
    from bertkit.rundir import claim_run_dir
    from bertkit.train import fit, steps_summary

    options = options or DistillOptions()
    device = resolve_device(config.device)
    rank, _ = distributed_setup(device)
    teacher = load_teacher(teacher_dir, device, options.teacher_precision, options.layers)
    head = distill_head(teacher.spec)
    task = head.build(teacher.tokenizer, teacher.info, Path(train_file), Path(eval_file) if eval_file else None, fmt,
                      limit)
    labelled = len(task.train)
    augmented = add_augmented(task, head, options, config.seed) if options.augment else 0
    if unlabeled is not None:
        if head.unlabeled is None:
            raise DataError(f"--unlabeled: a {teacher.spec.name} input is more than a text; use --augment instead")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*truncated")  # counted below, as soft targets only
            head.unlabeled(task, [(n, line) for n, line in read_lines(unlabeled) if line.strip()], str(unlabeled))
    model = build_student(teacher, student_size, student_init, config.seed, student_layers)
    student = Student(model, head, teacher.config.hidden_size, options)
    output = Path(config.output_dir)
    with claim_run_dir(output, resume=config.resume, overwrite=config.overwrite, rank=rank, own=(CACHE_DIR,)):
        cache = None
        if options.soft_weight and not options.layers:
            digest = data_fingerprint([task.train, getattr(task, "train_intents", None)])
            if rank == 0:
                cache = build_cache(teacher, head, task, output / CACHE_DIR, digest)
            distributed.barrier()
            if rank != 0:
                cache = build_cache(teacher, head, task, output / CACHE_DIR, digest, write=False)
        if rank == 0:
            print(f"teacher: {teacher.directory} ({teacher.spec.name}, {teacher.config.num_hidden_layers} layers, "
                  f"hidden {teacher.config.hidden_size}) at {teacher.precision} ({teacher.why}); student: "
                  f"{model.config.num_hidden_layers} layers, hidden {model.config.hidden_size}")
            print(f"examples: {labelled:,} labelled, {augmented:,} augmented, "
                  f"{len(task.train) - labelled - augmented:,} unlabeled; {steps_summary(config, len(task.train))}")
        title = f"distil {teacher.spec.name} ({Path(train_file).parent.name or 'data'})"
        return fit(student, DistillTask(task, head, teacher, student, options, cache), config, title=title)
