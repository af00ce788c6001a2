"""Chinese spelling correction: one prediction over the vocabulary per input character (same length in and out),
with the pre-trained MLM head as the corrector; SIGHAN pairs plus sentences corrupted with pycorrector's confusion
sets; detection and correction P/R/F1 at sentence and character level, as SIGHAN papers report them.

Input formats (`--format`):
- `sighan`: line-aligned `*_error.txt` (input) and `*_correct.txt` (target); `--train`/`--eval` name an error
  file, or a directory whose `train*_error.txt` files are all used. Pairs must have equal length.
- `tsv`: `wrong<TAB>correct` per line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertkit.argtypes import flag, int_range
from bertkit.errors import DataError
from bertkit.fileio import read_lines
from bertkit.metrics import prf
from bertkit.model import BertForPreTraining
from bertkit.tasks.base import FinetuneTask, SkipReport, pad_sequences, require_examples, run_batches, take
from bertkit.tasks.spec import InputField, TaskSpec, Work, seq_len_field, windows
from bertkit.tokenizer import Tokenizer

NAME = "spelling"
LOGITS_BUDGET = 1 << 24  # vocabulary logits a forward pass may hold (64 MiB of float32)
# What a token costs here against one a classifier encodes, in the server's work budget: the vocabulary projection
# (2 x hidden x V multiply-adds a position, V = 21,128) is 6.6x BERT-tiny's encoder per token, 0.2x BERT-base's;
# bench/serve_costly.py measured BERT-tiny spelling at 4.1x classification's time for the same tokens.
VOCABULARY_WEIGHT = 4
FORMATS = ("sighan", "tsv")
_CJK = re.compile(r"[\u4e00-\u9fff]")


@dataclass
class Pair:
    source: str
    target: str
    line: int


def read_pairs(path: str | Path, fmt: str = "sighan", *, split: str = "train", skip_bad_lines: bool = False
               ) -> list[Pair]:
    path = Path(path)
    if fmt not in FORMATS:
        raise DataError(f"unknown spelling format {fmt!r}; choose one of {FORMATS}")
    report = SkipReport(path)
    pairs: list[Pair] = []
    if fmt == "tsv":
        for number, line in read_lines(path):
            if not line.strip():
                continue
            cells = line.split("\t")
            if len(cells) != 2 or len(cells[0]) != len(cells[1]):
                if not skip_bad_lines:
                    raise DataError("expected 'wrong<TAB>correct' of equal length", str(path), number)
                report.skip(number, "malformed line(s)")
                continue
            pairs.append(Pair(cells[0], cells[1], number))
        report.report()
        return pairs
    files = sorted(path.glob(f"{split}*_error.txt")) if path.is_dir() else [path]
    if not files:
        raise DataError(f"no {split}*_error.txt files", str(path))
    for error_file in files:
        if not error_file.name.endswith("_error.txt"):
            raise DataError("expected a *_error.txt file (its *_correct.txt partner is read alongside)",
                            str(error_file))
        correct_file = error_file.with_name(error_file.name.replace("_error.txt", "_correct.txt"))
        sources = list(read_lines(error_file))
        targets = list(read_lines(correct_file))
        if len(sources) != len(targets):
            raise DataError(f"{len(sources)} lines but {correct_file.name} has {len(targets)}", str(error_file))
        for (number, source), (_, target) in zip(sources, targets, strict=True):
            if len(source) != len(target):
                if not skip_bad_lines:
                    raise DataError(f"input has {len(source)} characters but the correction has {len(target)}",
                                    str(error_file), number)
                report.skip(number, "pair(s) of unequal length")
                continue
            if source.strip():
                pairs.append(Pair(source, target, number))
    report.report()
    return pairs


def read_confusions(*paths: str | Path) -> dict[str, list[str]]:
    """pycorrector's confusion sets: a character -> characters that sound or look alike (tab-separated files)."""
    confusions: dict[str, set[str]] = {}
    for path in paths:
        for _, line in read_lines(path):
            if not line.strip() or line.startswith("#"):
                continue
            cells = line.split("\t")
            head, others = cells[0].strip(), "".join(cells[1:])
            group = [c for c in others if _CJK.match(c) and c != head]
            if len(head) == 1 and group:
                confusions.setdefault(head, set()).update(group)
    return {k: sorted(v) for k, v in confusions.items()}


def corrupt(sentence: str, confusions: dict[str, list[str]], rng: np.random.Generator, max_errors: int = 2) -> str:
    """Replace 1..max_errors characters that have confusable alternatives (SIGHAN-like errors); pure given rng."""
    candidates = [i for i, c in enumerate(sentence) if c in confusions]
    if not candidates:
        return sentence
    count = int(rng.integers(1, max_errors + 1))
    chars = list(sentence)
    for i in rng.choice(candidates, size=min(count, len(candidates)), replace=False):
        options = confusions[chars[i]]
        chars[i] = options[int(rng.integers(len(options)))]
    return "".join(chars)


def encode_pair(tokenizer: Tokenizer, source: str, target: str | None, max_seq_len: int
                ) -> tuple[list[int], list[int], list[int]]:
    """(input ids, label ids, char index of each token position) with one token per character; a character
    that is not a single vocabulary token keeps its input token and is not trained on."""
    chars = list(source)[: max_seq_len - 2]
    ids, labels, index = [tokenizer.cls_token_id], [-100], [-1]
    for i, ch in enumerate(chars):
        piece = tokenizer.normalize(ch).strip()  # BERT's normaliser pads CJK characters with spaces
        token = tokenizer.token_to_index.get(piece) if len(piece) == 1 else None
        if token is None:
            if ch.isspace() or not piece:
                continue  # removed by BERT's normaliser: no position, the character passes through
            token = tokenizer.unk_token_id
        ids.append(token)
        index.append(i)
        label = -100
        if target is not None and token != tokenizer.unk_token_id:
            wanted = tokenizer.token_to_index.get(tokenizer.normalize(target[i]).strip())
            label = wanted if wanted is not None else -100
        labels.append(label)
    ids.append(tokenizer.sep_token_id)
    labels.append(-100)
    index.append(-1)
    return ids, labels, index


def encode_windows(tokenizer: Tokenizer, source: str, target: str | None, max_seq_len: int
                   ) -> list[tuple[list[int], list[int], list[int]]]:
    """`encode_pair` over windows of a text of any length, so every character is considered (one window used to
    correct only the first max_seq_len - 2 characters). Windows of W = max_seq_len - 2 characters start every W/2;
    each character is corrected by the window where it sits furthest from an edge (a quarter window of context on
    each side), so the owned ranges tile the text; the others get index -1. Training rows keep every label."""
    width = max_seq_len - 2
    if len(source) <= width:
        return [encode_pair(tokenizer, source, target, max_seq_len)]
    stride = max(1, width // 2)
    margin = (width - stride) // 2
    rows = []
    start = 0
    while True:
        last = start + width >= len(source)
        ids, labels, index = encode_pair(tokenizer, source[start : start + width],
                                         None if target is None else target[start : start + width], max_seq_len)
        low = start + (margin if start else 0)
        high = len(source) if last else start + margin + stride
        index = [start + i if i >= 0 and low <= start + i < high else -1 for i in index]
        rows.append((ids, labels, index))
        if last:
            return rows
        start += stride


def apply_predictions(source: str, index: list[int], predicted: list[int], tokenizer: Tokenizer) -> str:
    """Corrected sentence: a Chinese character replaced when the model predicts a different Chinese character."""
    chars = list(source)
    for position, token in zip(index, predicted, strict=True):
        if position < 0 or not _CJK.match(chars[position]):
            continue
        candidate = tokenizer.vocab[token]
        if len(candidate) == 1 and _CJK.match(candidate):
            chars[position] = candidate
    return "".join(chars)


def csc_scores(sources: list[str], targets: list[str], predictions: list[str]) -> dict[str, float]:
    """Detection / correction P, R, F1 at sentence level (a sentence counts only when every error position -- and
    for correction every character -- is right; precision over sentences the model changed, recall over sentences
    with errors: the metric of SpellGCN / ReaLiSe) and at character level."""
    hit_d = hit_c = predicted_sentences = gold_sentences = 0
    char_tp_d = char_tp_c = char_pred = char_gold = 0
    for s, t, p in zip(sources, targets, predictions, strict=True):
        if not len(s) == len(t) == len(p):
            raise ValueError("source, target and prediction must have equal length")
        gold = {i for i in range(len(s)) if s[i] != t[i]}
        pred = {i for i in range(len(s)) if s[i] != p[i]}
        gold_sentences += bool(gold)
        predicted_sentences += bool(pred)
        if gold and gold == pred:
            hit_d += 1
            hit_c += all(p[i] == t[i] for i in gold)
        char_gold += len(gold)
        char_pred += len(pred)
        char_tp_d += len(gold & pred)
        char_tp_c += sum(p[i] == t[i] for i in gold & pred)
    result = {}
    for name, hit, total_pred, total_gold in (
        ("sentence_detection", hit_d, predicted_sentences, gold_sentences),
        ("sentence_correction", hit_c, predicted_sentences, gold_sentences),
        ("char_detection", char_tp_d, char_pred, char_gold),
        ("char_correction", char_tp_c, char_pred, char_gold),
    ):
        p, r, f = prf(hit, total_pred - hit, total_gold - hit)
        result.update({f"{name}_precision": p, f"{name}_recall": r, f"{name}_f1": f})
    return result


@dataclass
class SpellingInfo:
    max_seq_len: int = seq_len_field()


@dataclass
class SpellingOptions:
    augment_corpus: str | None = flag("clean text to corrupt with pycorrector's confusion sets")
    augment: int = flag("how many corrupted sentences of --augment-corpus to add", 0, type=int_range(0))


class SpellingTask(FinetuneTask):
    task_name = NAME
    find_unused_parameters = True  # the NSP head of the pre-training model is not used

    def __init__(self, tokenizer: Tokenizer, train: list[Pair], heldout: list[Pair], info: SpellingInfo,
                 eval_batch_size: int = 64) -> None:
        self.tokenizer, self.info = tokenizer, info
        max_seq_len = self.max_seq_len = info.max_seq_len
        self.train = [row for p in train for row in encode_windows(tokenizer, p.source, p.target, max_seq_len)]
        self.heldout = heldout
        self.heldout_rows = [encode_windows(tokenizer, p.source, None, max_seq_len) for p in heldout]
        self.eval_batch_size = eval_batch_size

    def make_batch(self, epoch: int, indices: list[int]) -> dict[str, Any]:
        rows = [self.train[i] for i in indices]
        batch = pad_sequences([r[0] for r in rows], self.tokenizer.pad_token_id)
        labels = torch.full_like(batch["input_ids"], -100)
        for i, r in enumerate(rows):
            labels[i, : len(r[1])] = torch.tensor(r[1])
        batch["labels"] = labels
        return batch

    def counts(self, batch: dict[str, Any]) -> dict[str, float]:
        return {"char": float((batch["labels"] != -100).sum())}

    def tokens(self, batch: dict[str, Any]) -> int:
        return int(batch["attention_mask"].sum())

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        selected = batch["labels"] != -100
        out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], mlm_positions=selected)
        return {"char": F.cross_entropy(out.mlm_logits.float(), batch["labels"][selected], reduction="sum")}

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        if not self.heldout:
            return {}
        predictions = correct_rows(model, self.tokenizer, [p.source for p in self.heldout], self.heldout_rows,
                                   self.eval_batch_size)
        return csc_scores([p.source for p in self.heldout], [p.target for p in self.heldout], predictions)


def correct_rows(model: nn.Module, tokenizer: Tokenizer, sources: list[str], windows: list, batch_size: int = 64
                 ) -> list[str]:
    """Corrected sources; `windows[i]` holds the `encode_windows` rows of `sources[i]`."""
    flat = [(k, row) for k, rows in enumerate(windows) for row in rows]

    def best(m: nn.Module, batch: dict[str, Any]) -> list[list[int]]:
        real = batch["attention_mask"].bool()  # logits at real tokens only, (M, V): no padded (B, T, V) copy
        out = m(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], mlm_positions=real)
        return [row.tolist() for row in torch.split(out.mlm_logits.argmax(-1).cpu(), real.sum(1).tolist())]

    # every position's logits over the vocabulary: (B, T, V) floats, so a pass holds at most LOGITS_BUDGET of them
    predicted = run_batches(model, [r[0] for _, r in flat], lambda ids: pad_sequences(ids, tokenizer.pad_token_id),
                            best, batch_size, max_tokens=max(1, LOGITS_BUDGET // len(tokenizer)))
    chars = [list(s) for s in sources]
    for (k, r), tokens in zip(flat, predicted, strict=True):
        # each window owns a disjoint range of characters, so applying them in turn composes
        chars[k] = list(apply_predictions("".join(chars[k]), r[2], tokens[: len(r[0])], tokenizer))
    return ["".join(c) for c in chars]


def finetune(train_path: str | Path, config: Any, *, eval_file: str | Path | None = None, fmt: str = "sighan",
             init_from: str | Path | None = None, tokenizer: str | Path | None = None, model_size: str = "mini",
             max_seq_len: int = 128, limit: int | None = None, options: SpellingOptions | None = None) -> Any:
    """Fine-tune a corrector on SIGHAN-style pairs, plus `options.augment` sentences of `options.augment_corpus`
    corrupted with pycorrector's same-pinyin / same-stroke confusion sets."""
    from bertkit import resources
    from bertkit.corpus import read_documents
    from bertkit.tasks.base import build_task_model, encoder_config, finetune_tokenizer
    from bertkit.train import fit

    tok = finetune_tokenizer(init_from, tokenizer)
    train = require_examples(take(read_pairs(train_path, fmt), limit), train_path, "training")
    heldout = require_examples(read_pairs(eval_file, fmt, split="test"), eval_file, "evaluation") if eval_file else []
    options = options or SpellingOptions()
    if options.augment and options.augment_corpus:
        confusions = read_confusions(resources.data_file(resources.PYCORRECTOR, "pycorrector/data/same_pinyin.txt"),
                                     resources.data_file(resources.PYCORRECTOR, "pycorrector/data/same_stroke.txt"))
        sentences = [s for d in read_documents(options.augment_corpus) for s in d if 8 <= len(s) <= max_seq_len - 2]
        rng = np.random.default_rng([config.seed, 5])
        for i in rng.permutation(len(sentences))[:options.augment]:
            train.append(Pair(corrupt(sentences[i], confusions, rng), sentences[i], -1))
    model_config = encoder_config(init_from, tok, model_size, max_seq_len)
    model = build_task_model(BertForPreTraining, init_from, model_config, config.seed)
    task = SpellingTask(tok, train, heldout, SpellingInfo(max_seq_len))
    return fit(model, task, config, title="spelling correction")


def evaluate_file(model: nn.Module, tokenizer: Tokenizer, info: SpellingInfo, path: str | Path, fmt: str
                  ) -> dict[str, float]:
    pairs = require_examples(read_pairs(path, fmt, split="test"), path, "evaluation")
    return SpellingTask(tokenizer, [], pairs, info).evaluate(model)


@torch.no_grad()
def predict(model: nn.Module, tokenizer: Tokenizer, info: SpellingInfo, inputs: list[dict[str, Any]]
            ) -> list[dict[str, Any]]:
    """Corrected text (same length) and the edits [{"position", "from", "to"}] for each input."""
    texts = [i["text"] for i in inputs]
    rows = [encode_windows(tokenizer, t, None, info.max_seq_len) for t in texts]
    corrected = correct_rows(model, tokenizer, texts, rows)
    return [{"corrected": c, "edits": [{"position": i, "from": a, "to": b}
                                       for i, (a, b) in enumerate(zip(t, c, strict=True)) if a != b]}
            for t, c in zip(texts, corrected, strict=True)]


def work(item: dict[str, Any], info: SpellingInfo) -> Work:
    """Windows of max_seq_len - 2 characters every half window (`encode_windows`), each token counted
    VOCABULARY_WEIGHT times: every position is scored over the whole vocabulary."""
    width = info.max_seq_len - 2
    encoded = windows(len(item["text"]), width, max(1, width // 2), info.max_seq_len)
    return Work(encoded.sequences, VOCABULARY_WEIGHT * encoded.tokens)


SPEC = TaskSpec(
    name=NAME,
    description="Chinese spelling correction: the corrected text (same length) and its edits",
    model=BertForPreTraining,
    info=SpellingInfo,
    inputs=(InputField("text", "Chinese text to correct", multiline=True),),
    predict=predict,
    view={"corrected": "corrected", "edits": "edits"},
    example={"text": "今天天汽很好"},
    formats=FORMATS,
    default_format="sighan",
    options=SpellingOptions,
    finetune=finetune,
    evaluate=evaluate_file,
    headline="sentence_correction_f1",
    work=work,
    not_distilled=("a vocabulary-wide distribution at every character costs more to store and match than the student "
                   "saves"),
)
