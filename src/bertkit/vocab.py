"""Extending a checkpoint's vocabulary with domain tokens: the tokens appended, the word embeddings (and the MLM output
layer) grown, each new row the mean of the rows of the pieces the old vocabulary split the token into."""

from __future__ import annotations

import dataclasses
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import pre_tokenizers
from torch import Tensor

from bertkit.checkpoint import SAFETENSORS_NAME, check_directory, check_finite, check_vocab_fits, read_weights
from bertkit.config import BertConfig
from bertkit.errors import CheckpointError, DataError
from bertkit.fileio import atomic_write, read_lines
from bertkit.tokenizer import Tokenizer

# The tensors with one row (or entry) per token, under transformers' names: the word embeddings, and the MLM output
# layer (its decoder weight is the embeddings when tied, a copy when a checkpoint stores it, and its bias).
_PER_TOKEN = re.compile(r"(bert\.)?embeddings\.word_embeddings\.weight|cls\.predictions\.(decoder\.weight|"
                        r"decoder\.bias|bias)")
COPIED = ("task.json",)  # files of a checkpoint that the new vocabulary leaves true, copied as they are


@dataclass(frozen=True)
class NewToken:
    """One token of the file: as written, as the vocabulary holds it (normalised as the model normalises text: an
    uncased model's in lower case), the pieces the old vocabulary split it into, and whether it is an added token
    (matched in the text before WordPiece, because BERT's pre-tokenizer would cut it apart: several CJK characters,
    punctuation inside)."""

    line: int
    token: str
    entry: str
    pieces: tuple[str, ...]
    added: bool


@dataclass(frozen=True)
class Extension:
    """What `extend_vocab` did: the tokens appended (new ids from `first_id`), notes on lines skipped or tokens
    normalised, and the embedding table's rows before and after."""

    tokens: list[NewToken]
    notes: list[str]
    first_id: int
    rows_before: int
    rows_after: int
    output: Path


def read_new_tokens(path: str | Path, tokenizer: Tokenizer) -> tuple[list[NewToken], list[str]]:
    """The tokens of a file (one a line) that `tokenizer`'s vocabulary lacks, and notes on the lines skipped (a
    token the vocabulary has, a repeated one) or normalised. DataError (file:line) for a blank line, a token with
    whitespace inside, a continuation piece (##...) or one that normalisation empties."""
    options = tokenizer.options
    # the model's normalisation of a word, without the spaces it puts around CJK characters
    normalise = Tokenizer._normalizer(dataclasses.replace(options, tokenize_chinese_chars=False)).normalize_str
    words = pre_tokenizers.BertPreTokenizer()
    tokens: list[NewToken] = []
    notes: list[str] = []
    seen: dict[str, int] = {}
    for number, text in read_lines(path):
        token = text.strip()
        if not token:
            raise DataError("blank line: expected one token a line", str(path), number)
        if any(ch.isspace() for ch in token):
            raise DataError(f"{token!r} contains whitespace: expected one token a line, without spaces", str(path),
                            number)
        if token.startswith("##"):
            raise DataError(f"{token!r} is a continuation piece; give whole words (or terms)", str(path), number)
        entry = normalise(token)
        if not entry:
            raise DataError(f"{token!r} is empty once normalised as the model normalises text", str(path), number)
        if entry in tokenizer.token_to_index:
            notes.append(f"{path}:{number}: {token!r} is already in the vocabulary (id "
                         f"{tokenizer.token_to_index[entry]}); skipped")
            continue
        if entry in seen:
            notes.append(f"{path}:{number}: {token!r} repeats line {seen[entry]}; skipped")
            continue
        seen[entry] = number
        if entry != token:
            notes.append(f"{path}:{number}: {token!r} is added as {entry!r} (the model normalises text so)")
        pieces = tuple(tokenizer.tokenize(token))
        if not pieces:
            raise DataError(f"{token!r} gives no pieces to start its embedding from", str(path), number)
        added = len(words.pre_tokenize_str(tokenizer.normalize(entry))) > 1
        tokens.append(NewToken(number, token, entry, pieces, added))
    return tokens, notes


def _grow(tensor: Tensor, rows: int, first: int, sources: list[list[int]]) -> Tensor:
    """`tensor` with `rows` rows (or entries); rows first, first + 1, ... are the means of the rows `sources` name."""
    grown = torch.cat([tensor, tensor.new_zeros((rows - tensor.shape[0], *tensor.shape[1:]))]) if (
        rows > tensor.shape[0]) else tensor.clone()
    for offset, ids in enumerate(sources):
        grown[first + offset] = tensor[ids].float().mean(0).to(tensor.dtype)
    return grown


def extend_vocab(directory: str | Path, tokens_file: str | Path, output: str | Path) -> Extension:
    """Write to `output` a copy of the checkpoint at `directory` whose vocabulary ends with the new tokens of
    `tokens_file` (see `read_new_tokens`): vocab.txt and tokenizer_config.json (terms that BERT's pre-tokenizer
    would cut apart as added tokens, which transformers reads too), config.json's vocab_size, model.safetensors with
    every per-token tensor grown (word embeddings; the MLM decoder weight and bias where present), each new row the
    mean of the rows of the token's old pieces ([UNK] included, where the old vocabulary lacks a character).
    Everything else is unchanged, so a text in which no new token occurs gives the same outputs."""
    directory, output = Path(directory), Path(output)
    check_directory(directory)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise CheckpointError(f"{output}: exists and is not an empty directory; choose a new one for the extended "
                              "checkpoint")
    config = BertConfig.from_pretrained(directory)
    check_vocab_fits(directory, config)
    tokenizer = Tokenizer.from_pretrained(directory)
    state, source = read_weights(directory)
    check_finite(state, source)
    tokens, notes = read_new_tokens(tokens_file, tokenizer)
    if not tokens:
        raise DataError("no new tokens: every line names a token the vocabulary has", str(tokens_file))
    per_token = sorted(key for key in state if _PER_TOKEN.fullmatch(key))
    if not any(key.endswith("word_embeddings.weight") for key in per_token):
        raise CheckpointError(f"{source}: no word embeddings (embeddings.word_embeddings.weight) to extend")
    wrong = [f"{key} {tuple(state[key].shape)}" for key in per_token if state[key].shape[0] != config.vocab_size]
    if wrong:
        raise CheckpointError(f"{source}: expected {config.vocab_size} rows (config.json's vocab_size) in "
                              f"{', '.join(wrong)}")
    first = len(tokenizer)  # new ids follow the vocabulary (rows past it, if any, belong to no token)
    rows = max(config.vocab_size, first + len(tokens))
    sources = [tokenizer.convert_tokens_to_ids(t.pieces) for t in tokens]
    for key in per_token:
        state[key] = _grow(state[key], rows, first, sources).contiguous()

    output.mkdir(parents=True, exist_ok=True)
    atomic_write(output / SAFETENSORS_NAME, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
    rows_before, config.vocab_size = config.vocab_size, rows
    config.save_pretrained(output)
    options = dataclasses.replace(tokenizer.options, added_tokens=tokenizer.options.added_tokens + tuple(
        t.entry for t in tokens if t.added))
    Tokenizer(tokenizer.vocab + [t.entry for t in tokens], options).save_pretrained(output)
    for name in COPIED:
        if (directory / name).is_file():
            shutil.copyfile(directory / name, output / name)
    return Extension(tokens, notes, first, rows_before, rows, output)
