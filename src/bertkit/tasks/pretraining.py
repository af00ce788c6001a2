"""Pre-training task: corpus -> token ids (with jieba word starts) -> NSP or packed instances -> masked batches ->
MLM + NSP losses and held-out MLM/NSP accuracy, for `train.fit`.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bertkit.losses import cross_entropy
from bertkit.masking import IGNORE_INDEX, Instance, example_rng, mask_tokens, nsp_instances, packed_instances
from bertkit.model import BertForPreTraining
from bertkit.tokenizer import Tokenizer

# A token is stored as one int: its id in the low 30 bits, "begins a word" in bit 30. The instance builders move
# tokens around without looking at them, so word boundaries for whole-word masking travel with the ids for free.
_ID_BITS = 30
_ID_MASK = (1 << _ID_BITS) - 1
HELDOUT_EPOCH = 2**31 - 1  # the "epoch" whose seeds build and mask the held-out set, apart from any training epoch
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f]")


def encode_token(token_id: int, word_start: bool) -> int:
    return token_id | (int(word_start) << _ID_BITS)


def decode_tokens(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids, word_starts) from stored token codes."""
    return codes & _ID_MASK, (codes >> _ID_BITS).astype(bool)


def tokenize_documents(documents: list[list[str]], tokenizer: Tokenizer, whole_word: bool = False,
                       batch: int = 2048) -> list[list[list[int]]]:
    """Documents of sentences -> documents of token-code lists.

    With `whole_word`, jieba segments each sentence and a token begins a word where a jieba word begins (Chinese
    whole-word masking, as in Chinese-BERT-wwm); without it every non-"##" token begins a word.
    """
    if tokenizer.vocab_size > _ID_MASK:
        raise ValueError("vocabulary too large for the token encoding")
    cut = None
    if whole_word:
        import jieba

        jieba.setLogLevel(60)
        cut = jieba.lcut
    flat = [sentence for document in documents for sentence in document]
    coded: list[list[int]] = []
    for start in range(0, len(flat), batch):
        texts = flat[start : start + batch]
        for text, (ids, offsets, tokens) in zip(texts, tokenizer.encode_many(texts), strict=True):
            starts: set[int] | None = None
            if cut is not None and _CJK.search(text):
                starts, position = set(), 0
                for word in cut(text):
                    starts.add(position)
                    position += len(word)
            coded.append([
                encode_token(i, not t.startswith("##") and (starts is None or o[0] in starts or not _CJK.match(t)))
                for i, o, t in zip(ids, offsets, tokens, strict=True)
            ])
    out, k = [], 0
    for document in documents:
        out.append(coded[k : k + len(document)])
        k += len(document)
    return out


@dataclass
class PretrainingOptions:
    max_seq_len: int = 128
    nsp: bool = True
    mask_prob: float = 0.15
    whole_word: bool = False
    short_seq_prob: float = 0.1
    max_predictions: int | None = None  # cap on masked positions per sequence (Google: 20 at 128)


class PretrainingTask:
    """MLM (+ NSP) pre-training on tokenized documents; instances rebuilt per epoch, masking per example."""

    def __init__(self, tokenizer: Tokenizer, train_documents: list[list[list[int]]],
                 heldout_documents: list[list[list[int]]], options: PretrainingOptions, seed: int = 42,
                 eval_batch_size: int = 64) -> None:
        self.tokenizer = tokenizer
        self.train_documents = train_documents
        self.heldout_documents = heldout_documents
        self.options = options
        self.seed = seed
        self.eval_batch_size = eval_batch_size
        self.find_unused_parameters = not options.nsp  # the NSP head and pooler get no gradient without NSP
        specials = np.array(sorted(tokenizer.special_token_ids))
        self.random_ids = np.setdiff1d(np.arange(tokenizer.vocab_size), specials)
        self._epoch_cache: tuple[int, list[Instance]] | None = None
        self._heldout: list[dict[str, Any]] | None = None
        self._reported: set[str] = set()

    # ---- data -------------------------------------------------------------------------------------------------
    def instances(self, epoch: int, documents: list[list[list[int]]] | None = None) -> list[Instance]:
        documents = self.train_documents if documents is None else documents
        if documents is self.train_documents and self._epoch_cache and self._epoch_cache[0] == epoch:
            return self._epoch_cache[1]
        rng = np.random.default_rng([self.seed, epoch, 11])
        if self.options.nsp:
            stats: dict[str, int] = {}
            built = nsp_instances(documents, self.options.max_seq_len, rng, self.options.short_seq_prob, stats)
            self._report(stats, "held-out" if documents is self.heldout_documents else "training")
        else:
            built = packed_instances(documents, self.options.max_seq_len)
        if documents is self.train_documents:
            self._epoch_cache = (epoch, built)
        return built

    def _report(self, stats: dict[str, int], role: str) -> None:
        """Say once per corpus what NSP could not use as a pair (the count changes a little with each epoch's
        random targets; the first is representative)."""
        if role in self._reported:
            return
        self._reported.add(role)
        if stats["split_sentences"]:
            warnings.warn(f"{role} corpus: {stats['split_sentences']} sentence(s) of max_seq_len - 3 = "
                          f"{self.options.max_seq_len - 3} tokens or more were split into pieces for NSP",
                          stacklevel=3)
        if stats["unused_chunks"]:
            warnings.warn(f"{role} corpus: {stats['unused_chunks']} one-sentence document(s) or document tail(s) "
                          f"({stats['unused_tokens']:,} tokens) cannot form an IsNext pair and are used only as "
                          "random NotNext text", stacklevel=3)

    def num_examples(self, epoch: int) -> int:
        return len(self.instances(epoch))

    def _collate(self, instances: list[Instance], rngs: list[np.random.Generator]) -> dict[str, Any]:
        tok = self.tokenizer
        rows, types, labels = [], [], []
        for instance, rng in zip(instances, rngs, strict=True):
            a_ids, a_starts = decode_tokens(np.asarray(instance.tokens_a, dtype=np.int64))
            b_ids, b_starts = decode_tokens(np.asarray(instance.tokens_b, dtype=np.int64))
            ids = np.concatenate([[tok.cls_token_id], a_ids, [tok.sep_token_id]]
                                 + ([b_ids, [tok.sep_token_id]] if len(b_ids) else []))
            starts = np.concatenate([[True], a_starts, [True]] + ([b_starts, [True]] if len(b_ids) else []))
            special = np.zeros(len(ids), dtype=bool)
            special[[0, len(a_ids) + 1]] = True
            special[-1] = True
            inputs, label = mask_tokens(
                ids, special, rng, mask_id=tok.mask_token_id, random_ids=self.random_ids,
                mask_prob=self.options.mask_prob, word_starts=starts if self.options.whole_word else None,
                max_predictions=self.options.max_predictions)
            segment = np.zeros(len(ids), dtype=np.int64)
            segment[len(a_ids) + 2 :] = 1
            rows.append(inputs)
            types.append(segment)
            labels.append(label)
        B, T = len(rows), max(len(r) for r in rows)
        batch = {
            "input_ids": torch.full((B, T), tok.pad_token_id, dtype=torch.long),
            "token_type_ids": torch.zeros((B, T), dtype=torch.long),
            "attention_mask": torch.zeros((B, T), dtype=torch.long),
            "labels": torch.full((B, T), IGNORE_INDEX, dtype=torch.long),
            "next_label": torch.tensor([i.next_label for i in instances], dtype=torch.long),
        }
        for r, (ids, segment, label) in enumerate(zip(rows, types, labels, strict=True)):
            n = len(ids)
            batch["input_ids"][r, :n] = torch.from_numpy(ids)
            batch["token_type_ids"][r, :n] = torch.from_numpy(segment)
            batch["attention_mask"][r, :n] = 1
            batch["labels"][r, :n] = torch.from_numpy(label)
        return batch

    def make_batch(self, epoch: int, indices: list[int]) -> dict[str, Any]:
        instances = self.instances(epoch)
        return self._collate([instances[i] for i in indices], [example_rng(self.seed, epoch, i) for i in indices])

    def counts(self, batch: dict[str, Any]) -> dict[str, float]:
        counts = {"mlm": float((batch["labels"] != IGNORE_INDEX).sum())}
        if self.options.nsp:
            counts["nsp"] = float(len(batch["next_label"]))
        return counts

    def tokens(self, batch: dict[str, Any]) -> int:
        return int(batch["attention_mask"].sum())

    # ---- model --------------------------------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        masked = batch["labels"] != IGNORE_INDEX
        out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], mlm_positions=masked)
        targets = batch["labels"][masked]
        parts = {"mlm": cross_entropy(out.mlm_logits, targets) * targets.numel()}
        if self.options.nsp:
            parts["nsp"] = cross_entropy(out.nsp_logits, batch["next_label"]) * len(batch["next_label"])
        return parts

    def heldout_batches(self) -> list[dict[str, Any]]:
        """Held-out instances with one fixed masking, built once: every evaluation scores the same examples."""
        if self._heldout is None:
            instances = self.instances(HELDOUT_EPOCH, self.heldout_documents) if self.heldout_documents else []
            self._heldout = [
                self._collate(instances[s : s + self.eval_batch_size],
                              [example_rng(self.seed, HELDOUT_EPOCH, i)
                               for i in range(s, min(s + self.eval_batch_size, len(instances)))])
                for s in range(0, len(instances), self.eval_batch_size)
            ]
        return self._heldout

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        batches = self.heldout_batches()
        if not batches:
            return {}
        correct = total = 0
        loss_sum = 0.0
        nsp_correct = nsp_total = 0
        for batch in batches:
            masked = batch["labels"] != IGNORE_INDEX
            out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], mlm_positions=masked)
            targets = batch["labels"][masked]
            logits = out.mlm_logits.float()
            loss_sum += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
            correct += int((logits.argmax(-1) == targets).sum())
            total += targets.numel()
            if self.options.nsp:
                nsp_correct += int((out.nsp_logits.argmax(-1) == batch["next_label"]).sum())
                nsp_total += len(batch["next_label"])
        result = {"mlm_accuracy": correct / total, "mlm_loss": loss_sum / total}
        if self.options.nsp:
            result["nsp_accuracy"] = nsp_correct / nsp_total
        return result

    def save(self, model: nn.Module, directory: Path) -> None:
        model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)

    def fingerprint(self) -> str:
        from bertkit.train import data_fingerprint

        return data_fingerprint([self.train_documents, self.options])


def build_model(tokenizer: Tokenizer, size: str = "mini", max_seq_len: int = 128, **overrides: Any
                ) -> BertForPreTraining:
    """A fresh BertForPreTraining sized by a preset, with the tokenizer's vocabulary and pad id."""
    from bertkit.config import BertConfig

    positions = max(max_seq_len, 128)
    config = BertConfig.preset(size, vocab_size=tokenizer.vocab_size, pad_token_id=tokenizer.pad_token_id,
                               max_position_embeddings=positions, **overrides)
    return BertForPreTraining(config)


def split_heldout(documents: list[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """Whole documents held out (never split across train and held-out)."""
    if not 0 <= fraction < 1:
        raise ValueError(f"held-out fraction must be in [0, 1), got {fraction}")
    order = np.random.default_rng([seed, 3]).permutation(len(documents))
    count = round(len(documents) * fraction)
    held = set(order[:count].tolist())
    if fraction > 0 and count == 0:
        warnings.warn("corpus too small to hold out any document; evaluation is skipped", stacklevel=2)
    return ([d for i, d in enumerate(documents) if i not in held], [d for i, d in enumerate(documents) if i in held])


def pretrain(
    train_files: list[str | Path],
    config: Any,
    *,
    heldout_files: list[str | Path] | None = None,
    heldout_fraction: float = 0.0,
    tokenizer: str | Path | Tokenizer | None = None,
    vocab_size: int = 8000,
    model_size: str = "mini",
    init_from: str | Path | None = None,
    options: PretrainingOptions | None = None,
) -> Any:
    """Pre-train BERT on text files in Google's format; `config` is a `train.TrainConfig`.

    The vocabulary comes from `tokenizer` (a checkpoint directory or a Tokenizer) or is trained on the training
    files; the model starts from `init_from` (a checkpoint directory) or from a fresh `model_size` preset.
    """
    import torch.distributed as dist

    from bertkit.corpus import read_documents
    from bertkit.errors import DataError
    from bertkit.train import distributed_setup, fit, held_run_dir, open_run_dir, release_run_dir

    options = options or PretrainingOptions()
    rank, _ = distributed_setup()
    # Everything that can fail on bad input is checked before the run directory is claimed: --overwrite deletes the
    # old run there, which must not happen for a run that then stops at a typo in --train (or that continues from
    # a model inside that same directory).
    train_text = [doc for path in train_files for doc in read_documents(path)]
    if not train_text:
        raise DataError("no text in the training files", ", ".join(map(str, train_files)))
    heldout_text = [doc for path in heldout_files or [] for doc in read_documents(path)]
    if heldout_files and not heldout_text:
        raise DataError("no text in the held-out files", ", ".join(map(str, heldout_files)))
    if not heldout_text and heldout_fraction > 0:
        train_text, heldout_text = split_heldout(train_text, heldout_fraction, config.seed)
    for role, text, files in (("training", train_text, train_files), ("held-out", heldout_text, heldout_files)):
        if options.nsp and text and len(text) < 2:
            raise DataError(f"the {role} text has one document; NSP needs two or more (a blank line separates "
                            "documents), or pass --no-nsp", ", ".join(map(str, files or train_files)))
    output = Path(config.output_dir)
    tok: Tokenizer | None = None
    if isinstance(tokenizer, Tokenizer):
        tok = tokenizer
    elif tokenizer is not None:
        tok = Tokenizer.from_pretrained(tokenizer)
    elif init_from is not None:
        tok = Tokenizer.from_pretrained(init_from)
    model = None
    if init_from is not None:
        torch.manual_seed(config.seed)
        model = BertForPreTraining.from_pretrained(init_from)
        assert tok is not None
        if model.config.vocab_size < tok.vocab_size:
            raise DataError(f"the vocabulary has {tok.vocab_size} tokens but {init_from} has only "
                            f"{model.config.vocab_size} embeddings", str(init_from))
    # claim the run directory before writing a vocabulary into it (--overwrite also deletes the old run's vocabulary)
    held_before = held_run_dir(output)
    open_run_dir(config, rank, own=("tokenizer",) if tok is None else ())
    try:
        if tok is None:
            vocab_dir = output / "tokenizer"
            if rank == 0 and not (vocab_dir / "vocab.txt").is_file():
                Tokenizer.train([s for d in train_text for s in d], vocab_size=vocab_size).save_pretrained(vocab_dir)
            if dist.is_initialized():
                dist.barrier()
            tok = Tokenizer.from_pretrained(vocab_dir)
        train_docs = tokenize_documents(train_text, tok, whole_word=options.whole_word)
        heldout_docs = tokenize_documents(heldout_text, tok, whole_word=options.whole_word)
        torch.manual_seed(config.seed)
        if model is None:
            model = build_model(tok, model_size, options.max_seq_len)
        if options.max_seq_len > model.config.max_position_embeddings:
            raise DataError(f"max_seq_len {options.max_seq_len} exceeds the model's max_position_embeddings "
                            f"{model.config.max_position_embeddings}")
        task = PretrainingTask(tok, train_docs, heldout_docs, options, seed=config.seed)
        if rank == 0:
            from bertkit.model import num_parameters
            from bertkit.train import steps_summary

            print(f"pre-training {model_size if init_from is None else init_from} "
                  f"({num_parameters(model) / 1e6:.1f}M parameters, vocabulary {tok.vocab_size:,}), "
                  f"{'MLM + NSP' if options.nsp else 'MLM only'}"
                  f"{', whole-word masking' if options.whole_word else ''}: "
                  f"{steps_summary(config, task.num_examples(0))}; held-out: {len(heldout_docs):,} documents")
    except BaseException:
        if rank == 0 and not held_before:
            release_run_dir(output)  # a run that stops before `fit` does not keep the directory locked
        raise
    return fit(model, task, config, title="pre-training")
