"""Feature extraction: sentence vectors from any BERT checkpoint ([CLS]/pooler or mean over real tokens), cosine
similarity, and a paraphrase score (threshold picked on one split, accuracy and ROC-AUC on another)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bertkit.config import BertConfig
from bertkit.device import for_model
from bertkit.model import BertModel
from bertkit.tasks.spec import InputField, TaskSpec, bool_field, choice_field, seq_len_field
from bertkit.tokenizer import Tokenizer

NAME = "sentence_embedding"
POOLINGS = ("mean", "cls", "pooler")


@torch.no_grad()
def embed(model: BertModel, tokenizer: Tokenizer, texts: list[str], pooling: str = "mean", batch_size: int = 64,
          max_seq_len: int = 128, normalize: bool = True) -> np.ndarray:
    """(N, H) float32 vectors: `mean` of the last layer over real tokens (what sentence-transformers models such as
    all-MiniLM-L6-v2 are trained for), the `cls` token's state, or the tanh `pooler` output."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    model.eval()
    out = []
    for start in range(0, len(texts), batch_size):
        batch = for_model(model, tokenizer(texts[start : start + batch_size], max_length=max_seq_len))
        result = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        hidden = result.last_hidden_state.float()  # (B, T, H)
        if pooling == "mean":
            mask = batch["attention_mask"][:, :, None].float()
            vectors = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        elif pooling == "cls":
            vectors = hidden[:, 0]
        else:
            vectors = result.pooler_output.float()
        if normalize:
            vectors = torch.nn.functional.normalize(vectors, dim=-1)
        out.append(vectors.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.config.hidden_size), dtype=np.float32)


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


def load(directory: str | Path) -> tuple[BertModel, Tokenizer]:
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not used by BertModel.*")
        return BertModel.from_pretrained(directory), Tokenizer.from_pretrained(directory)


def embed_file(checkpoint: str | Path, input: str, output: str, *, pooling: str = "mean", max_seq_len: int = 128,
               normalize: bool = True, device: str = "auto", precision: str = "fp32",
               int8_keep: tuple[str, ...] | list[str] = (), compile: bool = False) -> np.ndarray:
    """Vectors of the lines of a file or stdin ('-'), written to a .npy file, or as JSON lines of {text, vector} to
    another file or stdout ('-'). Row i is line i, always: a blank line is embedded as empty text (with a warning
    counting them) rather than skipped, which would shift every later row against its line. The model is set up
    for inference as the Predictor sets it up (device, precision)."""
    import json
    import sys

    from bertkit.device import resolve_device
    from bertkit.errors import BertkitError, DataError
    from bertkit.fileio import atomic_write, atomic_write_text, input_lines
    from bertkit.precision import prepare_for_inference

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


@dataclass
class EmbedInfo:
    pooling: str = choice_field(POOLINGS, "mean", "mean of the last layer, the [CLS] state, or the tanh pooler")
    max_seq_len: int = seq_len_field(128)
    normalize: bool = bool_field(True, "L2-normalise the vectors")


def load_encoder(directory: Path, config: BertConfig) -> BertModel:
    """The encoder of any BERT checkpoint (task heads and pre-training heads are not used)."""
    import warnings

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
    description="a sentence vector per text (feature extraction)",
    model=BertModel,
    info=EmbedInfo,
    inputs=(InputField("text", "the text to embed", multiline=True),),
    predict=predict_inputs,
    view={"vector": "vector"},
    example={"text": "A sentence to embed."},
    load=load_encoder,
    not_distilled="sentence vectors, not a fine-tuned task",
)
