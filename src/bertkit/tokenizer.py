"""BERT tokenizer over the `tokenizers` library: BERT normalisation, one token per CJK character, WordPiece, pairs.

Reads and writes the Hugging Face layout (`vocab.txt` + `tokenizer_config.json`), so ids equal
`transformers.BertTokenizer`'s for the same vocabulary; reads a WordPiece `tokenizer.json` where there is no
`vocab.txt` (what transformers 5 saves).
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import json
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as _RustTokenizer

from bertkit.errors import CheckpointError, DataError
from bertkit.fileio import atomic_write_text, read_lines
from bertkit.tokenizer_files import (
    MAX_INPUT_CHARS_PER_WORD,
    SPECIAL_TOKENS,
    TOKENIZER_CONFIG_NAME,
    TOKENIZER_JSON_NAME,
    VOCAB_NAME,
    TokenizerOptions,
    read_vocabulary,
)

if TYPE_CHECKING:
    import torch


class Tokenizer:
    """`tok(texts, text_pairs=None, max_length=..., truncation=True)` -> dict of (B, T) long tensors."""

    def __init__(self, vocab: Sequence[str], options: TokenizerOptions | None = None) -> None:
        self.options = options or TokenizerOptions()
        self.vocab = list(vocab)
        # Like transformers' load_vocab: a token listed twice maps to its last line.
        self.token_to_index = {token: index for index, token in enumerate(self.vocab)}
        specials = self.special_tokens
        missing = [t for t in specials if t not in self.token_to_index]
        if missing:
            raise CheckpointError(f"vocabulary lacks the special tokens {missing}")
        duplicates = len(self.vocab) - len(self.token_to_index)
        if duplicates:
            warnings.warn(f"vocabulary lists {duplicates} token(s) twice; the later line wins", stacklevel=2)
        absent = [t for t in self.options.added_tokens if t not in self.token_to_index]
        if absent:
            raise CheckpointError(f"added tokens {absent[:5]} are not in the vocabulary")
        # Read-only after construction (no truncation or padding settings are ever toggled on it), so one Tokenizer
        # serves any number of threads.
        self._rust = self._build(self.token_to_index, self.options)

    # ---- construction --------------------------------------------------------------------------------------------

    @staticmethod
    def _normalizer(options: TokenizerOptions) -> normalizers.Normalizer:
        return normalizers.BertNormalizer(
            clean_text=True,
            handle_chinese_chars=options.tokenize_chinese_chars,
            strip_accents=options.strip_accents,
            lowercase=options.do_lower_case,
        )

    @classmethod
    def _build(cls, vocab: dict[str, int], options: TokenizerOptions) -> _RustTokenizer:
        rust = _RustTokenizer(
            models.WordPiece(
                vocab=vocab, unk_token=options.unk_token, max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD
            )
        )
        rust.normalizer = cls._normalizer(options)
        rust.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        cls_token, sep_token = options.cls_token, options.sep_token
        rust.post_processor = processors.TemplateProcessing(
            single=f"{cls_token} $A {sep_token}",
            pair=f"{cls_token} $A {sep_token} $B:1 {sep_token}:1",
            special_tokens=[(cls_token, vocab[cls_token]), (sep_token, vocab[sep_token])],
        )
        rust.decoder = decoders.WordPiece(prefix="##")
        # As transformers' BertTokenizerFast: the special tokens written in a text are those tokens ("[MASK]" in
        # a fill-mask input is the mask, not "[", "mask", "]"), and decoding can skip them.
        specials = (options.pad_token, options.unk_token, options.cls_token, options.sep_token, options.mask_token)
        rust.add_special_tokens([*specials, *options.additional_special_tokens])
        # as transformers' add_tokens: matched in the normalised text before WordPiece (so a term of several CJK
        # characters is one token), not skipped when decoding
        rust.add_tokens([AddedToken(token, normalized=True) for token in options.added_tokens])
        return rust

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> Tokenizer:
        """From vocab.txt + tokenizer_config.json, or (no vocab.txt) a WordPiece tokenizer.json."""
        directory = Path(directory)
        if not directory.is_dir():
            raise CheckpointError(f"{directory}: not a directory (expected a checkpoint with {VOCAB_NAME} or "
                                  f"{TOKENIZER_JSON_NAME})")
        vocab, options, _ = read_vocabulary(directory)
        return cls(vocab, options)

    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(directory / VOCAB_NAME, "".join(f"{token}\n" for token in self.vocab))
        config = {"tokenizer_class": "BertTokenizer", **self.options.__dict__}
        config["additional_special_tokens"] = list(self.options.additional_special_tokens)
        del config["added_tokens"]
        if self.options.added_tokens:  # transformers' own key, so that it matches them as bertkit does
            config["added_tokens_decoder"] = {
                str(self.token_to_index[t]): {"content": t, "lstrip": False, "normalized": True, "rstrip": False,
                                              "single_word": False, "special": False}
                for t in self.options.added_tokens}
        atomic_write_text(directory / TOKENIZER_CONFIG_NAME, json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        return directory

    @classmethod
    def train(
        cls,
        files_or_iterator: Iterable[str] | Sequence[str | Path],
        vocab_size: int = 30000,
        *,
        min_frequency: int = 2,
        lowercase: bool = True,
        strip_accents: bool | None = None,
        tokenize_chinese_chars: bool = True,
        model_max_length: int = 512,
    ) -> Tokenizer:
        """Train a WordPiece vocabulary on text files (paths) or an iterator of strings.

        Every character seen at least `min_frequency` times gets its own entry (so Chinese text, split per
        character, never turns into [UNK] for a character the corpus uses); rarer characters are left out.
        """
        if vocab_size < len(SPECIAL_TOKENS) + 1:
            raise ValueError(f"vocab_size must be larger than the {len(SPECIAL_TOKENS)} special tokens")
        options = TokenizerOptions(
            do_lower_case=lowercase,
            strip_accents=strip_accents,
            tokenize_chinese_chars=tokenize_chinese_chars,
            model_max_length=model_max_length,
        )
        normalizer = cls._normalizer(options)
        pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        word_counts: Counter[str] = Counter()
        for text in _TextSource(files_or_iterator):
            word_counts.update(w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
        learned, alphabet_size = train_wordpiece(word_counts, vocab_size - len(SPECIAL_TOKENS), min_frequency)
        if alphabet_size == 0:
            raise DataError(f"no character occurs {min_frequency} or more times in the training text")
        vocab = list(SPECIAL_TOKENS) + learned
        if len(vocab) > vocab_size:
            warnings.warn(
                f"the trained vocabulary has {len(vocab)} entries, more than vocab_size={vocab_size}: the corpus has "
                f"{alphabet_size} distinct characters seen >= {min_frequency} times and each needs an entry; raise "
                "min_frequency for a smaller vocabulary",
                stacklevel=2,
            )
        return cls(vocab, options)

    def with_special_tokens(self, tokens: Sequence[str]) -> Tokenizer:
        """A copy whose vocabulary ends with `tokens` (if missing) and never splits them (e.g. entity markers);
        the model's embedding table must grow to the new size (`model.resize_token_embeddings`)."""
        extra = tuple(t for t in tokens if t not in self.options.additional_special_tokens)
        vocab = self.vocab + [t for t in tokens if t not in self.token_to_index]
        options = dataclasses.replace(
            self.options, additional_special_tokens=self.options.additional_special_tokens + extra)
        return Tokenizer(vocab, options)

    # ---- vocabulary ------------------------------------------------------------------------------------------------

    @property
    def special_tokens(self) -> tuple[str, ...]:
        o = self.options
        return (o.pad_token, o.unk_token, o.cls_token, o.sep_token, o.mask_token)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __len__(self) -> int:
        return len(self.vocab)

    def token_to_id(self, token: str) -> int:
        return self.token_to_index.get(token, self.unk_token_id)

    def convert_tokens_to_ids(self, tokens: Iterable[str]) -> list[int]:
        return [self.token_to_id(token) for token in tokens]

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        return [self.vocab[int(i)] for i in ids]

    @property
    def pad_token_id(self) -> int:
        return self.token_to_index[self.options.pad_token]

    @property
    def unk_token_id(self) -> int:
        return self.token_to_index[self.options.unk_token]

    @property
    def cls_token_id(self) -> int:
        return self.token_to_index[self.options.cls_token]

    @property
    def sep_token_id(self) -> int:
        return self.token_to_index[self.options.sep_token]

    @property
    def mask_token_id(self) -> int:
        return self.token_to_index[self.options.mask_token]

    @property
    def special_token_ids(self) -> set[int]:
        tokens = (*self.special_tokens, *self.options.additional_special_tokens)
        return {self.token_to_index[t] for t in tokens}

    @property
    def model_max_length(self) -> int:
        return self.options.model_max_length

    # ---- encoding --------------------------------------------------------------------------------------------------

    def normalize(self, text: str) -> str:
        return self._rust.normalizer.normalize_str(text)

    def tokenize(self, text: str) -> list[str]:
        """Word pieces of one text, without [CLS]/[SEP], as the vocabulary spells them (tokenizers spells an added
        token as the normalised text it matched: " 北  京 " for 北京)."""
        _check_text(text, "text")
        return self.convert_ids_to_tokens(self._rust.encode(text, add_special_tokens=False).ids)

    def encode(self, text: str, pair: str | None = None, *, add_special_tokens: bool = True) -> list[int]:
        """Ids of one text (or pair), unpadded and untruncated."""
        _check_text(text, "text")
        if pair is not None:
            _check_text(pair, "pair")
        return self._rust.encode(text, pair, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = True) -> str:
        return self._rust.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def encode_batch(
        self,
        texts: str | Sequence[str] | Sequence[Sequence[str]],
        text_pairs: str | Sequence[str | None] | Sequence[Sequence[str]] | None = None,
        *,
        max_length: int | None = None,
        truncation: bool = True,
        is_split_into_words: bool = False,
        add_special_tokens: bool = True,
    ) -> Encodings:
        """The one batch-encoding entry point: unpadded encodings (tokenizers `Encoding`: .ids, .type_ids, .offsets,
        .tokens, .word_ids, .sequence_ids), in a list whose `.truncated` counts the inputs cut.

        Pairs are `[CLS] A [SEP] B [SEP]` with segment ids 0 then 1 (a `None` in `text_pairs` encodes that text
        alone, so inputs with and without a pair share a batch). `max_length=None`: no truncation; else inputs
        over it are cut longest-first (`truncate_longest_first`, which never touches the shared Rust tokenizer's
        settings), with a warning, or with `truncation=False` refused. `is_split_into_words`: lists of words (tagging
        tasks; `.word_ids` maps tokens to words). `add_special_tokens=False`: no [CLS]/[SEP] (corpora, contexts).
        """
        single = isinstance(texts, str) or (is_split_into_words and _is_word_list(texts))
        batch = [texts] if single else list(texts)
        pairs = None
        if text_pairs is not None:
            pairs = [text_pairs] if single else list(text_pairs)
            if len(pairs) != len(batch):
                raise ValueError(f"got {len(batch)} texts but {len(pairs)} text_pairs; they must be the same length")
        for index, text in enumerate(batch):
            _check_item(text, f"texts[{index}]", is_split_into_words)
        for index, text in enumerate(pairs or ()):
            if text is not None:
                _check_item(text, f"text_pairs[{index}]", is_split_into_words)
        if not batch:
            return Encodings()
        if max_length is not None:
            if not add_special_tokens:
                raise ValueError("max_length needs the special tokens (truncation keeps [CLS] and [SEP])")
            if max_length < (4 if pairs is not None and any(p is not None for p in pairs) else 3):
                raise ValueError(f"max_length={max_length} leaves no room for text between [CLS] and [SEP]")
        inputs = [(a, b) if b is not None else a for a, b in zip(batch, pairs, strict=True)] if pairs else batch
        encodings = Encodings(self._rust.encode_batch(inputs, is_pretokenized=is_split_into_words,
                                                      add_special_tokens=add_special_tokens))
        too_long = [] if max_length is None else [i for i, e in enumerate(encodings) if len(e.ids) > max_length]
        if too_long:
            if not truncation:
                i = too_long[0]
                raise ValueError(
                    f"input {i} has {len(encodings[i].ids)} tokens, more than max_length={max_length} "
                    f"({len(too_long)} input(s) too long); pass truncation=True or split the text"
                )
            for i in too_long:
                encodings[i] = truncate_longest_first(encodings[i], max_length)  # type: ignore[arg-type]
            encodings.truncated = len(too_long)
            # One stable message per max_length, so a training loop warns once, not every batch.
            warnings.warn(
                f"inputs longer than max_length={max_length} tokens were truncated (longest first); pass "
                "truncation=False to get an error instead",
                stacklevel=3,
            )
        return encodings

    def __call__(
        self,
        texts: str | Sequence[str] | Sequence[Sequence[str]],
        text_pairs: str | Sequence[str] | Sequence[Sequence[str]] | None = None,
        *,
        max_length: int | None = None,
        truncation: bool = True,
        is_split_into_words: bool = False,
        return_offsets_mapping: bool = False,
        return_word_ids: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Encode a batch (or one text) to `input_ids`, `token_type_ids`, `attention_mask`, padded to the longest.

        See `encode_batch` for pairs and truncation. `is_split_into_words` takes lists of words (for tagging
        tasks); `return_word_ids` then maps tokens to words (-1 for special tokens and padding). Offsets are
        (start, end) character spans (0, 0 for specials).
        """
        import torch  # here, not at import: the tokenizing workers of prepare-data never load torch

        encodings = self.encode_batch(texts, text_pairs, max_length=max_length, truncation=truncation,
                                      is_split_into_words=is_split_into_words)
        if not encodings:
            raise ValueError("texts is empty: nothing to tokenize")
        width = max(len(e.ids) for e in encodings)
        B = len(encodings)
        input_ids = torch.full((B, width), self.pad_token_id, dtype=torch.long)
        token_type_ids = torch.zeros((B, width), dtype=torch.long)
        attention_mask = torch.zeros((B, width), dtype=torch.long)
        for row, encoding in enumerate(encodings):
            n = len(encoding.ids)
            input_ids[row, :n] = torch.tensor(encoding.ids, dtype=torch.long)
            token_type_ids[row, :n] = torch.tensor(encoding.type_ids, dtype=torch.long)
            attention_mask[row, :n] = 1
        out = {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask}
        if return_offsets_mapping:
            offsets = torch.zeros((B, width, 2), dtype=torch.long)
            for row, encoding in enumerate(encodings):
                if encoding.offsets:
                    offsets[row, : len(encoding.offsets)] = torch.tensor(encoding.offsets, dtype=torch.long)
            out["offset_mapping"] = offsets
        if return_word_ids:
            word_ids = torch.full((B, width), -1, dtype=torch.long)
            for row, encoding in enumerate(encodings):
                ids = [-1 if w is None else w for w in encoding.word_ids]
                word_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            out["word_ids"] = word_ids
        if return_offsets_mapping or return_word_ids:
            out["sequence_ids"] = torch.tensor(
                [[-1 if s is None else s for s in e.sequence_ids] + [-1] * (width - len(e.ids)) for e in encodings],
                dtype=torch.long,
            )
        return out


class Encodings(list):
    """Encodings of one `encode_batch` call; `truncated`: how many of them were cut to max_length."""

    truncated: int = 0


@dataclass(frozen=True)
class TruncatedEncoding:
    """The fields of a tokenizers `Encoding` that bertkit reads, for an input cut to `max_length` tokens."""

    ids: list[int]
    type_ids: list[int]
    tokens: list[str]
    offsets: list[tuple[int, int]]
    word_ids: list[int | None]
    sequence_ids: list[int | None]
    attention_mask: list[int]
    special_tokens_mask: list[int]


def truncate_longest_first(encoding: Any, max_length: int) -> TruncatedEncoding:
    """`[CLS] A [SEP] (B [SEP])` cut to `max_length` tokens longest-first, as tokenizers' `longest_first` cuts it.

    The one truncation for training and prediction. It slices the untruncated encoding's token lists and never
    asks tokenizers to truncate: tokenizers' truncation keeps every overflow piece, and for a pair it builds
    every combination of A's and B's pieces (a 10,000 + 10,000-token pair: seconds and gigabytes). The lengths
    follow tokenizers' rule: the shorter text stays whole if the longer one can take the rest; otherwise each
    gets half, and the longer (B on a tie) gets the odd token.
    """
    sequence_ids, ids = encoding.sequence_ids, encoding.ids
    n1, n2 = sequence_ids.count(0), sequence_ids.count(1)
    pair = encoding.type_ids[-1] == 1  # the closing [SEP] of B has segment 1, even when B is empty
    budget = max_length - (3 if pair else 2)
    if not pair:
        keep = {0: min(n1, budget), 1: 0}
    else:
        short, long_ = (n2, n1) if n1 > n2 else (n1, n2)
        long_ = short if short > budget else max(short, budget - short)
        if short + long_ > budget:
            short, long_ = budget // 2, budget // 2 + budget % 2
        keep = {0: long_, 1: short} if n1 > n2 else {0: short, 1: long_}
    kept = _kept_positions(sequence_ids, keep)
    fields = (encoding.type_ids, encoding.tokens, encoding.offsets, encoding.word_ids, sequence_ids,
              encoding.attention_mask, encoding.special_tokens_mask)
    return TruncatedEncoding([ids[p] for p in kept], *([field[p] for p in kept] for field in fields))


def _kept_positions(sequence_ids: list[int | None], keep: dict[int, int]) -> list[int]:
    """Positions of the special tokens and of the first `keep[s]` tokens of each sequence s."""
    seen = {0: 0, 1: 0}
    kept = []
    for position, sequence in enumerate(sequence_ids):
        if sequence is None:
            kept.append(position)
        elif seen[sequence] < keep[sequence]:
            seen[sequence] += 1
            kept.append(position)
    return kept


def train_wordpiece(word_counts: Counter[str], size: int, min_frequency: int) -> tuple[list[str], int]:
    """WordPiece vocabulary by BPE merges (what tokenizers' WordPieceTrainer does), made deterministic.

    The alphabet is every character seen at least `min_frequency` times (as a word start "c", and as a
    continuation "##c" where it occurs inside words); then the most frequent adjacent pair is merged until `size`
    entries or no pair occurs `min_frequency` times. Ties are broken by the pair's text, not by hash order, so
    the same corpus always gives the same vocabulary (the Rust trainer does not: its HashMaps are randomly seeded).
    Returns (tokens, number of alphabet characters).
    """
    char_counts: Counter[str] = Counter()
    for word, count in word_counts.items():
        for ch in word:
            char_counts[ch] += count
    alphabet = {ch for ch, count in char_counts.items() if count >= min_frequency}
    # Words as symbol lists; a character outside the alphabet splits the word (no pair spans it).
    words: list[list[str]] = []
    counts: list[int] = []
    symbol_counts: Counter[str] = Counter()
    for word, count in word_counts.items():
        pieces: list[str] = []
        for position, ch in enumerate(word):
            if ch not in alphabet:
                if pieces:
                    words.append(pieces)
                    counts.append(count)
                pieces = []
                continue
            symbol = ch if position == 0 else "##" + ch
            pieces.append(symbol)
            symbol_counts[symbol] += count
        if pieces:
            words.append(pieces)
            counts.append(count)
    for ch in alphabet:  # every alphabet character can start a word, even if the corpus only has it inside one
        symbol_counts.setdefault(ch, 0)
    vocab = sorted(symbol_counts, key=lambda s: (s.startswith("##"), -symbol_counts[s], s))
    seen = set(vocab)
    pair_counts: Counter[tuple[str, str]] = Counter()
    where: dict[tuple[str, str], set[int]] = {}
    for index, (pieces, count) in enumerate(zip(words, counts, strict=True)):
        for pair in itertools.pairwise(pieces):
            pair_counts[pair] += count
            where.setdefault(pair, set()).add(index)
    heap = [(-c, a, b) for (a, b), c in pair_counts.items()]
    heapq.heapify(heap)
    while len(vocab) < size and heap:
        negative, a, b = heapq.heappop(heap)
        if pair_counts.get((a, b), 0) != -negative:
            continue  # stale entry: the count changed since it was pushed
        if -negative < min_frequency:
            break
        merged = a + b[2:]
        if merged not in seen:
            vocab.append(merged)
            seen.add(merged)
        changed: Counter[tuple[str, str]] = Counter()
        for index in sorted(where.pop((a, b), ())):
            pieces, count = words[index], counts[index]
            for pair in itertools.pairwise(pieces):
                changed[pair] -= count
            out, i = [], 0
            while i < len(pieces):
                if i + 1 < len(pieces) and pieces[i] == a and pieces[i + 1] == b:
                    out.append(merged)
                    i += 2
                else:
                    out.append(pieces[i])
                    i += 1
            words[index] = out
            for pair in itertools.pairwise(out):
                changed[pair] += count
                where.setdefault(pair, set()).add(index)
        for pair, delta in changed.items():
            if delta:
                pair_counts[pair] += delta
                if pair_counts[pair] > 0:
                    heapq.heappush(heap, (-pair_counts[pair], *pair))
                else:
                    del pair_counts[pair]
        pair_counts.pop((a, b), None)
    return vocab, len(alphabet)


def _as_args(item: str | tuple) -> tuple:
    return item if isinstance(item, tuple) else (item,)


def _is_word_list(value: object) -> bool:
    return isinstance(value, list | tuple) and all(isinstance(w, str) for w in value) and (
        len(value) == 0 or isinstance(value[0], str)
    )


def _check_text(text: object, name: str) -> None:
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str, got {type(text).__name__}")


def _check_item(item: object, name: str, is_split_into_words: bool) -> None:
    if is_split_into_words:
        if not _is_word_list(item):
            raise TypeError(f"{name} must be a list of words (str) when is_split_into_words=True")
    else:
        _check_text(item, name)


def _is_existing_file(text: str) -> bool:
    if "\n" in text or len(text) > 4096:
        return False
    try:
        return Path(text).is_file()
    except OSError:  # e.g. a long line of text is not a valid file name
        return False


class _TextSource:
    """Texts from file paths (Path objects, or strings that all name existing files; streamed line by line) or
    from any iterable of strings (held in memory, since training reads the texts twice)."""

    def __init__(self, source: Iterable[str] | Sequence[str | Path]) -> None:
        if isinstance(source, str | Path):
            source = [source]
        items = list(source)
        self.paths: list[Path] | None = None
        if items and all(isinstance(item, Path) for item in items):
            self.paths = list(items)
        elif items and all(isinstance(item, str) and _is_existing_file(item) for item in items):
            self.paths = [Path(item) for item in items]
        self.items = items

    def __iter__(self) -> Iterator[str]:
        if self.paths is None:
            for index, item in enumerate(self.items):
                if not isinstance(item, str):
                    raise DataError(f"training text {index} is {type(item).__name__}, expected str")
                yield item
            return
        for path in self.paths:
            for _, line in read_lines(path):
                if line.strip():
                    yield line
