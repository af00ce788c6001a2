"""The ner task's `global_pointer` head: raw texts cut into overlapping token windows, every (start, end, type) span
of a window scored by a GlobalPointer (flat, nested and multi-label entities alike), spans above the threshold
merged across windows and mapped back to character offsets.

A text longer than a window (max_seq_len - 2 tokens) is read in windows every `doc_stride` tokens, the last one
ending at the text's end. An entity counts where it lies most inside a window (the window whose edges are farthest
from it, the first of equals), so an entity cut by one window's edge is taken from the window that holds it whole.
Training windows learn the entities they hold whole.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from bertkit.config import BertConfig
from bertkit.errors import DataError
from bertkit.global_pointer import GlobalPointer, span_loss
from bertkit.metrics import entity_prf
from bertkit.model import BertModel, CheckpointIO, init_weights
from bertkit.tasks.base import FinetuneTask, pad_sequences, run_batches
from bertkit.tasks.spans import SpanText
from bertkit.tokenizer import Tokenizer

HEAD = "global_pointer"
HEAD_SIZE = 64  # the efficient GlobalPointer's query/key size (Su Jianlin's default)


class BertForGlobalPointer(CheckpointIO, nn.Module):
    """BERT + an efficient GlobalPointer: tokens (B, T) -> span scores (B, C, T, T), one per entity type and
    (start, end) token pair. transformers has no such class: it loads the encoder alone (BertModel)."""

    hf_architecture = "BertForGlobalPointer"
    uses_pooler = False

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        if not config.extra.get("id2label"):
            raise DataError("the config has no id2label: a span head needs its entity types")
        self.config = config
        self.bert = BertModel(config)
        self.head = GlobalPointer(config.hidden_size, len(config.extra["id2label"]), HEAD_SIZE)
        init_weights(self.head, config)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None,
                span_mask: Tensor) -> Tensor:
        """`span_mask` (B, T): the tokens a span may start or end at (the text's, not [CLS], [SEP] or padding)."""
        hidden = self.bert(input_ids, attention_mask, token_type_ids).last_hidden_state  # (B, T, H)
        return self.head(hidden, span_mask)  # (B, C, T, T)


@dataclass
class Window:
    """One model input: tokens `first`.. of text `text` between [CLS] and [SEP]; `targets` are the entities it holds
    whole, as (type id, start, end) positions in `input_ids` (end inclusive)."""

    text: int
    first: int
    input_ids: list[int]
    targets: list[tuple[int, int, int]]

    @property
    def length(self) -> int:
        """How many of the text's tokens it holds."""
        return len(self.input_ids) - 2


def window_starts(count: int, width: int, stride: int) -> list[int]:
    """The first token of each window of `width` tokens over `count`: every `stride` (at most `width`, so no token
    is skipped), the last window ending at the last token."""
    if count <= width:
        return [0]
    return [*range(0, count - width, max(1, min(stride, width))), count - width]


def token_span(starts: list[int], ends: list[int], start: int, end: int) -> tuple[int, int, bool] | None:
    """(first, last, exact) tokens covering characters start..end (end exclusive) of a text whose tokens span
    `starts[k]..ends[k]`; exact: the span starts and ends where tokens do. None when no token is inside (a span of
    spaces)."""
    first = bisect.bisect_right(ends, start)
    last = bisect.bisect_left(starts, end) - 1
    if first > last:
        return None
    return first, last, starts[first] == start and ends[last] == end


def encode_texts(tokenizer: Tokenizer, texts: list[str], max_seq_len: int, stride: int,
                 spans: list[list[tuple[int, int, int]]] | None = None, source: str | None = None
                 ) -> tuple[list[Window], list[list[tuple[int, int]]]]:
    """Texts -> windows (with `spans`, (type id, start, end) character spans per text, their targets) and each
    text's token offsets. With `source`, one warning counts the entities a window cannot learn as written."""
    import warnings

    width = max_seq_len - 2
    windows: list[Window] = []
    offsets: list[list[tuple[int, int]]] = []
    total = widened = spaces = too_long = 0
    for chunk in range(0, len(texts), 1024):
        encodings = tokenizer.encode_batch(texts[chunk : chunk + 1024], add_special_tokens=False)
        for index, encoding in enumerate(encodings, start=chunk):
            text_offsets = [(int(s), int(e)) for s, e in encoding.offsets]
            offsets.append(text_offsets)
            targets: list[tuple[int, int, int]] = []
            starts, ends = [s for s, _ in text_offsets], [e for _, e in text_offsets]
            for kind, start, end in spans[index] if spans is not None else ():
                total += 1
                found = token_span(starts, ends, start, end)
                if found is None:
                    spaces += 1
                elif found[1] - found[0] >= width:
                    too_long += 1
                else:
                    widened += not found[2]
                    targets.append((kind, found[0], found[1]))
            for first in window_starts(len(text_offsets), width, stride):
                last = min(first + width, len(text_offsets))
                ids = [tokenizer.cls_token_id, *encoding.ids[first:last], tokenizer.sep_token_id]
                inside = [(k, s - first + 1, e - first + 1) for k, s, e in targets if first <= s and e < last]
                windows.append(Window(index, first, ids, inside))
    if source is not None and (widened or spaces or too_long):
        warnings.warn(f"{source}: of {total} entities, {widened} start or end inside a token (learned widened to "
                      f"whole tokens), {spaces} cover no token (only spaces) and {too_long} are longer than a window "
                      f"(max_seq_len - 2 = {width} tokens); the last two are not learned", stacklevel=2)
    return windows, offsets


def collate(windows: list[Window], pad_id: int, num_types: int) -> dict[str, Any]:
    batch = pad_sequences([w.input_ids for w in windows], pad_id)
    B, T = batch["input_ids"].shape
    span_mask = batch["attention_mask"].bool()
    span_mask[:, 0] = False  # [CLS]
    span_mask[torch.arange(B), torch.tensor([len(w.input_ids) - 1 for w in windows])] = False  # [SEP]
    batch["span_mask"] = span_mask
    targets = torch.zeros((B, num_types, T, T), dtype=torch.bool)  # (B, C, T, T)
    for row, w in enumerate(windows):
        for kind, start, end in w.targets:
            targets[row, kind, start, end] = True
    batch["targets"] = targets
    return batch


def best_window(extents: list[tuple[int, int]], first: int, last: int) -> int:
    """The index of the window (start, end exclusive) that holds tokens first..last farthest from its edges (the
    first of equals); -1 when none holds them whole."""
    best, margin = -1, -1
    for index, (start, end) in enumerate(extents):
        if start <= first and last < end and min(first - start, end - 1 - last) > margin:
            best, margin = index, min(first - start, end - 1 - last)
    return best


def merge_windows(windows: list[Window], found: list[list[tuple[int, int, int, float]]],
                  offsets: list[list[tuple[int, int]]]) -> list[list[tuple[int, int, int, float]]]:
    """Per text, the (type id, start, end, score) character spans (end exclusive) found in its windows, each
    taken from the window that holds it farthest from its edges (`best_window`)."""
    extents: dict[int, list[tuple[int, int]]] = {}
    for w in windows:
        extents.setdefault(w.text, []).append((w.first, w.first + w.length))
    merged: list[dict[tuple[int, int, int], float]] = [{} for _ in offsets]
    for w, spans in zip(windows, found, strict=True):
        mine = extents[w.text].index((w.first, w.first + w.length))
        for kind, i, j, score in spans:
            first, last = w.first + i - 1, w.first + j - 1  # the text's tokens ([CLS] is position 0)
            if best_window(extents[w.text], first, last) == mine:
                text_offsets = offsets[w.text]
                merged[w.text][(kind, text_offsets[first][0], text_offsets[last][1])] = score
    return [sorted(((k, s, e, score) for (k, s, e), score in spans.items()), key=lambda x: (x[1], -x[2], x[0]))
            for spans in merged]


def find_spans(model: nn.Module, tokenizer: Tokenizer, texts: list[str], info: Any, batch_size: int = 32
               ) -> list[list[tuple[int, int, int, float]]]:
    """Per text, the (type id, start, end, score) character spans scoring above the threshold."""
    windows, offsets = encode_texts(tokenizer, texts, info.max_seq_len, info.doc_stride)
    num_types = len(info.labels)

    def forward(m: nn.Module, batch: dict[str, Any]) -> list[list[tuple[int, int, int, float]]]:
        logits = m(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], batch["span_mask"]).float()
        above = logits > info.threshold  # (B, C, T, T)
        rows: list[list[tuple[int, int, int, float]]] = [[] for _ in range(len(logits))]
        for (b, c, i, j), score in zip(above.nonzero().tolist(), logits[above].tolist(), strict=True):
            rows[b].append((c, i, j, score))
        return rows

    found = run_batches(model, windows, lambda chunk: collate(chunk, tokenizer.pad_token_id, num_types), forward,
                        batch_size)
    return merge_windows(windows, found, offsets)


class SpanNerTask(FinetuneTask):
    """TrainTask: texts -> windows; the multi-label span loss over every (type, start, end); exact-span P/R/F1 on
    held-out texts."""
    task_name = "ner"

    def __init__(self, tokenizer: Tokenizer, train: list[SpanText], heldout: list[SpanText], info: Any,
                 eval_batch_size: int = 32, source: str = "train") -> None:
        self.tokenizer, self.info = tokenizer, info
        type_ids = {t: i for i, t in enumerate(info.labels)}
        spans = [[(type_ids[k], s, e) for k, s, e in t.spans] for t in train]
        self.train, _ = encode_texts(tokenizer, [t.text for t in train], info.max_seq_len, info.doc_stride, spans,
                                     source)
        self.heldout = heldout
        self.eval_batch_size = eval_batch_size

    def make_batch(self, epoch: int, indices: list[int]) -> dict[str, Any]:
        return collate([self.train[i] for i in indices], self.tokenizer.pad_token_id, len(self.info.labels))

    def counts(self, batch: dict[str, Any]) -> dict[str, float]:
        return {"span": float(batch["targets"].shape[0] * batch["targets"].shape[1])}  # (window, type) pairs

    def tokens(self, batch: dict[str, Any]) -> int:
        return int(batch["attention_mask"].sum())

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], batch["span_mask"])
        targets = batch["targets"]
        return {"span": span_loss(logits, targets) * (targets.shape[0] * targets.shape[1])}  # the mean's sum

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        if not self.heldout:
            return {}
        return score_texts(model, self.tokenizer, self.info, self.heldout, self.eval_batch_size)


def score_texts(model: nn.Module, tokenizer: Tokenizer, info: Any, texts: list[SpanText], batch_size: int = 32
                ) -> dict[str, float]:
    """Exact (type, start, end) P/R/F1 over `texts`, overall and per type."""
    found = find_spans(model, tokenizer, [t.text for t in texts], info, batch_size)
    predicted = [{(info.labels[k], s, e) for k, s, e, _ in spans} for spans in found]
    return entity_prf([set(t.spans) for t in texts], predicted, info.labels)


@torch.no_grad()
def predict(model: nn.Module, tokenizer: Tokenizer, info: Any, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The entities of each text, nested ones included: [{"type", "start", "end", "text", "score"}] (character
    offsets, end exclusive; score: the span's logit, above the threshold), by start, outer first."""
    texts = [i["text"] for i in inputs]
    found = find_spans(model, tokenizer, texts, info)
    return [{"entities": [{"type": info.labels[k], "start": s, "end": e, "text": text[s:e], "score": round(score, 4)}
                          for k, s, e, score in spans]}
            for text, spans in zip(texts, found, strict=True)]
