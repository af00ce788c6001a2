"""Extractive question answering (SQuAD / CMRC2018 format): [CLS] question [SEP] context [SEP] windows with a doc
stride, start/end logits, n-best span search mapped back to the context's characters, EM / F1 as the CMRC2018
scorer defines them.

Input format (`--format squad`): SQuAD v1.1 JSON `{"data": [{"paragraphs": [{"context", "qas": [{"id",
"question", "answers": [{"text", "answer_start"}]}]}]}]}`. An `answer_start` that does not point at the answer
text (200 of CMRC2018 dev's 9657 answers; 3 of them first answers, the only ones whose offset is used — the
others are only compared as text) is repaired to the nearest occurrence of the text.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertkit.argtypes import flag, int_range
from bertkit.config import BertConfig
from bertkit.errors import DataError, reason
from bertkit.fileio import read_text
from bertkit.model import BertModel, CheckpointIO, init_weights
from bertkit.tasks.base import (
    FinetuneTask,
    pad_sequences,
    require_examples,
    run_batches,
    take,
    warn_truncated,
)
from bertkit.tasks.spec import InputField, TaskSpec, Work, int_field, seq_len_field, windows
from bertkit.tokenizer import Tokenizer

NAME = "qa"
FORMATS = ("squad",)
MAX_QUESTION_LEN = 64  # question tokens kept in each window (Google's BERT: max_query_length)


@dataclass
class Question:
    qid: str
    question: str
    context: str
    answers: list[str]
    answer_start: int  # character offset of the first answer in the context (-1: unanswerable / unknown)


def read_questions(path: str | Path, fmt: str = "squad") -> list[Question]:
    path = Path(path)
    if fmt not in FORMATS:
        raise DataError(f"unknown QA format {fmt!r}; choose one of {FORMATS}")
    text = read_text(path)  # not-found, directory, permission and UTF-8 errors name the file; a BOM is dropped
    try:
        data = json.loads(text)["data"]
    except (json.JSONDecodeError, RecursionError, KeyError, TypeError, IndexError) as exc:
        raise DataError(f"not SQuAD-format JSON ({reason(exc)})", str(path)) from exc
    questions: list[Question] = []
    repaired = 0
    if not isinstance(data, list):
        raise DataError('"data" must be a list of articles', str(path))
    for a, article in enumerate(data):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise DataError(f'data[{a}]: expected an object with a "paragraphs" list', str(path))
        for p, paragraph in enumerate(paragraphs):
            where = f"data[{a}].paragraphs[{p}]"
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("context"), str) or not isinstance(
                    paragraph.get("qas"), list):
                raise DataError(f'{where}: expected {{"context": str, "qas": [...]}}', str(path))
            context = paragraph["context"]
            for k, q in enumerate(paragraph["qas"]):
                if not isinstance(q, dict) or not isinstance(q.get("question"), str) or "id" not in q:
                    raise DataError(f'{where}.qas[{k}]: expected {{"id", "question": str, "answers": [...]}}',
                                    str(path))
                raw_answers = q.get("answers", [])
                if not isinstance(raw_answers, list) or not all(
                        isinstance(x, dict) and isinstance(x.get("text", ""), str)
                        and isinstance(x.get("answer_start", -1), int) for x in raw_answers):
                    raise DataError(f'{where}.qas[{k}]: answers must be [{{"text": str, "answer_start": int}}]',
                                    str(path))
                answers = [x["text"] for x in raw_answers if x.get("text")]
                start = -1
                if answers:
                    given = next(x.get("answer_start", -1) for x in raw_answers if x.get("text"))
                    start = given
                    if context[max(given, 0) : max(given, 0) + len(answers[0])] != answers[0] or given < 0:
                        found = [m.start() for m in re.finditer(re.escape(answers[0]), context)]
                        start = min(found, key=lambda s: abs(s - given)) if found else -1
                        repaired += 1
                questions.append(Question(str(q["id"]), q["question"], context, answers, start))
    if repaired:
        warnings.warn(f"{path}: {repaired} answer_start offsets did not point at the answer text; repaired to the "
                      "nearest occurrence (or dropped from training when the text is absent)", stacklevel=2)
    return questions


@dataclass
class Window:
    question: int  # index into the question list
    input_ids: list[int]
    token_type_ids: list[int]
    offsets: list[tuple[int, int] | None]  # context character span of each token (None outside the context)
    start: int  # answer token positions in this window (0, 0 -> [CLS]: the answer is not in this window)
    end: int


def make_windows(tokenizer: Tokenizer, questions: list[Question], max_seq_len: int = 256, doc_stride: int = 128,
                 max_question_len: int = MAX_QUESTION_LEN, training: bool = False, source: str | None = None
                 ) -> list[Window]:
    """Windows over each context; training windows mark the answer. Questions longer than `max_question_len`
    tokens are cut; with `source` (the file read), a warning counts them.

    `doc_stride` is the step between window starts, in context tokens (Google's BERT meaning: 128 with 384-token
    windows). It is capped at the room a window has for context, so no context token is ever left out of every
    window, whatever the question length."""
    windows: list[Window] = []
    q_enc = tokenizer.encode_batch([q.question for q in questions])
    c_enc = tokenizer.encode_batch([q.context for q in questions], add_special_tokens=False)
    cut = 0
    for index, (q, qe, ce) in enumerate(zip(questions, q_enc, c_enc, strict=True)):
        c_ids, c_offsets = ce.ids, ce.offsets
        question_ids = qe.ids[1:-1][:max_question_len]
        cut += len(qe.ids) - 2 > max_question_len
        room = max_seq_len - len(question_ids) - 3
        if room < 16:
            raise DataError(f"max_seq_len={max_seq_len} leaves no room for the context after question {q.qid!r} "
                            f"({len(question_ids)} tokens); raise --max-seq-len to {len(question_ids) + 19} or more",
                            source)
        answer_tokens = None
        if q.answer_start >= 0:
            a_start, a_end = q.answer_start, q.answer_start + len(q.answers[0])
            inside = [i for i, (s, e) in enumerate(c_offsets) if s < a_end and e > a_start]
            if inside:
                answer_tokens = (inside[0], inside[-1])
        position = 0
        while True:
            span = range(position, min(position + room, len(c_ids)))
            ids = [tokenizer.cls_token_id, *question_ids, tokenizer.sep_token_id,
                   *(c_ids[i] for i in span), tokenizer.sep_token_id]
            types = [0] * (len(question_ids) + 2) + [1] * (len(span) + 1)
            offsets: list[tuple[int, int] | None] = [None] * (len(question_ids) + 2)
            offsets += [tuple(c_offsets[i]) for i in span] + [None]
            start = end = 0
            shift = len(question_ids) + 2 - position
            if answer_tokens and span.start <= answer_tokens[0] and answer_tokens[1] < span.stop:
                start, end = answer_tokens[0] + shift, answer_tokens[1] + shift
            # a training window without the answer learns to point at [CLS] (as transformers' SQuAD recipe)
            windows.append(Window(index, ids, types, offsets, start, end))
            if span.stop >= len(c_ids):
                break
            position += min(doc_stride, room)
    if source is not None:
        warn_truncated(source, cut, len(questions), max_question_len, "questions", "max_question_len", "")
    return windows


class BertForQuestionAnswering(CheckpointIO, nn.Module):
    """BERT + a linear layer giving start and end logits per token (transformers' `qa_outputs`)."""

    hf_architecture = "BertForQuestionAnswering"
    hf_head_renames = (("qa_outputs.", "qa_outputs."),)
    uses_pooler = False  # as transformers' class, which has none

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        init_weights(self.qa_outputs, config)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None
                ) -> tuple[Tensor, Tensor]:
        logits = self.qa_outputs(self.bert(input_ids, attention_mask, token_type_ids).last_hidden_state)  # (B, T, 2)
        start, end = logits.float().unbind(-1)
        mask = attention_mask.bool() if token_type_ids is None else (token_type_ids == 1) & attention_mask.bool()
        mask[:, 0] = True  # [CLS] = "not in this window"
        minimum = torch.finfo(start.dtype).min
        return start.masked_fill(~mask, minimum), end.masked_fill(~mask, minimum)  # (B, T) each


def best_answers(questions: list[Question], windows: list[Window], starts: list[Tensor], ends: list[Tensor],
                 n_best: int = 20, max_answer_len: int = 30) -> list[tuple[int, int]]:
    """Highest start + end score span (end >= start, within `max_answer_len` tokens, inside the context) over all
    windows of each question, as (start, end) character offsets in the context ((0, 0): no answer)."""
    best: dict[int, tuple[float, int, int]] = {}
    for window, s_logits, e_logits in zip(windows, starts, ends, strict=True):
        top_s = torch.topk(s_logits, min(n_best, len(s_logits))).indices.tolist()
        top_e = torch.topk(e_logits, min(n_best, len(e_logits))).indices.tolist()
        for s in top_s:
            for e in top_e:
                if s >= len(window.offsets) or e >= len(window.offsets):
                    continue
                if window.offsets[s] is None or window.offsets[e] is None or e < s or e - s + 1 > max_answer_len:
                    continue
                score = float(s_logits[s] + e_logits[e])
                if window.question not in best or score > best[window.question][0]:
                    best[window.question] = (score, window.offsets[s][0], window.offsets[e][1])
    return [best.get(i, (0.0, 0, 0))[1:] for i in range(len(questions))]


# ---- the CMRC2018 scorer -----------------------------------------------------------------------------------------

_PUNCTUATION = set("-:_*^/\\~`+=，。：？！“”；’《》……·、「」（）－～『』")  # the official script's sp_char list
_CHINESE = re.compile(r"[\u4e00-\u9fa5]")


def mixed_segmentation(text: str, remove_punctuation: bool = False) -> list[str]:
    """Chinese characters one by one, other runs split into words (the official script uses nltk's
    word_tokenize for those runs; a regex word split is used here, identical on Chinese answers)."""
    text = str(text).lower().strip()
    out: list[str] = []
    run = ""
    for ch in text:
        if remove_punctuation and ch in _PUNCTUATION:
            continue
        if _CHINESE.match(ch) or ch in _PUNCTUATION:
            if run:
                out += re.findall(r"\w+|[^\w\s]", run)
                run = ""
            out.append(ch)
        else:
            run += ch
    if run:
        out += re.findall(r"\w+|[^\w\s]", run)
    return out


def _longest_common_substring(a: list[str], b: list[str]) -> int:
    best = 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0] * (len(b) + 1)
        for j, y in enumerate(b, start=1):
            if x == y:
                current[j] = previous[j - 1] + 1
                best = max(best, current[j])
        previous = current
    return best


def cmrc_f1(answers: list[str], prediction: str) -> float:
    scores = []
    for answer in answers:
        a, p = mixed_segmentation(answer, True), mixed_segmentation(prediction, True)
        common = _longest_common_substring(a, p)
        if common == 0:
            scores.append(0.0)
            continue
        precision, recall = common / len(p), common / len(a)
        scores.append(2 * precision * recall / (precision + recall))
    return max(scores) if scores else 0.0


def cmrc_em(answers: list[str], prediction: str) -> float:
    def clean(text: str) -> str:
        return "".join(ch for ch in str(text).lower().strip() if ch not in _PUNCTUATION)

    return float(any(clean(a) == clean(prediction) for a in answers))


def cmrc_scores(questions: list[Question], predictions: list[str]) -> dict[str, float]:
    """EM and F1 in percent, as cmrc2018_evaluate.py prints them."""
    answered = [(q, p) for q, p in zip(questions, predictions, strict=True) if q.answers]
    em = sum(cmrc_em(q.answers, p) for q, p in answered) / len(answered)
    f1 = sum(cmrc_f1(q.answers, p) for q, p in answered) / len(answered)
    return {"em": 100 * em, "f1": 100 * f1}


@dataclass
class QAInfo:
    max_seq_len: int = seq_len_field()
    doc_stride: int = int_field(1, 1 << 20, help="step between window starts, in tokens")


@dataclass
class QAOptions:
    doc_stride: int = flag("step between window starts, in tokens (capped at the window's context room)", 128,
                             type=int_range(1))


class QATask(FinetuneTask):
    task_name = NAME

    def __init__(self, tokenizer: Tokenizer, train: list[Question], heldout: list[Question], info: QAInfo,
                 eval_batch_size: int = 32, source: str | None = None, heldout_source: str | None = None) -> None:
        self.tokenizer, self.info = tokenizer, info
        max_seq_len, doc_stride = self.max_seq_len, self.doc_stride = info.max_seq_len, info.doc_stride
        usable = [q for q in train if q.answer_start >= 0]
        self.train = make_windows(tokenizer, usable, max_seq_len, doc_stride, training=True, source=source)
        self.heldout = heldout
        self.heldout_windows = make_windows(tokenizer, heldout, max_seq_len, doc_stride,
                                            source=heldout_source) if heldout else []
        self.eval_batch_size = eval_batch_size

    def _batch(self, windows: list[Window]) -> dict[str, Any]:
        batch = pad_sequences([w.input_ids for w in windows], self.tokenizer.pad_token_id,
                              [w.token_type_ids for w in windows])
        batch["start"] = torch.tensor([w.start for w in windows])
        batch["end"] = torch.tensor([w.end for w in windows])
        return batch

    def make_batch(self, epoch: int, indices: list[int]) -> dict[str, Any]:
        return self._batch([self.train[i] for i in indices])

    def counts(self, batch: dict[str, Any]) -> dict[str, float]:
        return {"span": float(len(batch["start"]))}

    def tokens(self, batch: dict[str, Any]) -> int:
        return int(batch["attention_mask"].sum())

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        start, end = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        loss = (F.cross_entropy(start, batch["start"], reduction="sum")
                + F.cross_entropy(end, batch["end"], reduction="sum")) / 2
        return {"span": loss}

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        if not self.heldout:
            return {}
        return cmrc_scores(self.heldout, answer(model, self.tokenizer, self.heldout, self.heldout_windows,
                                                self.eval_batch_size))


def answer(model: nn.Module, tokenizer: Tokenizer, questions: list[Question], windows: list[Window],
           batch_size: int = 32) -> list[str]:
    return [q.context[s:e] for q, (s, e) in zip(questions, answer_spans(model, tokenizer, questions, windows,
                                                                         batch_size), strict=True)]


def answer_spans(model: nn.Module, tokenizer: Tokenizer, questions: list[Question], windows: list[Window],
                 batch_size: int = 32) -> list[tuple[int, int]]:
    def forward(m: nn.Module, batch: dict[str, Any]) -> list[tuple[Tensor, Tensor]]:
        s, e = (t.cpu() for t in m(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]))
        return list(zip(s, e, strict=True))

    scored = run_batches(model, windows, lambda chunk: pad_sequences(
        [w.input_ids for w in chunk], tokenizer.pad_token_id, [w.token_type_ids for w in chunk]), forward, batch_size)
    starts = [s[: len(w.input_ids)] for w, (s, _) in zip(windows, scored, strict=True)]
    ends = [e[: len(w.input_ids)] for w, (_, e) in zip(windows, scored, strict=True)]
    return best_answers(questions, windows, starts, ends)


def finetune(train_file: str | Path, config: Any, *, eval_file: str | Path | None = None, fmt: str = "squad",
             init_from: str | Path | None = None, tokenizer: str | Path | None = None, model_size: str = "mini",
             max_seq_len: int = 256, limit: int | None = None, options: QAOptions | None = None) -> Any:
    from bertkit.tasks.base import build_task_model, encoder_config, finetune_tokenizer
    from bertkit.train import fit

    tok = finetune_tokenizer(init_from, tokenizer)
    train = require_examples(take(read_questions(train_file, fmt), limit), train_file, "training")
    heldout = require_examples(read_questions(eval_file, fmt), eval_file, "evaluation") if eval_file else []
    model_config = encoder_config(init_from, tok, model_size, max_seq_len)
    model = build_task_model(BertForQuestionAnswering, init_from, model_config, config.seed)
    task = QATask(tok, train, heldout, QAInfo(max_seq_len, (options or QAOptions()).doc_stride), source=str(train_file),
                  heldout_source=str(eval_file))
    return fit(model, task, config, title="question answering")


def evaluate_file(model: nn.Module, tokenizer: Tokenizer, info: QAInfo, path: str | Path, fmt: str
                  ) -> dict[str, float]:
    questions = require_examples(read_questions(path, fmt), path, "evaluation")
    return QATask(tokenizer, [], questions, info, heldout_source=str(path)).evaluate(model)


@torch.no_grad()
def predict(model: nn.Module, tokenizer: Tokenizer, info: QAInfo, inputs: list[dict[str, Any]]
            ) -> list[dict[str, Any]]:
    """The answer span of each {"question", "context"}: text and character offsets in the context."""
    items = [Question(str(i), x["question"], x["context"], [], -1) for i, x in enumerate(inputs)]
    spans = answer_spans(model, tokenizer, items, make_windows(tokenizer, items, info.max_seq_len, info.doc_stride))
    return [{"answer": item.context[s:e], "start": s, "end": e} for item, (s, e) in zip(items, spans, strict=True)]


def work(item: dict[str, Any], info: QAInfo) -> Work:
    """The context in windows after the question: a window's room for context is at least what is left beside a
    question of one token a character (cut at MAX_QUESTION_LEN)."""
    room = max(16, info.max_seq_len - min(len(item["question"]), MAX_QUESTION_LEN) - 3)
    return windows(len(item["context"]), room, min(info.doc_stride, room), info.max_seq_len)


SPEC = TaskSpec(
    name=NAME,
    description="extractive question answering: the answer's span in the context",
    model=BertForQuestionAnswering,
    info=QAInfo,
    inputs=(InputField("question", "the question"),
            InputField("context", "the passage holding the answer", multiline=True)),
    predict=predict,
    view={"label": "answer", "span_over": "context"},
    example={"question": "Where is the Eiffel Tower?", "context": "The Eiffel Tower is in Paris."},
    formats=FORMATS,
    default_format="squad",
    options=QAOptions,
    finetune=finetune,
    evaluate=evaluate_file,
    headline="f1",
    work=work,
    not_distilled=("its answers are spans scored over overlapping document windows; one window's start and end logits "
                   "are not a distribution over the answer"),
)
