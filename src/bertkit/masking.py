"""Pure functions that make pre-training examples: MLM masking (80/10/10, whole-word) and NSP pairs, as Google does.

Everything takes an explicit `numpy.random.Generator`, so an example is a function of (seed, epoch, index): dynamic
masking per epoch, exact resume and identical data on any number of processes follow from that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE_INDEX = -100  # label of positions that are not predicted (transformers' convention)


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


def nsp_instances(
    documents: list[list[list[int]]],
    max_seq_len: int,
    rng: np.random.Generator,
    short_seq_prob: float = 0.1,
    stats: dict[str, int] | None = None,
) -> list[Instance]:
    """Sentence-pair instances with NSP labels, following Google's create_instances_from_document.

    Segments are built from whole sentences up to a target length (shorter with probability `short_seq_prob`);
    A is a random prefix of the chunk; B is the rest of the chunk (IsNext) or text from a different document
    (NotNext), chosen by a fair coin. A chunk closes at its target only once it holds two sentences, since a chunk
    of one sentence cannot give an IsNext pair; one is left only where a document (or its tail) is a single
    sentence, and it is skipped as an A (it still serves as random B text): Google's builder forces those to
    NotNext, which skews the label balance away from 50/50 on corpora of short documents such as reviews.
    A sentence of `max_seq_len - 3` tokens or more (a long line without sentence ends) is first split into pieces
    of half that, so two consecutive pieces make an IsNext pair; it used to be a one-sentence chunk, and dropped.
    `stats`, when given, receives counts: `split_sentences`, `unused_chunks` and `unused_tokens` (what no
    instance uses as A or IsNext B).
    """
    max_tokens = max_seq_len - 3  # [CLS] A [SEP] B [SEP]
    if max_tokens < 2:
        raise ValueError(f"max_seq_len={max_seq_len} leaves no room for two segments (needs 5 or more)")
    piece = (max_tokens + 1) // 2
    split = 0

    def pieces(document: list[list[int]]) -> list[list[int]]:
        nonlocal split
        out = []
        for sentence in document:
            if len(sentence) >= max_tokens:
                split += 1
                out += [sentence[k : k + piece] for k in range(0, len(sentence), piece)]
            elif sentence:
                out.append(sentence)
        return out

    usable = [d for d, doc in enumerate(documents) if any(doc)]
    if len(usable) < 2:
        raise ValueError("NSP needs at least two non-empty documents (B must come from another document)")
    split_documents = {d: pieces(documents[d]) for d in usable}
    unused_chunks = unused_tokens = 0
    instances: list[Instance] = []
    for doc_index in usable:
        document = split_documents[doc_index]
        target = max_tokens if rng.random() >= short_seq_prob else int(rng.integers(2, max_tokens + 1))
        chunk: list[list[int]] = []
        length = 0
        i = 0
        while i < len(document):
            chunk.append(document[i])
            length += len(document[i])
            if i == len(document) - 1 or (length >= target and len(chunk) >= 2):
                if len(chunk) < 2:
                    unused_chunks += 1
                    unused_tokens += length
                else:
                    a_end = int(rng.integers(1, len(chunk)))
                    tokens_a = [t for s in chunk[:a_end] for t in s]
                    if rng.random() < 0.5:
                        other = doc_index
                        while other == doc_index:
                            other = usable[int(rng.integers(len(usable)))]
                        source = split_documents[other]
                        tokens_b: list[int] = []
                        for sentence in source[int(rng.integers(len(source))):]:
                            tokens_b.extend(sentence)
                            if len(tokens_b) >= target - len(tokens_a):
                                break
                        i -= len(chunk) - a_end  # the unused sentences start the next chunk
                        label, source_b = 1, other
                    else:
                        tokens_b = [t for s in chunk[a_end:] for t in s]
                        label, source_b = 0, doc_index
                    _truncate_pair(tokens_a, tokens_b, max_tokens, rng)
                    if tokens_a and tokens_b:
                        instances.append(Instance(tokens_a, tokens_b, label, doc_index, source_b))
                chunk, length = [], 0
                target = max_tokens if rng.random() >= short_seq_prob else int(rng.integers(2, max_tokens + 1))
            i += 1
    if stats is not None:
        stats.update(split_sentences=split, unused_chunks=unused_chunks, unused_tokens=unused_tokens)
    return instances


def packed_instances(documents: list[list[list[int]]], max_seq_len: int) -> list[Instance]:
    """MLM-only sequences (RoBERTa's DOC-SENTENCES): whole sentences of one document packed up to max length.

    A sentence longer than the sequence is cut into full-length pieces; nothing crosses a document boundary.
    """
    max_tokens = max_seq_len - 2  # [CLS] text [SEP]
    instances: list[Instance] = []
    for doc_index, document in enumerate(documents):
        current: list[int] = []
        for sentence in document:
            if current and len(current) + len(sentence) > max_tokens:
                instances.append(Instance(current, [], 0, doc_index, -1))
                current = []
            while len(sentence) > max_tokens:
                instances.append(Instance(list(sentence[:max_tokens]), [], 0, doc_index, -1))
                sentence = sentence[max_tokens:]
            current.extend(sentence)
        if current:
            instances.append(Instance(current, [], 0, doc_index, -1))
    return instances
