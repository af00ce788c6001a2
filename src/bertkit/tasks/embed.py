"""Sentence embeddings: vectors from any BERT checkpoint (mean over real tokens, [CLS], or the tanh pooler), trained
with CoSENT, in-batch negatives (MNR) or unsupervised SimCSE, scored by Spearman / Pearson of cosine against labels
and by retrieval (recall@k, MRR@10); cosine similarity and a paraphrase score for feature-based use.

Input formats (`--format`); a malformed line is an error naming the file and the line:
- `jsonl` (default): one object per line, `{"text": ..., "text_pair": ..., "label": ...}`; `label` is a number
  (0/1, or a graded score; a numeric string too) or absent, `negative` an optional hard negative (for `mnr`);
  `simcse` needs only `text`.
- `afqmc`: JSON lines `{"sentence1": ..., "sentence2": ..., "label": "0" or "1"}` (CLUE's AFQMC layout).
- `stsb`: GLUE's STS-B TSV: a header naming the columns `sentence1`, `sentence2` and `score` (a file without
  `score`, as STS-B's test set, is unlabelled); split on tabs only (its sentences hold literal quotes).
- `lcqmc`: `text_a<TAB>text_b<TAB>label`; a `text_a text_b label` header line is skipped where present.
- `bq`: `sentence1_!_sentence2_!_label` (BQ Corpus).
- `lines`: one sentence per line (for `simcse`; blank lines skipped).

What each loss (`--loss`) reads, and learns:
- `cosent`: labelled pairs; log(1 + sum over pairs i, j with label_i > label_j of exp(20 (cos_j - cos_i))) over a
  batch's pairs: every pair ranked above every pair with a lower label (Su Jianlin's CoSENT).
- `mnr`: (query, positive) pairs: every pair of an unlabelled file, the label-1 pairs of a 0/1-labelled one (its
  label-0 pairs skipped and counted; graded scores are an error); each query against the batch's positives and
  every hard negative in the batch, cross-entropy over 20 x cosine (sentence-transformers'
  MultipleNegativesRankingLoss).
- `simcse`: the distinct sentences of the file (both texts of a pair; labels unused); the batch encoded twice in
  train mode, so dropout makes two views of each sentence, each view's partner its positive among the batch, cross-
  entropy over cosine / 0.05 (unsupervised SimCSE, Gao et al. 2021).

Evaluation of a pairs file: Spearman and Pearson of the two texts' cosine against the labels; and, on its positive
pairs (as `mnr` reads them), each query's positive ranked among the distinct positives of the file (a corpus text
identical to the query is not counted against it): recall@1, recall@10, MRR@10.

The pooling is the checkpoint's: task.json holds it (and writes it as sentence-transformers' `modules.json` +
`1_Pooling/config.json` beside the weights); a checkpoint without task.json is read from those files where it has
them, else pools the mean.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertkit.argtypes import flag
from bertkit.config import BertConfig
from bertkit.errors import CheckpointError, DataError
from bertkit.fileio import atomic_write_text
from bertkit.metrics import mrr_at_k, pearson, recall_at_k, spearman
from bertkit.model import BertModel
from bertkit.tasks.base import (
    TASK_FILE,
    FinetuneTask,
    pad_sequences,
    require_examples,
    run_batches,
    save_task,
    take,
    warn_truncated,
)
from bertkit.tasks.embed_data import (  # noqa: F401 (re-exported: the task's data API)
    FORMATS,
    JsonLayout,
    LinesLayout,
    Pair,
    TableLayout,
    cosent_examples,
    graded,
    mnr_examples,
    parse_label,
    positives,
    read_pairs,
    simcse_sentences,
)
from bertkit.tasks.spec import InputField, TaskSpec, bool_field, choice_field, seq_len_field
from bertkit.tokenizer import Tokenizer

NAME = "sentence_embedding"
POOLINGS = ("mean", "cls", "pooler")
TRAINED_POOLINGS = ("mean", "cls")  # the pooler's tanh layer is NSP's, not a sentence vector worth training
LOSSES = ("cosent", "mnr", "simcse")
# CoSENT's and MNR's scale on cosines (sentence-transformers' defaults), and 1 / SimCSE's temperature 0.05
SCALE = 20.0


# ---- vectors ------------------------------------------------------------------------------------------------------

Row = list[int]  # the token ids of one sentence, [CLS] ... [SEP]


def encode(tokenizer: Tokenizer, texts: list[str], max_seq_len: int) -> tuple[list[Row], int]:
    """The one encoding of training, evaluation and prediction: `[CLS] text [SEP]` per sentence, cut to
    max_seq_len. Returns the rows and how many texts were cut."""
    rows: list[Row] = []
    cut = 0
    for start in range(0, len(texts), 2048):
        encodings = tokenizer.encode_batch(texts[start : start + 2048], max_length=max_seq_len)
        cut += encodings.truncated
        rows += [e.ids for e in encodings]
    return rows, cut


def collate(rows: list[Row], pad_id: int) -> dict[str, Any]:
    return pad_sequences(rows, pad_id)


def sentence_vectors(model: nn.Module, batch: dict[str, Any], pooling: str) -> Tensor:
    """(B, H) float32 vectors of a batch of sentences, not normalised: `mean` of the last layer over real tokens
    (what sentence-transformers models such as all-MiniLM-L6-v2 are trained for), the `cls` token's state, or the tanh
    `pooler` output. Training and inference both pool here."""
    out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    hidden = out.last_hidden_state.float()  # (B, T, H)
    if pooling == "mean":
        mask = batch["attention_mask"][:, :, None].float()  # (B, T, 1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    if pooling == "cls":
        return hidden[:, 0]
    return out.pooler_output.float()


@torch.no_grad()
def embed(model: BertModel, tokenizer: Tokenizer, texts: list[str], pooling: str = "mean", batch_size: int = 64,
          max_seq_len: int = 128, normalize: bool = True) -> np.ndarray:
    """(N, H) float32 vectors of `texts`, row i for text i, pooled as `sentence_vectors` says; L2-normalised unless
    `normalize` is False."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    model.eval()
    rows, _ = encode(tokenizer, texts, max_seq_len)

    def forward(m: nn.Module, batch: dict[str, Any]) -> Tensor:
        vectors = sentence_vectors(m, batch, pooling)
        return (F.normalize(vectors, dim=-1) if normalize else vectors).cpu()

    out = run_batches(model, rows, lambda chunk: collate(chunk, tokenizer.pad_token_id), forward, batch_size)
    if not out:
        return np.zeros((0, model.config.hidden_size), dtype=np.float32)
    return torch.stack(out).numpy().astype(np.float32, copy=False)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two (N, H) arrays (or of two vectors)."""
    a, b = np.atleast_2d(a).astype(np.float64), np.atleast_2d(b).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.where(norms == 0, 1, norms)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    labels, scores = np.asarray(labels).astype(bool), np.asarray(scores, dtype=np.float64)
    positives, negatives = scores[labels], scores[~labels]
    if not len(positives) or not len(negatives):
        return float("nan")
    greater = (positives[:, None] > negatives[None, :]).sum()
    ties = (positives[:, None] == negatives[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(positives) * len(negatives)))


def best_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The cosine threshold with the highest accuracy on (labels, scores): pick it on training data."""
    candidates = np.unique(scores)
    accuracies = [((scores >= t) == labels.astype(bool)).mean() for t in candidates]
    return float(candidates[int(np.argmax(accuracies))])


def paraphrase_eval(model: BertModel, tokenizer: Tokenizer, train_pairs: list[tuple[str, str, int]],
                    test_pairs: list[tuple[str, str, int]], pooling: str = "mean") -> dict[str, Any]:
    """Feature-based paraphrase detection: cosine of the two sentence vectors, no fine-tuning."""

    def scores(pairs: list[tuple[str, str, int]]) -> tuple[np.ndarray, np.ndarray]:
        a = embed(model, tokenizer, [p[0] for p in pairs], pooling)
        b = embed(model, tokenizer, [p[1] for p in pairs], pooling)
        return cosine_similarity(a, b), np.array([p[2] for p in pairs])

    train_scores, train_labels = scores(train_pairs)
    test_scores, test_labels = scores(test_pairs)
    threshold = best_threshold(train_labels, train_scores)
    return {"accuracy": float(((test_scores >= threshold) == test_labels.astype(bool)).mean()),
            "roc_auc": roc_auc(test_labels, test_scores), "threshold": threshold}


# ---- losses -------------------------------------------------------------------------------------------------------

def cosent_loss(a: Tensor, b: Tensor, labels: Tensor, scale: float = SCALE) -> Tensor:
    """CoSENT over a batch of pairs (a_i, b_i) with labels: log(1 + sum over (i, j) with label_i > label_j of
    exp(scale * (cos_j - cos_i))): zero when every pair is ranked above every pair labelled lower."""
    cos = F.cosine_similarity(a, b, dim=-1) * scale  # (B,)
    above = labels[:, None] > labels[None, :]  # (B, B): pair i should score above pair j
    differences = (cos[None, :] - cos[:, None]).masked_fill(~above, float("-inf"))  # (B, B): cos_j - cos_i
    return torch.logsumexp(torch.cat([cos.new_zeros(1), differences.flatten()]), 0)


def in_batch_loss(queries: Tensor, candidates: Tensor, scale: float = SCALE) -> Tensor:
    """The SUM over queries of cross-entropy over scale * cosine against every candidate, query i's answer being
    candidate i (the rest: the batch's other positives, then any hard negatives). MNR and SimCSE both."""
    scores = F.normalize(queries, dim=-1) @ F.normalize(candidates, dim=-1).T * scale  # (B, C)
    return F.cross_entropy(scores, torch.arange(len(queries), device=scores.device), reduction="sum")


# ---- evaluation ---------------------------------------------------------------------------------------------------

def retrieval_ranks(queries: np.ndarray, corpus: np.ndarray, gold: list[int], own: list[int | None],
                    chunk: int = 1024) -> list[int]:
    """The 1-based rank of each query's gold corpus row by inner product (normalised vectors: cosine); rows that
    score the same as the gold rank after it; `own[i]`, a corpus row holding query i's own text, is left out."""
    out = []
    for start in range(0, len(queries), chunk):
        scores = queries[start : start + chunk] @ corpus.T  # (Q, C)
        rows = np.arange(len(scores))
        golds = scores[rows, gold[start : start + chunk]]
        for i, skip in enumerate(own[start : start + chunk]):
            if skip is not None and skip != gold[start + i]:
                scores[i, skip] = -np.inf
        out += (1 + (scores > golds[:, None]).sum(1)).tolist()
    return out


@torch.no_grad()
def score_pairs(model: nn.Module, tokenizer: Tokenizer, info: EmbedInfo, pairs: list[Pair], source: str
                ) -> dict[str, float]:
    """Spearman and Pearson of cosine against labels (labelled pairs); recall@1, recall@10 and MRR@10 of each positive
    pair's second text among the file's distinct positives (positive pairs)."""
    check_scorable(pairs, source)
    texts = list(dict.fromkeys(t for p in pairs for t in (p.text, p.text_pair) if t is not None))
    where = {text: i for i, text in enumerate(texts)}
    rows, cut = encode(tokenizer, texts, info.max_seq_len)
    warn_truncated(source, cut, len(texts), info.max_seq_len, "texts")
    vectors = torch.stack(run_batches(
        model, rows, lambda chunk: collate(chunk, tokenizer.pad_token_id),
        lambda m, b: F.normalize(sentence_vectors(m, b, info.pooling), dim=-1).cpu())).numpy()
    metrics: dict[str, float] = {}
    labelled = [p for p in pairs if p.label is not None and p.text_pair is not None]
    if labelled:
        cosines = [float(vectors[where[p.text]] @ vectors[where[p.text_pair]]) for p in labelled]  # type: ignore[index]
        gold = [float(p.label) for p in labelled]  # type: ignore[arg-type]
        metrics.update(spearman=spearman(cosines, gold), pearson=pearson(cosines, gold))
    found = positives(pairs)
    if found:
        corpus = list(dict.fromkeys(p.text_pair for p in found))  # type: ignore[arg-type]
        place = {text: i for i, text in enumerate(corpus)}
        ranks = retrieval_ranks(vectors[[where[p.text] for p in found]], vectors[[where[t] for t in corpus]],
                                [place[p.text_pair] for p in found],  # type: ignore[index]
                                [place.get(p.text) for p in found])
        metrics.update({"recall@1": recall_at_k(ranks, 1), "recall@10": recall_at_k(ranks, 10),
                        "mrr@10": mrr_at_k(ranks, 10)})
    return metrics


def check_scorable(pairs: list[Pair], source: str) -> None:
    """An evaluation file needs pairs: labelled ones, or (query, positive) ones."""
    if not any(p.text_pair is not None for p in pairs):
        raise DataError("an evaluation file holds sentence pairs (labelled, or (query, positive)); this one has single "
                        "sentences (score with a pairs file: --eval-format, or `bertkit evaluate --format`)", source)
    if not positives(pairs) and not any(p.label is not None and p.text_pair is not None for p in pairs):
        raise DataError("no pair to score: its pairs carry no label and no positive", source)


# ---- training -----------------------------------------------------------------------------------------------------

@dataclass
class EmbedInfo:
    pooling: str = choice_field(POOLINGS, "mean", "mean of the last layer, the [CLS] state, or the tanh pooler")
    max_seq_len: int = seq_len_field(128)
    normalize: bool = bool_field(True, "L2-normalise the vectors")


@dataclass
class EmbeddingOptions:
    loss: str = flag("the training objective: cosent (pairs labelled 0/1 or with a score), mnr ((query, positive) "
                     "pairs, the batch's other texts as negatives), simcse (unlabelled sentences, dropout as "
                     "augmentation)", "cosent", choices=LOSSES)
    pooling: str = flag("a sentence vector is the mean of the last layer over real tokens, or the [CLS] state; "
                        "task.json records it for embed, predict, evaluate and serve", "mean",
                        choices=TRAINED_POOLINGS)
    eval_format: str | None = flag("the format of --eval, where it differs from --format (simcse on --format "
                                   "lines, scored on pairs)", None, choices=tuple(FORMATS))


class EmbeddingTask(FinetuneTask):
    """TrainTask for `train.fit`: sentences tokenized once; a batch is one padded block of every sentence it holds
    (cosent: the first texts then the second; mnr: queries, positives, hard negatives; simcse: the sentences twice)."""

    task_name = NAME
    find_unused_parameters = True  # the pooler: mean and [CLS] pooling never read it

    def __init__(self, tokenizer: Tokenizer, info: EmbedInfo, loss: str, train: list[Pair], heldout: list[Pair],
                 source: str = "train", heldout_source: str = "held-out") -> None:
        if loss not in LOSSES:
            raise DataError(f"loss must be one of {LOSSES}, got {loss!r}")
        self.tokenizer, self.info, self.loss_name = tokenizer, info, loss
        self.heldout, self.heldout_source = heldout, heldout_source
        self.train: list[tuple[Any, ...]] = self._encode(train, source) if train else []

    def _encode(self, pairs: list[Pair], source: str) -> list[tuple[Any, ...]]:
        def ids(texts: list[str]) -> list[Row]:
            rows, cut = encode(self.tokenizer, texts, self.info.max_seq_len)
            warn_truncated(source, cut, len(texts), self.info.max_seq_len, "texts")
            return rows

        if self.loss_name == "simcse":
            return [(row,) for row in ids(simcse_sentences(pairs))]
        if self.loss_name == "cosent":
            pairs = cosent_examples(pairs, source)
            return list(zip(ids([p.text for p in pairs]), ids([p.text_pair for p in pairs]),  # type: ignore[misc]
                            [p.label for p in pairs], strict=True))
        pairs = require_examples(mnr_examples(pairs, source), source, "training (no positive pair)")
        negatives = [p.negative for p in pairs if p.negative is not None]
        negative_rows = iter(ids(negatives))
        return list(zip(ids([p.text for p in pairs]), ids([p.text_pair for p in pairs]),  # type: ignore[misc]
                        [next(negative_rows) if p.negative is not None else None for p in pairs], strict=True))

    def fingerprint(self) -> str:
        from bertkit.resume import data_fingerprint

        return data_fingerprint([self.loss_name, self.info.pooling, self.train])

    def make_batch(self, epoch: int, indices: list[int]) -> dict[str, Any]:
        rows = [self.train[i] for i in indices]
        if self.loss_name == "simcse":
            sequences = [r[0] for r in rows] * 2
        else:
            sequences = [r[0] for r in rows] + [r[1] for r in rows]
            if self.loss_name == "mnr":
                sequences += [r[2] for r in rows if r[2] is not None]
        batch = collate(sequences, self.tokenizer.pad_token_id)
        batch["size"] = torch.tensor(len(rows))
        if self.loss_name == "cosent":
            batch["labels"] = torch.tensor([r[2] for r in rows], dtype=torch.float)
        return batch

    def counts(self, batch: dict[str, Any]) -> dict[str, float]:
        # cosent is one term per batch (every pair ranked against every other); the others one per sentence
        return {self.loss_name: 1.0 if self.loss_name == "cosent" else float(batch["size"])}

    def tokens(self, batch: dict[str, Any]) -> int:
        return int(batch["attention_mask"].sum())

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        size = int(batch["size"])
        vectors = sentence_vectors(model, batch, self.info.pooling)  # (rows, H)
        if self.loss_name == "cosent":
            value = cosent_loss(vectors[:size], vectors[size : 2 * size], batch["labels"].float())
        else:  # mnr: candidates are the positives, then the hard negatives; simcse: the second views
            value = in_batch_loss(vectors[:size], vectors[size:])
        return {self.loss_name: value}

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        if not self.heldout:
            return {}
        return score_pairs(model, self.tokenizer, self.info, self.heldout, self.heldout_source)

    def save(self, model: nn.Module, directory: Path) -> None:
        save_task(SPEC, self.info, model, self.tokenizer, directory)
        write_sentence_transformers_files(directory, self.info, model.config.hidden_size)


def write_sentence_transformers_files(directory: Path, info: EmbedInfo, hidden_size: int) -> None:
    """The pooling as sentence-transformers records it (modules.json, 1_Pooling/config.json,
    sentence_bert_config.json), so its `SentenceTransformer(directory)` pools as bertkit does."""
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if info.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    pooling = {"word_embedding_dimension": hidden_size, "pooling_mode_cls_token": info.pooling == "cls",
               "pooling_mode_mean_tokens": info.pooling == "mean", "pooling_mode_max_tokens": False,
               "pooling_mode_mean_sqrt_len_tokens": False}
    (Path(directory) / "1_Pooling").mkdir(exist_ok=True)
    for name, value in (("modules.json", modules), ("1_Pooling/config.json", pooling),
                        ("sentence_bert_config.json", {"max_seq_length": info.max_seq_len, "do_lower_case": False})):
        atomic_write_text(Path(directory) / name, json.dumps(value, indent=2) + "\n")


def pretrained_info(directory: Path, config: BertConfig) -> EmbedInfo:
    """A checkpoint without task.json: the pooling and length sentence-transformers' files record
    (1_Pooling/config.json, sentence_bert_config.json), where it has them; else mean pooling, 128 tokens."""
    directory = Path(directory)
    pooling, max_seq_len = "mean", EmbedInfo().max_seq_len
    pooling_file, settings_file = directory / "1_Pooling" / "config.json", directory / "sentence_bert_config.json"
    if pooling_file.is_file():
        modes = _json_object(pooling_file)
        chosen = [mode for mode, key in (("cls", "pooling_mode_cls_token"), ("mean", "pooling_mode_mean_tokens"))
                  if modes.get(key) is True]
        others = sorted(k for k, v in modes.items() if k.startswith("pooling_mode_") and v is True
                        and k not in ("pooling_mode_cls_token", "pooling_mode_mean_tokens"))
        if len(chosen) != 1 or others:
            warnings.warn(f"{pooling_file}: pooling {chosen + others} is not one of mean or [CLS]; pooling the mean",
                          stacklevel=2)
        else:
            pooling = chosen[0]
    if settings_file.is_file():
        length = _json_object(settings_file).get("max_seq_length")
        if isinstance(length, int) and not isinstance(length, bool) and length >= 8:
            max_seq_len = length
    return EmbedInfo(pooling, min(max_seq_len, config.max_position_embeddings))


def _json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def checkpoint_info(directory: str | Path) -> EmbedInfo:
    """How a checkpoint's vectors are made: a sentence-embedding task.json's pooling, length and normalisation;
    for any other checkpoint (pre-trained, or fine-tuned for another task: its encoder), `pretrained_info`'s."""
    from bertkit.tasks.base import read_task_info

    directory = Path(directory)
    if (directory / TASK_FILE).is_file():
        spec, info = read_task_info(directory)
        if spec.name == NAME:
            return info
    return pretrained_info(directory, BertConfig.from_pretrained(directory))


def finetune(train_file: str | Path, config: Any, *, eval_file: str | Path | None = None, fmt: str = "jsonl",
             init_from: str | Path | None = None, tokenizer: str | Path | None = None, model_size: str = "mini",
             max_seq_len: int = 128, limit: int | None = None, options: EmbeddingOptions | None = None) -> Any:
    """Train sentence embeddings with `options.loss` (from `init_from`, or from scratch with `tokenizer` and a
    `model_size` preset); the checkpoint is a BertModel with task.json recording the pooling."""
    from bertkit.tasks.base import build_task_model, encoder_config, finetune_tokenizer
    from bertkit.train import fit

    options = options or EmbeddingOptions()
    tok = finetune_tokenizer(init_from, tokenizer)
    train = require_examples(take(read_pairs(train_file, fmt), limit), train_file, "training")
    heldout: list[Pair] = []
    if eval_file is not None:
        heldout = require_examples(read_pairs(eval_file, options.eval_format or fmt), eval_file, "evaluation")
        check_scorable(heldout, str(eval_file))  # before training, not after it
    info = EmbedInfo(options.pooling, max_seq_len, True)
    model = build_task_model(BertModel, init_from, encoder_config(init_from, tok, model_size, max_seq_len),
                             config.seed)
    task = EmbeddingTask(tok, info, options.loss, train, heldout, source=str(train_file),
                         heldout_source=str(eval_file))
    title = f"sentence embeddings, {options.loss} ({Path(train_file).parent.name or 'data'})"
    return fit(model, task, config, title=title)


def evaluate_file(model: nn.Module, tokenizer: Tokenizer, info: EmbedInfo, path: str | Path, fmt: str
                  ) -> dict[str, float]:
    pairs = require_examples(read_pairs(path, fmt), path, "evaluation")
    return score_pairs(model, tokenizer, info, pairs, str(path))


# ---- prediction and the embed command -----------------------------------------------------------------------------

def load(directory: str | Path) -> tuple[BertModel, Tokenizer]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not used by BertModel.*")
        return BertModel.from_pretrained(directory), Tokenizer.from_pretrained(directory)


def embed_file(checkpoint: str | Path, input: str, output: str, *, pooling: str | None = None,
               max_seq_len: int | None = None, normalize: bool | None = None, device: str = "auto",
               precision: str = "fp32", int8_keep: tuple[str, ...] | list[str] = (), compile: bool = False
               ) -> np.ndarray:
    """Vectors of the lines of a file or stdin ('-'), written to a .npy file, or as JSON lines of {text, vector} to
    another file or stdout ('-'). Pooling, length and normalisation are the checkpoint's (`checkpoint_info`) unless
    given. Row i is line i, always: a blank line is embedded as empty text (with a warning counting them) rather
    than skipped, which would shift every later row against its line. The model is set up for inference as the
    Predictor sets it up (device, precision)."""
    import sys

    from bertkit.device import resolve_device
    from bertkit.errors import BertkitError
    from bertkit.fileio import atomic_write, input_lines
    from bertkit.precision import prepare_for_inference

    recorded = checkpoint_info(checkpoint)
    if pooling is not None and pooling != recorded.pooling and (Path(checkpoint) / TASK_FILE).is_file():
        print(f"bertkit embed: warning: {checkpoint} was trained with {recorded.pooling} pooling; --pooling {pooling} "
              "gives vectors it was not trained for", file=sys.stderr)
    pooling = pooling or recorded.pooling
    max_seq_len = max_seq_len or recorded.max_seq_len
    normalize = recorded.normalize if normalize is None else normalize
    model, tok = load(checkpoint)
    prepare_for_inference(model, model, resolve_device(device), precision, int8_keep, compile)
    if max_seq_len > model.config.max_position_embeddings:
        raise BertkitError(f"--max-seq-len {max_seq_len} exceeds {checkpoint}'s max_position_embeddings "
                           f"{model.config.max_position_embeddings}")
    source = "<stdin>" if input == "-" else input
    texts = [text for _, text in input_lines(input)]
    if not texts:
        raise DataError("no input lines (the input is empty)", source)
    blank = [number for number, text in enumerate(texts, start=1) if not text.strip()]
    if blank:
        shown = ", ".join(map(str, blank[:5])) + (", ..." if len(blank) > 5 else "")
        print(f"bertkit embed: warning: {source}: {len(blank)} blank line(s) (line {shown}) embedded as empty "
              "text, keeping row i = line i", file=sys.stderr)
    vectors = embed(model, tok, texts, pooling, max_seq_len=max_seq_len, normalize=normalize)
    rows = (json.dumps({"text": text, "vector": [round(float(v), 6) for v in vector]}, ensure_ascii=False) + "\n"
            for text, vector in zip(texts, vectors, strict=True))
    if output == "-":
        sys.stdout.writelines(rows)
    elif output.endswith(".npy"):

        def write_npy(tmp: Path) -> None:
            with open(tmp, "wb") as handle:  # np.save(path) would append ".npy" to the temporary name
                np.save(handle, vectors)

        atomic_write(output, write_npy)
    else:
        atomic_write_text(output, "".join(rows))
    return vectors


def load_encoder(directory: Path, config: BertConfig) -> BertModel:
    """The encoder of any BERT checkpoint (task heads and pre-training heads are not used)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(not used by BertModel|newly initialised).*")
        return BertModel.from_pretrained(directory, config=config)


def predict_inputs(model: BertModel, tokenizer: Tokenizer, info: EmbedInfo, inputs: list[dict[str, Any]]
                   ) -> list[dict[str, Any]]:
    vectors = embed(model, tokenizer, [i["text"] for i in inputs], info.pooling, max_seq_len=info.max_seq_len,
                    normalize=info.normalize)
    return [{"vector": [round(float(v), 6) for v in vector]} for vector in vectors]


SPEC = TaskSpec(
    name=NAME,
    description="a sentence vector per text (feature extraction; trained with cosent, mnr or simcse)",
    model=BertModel,
    info=EmbedInfo,
    inputs=(InputField("text", "the text to embed", multiline=True),),
    predict=predict_inputs,
    view={"vector": "vector"},
    example={"text": "A sentence to embed."},
    formats=tuple(FORMATS),
    default_format="jsonl",
    options=EmbeddingOptions,
    finetune=finetune,
    evaluate=evaluate_file,
    load=load_encoder,
    pretrained_info=pretrained_info,
    not_distilled="sentence vectors, not logits over classes: soft targets do not apply",
)
