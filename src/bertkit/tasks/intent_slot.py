"""Joint intent classification and slot filling for task-oriented dialogue (JointBERT): [CLS] -> intent, first word
pieces -> slot tags (optional CRF); intent accuracy, slot F1 (seqeval) and sentence-level exact match.

Input formats (`--format`; `--train` / `--eval` name a directory):
- `atis` (JointBERT's layout, also SNIPS): `seq.in` (space-separated words), `seq.out` (one BIO tag per word),
  `label` (intent; multi-intents joined with '#' are one label), line-aligned.
- `cais`: `ch.<split>` (one `char TAG` per line, blank line between utterances, BIOES) and `ch.<split>.intent`.
An evaluation intent or slot tag never seen in training cannot be predicted and counts as an error (as JointBERT
maps it to UNK).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertkit.config import BertConfig
from bertkit.errors import DataError
from bertkit.fileio import read_lines
from bertkit.masking import IGNORE_INDEX
from bertkit.metrics import accuracy, span_prf
from bertkit.model import BertModel, CheckpointIO, Dropout, init_weights
from bertkit.tasks.base import (
    FinetuneTask,
    labelled_count,
    labelled_cross_entropy,
    one_row_each,
    report_inconsistent_tags,
    require_examples,
    run_batches,
    take,
)
from bertkit.tasks.ner import _read_conll
from bertkit.tasks.spec import (
    DistillHead,
    InputField,
    TaskSpec,
    bool_field,
    choice_field,
    labels_field,
    seq_len_field,
)
from bertkit.tasks.tagging import (
    Piece,
    TaggingHead,
    assemble,
    check_teacher_tags,
    collate,
    convert_scheme,
    copy_piece,
    crf_option,
    encode_sentences,
    entities_with_offsets,
    labelled_tag_count,
    labelled_tag_loss,
    normalise_tag,
    scheme_option,
    tag_set,
    unlabeled_pieces,
    word_level_option,
    words_of,
)
from bertkit.tokenizer import Tokenizer

NAME = "intent_slot"
FORMATS = ("atis", "cais")
UNKNOWN = "UNK"


@dataclass
class Utterance:
    words: list[str]
    tags: list[str]
    intent: str
    line: int


def read_utterances(directory: str | Path, fmt: str = "atis") -> list[Utterance]:
    directory = Path(directory)
    if fmt not in FORMATS:
        raise DataError(f"unknown intent/slot format {fmt!r}; choose one of {FORMATS}")
    if not directory.is_dir():
        raise DataError("expected a directory (seq.in/seq.out/label, or ch.<split> and ch.<split>.intent)",
                        str(directory))
    if fmt == "atis":
        words = [line for _, line in read_lines(directory / "seq.in")]
        tags = [line for _, line in read_lines(directory / "seq.out")]
        intents = [line.strip() for _, line in read_lines(directory / "label")]
        if not len(words) == len(tags) == len(intents):
            raise DataError(f"seq.in has {len(words)} lines, seq.out {len(tags)}, label {len(intents)}; "
                            "they must be line-aligned", str(directory))
        out = []
        for number, (w, t, intent) in enumerate(zip(words, tags, intents, strict=True), start=1):
            ws, ts = w.split(), [normalise_tag(x) for x in t.split()]
            if len(ws) != len(ts):
                raise DataError(f"{len(ws)} words in seq.in but {len(ts)} tags in seq.out",
                                str(directory / "seq.out"), number)
            if not ws or not intent:
                raise DataError("empty utterance or intent", str(directory / "seq.in"), number)
            bad = next((x for x in ts if x != "O" and (len(x) < 3 or x[1] != "-" or x[0] not in "BIES")), None)
            if bad is not None:
                raise DataError(f"tag {bad!r} is not O or B-/I-/E-/S-/M-TYPE", str(directory / "seq.out"), number)
            out.append(Utterance(ws, ts, intent, number))
        return out
    texts = sorted(p for p in directory.glob("ch.*") if not p.name.endswith(".intent"))
    if len(texts) != 1:
        raise DataError(f"expected exactly one ch.<split> file, found {[p.name for p in texts]}", str(directory))
    sentences = _read_conll(texts[0], False)
    intent_path = texts[0].with_name(texts[0].name + ".intent")
    intents = [line.strip() for _, line in read_lines(intent_path) if line.strip()]
    if len(intents) != len(sentences):
        raise DataError(f"{len(sentences)} utterances but {len(intents)} intents", str(intent_path))
    return [Utterance(s.words, s.tags, i, s.line) for s, i in zip(sentences, intents, strict=True)]


class BertForIntentSlot(CheckpointIO, nn.Module):
    """BERT with an intent classifier on the pooled [CLS] and a slot tagger on first word pieces (JointBERT)."""

    hf_architecture = "BertModel"

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.intent_dropout = Dropout(config.hidden_dropout_prob)
        self.intent_classifier = nn.Linear(config.hidden_size, len(config.extra["bertkit_intents"]))
        self.head = TaggingHead(config, len(config.extra["bertkit_slots"]), bool(config.extra.get("bertkit_crf")))
        init_weights(self.intent_classifier, config)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None, word_index: Tensor
                ) -> tuple[Tensor, Tensor]:
        out = self.bert(input_ids, attention_mask, token_type_ids)
        intent = self.intent_classifier(self.intent_dropout(out.pooler_output))  # (B, I)
        return intent, self.head.emissions(out.last_hidden_state, word_index)  # (B, W, C)


@dataclass
class IntentSlotInfo:
    intents: list[str] = labels_field("the intent set")
    labels: list[str] = labels_field("the slot tag set (O, then B-/I-(/E-/S-) per slot type)")
    max_seq_len: int = seq_len_field()
    scheme: str = choice_field(("bio", "bioes"))
    crf: bool = bool_field()
    word_level: str = choice_field(("char", "space"))


@dataclass
class IntentSlotOptions:
    crf: bool = crf_option()
    scheme: str = scheme_option()
    word_level: str = word_level_option("space")


class IntentSlotTask(FinetuneTask):
    task_name = NAME

    def __init__(self, tokenizer: Tokenizer, train: list[Utterance], heldout: list[Utterance], info: IntentSlotInfo,
                 eval_batch_size: int = 64, source: str | None = None, heldout_source: str | None = None) -> None:
        self.tokenizer, self.info = tokenizer, info
        self.intents, self.slots, self.max_seq_len = info.intents, info.labels, info.max_seq_len
        self.intent_ids = {t: i for i, t in enumerate(self.intents)}
        self.slot_ids = {t: i for i, t in enumerate(self.slots)}
        self.train = self._pieces(train, "train", source)
        self.train_intents = [self.intent_ids[u.intent] for u in train]
        self.heldout = heldout
        self.heldout_pieces = self._pieces(heldout, None, heldout_source)
        self.eval_batch_size = eval_batch_size

    def _pieces(self, utterances: list[Utterance], role: str | None, path: str | None = None) -> list[Piece]:
        tags = None
        if role is not None:
            tags = [[self.slot_ids[t] for t in u.tags] for u in utterances]
        pieces = encode_sentences(self.tokenizer, [u.words for u in utterances], tags, self.max_seq_len,
                                  None if path is None else str(path))  # with a path: word cuts are counted
        if len(pieces) != len(utterances):
            counts = Counter(p.sentence for p in pieces)
            bad = next(i for i in range(len(utterances)) if counts[i] != 1)
            if counts[bad] == 0:
                raise DataError("the utterance has no token the model can read (only spaces or control characters)",
                                path, utterances[bad].line)
            raise DataError(f"the utterance needs more than max_seq_len={self.max_seq_len} tokens; raise "
                            "--max-seq-len (intent detection needs the whole utterance in one sequence)",
                            path, utterances[bad].line)
        return pieces

    def fingerprint(self) -> str:
        from bertkit.resume import data_fingerprint  # the encoded training examples: --resume refuses other data

        return data_fingerprint([self.train, self.train_intents])

    def make_batch(self, epoch: int, indices: list[int]) -> dict[str, Any]:
        batch = collate([self.train[i] for i in indices], self.tokenizer.pad_token_id)
        batch["intent"] = torch.tensor([self.train_intents[i] for i in indices])
        return batch

    def counts(self, batch: dict[str, Any]) -> dict[str, float]:
        slots = float(len(batch["tags"])) if self.info.crf else float(((batch["tags"] != -100)
                                                                          & batch["word_mask"]).sum())
        return {"intent": float(len(batch["intent"])), "slot": slots}

    def tokens(self, batch: dict[str, Any]) -> int:
        return int(batch["attention_mask"].sum())

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        intent, emissions = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                                  batch["word_index"])
        head = model.module.head if hasattr(model, "module") else model.head
        slot, _ = head.loss_sum(emissions, batch["tags"], batch["word_mask"])
        return {"intent": F.cross_entropy(intent.float(), batch["intent"], reduction="sum"), "slot": slot}

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        if not self.heldout:
            return {}
        intents, tags, _ = predict_pieces(model, self.tokenizer, self.heldout_pieces,
                                          [len(u.words) for u in self.heldout], self.info, self.eval_batch_size)
        return scores(self.heldout, intents, tags)


def scores(gold: list[Utterance], intents: list[str], tags: list[list[str]]) -> dict[str, float]:
    """Intent accuracy, slot entity F1 and sentence-level exact match (intent and every slot tag right)."""
    slot = span_prf([u.tags for u in gold], tags)
    exact = [u.intent == i and u.tags == t for u, i, t in zip(gold, intents, tags, strict=True)]
    return {"intent_accuracy": accuracy([u.intent for u in gold], intents), "slot_f1": slot["f1"],
            "slot_precision": slot["precision"], "slot_recall": slot["recall"],
            "exact_match": sum(exact) / len(exact)}


def predict_pieces(model: nn.Module, tokenizer: Tokenizer, pieces: list[Piece], lengths: list[int],
                   info: IntentSlotInfo, batch_size: int = 64) -> tuple[list[str], list[list[str]], list[float]]:
    """(intent, slot tags per word, intent probability) of each utterance (one piece each), in one model pass."""

    def forward(m: nn.Module, batch: dict[str, Any]) -> list[tuple[int, float, list[int]]]:
        intent, emissions = m(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                              batch["word_index"])
        best = torch.softmax(intent.float(), -1).max(-1)
        return list(zip(best.indices.tolist(), best.values.tolist(), m.head.decode(emissions, batch["word_mask"]),
                        strict=True))

    outputs = run_batches(model, pieces, lambda chunk: collate(chunk, tokenizer.pad_token_id), forward, batch_size)
    tags = assemble(pieces, [o[2] for o in outputs], lengths, info.labels)
    return [info.intents[o[0]] for o in outputs], tags, [o[1] for o in outputs]


def finetune(train_dir: str | Path, config: Any, *, eval_file: str | Path | None = None, fmt: str = "atis",
             init_from: str | Path | None = None, tokenizer: str | Path | None = None, model_size: str = "mini",
             max_seq_len: int = 64, limit: int | None = None, options: IntentSlotOptions | None = None) -> Any:
    """Fine-tune joint intent + slot model on a dataset directory; scores the `eval_file` directory."""
    from bertkit.tasks.base import build_task_model, encoder_config, finetune_tokenizer
    from bertkit.train import fit

    tok = finetune_tokenizer(init_from, tokenizer)
    train = require_examples(take(read_utterances(train_dir, fmt), limit), train_dir, "training")
    heldout = require_examples(read_utterances(eval_file, fmt), eval_file, "evaluation") if eval_file else []
    report_inconsistent_tags([(u.tags, u.line) for u in train], train_dir)
    options = options or IntentSlotOptions()
    for u in train:
        u.tags = convert_scheme(u.tags, options.scheme)
    info = IntentSlotInfo(sorted({u.intent for u in train}), tag_set([u.tags for u in train], options.scheme),
                          max_seq_len, options.scheme, options.crf, options.word_level)
    model_config = encoder_config(init_from, tok, model_size, max_seq_len, **SPEC.config_extra(info))
    model = build_task_model(BertForIntentSlot, init_from, model_config, config.seed)
    task = IntentSlotTask(tok, train, heldout, info, source=str(train_dir), heldout_source=str(eval_file))
    return fit(model, task, config, title=f"intent + slots ({Path(train_dir).parent.name or 'data'})")


def evaluate_file(model: nn.Module, tokenizer: Tokenizer, info: IntentSlotInfo, path: str | Path, fmt: str
                  ) -> dict[str, float]:
    utterances = require_examples(read_utterances(path, fmt), path, "evaluation")
    return IntentSlotTask(tokenizer, [], utterances, info, heldout_source=str(path)).evaluate(model)


@torch.no_grad()
def predict(model: nn.Module, tokenizer: Tokenizer, info: IntentSlotInfo, inputs: list[dict[str, Any]]
            ) -> list[dict[str, Any]]:
    """Intent (with its probability) and slots with character offsets per input, from one model pass. The intent
    needs the whole utterance in one sequence, so an utterance over max_seq_len is cut to the words that fit, with a
    warning, and its result counts the words left untagged ("truncated_words"); an utterance with no token at all
    (only control characters) gets the intent of an empty sequence. Either used to fail every input batched with
    it."""
    import warnings

    texts = [i["text"] for i in inputs]
    split = [words_of(text, info.word_level) for text in texts]
    budget = info.max_seq_len - 2
    kept_words = []
    for (words, _), encoding in zip(split, tokenizer.encode_batch([w for w, _ in split], is_split_into_words=True,
                                                                  add_special_tokens=False), strict=True):
        counts = [0] * len(words)
        for word in encoding.word_ids:
            if word is not None:
                counts[word] += 1
        used, keep = 0, 0
        for count in counts:
            if used + count > budget and keep:  # a first word longer than the budget keeps its first pieces
                break
            used, keep = used + min(count, budget), keep + 1
        kept_words.append(keep)
    cut = sum(0 < n < len(words) for n, (words, _) in zip(kept_words, split, strict=True))
    if cut:
        warnings.warn(f"{cut} utterance(s) longer than max_seq_len={info.max_seq_len} tokens were cut to the words "
                      "that fit", stacklevel=2)
    kept = [words[:n] for (words, _), n in zip(split, kept_words, strict=True)]
    by_sentence = {p.sentence: p for p in encode_sentences(tokenizer, kept, None, info.max_seq_len)}
    empty = [tokenizer.cls_token_id, tokenizer.sep_token_id]  # no readable token: the intent of an empty sequence
    pieces = [by_sentence.get(i) or Piece(i, empty, [], [], []) for i in range(len(texts))]
    intents, tags, probabilities = predict_pieces(model, tokenizer, pieces, [len(k) for k in kept], info)
    return [{"intent": intent, "intent_probability": p, "slots": entities_with_offsets(text, t, offsets),
             "tags": t + ["O"] * (len(words) - len(t)), "truncated_words": len(words) - len(t)}
            for text, intent, t, p, (words, offsets) in zip(texts, intents, tags, probabilities, split, strict=True)]


def distill_task(tokenizer: Tokenizer, info: IntentSlotInfo, train_dir: Path, eval_dir: Path | None,
                 fmt: str | None, limit: int | None) -> IntentSlotTask:
    """The TrainTask of a distillation: `train_dir`'s utterances on the teacher's intents, scheme and slot tags."""
    fmt = fmt or "atis"
    train = require_examples(take(read_utterances(train_dir, fmt), limit), train_dir, "training")
    check_teacher_tags(train, info, train_dir)
    for u in train:
        if u.intent not in info.intents:
            raise DataError(f"intent {u.intent!r} is not in the teacher's intent set {info.intents}", str(train_dir),
                            u.line)
    heldout = require_examples(read_utterances(eval_dir, fmt), eval_dir, "evaluation") if eval_dir else []
    return IntentSlotTask(tokenizer, train, heldout, info, source=str(train_dir), heldout_source=str(eval_dir))


def _add_unlabeled(task: IntentSlotTask, lines: list[tuple[int, str]], source: str) -> None:
    task.train_intents.extend([IGNORE_INDEX] * unlabeled_pieces(task, lines, source, whole=True))


def _augment(task: IntentSlotTask, index: int, change: Any) -> None:
    copy_piece(task, index, change)
    task.train_intents.append(IGNORE_INDEX)


DISTILL = DistillHead(
    build=distill_task,
    forward=lambda m, b: m(b["input_ids"], b["attention_mask"], b["token_type_ids"], b["word_index"]),
    logits=lambda out, b: {"intent": out[0], "slot": out[1][b["word_mask"]]},  # (B, I) and (words, C)
    rows=lambda b: {"intent": one_row_each(b), "slot": b["word_mask"].sum(1).tolist()},
    hard=lambda m, out, b, info: {"intent": labelled_cross_entropy(out[0], b["intent"]),
                                  "slot": labelled_tag_loss(m.head, out[1], b)},
    hard_counts=lambda b, info: {"intent": labelled_count(b["intent"]), "slot": labelled_tag_count(b, info.crf)},
    augment=_augment,
    unlabeled=_add_unlabeled,
)

SPEC = TaskSpec(
    name=NAME,
    description="the intent of an utterance and its slots with character offsets (JointBERT)",
    model=BertForIntentSlot,
    info=IntentSlotInfo,
    inputs=(InputField("text", "the utterance"),),
    predict=predict,
    view={"label": "intent", "probability": "intent_probability", "spans": "slots", "spans_over": "text"},
    example={"text": "show me flights from boston to denver"},
    formats=FORMATS,
    default_format="atis",
    options=IntentSlotOptions,
    finetune=finetune,
    evaluate=evaluate_file,
    headline="slot_f1",
    config_extra=lambda info: {"bertkit_intents": info.intents, "bertkit_slots": info.labels,
                               "bertkit_crf": info.crf},
    distill=DISTILL,
)
