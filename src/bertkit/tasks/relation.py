"""Relation extraction for knowledge graphs, R-BERT style: entity markers around the two entities, [CLS] + averaged
entity states -> relation; SemEval-2010 Task 8's official macro-F1 (9 relations, Other excluded, direction
counted), macro-F1 without the no-relation class for FinRE / SanWen.

Input formats (`--format`):
- `semeval`: `relation<TAB>sentence`, entities marked in the sentence as `<e1> ... </e1>` and `<e2> ... </e2>`.
- `chinese_nre` (FinRE, SanWen): `head<TAB>tail<TAB>relation<TAB>sentence`; the first occurrences of head and
  tail in the sentence are marked (non-overlapping); blank lines are ignored.
- `wsc` (SuperGLUE WSC and CLUEWSC2020, a span-pair task): JSON lines `{"text", "target": {"span1_text",
  "span1_index", "span2_text", "span2_index"}, "label": true|false}`; the noun phrase (span 1) is marked <e1>, the
  pronoun (span 2) <e2>, at their whitespace-token indices (SuperGLUE), or at their character offsets where the
  text has no spaces (CLUEWSC2020's Chinese; also a spaced text whose spans are at their character offsets and not
  at their token indices); where a span is not at its index (an off-by-one index, a name split across the text)
  its nearest occurrence is marked, and a span found nowhere skips the row, counted (a file whose every row is
  skipped is an error saying why). The label is true (the pronoun refers to the noun phrase) or false, as JSON
  booleans or the strings "true"/"false".
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertkit.config import BertConfig
from bertkit.errors import DataError, reason
from bertkit.fileio import read_lines
from bertkit.masking import IGNORE_INDEX
from bertkit.metrics import accuracy, prf
from bertkit.model import BertModel, CheckpointIO, Dropout, init_weights
from bertkit.tasks.base import (
    FinetuneTask,
    SkipReport,
    label_results,
    labelled_count,
    labelled_cross_entropy,
    one_row_each,
    pad_sequences,
    require_examples,
    run_batches,
    take,
)
from bertkit.tasks.spec import (
    DistillHead,
    InputField,
    TaskSpec,
    choice_field,
    id2label,
    labels_field,
    seq_len_field,
)
from bertkit.tokenizer import Tokenizer

NAME = "relation"
FORMATS = ("semeval", "chinese_nre", "wsc")
MARKERS = ("<e1>", "</e1>", "<e2>", "</e2>")
NO_RELATION = {"semeval": "Other", "chinese_nre": "unknown", "wsc": "false"}


@dataclass
class Example:
    text: str  # with the four markers
    label: str | None
    line: int


def _occurrences(text: str, part: str) -> list[int]:
    found, position = [], text.find(part)
    while position >= 0:
        found.append(position)
        position = text.find(part, position + 1)
    return found


def _order(pair: tuple[int, int]) -> tuple[int, int, int]:
    """Earliest pair first: by the later start, then the earlier start, then the head's start."""
    return max(pair), min(pair), pair[0]


def _earliest(heads: list[int], tails: list[int], allowed: Callable[[int], tuple[int, int]]
              ) -> tuple[int, int] | None:
    """The (head, tail) pair first in `_order` among the tails allowed for each head:
    `allowed(h)` gives the range [low, high] of tail starts, so per head the best tail before it is the first
    allowed one, and after it the first at or past it: one bisection each, O((H + T) log T) in all."""
    best: tuple[tuple[int, int, int], tuple[int, int]] | None = None
    for h in heads:
        low, high = allowed(h)
        for t in (bisect.bisect_left(tails, low), bisect.bisect_left(tails, max(low, h))):
            if t < len(tails) and tails[t] <= high:
                key = _order((h, tails[t]))
                if best is None or key < best[0]:
                    best = (key, (h, tails[t]))
    return None if best is None else best[1]


def locate_pair(sentence: str, head: str, tail: str) -> tuple[int, int]:
    """Where `mark` puts the two entities: the start of the head and of the tail occurrence marked."""
    if not head.strip() or not tail.strip():
        raise ValueError(f"the {'head' if not head.strip() else 'tail'} entity is blank")
    heads, tails = _occurrences(sentence, head), _occurrences(sentence, tail)
    if not heads:
        raise ValueError(f"head entity {head!r:.80} not found in the sentence")
    if not tails:
        raise ValueError(f"tail entity {tail!r:.80} not found in the sentence")
    far = len(sentence)
    lh, lt = len(head), len(tail)
    # Apart (one entity is often part of the other, e.g. 云天化 / 云天化集团): tails ending by h or starting after
    # the head. Two ranges, so two searches, the better one kept.
    before = _earliest(heads, tails, lambda h: (0, h - lt))
    after = _earliest(heads, tails, lambda h: (h + lh, far))
    apart = [p for p in (before, after) if p is not None]
    if apart:
        return min(apart, key=_order)
    # nested (SanWen: 莫扎特 inside 莫扎特的歌曲): markers nest too
    nested = [p for p in (_earliest(heads, tails, lambda h: (h + lh - lt, h)) if lt >= lh else None,
                          _earliest(heads, tails, lambda h: (h, h + lh - lt)) if lh >= lt else None) if p is not None]
    if nested:
        return min(nested, key=_order)
    # crossing spans (3 of SanWen's 21k): the entity masks between the markers still work
    pair = _earliest(heads, tails, lambda h: (0, far))
    assert pair is not None  # both lists are non-empty
    return pair


def mark(sentence: str, head: str, tail: str) -> str:
    """Insert <e1> </e1> around `head` and <e2> </e2> around `tail`: the earliest pair of occurrences that do not
    overlap (one entity is often part of the other, e.g. 云天化 / 云天化集团), else nested, else crossing; linear in
    the occurrences (`locate_pair`), however often the entities occur."""
    return _marked(sentence, head, tail, *locate_pair(sentence, head, tail))


def _marked(sentence: str, head: str, tail: str, h: int, t: int) -> str:
    """`sentence` with <e1> </e1> around `head` at `h` and <e2> </e2> around `tail` at `t`."""
    spans = [(h, h + len(head), 1), (t, t + len(tail), 2)]
    return "".join(_with_markers(list(sentence), spans, lambda marker: f" {marker} "))


def _with_markers(units: list[str], spans: list[tuple[int, int, int]], show: Any = str) -> list[str]:
    """`units` (characters or words) with <eK> before and </eK> after each (start, end, K) span, each marker written
    as `show(marker)`. At one boundary closes come first and the outer span opens first, so a nested span (the
    pronoun "their" in "their mothers", 莫扎特 in 莫扎特的歌曲) opens and closes inside the other."""
    events = []
    for start, end, k in spans:
        events.append((start, 1, start - end, show(f"<e{k}>")))
        events.append((end, 0, end - start, show(f"</e{k}>")))
    out, position = [], 0
    for at, _, _, marker in sorted(events):
        out += [*units[position:at], marker]
        position = at
    return out + units[position:]


def read_examples(path: str | Path, fmt: str = "semeval", *, skip_bad_lines: bool = False) -> list[Example]:
    if fmt not in FORMATS:
        raise DataError(f"unknown relation format {fmt!r}; choose one of {FORMATS}")
    report = SkipReport(path)
    examples = []
    for number, line in read_lines(path):
        if not line.strip():
            continue
        cells = line.split("\t")
        try:
            if fmt == "wsc":
                record = json.loads(line)
                label = wsc_label(record.get("label"))
                text = mark_spans(record["text"], record["target"])
            elif fmt == "semeval":
                if len(cells) != 2:
                    raise ValueError(f"expected 2 tab-separated columns (relation, sentence), got {len(cells)}")
                label, text = cells[0].strip(), cells[1]
                if any(text.count(m) != 1 for m in MARKERS):
                    raise ValueError("the sentence must contain each of <e1> </e1> <e2> </e2> exactly once")
            else:
                if len(cells) != 4:
                    raise ValueError(f"expected 4 tab-separated columns (head, tail, relation, sentence), "
                                     f"got {len(cells)}")
                head, tail, label, sentence = cells
                text = mark(sentence, head, tail)
            examples.append(Example(text, label.strip() or None, number))
        except SpanNotFound as exc:
            report.skip(number, f"row(s) whose span is not in the text ({exc})")
        except (ValueError, KeyError, TypeError) as exc:
            if not skip_bad_lines:
                raise DataError(reason(exc), str(path), number) from exc
            report.skip(number, "malformed line(s)")
    report.report(len(examples))
    return examples


class SpanNotFound(ValueError):
    pass


def _word(token: str) -> str:
    """A token compared as a word: lower case, without a possessive "'s" and surrounding punctuation."""
    return re.sub(r"^\W+|\W+$", "", re.sub(r"'s$", "", token.lower()))


def _find_span(tokens: list[str], words: list[str], index: int) -> int:
    """The start of `words` in `tokens`: at `index` where they are there, else the nearest occurrence."""
    wanted = [_word(w) for w in words]
    starts = [i for i in range(len(tokens) - len(words) + 1)
              if [_word(t) for t in tokens[i : i + len(words)]] == wanted]
    if not starts:
        raise SpanNotFound(f"{' '.join(words)!r:.40}")
    return min(starts, key=lambda i: abs(i - index))


def wsc_label(value: Any) -> str:
    """A WSC label as stored: JSON true/false (SuperGLUE) or the strings "true"/"false" (CLUEWSC2020); absent or
    null: no label (a test file)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower()
    raise ValueError(f'label must be true or false (or "true"/"false"), got {value!r:.40}')


def _at_characters(text: str, parts: list[str], indices: list[int]) -> bool:
    """Whether the span indices count characters (CLUEWSC2020) rather than whitespace-separated tokens (SuperGLUE):
    a text without spaces has only characters; a text with spaces, where both spans are at their character offsets
    and not both at their token indices."""
    if not any(c.isspace() for c in text.strip()):
        return True
    tokens = text.split()
    at_tokens = all([_word(t) for t in tokens[i : i + len(p.split())]] == [_word(w) for w in p.split()]
                    for p, i in zip(parts, indices, strict=True))
    return not at_tokens and all(text.startswith(p, i) for p, i in zip(parts, indices, strict=True))


def _find_characters(text: str, part: str, index: int) -> int:
    """The start of `part` in `text`: at `index` where it is there, else its nearest occurrence."""
    if not part:
        raise SpanNotFound("an empty span")
    starts = _occurrences(text, part)
    if not starts:
        raise SpanNotFound(f"{part!r:.40}")
    return min(starts, key=lambda i: abs(i - index))


def mark_spans(text: str, target: dict[str, Any]) -> str:
    """WSC: <e1> around the noun phrase (span 1) and <e2> around the pronoun (span 2), located by token index, or
    by character offset (`_at_characters`: CLUEWSC2020's Chinese texts)."""
    parts = [str(target[f"span{k}_text"]) for k in (1, 2)]
    indices = [int(target[f"span{k}_index"]) for k in (1, 2)]
    characters = _at_characters(text, parts, indices)
    spans = []
    if characters:
        for k, (part, index) in enumerate(zip(parts, indices, strict=True), start=1):
            start = _find_characters(text, part, index)
            spans.append((start, start + len(part), k))
    else:
        tokens = text.split()
        for k, (part, index) in enumerate(zip(parts, indices, strict=True), start=1):
            words = part.split()
            start = _find_span(tokens, words, index)
            spans.append((start, start + len(words), k))
    inside = [a for a in spans for b in spans if a is not b and b[0] <= a[0] and a[1] <= b[1]]
    if spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1] and not inside:
        raise SpanNotFound("the two spans cross")
    if characters:
        return "".join(_with_markers(list(text), spans, lambda marker: f" {marker} "))
    return " ".join(_with_markers(tokens, spans))


class BertForRelation(CheckpointIO, nn.Module):
    """R-BERT: tanh-dense of [CLS], of the mean of e1's tokens and of e2's tokens, concatenated, then linear."""

    hf_architecture = "BertModel"

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        H, p = config.hidden_size, config.hidden_dropout_prob
        self.dropout = Dropout(p)
        self.cls_fc = nn.Linear(H, H)
        self.entity_fc = nn.Linear(H, H)  # shared by both entities, as R-BERT
        self.classifier = nn.Linear(3 * H, len(config.extra["id2label"]))
        for layer in (self.cls_fc, self.entity_fc, self.classifier):
            init_weights(layer, config)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None, e1_mask: Tensor,
                e2_mask: Tensor) -> Tensor:
        out = self.bert(input_ids, attention_mask, token_type_ids)
        h = out.last_hidden_state  # (B, T, H)

        def average(mask: Tensor) -> Tensor:  # (B, T) -> (B, H)
            m = mask.to(h.dtype)[:, :, None]
            return (h * m).sum(1) / m.sum(1).clamp(min=1)

        parts = [self.cls_fc(torch.tanh(self.dropout(out.pooler_output))),
                 self.entity_fc(torch.tanh(self.dropout(average(e1_mask)))),
                 self.entity_fc(torch.tanh(self.dropout(average(e2_mask))))]
        return self.classifier(self.dropout(torch.cat(parts, dim=-1)))  # (B, C)


def semeval_official_f1(gold: list[str], pred: list[str], other: str = "Other") -> dict[str, float]:
    """SemEval-2010 Task 8's official score: macro-F1 over the 9 relation types (Other excluded), a prediction
    right only with the right direction; predictions and gold of a type count in either direction."""

    def kind(label: str) -> str:
        return label.split("(")[0]

    types = sorted({kind(g) for g in gold + pred} - {other})
    f1s = []
    for t in types:
        correct = sum(g == p and kind(g) == t for g, p in zip(gold, pred, strict=True))
        predicted = sum(kind(p) == t for p in pred)
        actual = sum(kind(g) == t for g in gold)
        f1s.append(prf(correct, predicted - correct, actual - correct)[2])
    return {"official_macro_f1": sum(f1s) / len(f1s) if f1s else 0.0, "accuracy": accuracy(gold, pred)}


def macro_f1_without(gold: list[str], pred: list[str], none_label: str) -> dict[str, float]:
    """Macro-F1 over the relations other than the no-relation label (FinRE / SanWen practice), plus accuracy."""
    labels = sorted(set(gold) - {none_label})
    f1s = []
    for label in labels:
        tp = sum(g == p == label for g, p in zip(gold, pred, strict=True))
        f1s.append(prf(tp, sum(p == label for p in pred) - tp, sum(g == label for g in gold) - tp)[2])
    return {"macro_f1": sum(f1s) / len(f1s) if f1s else 0.0, "accuracy": accuracy(gold, pred)}


@dataclass
class RelationInfo:
    labels: list[str] = labels_field("the relation set")
    max_seq_len: int = seq_len_field()
    format: str = choice_field(FORMATS, help="the training data's format: which no-relation label the metric skips")


class RelationTask(FinetuneTask):
    task_name = NAME

    def __init__(self, tokenizer: Tokenizer, train: list[Example], heldout: list[Example], info: RelationInfo,
                 eval_batch_size: int = 64, source: str | None = None, heldout_source: str | None = None) -> None:
        self.tokenizer, self.info = tokenizer, info
        self.labels, self.max_seq_len = info.labels, info.max_seq_len
        self.label_ids = {label: i for i, label in enumerate(self.labels)}
        self.train = encode(tokenizer, train, info.max_seq_len, self.label_ids, source)
        self.heldout = heldout
        self.heldout_rows = encode(tokenizer, heldout, info.max_seq_len, None, heldout_source) if heldout else []
        self.eval_batch_size = eval_batch_size

    def make_batch(self, epoch: int, indices: list[int]) -> dict[str, Any]:
        return collate([self.train[i] for i in indices], self.tokenizer)

    def counts(self, batch: dict[str, Any]) -> dict[str, float]:
        return {"relation": float(len(batch["labels"]))}

    def tokens(self, batch: dict[str, Any]) -> int:
        return int(batch["attention_mask"].sum())

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        logits = model(batch["input_ids"], batch["attention_mask"], None, batch["e1_mask"], batch["e2_mask"])
        return {"relation": F.cross_entropy(logits.float(), batch["labels"], reduction="sum")}

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        if not self.heldout:
            return {}
        pred = predict_rows(model, self.tokenizer, self.heldout_rows, self.labels, self.eval_batch_size)
        gold = [e.label or "" for e in self.heldout]
        if self.info.format == "semeval":
            return semeval_official_f1(gold, pred)
        return macro_f1_without(gold, pred, NO_RELATION[self.info.format])


def encode(tokenizer: Tokenizer, examples: list[Example], max_seq_len: int, label_ids: dict[str, int] | None,
           source: str | None = None) -> list[tuple[list[int], int, int, int, int, int]]:
    """(ids, e1 start, e1 end, e2 start, e2 end, label) with entity token ranges between the markers; errors name
    `source` (the file the examples came from) and the example's line."""
    marker_ids = [tokenizer.token_to_index[m] for m in MARKERS]
    rows = []
    encodings = tokenizer.encode_batch([e.text for e in examples])
    for example, encoding in zip(examples, encodings, strict=True):
        ids = encoding.ids
        if len(ids) > max_seq_len:
            raise DataError(f"{len(ids)} tokens with the markers, more than max_seq_len={max_seq_len}; raise "
                            "--max-seq-len (cutting could remove an entity)", source, example.line)
        try:
            positions = [ids.index(m) for m in marker_ids]
        except ValueError:
            raise DataError("an entity marker did not survive tokenization", source, example.line) from None
        label = -1
        if label_ids is not None:
            if example.label not in label_ids:
                raise DataError(f"relation {example.label!r} is not in the label set {sorted(label_ids)}", source,
                                example.line)
            label = label_ids[example.label]
        rows.append((ids, positions[0] + 1, positions[1], positions[2] + 1, positions[3], label))
    return rows


def collate(rows: list[tuple[list[int], int, int, int, int, int]], tokenizer: Tokenizer) -> dict[str, Any]:
    batch = pad_sequences([r[0] for r in rows], tokenizer.pad_token_id)
    T = batch["input_ids"].shape[1]
    positions = torch.arange(T)
    batch["e1_mask"] = torch.stack([(positions >= r[1]) & (positions < r[2]) for r in rows])
    batch["e2_mask"] = torch.stack([(positions >= r[3]) & (positions < r[4]) for r in rows])
    batch["labels"] = torch.tensor([r[5] for r in rows])
    return batch


def _probabilities(model: nn.Module, batch: dict[str, Any]) -> Tensor:
    logits = model(batch["input_ids"], batch["attention_mask"], None, batch["e1_mask"], batch["e2_mask"])
    return torch.softmax(logits.float(), -1).cpu()  # (B, C)


def predict_rows(model: nn.Module, tokenizer: Tokenizer, rows: list, labels: list[str], batch_size: int = 64
                 ) -> list[str]:
    probs = run_batches(model, rows, lambda chunk: collate(chunk, tokenizer), _probabilities, batch_size)
    return [labels[int(p.argmax())] for p in probs]


def finetune(train_file: str | Path, config: Any, *, eval_file: str | Path | None = None, fmt: str = "semeval",
             init_from: str | Path | None = None, tokenizer: str | Path | None = None, model_size: str = "mini",
             max_seq_len: int = 128, limit: int | None = None) -> Any:
    from bertkit.tasks.base import build_task_model, encoder_config, finetune_tokenizer
    from bertkit.train import fit

    base_tok = finetune_tokenizer(init_from, tokenizer)
    tok = base_tok.with_special_tokens(MARKERS)
    train = require_examples(take(read_examples(train_file, fmt), limit), train_file, "training")
    heldout = require_examples(read_examples(eval_file, fmt), eval_file, "evaluation") if eval_file else []
    info = RelationInfo(sorted({e.label for e in train if e.label}), max_seq_len, fmt)
    model_config = encoder_config(init_from, tok if init_from is None else base_tok, model_size, max_seq_len,
                                  **SPEC.config_extra(info))
    model = build_task_model(BertForRelation, init_from, model_config, config.seed)
    model.bert.resize_token_embeddings(tok.vocab_size)  # room for the four entity markers
    task = RelationTask(tok, train, heldout, info, source=str(train_file), heldout_source=str(eval_file))
    return fit(model, task, config, title=f"relation ({Path(train_file).parent.name or 'data'})")


def evaluate_file(model: nn.Module, tokenizer: Tokenizer, info: RelationInfo, path: str | Path, fmt: str
                  ) -> dict[str, float]:
    examples = require_examples(read_examples(path, fmt), path, "evaluation")
    info = RelationInfo(info.labels, info.max_seq_len, fmt)  # the metric follows the file scored
    return RelationTask(tokenizer, [], examples, info, heldout_source=str(path)).evaluate(model)


@torch.no_grad()
def predict(model: nn.Module, tokenizer: Tokenizer, info: RelationInfo, inputs: list[dict[str, Any]]
            ) -> list[dict[str, Any]]:
    """The relation (with probabilities) of each input: a `text` with the entities marked
    (`... <e1> head </e1> ... <e2> tail </e2> ...`), or a plain `text` with its `head` and `tail` entity strings;
    then the result says which occurrences were marked (`head` and `tail`: character `start` and `end`), the
    earliest pair that does not overlap (`locate_pair`)."""
    texts, located = [], []
    for index, item in enumerate(inputs):
        if item.get("head") is not None or item.get("tail") is not None:
            h, t = _locate(item, index)
            head, tail = item["head"], item["tail"]
            texts.append(_marked(item["text"], head, tail, h, t))
            located.append({"head": {"start": h, "end": h + len(head)}, "tail": {"start": t, "end": t + len(tail)}})
        else:
            texts.append(item["text"])
            located.append({})
    rows = encode(tokenizer, [Example(t, None, i + 1) for i, t in enumerate(texts)], info.max_seq_len, None)
    probs = run_batches(model, rows, lambda chunk: collate(chunk, tokenizer), _probabilities)
    return [{**result, **where} for result, where in zip(label_results(info.labels, probs), located, strict=True)]


def _locate(item: dict[str, Any], index: int) -> tuple[int, int]:
    if item.get("head") is None or item.get("tail") is None:
        raise DataError(f"input {index}: give both 'head' and 'tail' (or mark the entities in 'text')")
    try:
        return locate_pair(item["text"], item["head"], item["tail"])
    except ValueError as exc:
        raise DataError(f"input {index}: cannot mark the entities: {exc}") from exc


def validate(item: dict[str, Any], index: int) -> None:
    """head and tail, where given, are found (in linear time) before the input joins a batch."""
    if item.get("head") is not None or item.get("tail") is not None:
        _locate(item, index)


def distill_task(tokenizer: Tokenizer, info: RelationInfo, train_file: Path, eval_file: Path | None,
                 fmt: str | None, limit: int | None) -> RelationTask:
    """The TrainTask of a distillation: `train_file` (in the teacher's format by default) on the teacher's labels."""
    fmt = fmt or info.format
    train = require_examples(take(read_examples(train_file, fmt), limit), train_file, "training")
    heldout = require_examples(read_examples(eval_file, fmt), eval_file, "evaluation") if eval_file else []
    return RelationTask(tokenizer, train, heldout, info, source=str(train_file), heldout_source=str(eval_file))


DISTILL = DistillHead(
    build=distill_task,
    forward=lambda m, b: m(b["input_ids"], b["attention_mask"], None, b["e1_mask"], b["e2_mask"]),
    logits=lambda out, b: {"relation": out},  # (B, C)
    rows=lambda b: {"relation": one_row_each(b)},
    hard=lambda m, out, b, info: {"relation": labelled_cross_entropy(out, b["labels"])},
    hard_counts=lambda b, info: {"relation": labelled_count(b["labels"])},
    # the entity markers are special tokens: augmentation keeps them, so the entity spans stay where they were
    augment=lambda task, i, change: task.train.append((change(task.train[i][0]), *task.train[i][1:5], IGNORE_INDEX)),
)  # no unlabeled texts: an input needs its entity pair marked

SPEC = TaskSpec(
    name=NAME,
    description="the relation between two entities of a sentence (R-BERT, entity markers)",
    model=BertForRelation,
    info=RelationInfo,
    inputs=(InputField("text", "the sentence, entities marked <e1> ... </e1> and <e2> ... </e2> (or give head and "
                       "tail)", multiline=True),
            InputField("head", "the head entity's text, when the sentence is not marked", required=False),
            InputField("tail", "the tail entity's text, when the sentence is not marked", required=False)),
    predict=predict,
    view={"label": "label", "probabilities": "probabilities"},
    example={"text": "The <e1> smoke </e1> came from the <e2> fire </e2> ."},
    formats=FORMATS,
    default_format="semeval",
    finetune=finetune,
    evaluate=evaluate_file,
    config_extra=lambda info: id2label(info.labels),
    validate=validate,
    distill=DISTILL,
)
