"""What the two tagging tasks (NER, slot filling) share: tag schemes, word -> word-piece alignment, chunking of long
sentences, the word-level tagging head (linear, optional CRF), batching, decoding and span scoring."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertkit.argtypes import flag
from bertkit.config import BertConfig
from bertkit.crf import CRF
from bertkit.errors import DataError
from bertkit.masking import IGNORE_INDEX
from bertkit.metrics import get_entities
from bertkit.model import Dropout, init_weights
from bertkit.tasks.base import pad_sequences, report_inconsistent_tags, warn_truncated
from bertkit.tokenizer import Tokenizer

IGNORE = IGNORE_INDEX  # a word without a known tag

# The finetune options both tagging tasks take (one `--flag` each, whose help is true for both)


def crf_option() -> Any:
    return flag("a CRF layer on top of the tagger (Viterbi decoding)", False)


def scheme_option() -> Any:
    return flag("tag scheme", "bio", choices=("bio", "bioes"))


def word_level_option(default: str) -> Any:
    return flag("how raw text is split into words when predicting: one word per character (Chinese) or at spaces",
                default, choices=("char", "space"))


def normalise_tag(tag: str) -> str:
    """BMES/BMEO/IOBES spellings -> B/I/E/S/O (M- means inside)."""
    tag = tag.strip()
    if tag.startswith("M-"):
        return "I-" + tag[2:]
    return tag


def convert_scheme(tags: list[str], scheme: str) -> list[str]:
    """Re-tag entity spans as BIO or BIOES (entities are the same; only the spelling changes)."""
    if scheme not in ("bio", "bioes"):
        raise ValueError(f"unknown tag scheme {scheme!r}; use bio or bioes")
    out = ["O"] * len(tags)
    for kind, first, last in get_entities(tags):
        if scheme == "bioes" and first == last:
            out[first] = f"S-{kind}"
            continue
        out[first] = f"B-{kind}"
        for i in range(first + 1, last + 1):
            out[i] = f"I-{kind}"
        if scheme == "bioes":
            out[last] = f"E-{kind}"
    return out


def tag_set(sequences: list[list[str]], scheme: str) -> list[str]:
    """O plus every entity type's tags in the scheme (B, I or B, I, E, S), in a stable order."""
    types = sorted({tag[2:] for tags in sequences for tag in tags if tag != "O"})
    return ["O"] + [f"{p}-{k}" for k in types for p in ("BIES" if scheme == "bioes" else "BI")]


def spans_to_tags(length: int, spans: list[tuple[str, int, int]]) -> list[str]:
    """(type, first, last inclusive) entity spans -> BIO tags; overlapping spans are an error."""
    tags = ["O"] * length
    for kind, first, last in sorted(spans, key=lambda s: (s[1], s[2])):
        if not 0 <= first <= last < length:
            raise ValueError(f"span {first}..{last} outside a sentence of {length}")
        if any(t != "O" for t in tags[first : last + 1]):
            raise ValueError(f"span {kind} {first}..{last} overlaps another entity")
        tags[first] = f"B-{kind}"
        for i in range(first + 1, last + 1):
            tags[i] = f"I-{kind}"
    return tags


def flatten_spans(spans: list[tuple[str, int, int]]) -> tuple[list[tuple[str, int, int]], int, int]:
    """The (type, first, last) spans one tag per word can hold, outermost first: each span is kept unless it
    overlaps one kept before it (taken by start, longest first). Returns (kept, how many dropped were inside a kept
    span (nested, or the same words with another type), how many dropped crossed one)."""
    kept: list[tuple[str, int, int]] = []
    nested = crossing = 0
    for span in sorted(spans, key=lambda s: (s[1], -s[2], s[0])):
        over = [k for k in kept if k[1] <= span[2] and span[1] <= k[2]]
        if not over:
            kept.append(span)
        elif any(k[1] <= span[1] and span[2] <= k[2] for k in over):
            nested += 1
        else:
            crossing += 1
    return sorted(kept, key=lambda s: s[1]), nested, crossing


@dataclass
class Piece:
    """One model input: a chunk of a sentence. `positions` are the word indices that have a first word piece."""

    sentence: int
    input_ids: list[int]
    first_pieces: list[int]  # token position of each word in `positions`
    positions: list[int]  # word index (in the sentence) of each first piece
    labels: list[int]  # tag id per position (IGNORE when unknown)


def encode_sentences(tokenizer: Tokenizer, sentences: list[list[str]], tag_ids: list[list[int]] | None,
                     max_seq_len: int, source: str | None = None) -> list[Piece]:
    """Word lists -> model inputs. A word that tokenizes to nothing (a space, a control character) gets no position
    (predicted O); a sentence longer than max_seq_len is cut into chunks at word boundaries, so no word is lost.
    A single word of more than max_seq_len - 2 pieces keeps its first ones; with `source`, a warning counts them."""
    pieces: list[Piece] = []
    budget = max_seq_len - 2
    cut = total = 0
    for start in range(0, len(sentences), 1024):
        batch = sentences[start : start + 1024]
        encodings = tokenizer.encode_batch(batch, is_split_into_words=True, add_special_tokens=False)
        for offset, encoding in enumerate(encodings):
            index = start + offset
            tags = tag_ids[index] if tag_ids is not None else None
            word_tokens: dict[int, list[int]] = {}
            for token_id, word in zip(encoding.ids, encoding.word_ids, strict=True):
                if word is not None:
                    word_tokens.setdefault(word, []).append(token_id)
            # a single word longer than a whole sequence keeps its first pieces
            words = [(w, word_tokens[w][:budget]) for w in range(len(batch[offset])) if word_tokens.get(w)]
            cut += sum(len(word_tokens[w]) > budget for w, _ in words)
            total += len(words)
            chunk: list[tuple[int, list[int]]] = []
            used = 0
            for word, ids in [*words, (-1, [])]:
                if chunk and (word < 0 or used + len(ids) > budget):
                    first, token_ids = [], [tokenizer.cls_token_id]
                    for _, chunk_ids in chunk:
                        first.append(len(token_ids))
                        token_ids.extend(chunk_ids)
                    positions = [w for w, _ in chunk]
                    labels = [tags[w] for w in positions] if tags is not None else [IGNORE] * len(positions)
                    pieces.append(Piece(index, [*token_ids, tokenizer.sep_token_id], first, positions, labels))
                    chunk, used = [], 0
                if word >= 0:
                    chunk.append((word, ids))
                    used += len(ids)
    if source is not None:
        warn_truncated(source, cut, total, budget, "words", "max_seq_len - 2")
    return pieces


def collate(pieces: list[Piece], pad_id: int) -> dict[str, Any]:
    batch = pad_sequences([p.input_ids for p in pieces], pad_id)
    W = max(1, *(len(p.positions) for p in pieces))  # a piece may have no word (an utterance of control characters)
    batch["word_index"] = torch.zeros((len(pieces), W), dtype=torch.long)
    batch["word_mask"] = torch.zeros((len(pieces), W), dtype=torch.bool)
    batch["tags"] = torch.full((len(pieces), W), IGNORE, dtype=torch.long)
    for i, p in enumerate(pieces):
        batch["word_index"][i, : len(p.first_pieces)] = torch.tensor(p.first_pieces)
        batch["word_mask"][i, : len(p.first_pieces)] = True
        batch["tags"][i, : len(p.labels)] = torch.tensor(p.labels)
    return batch


class TaggingHead(nn.Module):
    """Word-level tagging on the encoder's output: first-piece states -> dropout -> linear (-> CRF)."""

    def __init__(self, config: BertConfig, num_tags: int, use_crf: bool) -> None:
        super().__init__()
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, num_tags)
        self.crf = CRF(num_tags) if use_crf else None
        init_weights(self.classifier, config)

    def emissions(self, hidden: Tensor, word_index: Tensor) -> Tensor:
        """(B, T, H) hidden states, (B, W) first-piece positions -> (B, W, C) tag scores."""
        words = hidden.gather(1, word_index[:, :, None].expand(-1, -1, hidden.shape[-1]))  # (B, W, H)
        return self.classifier(self.dropout(words))

    def loss_sum(self, emissions: Tensor, tags: Tensor, word_mask: Tensor) -> tuple[Tensor, float]:
        """(sum of the loss, its count): tokens for cross-entropy, sentences for the CRF likelihood."""
        if self.crf is not None:
            known = word_mask & (tags != IGNORE)
            nll = self.crf.neg_log_likelihood(emissions, tags.clamp(min=0), word_mask)
            if not bool((known == word_mask).all()):
                raise DataError("CRF training needs a tag for every word piece position")
            return nll.sum(), float(len(tags))
        flat = tags[word_mask]
        selected = flat != IGNORE
        loss = F.cross_entropy(emissions[word_mask][selected].float(), flat[selected], reduction="sum")
        return loss, float(selected.sum())

    def decode(self, emissions: Tensor, word_mask: Tensor) -> list[list[int]]:
        """The tag ids of each row's words (an empty list for a row without words)."""
        if self.crf is not None:
            lengths = word_mask.sum(1).tolist()
            some = word_mask.clone()
            some[:, 0] = True  # Viterbi needs one position per row; a row without words drops its one below
            return [path[:n] for path, n in zip(self.crf.decode(emissions, some), lengths, strict=True)]
        best = emissions.argmax(-1)
        return [best[i, : int(word_mask[i].sum())].tolist() for i in range(len(best))]


def assemble(pieces: list[Piece], decoded: list[list[int]], lengths: list[int], labels: list[str]
             ) -> list[list[str]]:
    """Per-chunk predictions back to one tag per word of each sentence (O where a word had no token)."""
    out = [["O"] * n for n in lengths]
    for piece, tags in zip(pieces, decoded, strict=True):
        for word, tag in zip(piece.positions, tags, strict=True):
            out[piece.sentence][word] = labels[tag]
    return out


def words_of(text: str, level: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Split raw text into the words a model was trained on, with character offsets: `char` (every non-space
    character, for Chinese) or `space` (whitespace-separated words)."""
    if level == "char":
        pairs = [(ch, (i, i + 1)) for i, ch in enumerate(text) if not ch.isspace()]
    else:
        pairs, position = [], 0
        for word in text.split():
            start = text.index(word, position)
            pairs.append((word, (start, start + len(word))))
            position = start + len(word)
    return [w for w, _ in pairs], [o for _, o in pairs]


def entities_with_offsets(text: str, tags: list[str], offsets: list[tuple[int, int]]) -> list[dict[str, Any]]:
    spans = []
    for kind, first, last in get_entities(tags):
        start, end = offsets[first][0], offsets[last][1]
        spans.append({"type": kind, "start": start, "end": end, "text": text[start:end]})
    return spans


# ---- distillation (`TaskSpec.distill` of both tagging tasks) ---------------------------------------------------------

def labelled_tag_loss(head: TaggingHead, emissions: Tensor, batch: dict[str, Any]) -> Tensor:
    """The tagger's loss over the labelled sentences of a batch: cross-entropy skips unknown tags by itself; the
    CRF's likelihood needs every tag of a sentence, so an unlabeled sentence is left out of it."""
    tags, words = batch["tags"], batch["word_mask"]
    if head.crf is None:
        return head.loss_sum(emissions, tags, words)[0]
    labelled = ((tags != IGNORE) & words).any(1)  # (B,)
    if not bool(labelled.any()):
        return emissions.float().sum() * 0.0
    return head.loss_sum(emissions[labelled], tags[labelled], words[labelled])[0]


def labelled_tag_count(batch: dict[str, Any], crf: bool) -> float:
    """The count `labelled_tag_loss` is divided by: labelled sentences for the CRF, known tags otherwise."""
    known = (batch["tags"] != IGNORE) & batch["word_mask"]
    return float(known.any(1).sum()) if crf else float(known.sum())


def check_teacher_tags(sequences: list[Any], info: Any, source: Any) -> None:
    """Sequences' tags (`.tags`, `.line`) rewritten in the teacher's scheme; a tag the teacher does not know is an
    error naming the line."""
    report_inconsistent_tags([(s.tags, s.line) for s in sequences], source)
    known = set(info.labels)
    for s in sequences:
        s.tags = convert_scheme(s.tags, info.scheme)
        unknown = [t for t in s.tags if t not in known]
        if unknown:
            raise DataError(f"tag {unknown[0]!r} is not in the teacher's tag set {info.labels}", str(source), s.line)


def unlabeled_pieces(task: Any, lines: list[tuple[int, str]], source: str, whole: bool) -> int:
    """Unlabeled texts, split into words as the task predicts them, appended to `task.train` as pieces without tags;
    `whole`: a text must fit one sequence (intent detection reads all of it), else it is skipped and counted in a
    warning. Returns how many pieces were appended."""
    import warnings

    words = [words_of(text, task.info.word_level)[0] for _, text in lines]
    pieces = encode_sentences(task.tokenizer, words, None, task.info.max_seq_len, source)
    if whole:
        counts: dict[int, int] = {}
        for piece in pieces:
            counts[piece.sentence] = counts.get(piece.sentence, 0) + 1
        pieces = [p for p in pieces if counts[p.sentence] == 1]
        if len(pieces) < len(lines):
            warnings.warn(f"{source}: {len(lines) - len(pieces)} unlabeled utterance(s) skipped: empty, or longer "
                          f"than max_seq_len={task.info.max_seq_len} tokens", stacklevel=3)
    task.train.extend(pieces)
    return len(pieces)


def copy_piece(task: Any, index: int, change: Any) -> None:
    """Append training piece `index` again, unlabeled, its token ids through `change`."""
    import dataclasses

    piece = task.train[index]
    task.train.append(dataclasses.replace(piece, input_ids=change(piece.input_ids),
                                          labels=[IGNORE] * len(piece.labels)))
