"""Pure functions that make pre-training examples: MLM masking (80/10/10, whole-word) and NSP pairs, as Google does.

Everything takes an explicit `numpy.random.Generator`, so an example is a function of (seed, epoch, index): dynamic
masking per epoch, exact resume and identical data on any number of processes follow from that.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from bertkit.errors import DataError

IGNORE_INDEX = -100  # label of positions that are not predicted (transformers' convention)

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


def tokenize_documents(documents: list[list[str]], tokenizer: Any, whole_word: bool = False,
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
        for text, encoding in zip(texts, tokenizer.encode_batch(texts, add_special_tokens=False), strict=True):
            ids, offsets, tokens = encoding.ids, encoding.offsets, encoding.tokens
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



def example_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for one example of one epoch: independent of batch size, process count and resume point."""
    return np.random.default_rng([seed, epoch, index])


def mask_tokens(
    ids: np.ndarray,
    special: np.ndarray,
    rng: np.random.Generator,
    *,
    mask_id: int,
    random_ids: np.ndarray,
    mask_prob: float = 0.15,
    word_starts: np.ndarray | None = None,
    max_predictions: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Masked-LM corruption of one sequence; returns (inputs, labels) with labels = IGNORE_INDEX where unmasked.

    round(mask_prob * candidates) positions are chosen (at least 1), never special tokens. With `word_starts`
    (True where a token begins a word; Chinese whole-word masking marks each jieba word's first character),
    whole words are chosen until the count is reached, skipping a word that would overshoot it. Each chosen
    token becomes [MASK] with probability 0.8, a random non-special token (from `random_ids`) with 0.1, and stays
    itself with 0.1 (it is still predicted).
    """
    ids = np.asarray(ids)
    candidates = np.flatnonzero(~special)
    labels = np.full(ids.shape, IGNORE_INDEX, dtype=np.int64)
    inputs = ids.astype(np.int64, copy=True)
    if candidates.size == 0:
        return inputs, labels
    target = max(1, round(candidates.size * mask_prob))
    if max_predictions is not None:
        target = min(target, max_predictions)
    if word_starts is None:
        chosen = rng.permutation(candidates)[:target]
    else:
        # Group candidate positions into words: a word starts at a flagged token (or after a special token).
        starts = word_starts[candidates] | np.r_[True, np.diff(candidates) != 1]
        groups = np.split(candidates, np.flatnonzero(starts)[1:])
        picked: list[np.ndarray] = []
        count = 0
        for g in rng.permutation(len(groups)):
            word = groups[g]
            if count + word.size > target:
                continue
            picked.append(word)
            count += word.size
            if count == target:
                break
        chosen = np.concatenate(picked) if picked else rng.permutation(candidates)[:1]
    chosen = np.sort(chosen)
    labels[chosen] = ids[chosen]
    action = rng.random(chosen.size)
    inputs[chosen[action < 0.8]] = mask_id
    replace = chosen[(action >= 0.8) & (action < 0.9)]
    inputs[replace] = rng.choice(random_ids, size=replace.size)
    return inputs, labels


@dataclass
class Instance:
    """One pre-training sequence before masking: segment A, optional segment B, and the NSP label."""

    tokens_a: list[int]
    tokens_b: list[int]
    next_label: int  # 0 = B follows A in the document (IsNext), 1 = B from another document (transformers' convention)
    source_a: int  # document index of A
    source_b: int  # document index of B (== source_a when IsNext; -1 when there is no B)


def _truncate_pair(a: list[int], b: list[int], max_tokens: int, rng: np.random.Generator) -> None:
    """Google's truncate_seq_pair: drop from the longer segment, from its front or back at random."""
    while len(a) + len(b) > max_tokens:
        longer = a if len(a) > len(b) else b
        if rng.random() < 0.5:
            del longer[0]
        else:
            longer.pop()


class Shard(Protocol):
    """Token arrays of whole documents (a prepared shard, or documents held in memory)."""

    tokens: np.ndarray  # token codes, one document after another
    sentences: np.ndarray  # offsets into tokens: sentence i is tokens[sentences[i] : sentences[i + 1]]
    documents: np.ndarray  # offsets into sentences: document j is sentences documents[j] .. documents[j + 1]

    def read(self, name: str) -> np.ndarray: ...  # a whole array in memory, freed after use


@dataclass
class ArrayShard:
    tokens: np.ndarray
    sentences: np.ndarray
    documents: np.ndarray
    files: dict[str, str] | None = None  # .npy paths of arrays read from files (filearray.FileArray)

    def read(self, name: str) -> np.ndarray:
        """A whole array, read from its file into memory that is freed after use."""
        if self.files is None:
            return np.asarray(getattr(self, name))
        return np.load(self.files[name], allow_pickle=False)

    @classmethod
    def from_documents(cls, documents: Sequence[Sequence[Sequence[int]]]) -> ArrayShard:
        sentences = [s for d in documents for s in d]
        return cls(np.fromiter((t for s in sentences for t in s), dtype=np.int64),
                   np.concatenate([[0], np.cumsum([len(s) for s in sentences], dtype=np.int64)]),
                   np.concatenate([[0], np.cumsum([len(d) for d in documents], dtype=np.int64)]))


def _unit_bounds(sentences: np.ndarray, max_tokens: int) -> np.ndarray:
    """Boundaries of NSP's units: sentences, a sentence of `max_tokens` or more cut into pieces of half that (so two
    consecutive pieces can make an IsNext pair), empty sentences dropped. `sentences`: token offsets."""
    sentences = np.asarray(sentences, dtype=np.int64)
    lengths = np.diff(sentences)
    long = np.flatnonzero(lengths >= max_tokens)
    if long.size == 0:
        return np.unique(sentences)
    piece = (max_tokens + 1) // 2
    cuts = (lengths[long] - 1) // piece  # extra boundaries inside each long sentence
    first = np.repeat(sentences[long], cuts)
    k = np.arange(cuts.sum()) - np.repeat(np.cumsum(cuts) - cuts, cuts) + 1
    return np.unique(np.concatenate([sentences, first + k * piece]))


class ExampleIndex:
    """The pre-training examples of one epoch over sharded documents, built lazily: example i is a function of
    (seed, epoch, i) and reads only the tokens it uses, so no epoch of instances is ever held in memory.

    With `nsp`, Google's create_instances_from_document: each document is cut into chunks of whole units (sentences;
    a sentence of max_seq_len - 3 tokens or more in pieces of half that) up to a target length, shorter with
    probability `short_seq_prob`; a chunk closes at its target only once it holds two units, since one unit cannot
    make an IsNext pair (a one-unit document or tail is counted as unused and serves only as random B text). The
    chunks are drawn per (seed, epoch) at build time, so each epoch cuts the text differently; the rest is drawn
    when the example is made: A is a random prefix of the chunk, B the rest of it (IsNext) or, by a fair coin, text
    from another document starting at a random unit (NotNext), then Google's random truncation to the length.
    Unlike Google, a NotNext chunk's unused tail is not pushed back for the next chunk (an example cannot depend
    on the previous one); a later epoch cuts differently.

    Without `nsp` (RoBERTa's DOC-SENTENCES): whole sentences of one document packed up to max_seq_len - 2 tokens, a
    longer sentence cut into full-length pieces, nothing crossing a document boundary; fixed across epochs.

    The index holds four numbers per example (10 bytes), however large the corpus; building it reads the
    offsets of one shard at a time.
    """

    def __init__(self, shards: Sequence[Shard], max_seq_len: int, *, nsp: bool, seed: int, epoch: int,
                 short_seq_prob: float = 0.1) -> None:
        self.shards = list(shards)
        self.nsp, self.seed, self.epoch = nsp, seed, epoch
        self.max_tokens = max_seq_len - 3 if nsp else max_seq_len - 2
        if self.max_tokens < (2 if nsp else 1):
            raise ValueError(f"max_seq_len={max_seq_len} is too short (needs {5 if nsp else 3} or more)")
        self.doc_starts = np.concatenate([[0], np.cumsum([len(s.documents) - 1 for s in self.shards])]).astype(np.int64)
        self.stats = {"split_sentences": 0, "unused_chunks": 0, "unused_tokens": 0, "documents": 0}
        if len(self.shards) >= 2**16 or any(len(s.tokens) >= 2**32 for s in self.shards):
            raise DataError("more than 65,535 shards or 2**32 tokens in one shard: prepare with a larger --shard-chars")
        # 10 bytes per example: the shard, the first token within it, the length, and NSP's target length; each
        # shard's lists become arrays at once, so the build never holds more than one shard's Python lists
        # (an NSP chunk may reach twice max_tokens: lengths take 4 bytes beyond max_seq_len 32,768)
        size = np.uint16 if 2 * self.max_tokens < 2**16 else np.uint32
        parts = []
        for k in range(len(self.shards)):
            starts, lengths, targets = self._nsp_chunks(k, short_seq_prob) if nsp else self._packed_chunks(k)
            parts.append((np.full(len(starts), k, dtype=np.uint16), np.asarray(starts, dtype=np.uint32),
                          np.asarray(lengths, dtype=size), np.asarray(targets, dtype=size)))
        self.shard, self.start, self.length, self.target = (
            np.concatenate([p[j] for p in parts]) if parts else np.zeros(0, dtype) for j, dtype in
            enumerate((np.uint16, np.uint32, size, size)))
        if nsp and self.stats["documents"] < 2:
            raise DataError("NSP needs at least two documents with text (B must come from another document); a "
                            "blank line separates documents, or pass --no-nsp")

    def __len__(self) -> int:
        return len(self.start)

    def _nsp_chunks(self, k: int, short_seq_prob: float) -> tuple[list[int], list[int], list[int]]:
        shard = self.shards[k]
        sentences = shard.read("sentences").astype(np.int64)
        self.stats["split_sentences"] += int((np.diff(sentences) >= self.max_tokens).sum())
        bounds = _unit_bounds(sentences, self.max_tokens)
        doc_tokens = sentences[shard.read("documents").astype(np.int64)]
        docs = np.searchsorted(doc_tokens, bounds[:-1], side="right") - 1
        self.stats["documents"] += len(np.unique(docs))
        last = np.r_[docs[1:] != docs[:-1], True].tolist()
        lengths = np.diff(bounds).tolist()
        n = len(lengths)
        rng = np.random.default_rng([self.seed, self.epoch, 13, k])
        targets = np.where(rng.random(n + 1) < short_seq_prob, rng.integers(2, self.max_tokens + 1, n + 1),
                           self.max_tokens).tolist()
        bound_list = bounds.tolist()
        starts, spans, chunk_targets = [], [], []
        c, target, start, length, count = 0, targets[0], bound_list[0] if n else 0, 0, 0
        unused = unused_tokens = 0
        for u in range(n):
            length += lengths[u]
            count += 1
            if last[u] or (length >= target and count >= 2):
                if count >= 2:
                    starts.append(start)
                    spans.append(length)
                    chunk_targets.append(target)
                else:
                    unused += 1
                    unused_tokens += length
                c += 1
                target, start, length, count = targets[c], bound_list[u + 1], 0, 0
        self.stats["unused_chunks"] += unused
        self.stats["unused_tokens"] += unused_tokens
        return starts, spans, chunk_targets

    def _packed_chunks(self, k: int) -> tuple[list[int], list[int], list[int]]:
        shard = self.shards[k]
        bounds = shard.read("sentences").tolist()
        documents = shard.read("documents").astype(np.int64)
        last = np.zeros(len(bounds) - 1, dtype=bool)
        ends = documents[1:] - 1  # the last sentence of each document
        last[ends[ends >= 0]] = True
        last_list = last.tolist()
        limit = self.max_tokens
        starts, spans = [], []
        current_start, current = 0, 0
        for i in range(len(bounds) - 1):
            s0, s1 = bounds[i], bounds[i + 1]
            if current and current + s1 - s0 > limit:
                starts.append(current_start)
                spans.append(current)
                current = 0
            while s1 - s0 > limit:
                starts.append(s0)
                spans.append(limit)
                s0 += limit
            if current == 0:
                current_start = s0
            current += s1 - s0
            if last_list[i]:
                if current:
                    starts.append(current_start)
                    spans.append(current)
                current = 0
        self.stats["documents"] += len(documents) - 1
        return starts, spans, [limit] * len(starts)

    # ---- one example ---------------------------------------------------------------------------------------------
    def _units(self, shard: Shard, t0: int, t1: int) -> list[int]:
        """Unit boundaries from token t0 to t1 of a shard (both included)."""
        sentences = shard.sentences
        lo = max(int(sentences.searchsorted(t0, side="right")) - 1, 0)
        hi = int(sentences.searchsorted(t1, side="left"))
        bounds = _unit_bounds(np.asarray(sentences[lo : hi + 1], dtype=np.int64), self.max_tokens)
        return bounds[(bounds >= t0) & (bounds <= t1)].tolist()

    def _document_of(self, k: int, token: int) -> int:
        """The (global) document holding a shard's token."""
        shard = self.shards[k]
        sentence = int(shard.sentences.searchsorted(token, side="right")) - 1
        return int(self.doc_starts[k]) + int(shard.documents.searchsorted(sentence, side="right")) - 1

    def _document_sentences(self, document: int) -> tuple[int, int, int]:
        """(shard, first sentence, end sentence) of a (global) document."""
        k = int(np.searchsorted(self.doc_starts, document, side="right")) - 1
        shard = self.shards[k]
        local = document - int(self.doc_starts[k])
        return k, int(shard.documents[local]), int(shard.documents[local + 1])

    def _other_document(self, document: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """(document, shard, first sentence, end sentence) of a random document with text other than `document`,
        drawn uniformly (redrawn when empty or the same)."""
        total = int(self.doc_starts[-1])
        for _ in range(1000):
            other = int(rng.integers(total))
            if other != document:
                k, first, last = self._document_sentences(other)
                shard = self.shards[k]
                if int(shard.sentences[last]) > int(shard.sentences[first]):
                    return other, k, first, last
        raise DataError("NSP found no other document with text in 1,000 draws: the corpus is almost all empty "
                        "documents")

    def _random_text(self, document: int, need: int, rng: np.random.Generator) -> tuple[int, list[int]]:
        """NotNext's B: from another document, whole units from a random sentence on until `need` tokens (or the
        document's end); only the sentences it takes are read, however long the document."""
        other, k, first, last = self._other_document(document, rng)
        shard = self.shards[k]
        sentence = int(rng.integers(first, last))
        window = np.asarray(shard.sentences[sentence : min(sentence + 64, last) + 1], dtype=np.int64)
        units = _unit_bounds(window, self.max_tokens).tolist()
        if units[-1] == units[0]:  # only empty sentences there: the whole document (it has text)
            whole = np.asarray(shard.sentences[first : last + 1], dtype=np.int64)
            units = _unit_bounds(whole, self.max_tokens).tolist()
        end = next((u for u in units[1:] if u - units[0] >= need), units[-1])
        return other, shard.tokens[units[0] : end].tolist()

    def instance(self, i: int) -> Instance:
        if not 0 <= i < len(self):
            raise IndexError(i)
        k = int(self.shard[i])
        shard = self.shards[k]
        t0 = int(self.start[i])
        t1 = t0 + int(self.length[i])
        document = self._document_of(k, t0)
        if not self.nsp:
            return Instance(shard.tokens[t0:t1].tolist(), [], 0, document, -1)
        rng = np.random.default_rng([self.seed, self.epoch, i, 5])
        units = self._units(shard, t0, t1)
        a_end = units[int(rng.integers(1, len(units) - 1))]
        tokens_a = shard.tokens[t0:a_end].tolist()
        if rng.random() < 0.5:
            source, tokens_b = self._random_text(document, int(self.target[i]) - len(tokens_a), rng)
            label = 1
        else:
            tokens_b = shard.tokens[a_end:t1].tolist()
            source, label = document, 0
        _truncate_pair(tokens_a, tokens_b, self.max_tokens, rng)
        return Instance(tokens_a, tokens_b, label, document, source)

    def instances(self) -> list[Instance]:
        """Every example (for tests and small corpora)."""
        return [self.instance(i) for i in range(len(self))]
