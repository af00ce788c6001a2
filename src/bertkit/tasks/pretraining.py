"""Pre-training task: corpus -> token ids (with jieba word starts) -> NSP or packed instances -> masked batches ->
MLM + NSP losses and held-out MLM/NSP accuracy, for `train.fit`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bertkit.argtypes import POSITIVE, SEQ_LEN, flag, float_range
from bertkit.device import for_model
from bertkit.losses import cross_entropy
from bertkit.masking import (  # noqa: F401  (token codes re-exported: tests and callers import them from here)
    HELDOUT_EPOCH,
    IGNORE_INDEX,
    ArrayShard,
    ExampleIndex,
    Instance,
    Shard,
    decode_tokens,
    encode_token,
    example_rng,
    mask_tokens,
    tokenize_documents,
)
from bertkit.model import BertForPreTraining
from bertkit.tokenizer import Tokenizer


@dataclass
class PretrainingOptions:
    """How text becomes pre-training examples; those with a help text are `bertkit pretrain` flags."""

    max_seq_len: int = flag("tokens per sequence", 128, type=SEQ_LEN)
    nsp: bool = flag("MLM only, sentences packed to full length (RoBERTa)", True)  # the flag is --no-nsp
    mask_prob: float = flag("fraction of tokens to mask", 0.15, type=float_range(0.0, 1.0, low_open=True,
                                                                                 high_open=True))
    whole_word: bool = flag("mask whole jieba words (Chinese)", False, name="--whole-word-masking")
    short_seq_prob: float = 0.1
    max_predictions: int | None = flag("cap on masked tokens per sequence (Google: 20 at 128)", type=POSITIVE)


class PretrainingTask:
    """MLM (+ NSP) pre-training on sharded token arrays (a prepared corpus, or documents in memory): each epoch's
    examples are indexed lazily (`masking.ExampleIndex`), and example i of epoch e is built and masked from
    (seed, e, i) alone, so batches can be made in any process, in any order, on any number of ranks."""

    headline_metric = "mlm_loss"  # what --best-metric ranks evaluations by unless told otherwise

    def __init__(self, tokenizer: Tokenizer, train: Sequence[Shard], heldout: Sequence[Shard],
                 options: PretrainingOptions, seed: int = 42, eval_batch_size: int = 64,
                 data_digest: Any = None) -> None:
        self.tokenizer = tokenizer
        self.train = list(train)
        self.heldout = list(heldout)
        self.options = options
        self.seed = seed
        self.eval_batch_size = eval_batch_size
        self.data_digest = data_digest  # what identifies the data (default: the training token arrays)
        self.find_unused_parameters = not options.nsp  # the NSP head and pooler get no gradient without NSP
        specials = np.array(sorted(tokenizer.special_token_ids))
        self.random_ids = np.setdiff1d(np.arange(tokenizer.vocab_size), specials)
        self._index: dict[str, ExampleIndex] = {}
        self._reported: set[str] = set()

    @classmethod
    def from_documents(cls, tokenizer: Tokenizer, train_documents: list[list[list[int]]],
                       heldout_documents: list[list[list[int]]], options: PretrainingOptions, **kwargs: Any
                       ) -> PretrainingTask:
        """From token-code documents in memory (small corpora and tests); `kwargs` go to the constructor."""
        heldout = [ArrayShard.from_documents(heldout_documents)] if heldout_documents else []
        return cls(tokenizer, [ArrayShard.from_documents(train_documents)], heldout, options, **kwargs)

    # ---- data -------------------------------------------------------------------------------------------------
    def examples(self, epoch: int, role: str = "training") -> ExampleIndex:
        """The epoch's example index (one epoch's kept at a time per role)."""
        cached = self._index.get(role)
        if cached is not None and cached.epoch == epoch:
            return cached
        shards = self.train if role == "training" else self.heldout
        index = ExampleIndex(shards, self.options.max_seq_len, nsp=self.options.nsp, seed=self.seed, epoch=epoch,
                             short_seq_prob=self.options.short_seq_prob)
        self._report(index.stats, role)
        self._index[role] = index
        return index

    def instances(self, epoch: int) -> list[Instance]:
        """Every training example of an epoch, in memory (for tests and small corpora)."""
        return self.examples(epoch).instances()

    def _report(self, stats: dict[str, int], role: str) -> None:
        """Say once per corpus what NSP could not use as a pair (the count changes a little with each epoch's
        random targets; the first is representative)."""
        if role in self._reported or not self.options.nsp:
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
        return len(self.examples(epoch))

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
        index = self.examples(epoch)
        return self._collate([index.instance(i) for i in indices], [example_rng(self.seed, epoch, i) for i in indices])

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

    def heldout_batches(self) -> Iterator[dict[str, Any]]:
        """Held-out examples with one fixed masking, built batch by batch: every evaluation scores the same ones."""
        if not self.heldout:
            return
        index = self.examples(HELDOUT_EPOCH, "held-out")
        for s in range(0, len(index), self.eval_batch_size):
            chosen = range(s, min(s + self.eval_batch_size, len(index)))
            yield self._collate([index.instance(i) for i in chosen],
                                [example_rng(self.seed, HELDOUT_EPOCH, i) for i in chosen])

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        correct = total = 0
        loss_sum = 0.0
        nsp_correct = nsp_total = 0
        for batch in self.heldout_batches():
            batch = for_model(model, batch)
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
        if total == 0:
            return {}
        result = {"mlm_accuracy": correct / total, "mlm_loss": loss_sum / total}
        if self.options.nsp:
            result["nsp_accuracy"] = nsp_correct / nsp_total
        return result

    def save(self, model: nn.Module, directory: Path) -> None:
        model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)

    def fingerprint(self) -> str:
        from bertkit.resume import data_fingerprint

        if self.data_digest is None:
            self.data_digest = [[shard.tokens, shard.sentences, shard.documents] for shard in self.train]
        return data_fingerprint([self.data_digest, self.options])


def build_model(tokenizer: Tokenizer, size: str = "mini", max_seq_len: int = 128, **overrides: Any
                ) -> BertForPreTraining:
    """A fresh BertForPreTraining sized by a preset, with the tokenizer's vocabulary and pad id."""
    from bertkit.config import BertConfig

    positions = max(max_seq_len, 128)
    config = BertConfig.preset(size, vocab_size=tokenizer.vocab_size, pad_token_id=tokenizer.pad_token_id,
                               max_position_embeddings=positions, **overrides)
    return BertForPreTraining(config)


def pretrain(
    train_files: list[str | Path] | None,
    config: Any,
    *,
    data: str | Path | None = None,
    heldout_files: list[str | Path] | None = None,
    heldout_fraction: float = 0.0,
    tokenizer: str | Path | Tokenizer | None = None,
    vocab_size: int = 8000,
    model_size: str = "mini",
    init_from: str | Path | None = None,
    options: PretrainingOptions | None = None,
    prepare_workers: int = 0,
) -> Any:
    """Pre-train BERT; `config` is a `train.TrainConfig`.

    The text comes from `data` (a directory written by `bertkit prepare-data`, read piecewise from its files) or from
    `train_files` (Google's format: plain or .gz files, or directories), which are prepared into the run
    directory's `data/` once and reused on resume. The vocabulary comes from `tokenizer` (a checkpoint or vocabulary
    directory, or a Tokenizer), from `init_from`, from the prepared directory, or is trained on the training files;
    the model starts from `init_from` (a checkpoint directory) or from a fresh `model_size` preset.
    """
    import torch.distributed as dist

    from bertkit.device import resolve_device
    from bertkit.distributed import distributed_setup
    from bertkit.errors import DataError
    from bertkit.memory import limit_heap_growth
    from bertkit.prepare import PrepareOptions, input_files, prepare
    from bertkit.prepared import PreparedCorpus, manifest_path
    from bertkit.rundir import claim_run_dir
    from bertkit.train import fit

    limit_heap_growth()  # before the shards are checked and indexed, whose temporaries would otherwise stay in the heap
    options = options or PretrainingOptions()
    rank, _ = distributed_setup(resolve_device(config.device))  # NCCL on GPUs: joined here, before prepare
    if (data is None) == (not train_files):
        raise DataError("give the training text (--train FILES) or a prepared directory (--data DIR), one of them")
    if data is not None and (heldout_files or heldout_fraction):
        raise DataError("a prepared directory brings its own held-out split (prepare-data --heldout or "
                        "--heldout-fraction); --heldout and --heldout-fraction go with --train", str(data))
    # Everything that can fail on bad input is checked before the run directory is claimed: --overwrite deletes the
    # old run there, which must not happen for a run that then stops at a typo in --train (or that continues from
    # a model inside that same directory).
    files = input_files(train_files) if train_files else []
    held = input_files(heldout_files) if heldout_files else []
    if data is not None:
        manifest_path(Path(data))  # a typo in --data is named as such, before its vocabulary is looked for
    output = Path(config.output_dir)
    tok: Tokenizer | None = None
    if isinstance(tokenizer, Tokenizer):
        tok = tokenizer
    elif tokenizer is not None:
        tok = Tokenizer.from_pretrained(tokenizer)
    elif init_from is not None:
        tok = Tokenizer.from_pretrained(init_from)
    elif data is not None:
        if not (Path(data) / "tokenizer" / "vocab.txt").is_file():
            raise DataError("no tokenizer/ in the prepared directory (prepared by an older bertkit?): give "
                            "--tokenizer", str(data))
        tok = Tokenizer.from_pretrained(Path(data) / "tokenizer")
    corpus = PreparedCorpus(data, tok, verify=rank == 0) if data is not None else None
    model = None
    if init_from is not None:
        torch.manual_seed(config.seed)
        model = BertForPreTraining.from_pretrained(init_from)
        assert tok is not None
        if model.config.vocab_size < tok.vocab_size:
            raise DataError(f"the vocabulary has {tok.vocab_size} tokens but {init_from} has only "
                            f"{model.config.vocab_size} embeddings", str(init_from))
    # claim the run directory before writing a vocabulary or prepared text into it (--overwrite deletes both; not
    # a data/ given as --data, which may be the one an earlier --train run prepared there); a run that stops before
    # `fit` does not keep it locked
    with claim_run_dir(output, resume=config.resume, overwrite=config.overwrite, rank=rank,
                       own=("tokenizer", "data") if data is None else ("tokenizer",)):
        if tok is None:
            vocab_dir = output / "tokenizer"
            if rank == 0 and not (vocab_dir / "vocab.txt").is_file():
                from bertkit.corpus import read_documents

                sentences = (s for path in files for d in read_documents(path) for s in d)
                Tokenizer.train(sentences, vocab_size=vocab_size).save_pretrained(vocab_dir)
            if dist.is_initialized():
                dist.barrier()
            tok = Tokenizer.from_pretrained(vocab_dir)
        if corpus is None:
            # prepared once into the run directory; a resume finds the shards intact and does not tokenize again
            prepared = output / "data"
            if rank == 0:
                # a fresh run replaces a data/ prepared from other text or options; a resume refuses to (the text
                # is what the checkpoint was trained on) unless changes are allowed
                prepare(files, tok, prepared, heldout=held or None, workers=prepare_workers,
                        replace_changed=not config.resume or config.allow_resume_changes,
                        options=PrepareOptions(whole_word=options.whole_word, heldout_fraction=0.0 if held
                                               else heldout_fraction, seed=config.seed), progress=config.progress)
            if dist.is_initialized():
                dist.barrier()
            # prepare() has just written each shard or found it intact by the same sha256 check: not hashed again
            corpus = PreparedCorpus(prepared, tok, verify=False)
        elif options.whole_word and not corpus.whole_word:
            raise DataError("prepared without --whole-word-masking (it holds no word starts): prepare it again "
                            "with --whole-word-masking, or pre-train without it", str(data))
        train, heldout = corpus.split("train"), corpus.split("heldout")
        assert train is not None
        for role, split in (("training", train), ("held-out", heldout)):
            if options.nsp and split is not None and len(split) < 2:
                raise DataError(f"the {role} text has one document; NSP needs two or more (a blank line separates "
                                "documents), or pass --no-nsp", str(data or ", ".join(map(str, files))))
        torch.manual_seed(config.seed)
        if model is None:
            model = build_model(tok, model_size, options.max_seq_len)
        if options.max_seq_len > model.config.max_position_embeddings:
            raise DataError(f"max_seq_len {options.max_seq_len} exceeds the model's max_position_embeddings "
                            f"{model.config.max_position_embeddings}")
        task = PretrainingTask(tok, train.shards, heldout.shards if heldout is not None else [], options,
                               seed=config.seed, data_digest=corpus.digest())
        task.num_examples(0)  # both indexes now: a corpus NSP cannot use fails here, not at the final evaluation
        if heldout is not None:
            task.examples(HELDOUT_EPOCH, "held-out")
        if rank == 0:
            from bertkit.model import num_parameters
            from bertkit.train import steps_summary

            print(f"pre-training {model_size if init_from is None else init_from} "
                  f"({num_parameters(model) / 1e6:.1f}M parameters, vocabulary {tok.vocab_size:,}), "
                  f"{'MLM + NSP' if options.nsp else 'MLM only'}"
                  f"{', whole-word masking' if options.whole_word else ''}: "
                  f"{steps_summary(config, task.num_examples(0))}; {len(train):,} training documents "
                  f"({train.tokens:,} tokens), held-out: {len(heldout) if heldout is not None else 0:,} documents")
        return fit(model, task, config, title="pre-training")
