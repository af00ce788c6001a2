"""A tokenizer directory as Hugging Face writes it: `vocab.txt`, `tokenizer_config.json` (normalisation, special and
added tokens, each value checked) and, where there is no `vocab.txt`, a WordPiece `tokenizer.json` (transformers 5).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bertkit.errors import CheckpointError

VOCAB_NAME = "vocab.txt"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
TOKENIZER_JSON_NAME = "tokenizer.json"
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# Google's WordPiece gives up on words longer than this and emits [UNK] for the whole word.
MAX_INPUT_CHARS_PER_WORD = 100
# transformers writes a huge sentinel (1e30) when a vocabulary has no length limit.
_NO_LIMIT = 10**9


@dataclass(frozen=True)
class TokenizerOptions:
    """What `tokenizer_config.json` says about normalisation; defaults are Google's uncased BERT."""

    do_lower_case: bool = True
    strip_accents: bool | None = None  # None: strip exactly when lower-casing, as BERT does
    tokenize_chinese_chars: bool = True
    model_max_length: int = 512
    unk_token: str = "[UNK]"
    sep_token: str = "[SEP]"
    pad_token: str = "[PAD]"
    cls_token: str = "[CLS]"
    mask_token: str = "[MASK]"
    additional_special_tokens: tuple[str, ...] = ()  # never split (entity markers); saved like transformers does
    # never split, matched in the normalised text, not special (domain terms that BERT's pre-tokenizer would cut
    # apart: several CJK characters, a word with punctuation); saved as transformers' added_tokens_decoder
    added_tokens: tuple[str, ...] = ()


def read_vocab(path: str | Path) -> list[str]:
    """Tokens of a `vocab.txt`, one per line, id = line number; errors name the file and the bad line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: vocabulary file not found")
    raw = path.read_bytes()
    tokens: list[str] = []
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the final newline
    for number, line in enumerate(lines, start=1):
        try:
            tokens.append(line.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError as exc:
            raise CheckpointError(
                f"{path}:{number}: vocabulary is not UTF-8 (byte {line[exc.start]:#04x} at column {exc.start + 1}); "
                "re-save it as UTF-8"
            ) from exc
    if not tokens:
        raise CheckpointError(f"{path}: vocabulary is empty")
    return tokens


def _read_options(directory: Path) -> TokenizerOptions:
    path = directory / TOKENIZER_CONFIG_NAME
    if not path.is_file():
        return TokenizerOptions()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not a valid UTF-8 JSON file ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object of tokenizer settings, got {type(data).__name__}")
    fields: dict[str, Any] = {}
    for name in TokenizerOptions.__dataclass_fields__:
        if name == "added_tokens":
            continue  # transformers' key is added_tokens_decoder
        if (name in data and data[name] is not None) or (name == "strip_accents" and name in data):
            fields[name] = _checked_option(path, name, data[name])
    return TokenizerOptions(**fields)


def _added_tokens(path: Path, key: str, entries: Any, *, special: bool) -> list[tuple[int, str]]:
    """(id, token) of the added tokens in transformers' shape (`{"id", "content", "special", "normalized", ...}`)
    that are (`special`) or are not special. bertkit matches a special token as written and any other in the
    normalised text, never as a part of a word: an entry that asks otherwise (lstrip, rstrip, single_word, another
    `normalized`) is refused rather than tokenized differently from transformers."""
    if not isinstance(entries, list):
        raise CheckpointError(f"{path}: {key} must be a list of token objects, got {entries!r:.80}")
    out = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("content"), str) or not entry["content"]:
            raise CheckpointError(f"{path}: {key}: expected objects with a non-empty \"content\", got {entry!r:.120}")
        try:
            index = int(entry.get("id"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise CheckpointError(f"{path}: {key}: token {entry['content']!r} has no integer id "
                                  f"({entry.get('id')!r:.40})") from None
        if bool(entry.get("special", False)) != special:
            continue
        flags = {"lstrip": False, "rstrip": False, "single_word": False, "normalized": not special}
        wrong = {name: entry[name] for name, value in flags.items() if name in entry and entry[name] != value}
        if wrong:
            raise CheckpointError(f"{path}: {key}: token {entry['content']!r} has {wrong}; bertkit reads added tokens "
                                  f"with {flags}")
        out.append((index, entry["content"]))
    return sorted(out)


def _read_tokenizer_json(path: Path, options: TokenizerOptions) -> tuple[list[str], TokenizerOptions]:
    """The vocabulary (model vocabulary, then added tokens, by id) and options of a WordPiece `tokenizer.json`.

    Its normaliser's settings override tokenizer_config.json's (they are what the file's tokenizer runs); a pipeline
    other than BERT's (BertNormalizer, BertPreTokenizer, WordPiece with "##") is refused, naming the part."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not a valid UTF-8 JSON file ({exc})") from exc
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or model.get("type") != "WordPiece":
        kind = model.get("type") if isinstance(model, dict) else None
        raise CheckpointError(f"{path}: model type is {kind!r}; bertkit reads BERT's WordPiece tokenizers")
    expected = {"continuing_subword_prefix": "##", "max_input_chars_per_word": MAX_INPUT_CHARS_PER_WORD}
    for name, value in expected.items():
        if model.get(name, value) != value:
            raise CheckpointError(f"{path}: model.{name} is {model[name]!r}; bertkit's WordPiece uses {value!r}")
    normalizer, pre_tokenizer = data.get("normalizer") or {}, data.get("pre_tokenizer") or {}
    if normalizer.get("type") != "BertNormalizer" or not normalizer.get("clean_text", True):
        raise CheckpointError(f"{path}: normalizer is {normalizer!r:.120}; bertkit reads BERT's (BertNormalizer with "
                              "clean_text)")
    if pre_tokenizer.get("type") != "BertPreTokenizer":
        raise CheckpointError(f"{path}: pre_tokenizer is {pre_tokenizer!r:.120}; bertkit reads BERT's "
                              "(BertPreTokenizer)")
    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or not vocab:
        raise CheckpointError(f"{path}: model.vocab must be a non-empty object (token -> id)")
    by_id: dict[int, str] = {}
    for token, index in vocab.items():
        if isinstance(index, bool) or not isinstance(index, int) or index in by_id:
            raise CheckpointError(f"{path}: model.vocab: token {token!r} has id {index!r}; ids must be distinct "
                                  "integers")
        by_id[index] = token
    added = data.get("added_tokens") or []
    specials = _added_tokens(path, "added_tokens", added, special=True)
    plain = _added_tokens(path, "added_tokens", added, special=False)
    for index, token in specials + plain:
        if by_id.setdefault(index, token) != token:
            raise CheckpointError(f"{path}: added token {token!r} has id {index}, which model.vocab gives to "
                                  f"{by_id[index]!r}")
    if sorted(by_id) != list(range(len(by_id))):
        gap = next(i for i in range(len(by_id) + 1) if i not in by_id)
        raise CheckpointError(f"{path}: token ids must run from 0 without gaps (as vocab.txt's lines); id {gap} is "
                              "missing")
    named = {options.pad_token, options.unk_token, options.cls_token, options.sep_token, options.mask_token,
             model.get("unk_token", options.unk_token)}
    lowercase = normalizer.get("lowercase", True)
    options = dataclasses.replace(
        options,
        do_lower_case=lowercase,
        strip_accents=normalizer.get("strip_accents"),
        tokenize_chinese_chars=normalizer.get("handle_chinese_chars", True),
        unk_token=model.get("unk_token", options.unk_token),
        additional_special_tokens=tuple(dict.fromkeys(
            [*options.additional_special_tokens, *(t for _, t in specials if t not in named)])),
        added_tokens=tuple(dict.fromkeys([*options.added_tokens, *(t for _, t in plain)])),
    )
    return [by_id[i] for i in range(len(by_id))], options


def _config_added_tokens(directory: Path) -> list[tuple[int, str]]:
    """(id, token) of the non-special added tokens tokenizer_config.json lists (transformers' added_tokens_decoder)."""
    path = directory / TOKENIZER_CONFIG_NAME
    if not path.is_file():
        return []
    decoder = json.loads(path.read_text(encoding="utf-8")).get("added_tokens_decoder")  # parsed by _read_options
    if decoder is None:
        return []
    if not isinstance(decoder, dict):
        raise CheckpointError(f"{path}: added_tokens_decoder must be an object (id -> token), got {decoder!r:.80}")
    entries = [{**entry, "id": key} if isinstance(entry, dict) else entry for key, entry in decoder.items()]
    return _added_tokens(path, "added_tokens_decoder", entries, special=False)


def read_vocabulary(directory: str | Path) -> tuple[list[str], TokenizerOptions, Path]:
    """(tokens, options, the file the tokens came from) of a checkpoint: vocab.txt (id = line), else the
    WordPiece vocabulary of tokenizer.json; with tokenizer_config.json's options and added tokens."""
    directory = Path(directory)
    options = _read_options(directory)
    vocab_path, json_path = directory / VOCAB_NAME, directory / TOKENIZER_JSON_NAME
    if vocab_path.is_file() or not json_path.is_file():
        vocab, source = read_vocab(vocab_path), vocab_path
    else:
        (vocab, options), source = _read_tokenizer_json(json_path, options), json_path
    added = _config_added_tokens(directory)
    for index, token in added:
        if index == len(vocab):  # transformers keeps tokens added to a vocab.txt outside it, numbered after it
            vocab.append(token)
        elif index > len(vocab) or vocab[index] != token:
            held = "no token" if index > len(vocab) else repr(vocab[index])
            raise CheckpointError(f"{directory / TOKENIZER_CONFIG_NAME}: added token {token!r} has id {index}, but "
                                  f"{source.name} has {held} there")
    if added:
        options = dataclasses.replace(
            options, added_tokens=tuple(dict.fromkeys([*options.added_tokens, *(t for _, t in added)])))
    return vocab, options, source


_FLAGS = ("do_lower_case", "tokenize_chinese_chars")
_TOKENS = ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _token(path: Path, name: str, value: Any) -> str:
    if isinstance(value, dict):  # transformers' AddedToken serialisation
        value = value.get("content")
    if not isinstance(value, str) or not value:
        raise CheckpointError(f"{path}: {name} must be a non-empty string (or an object with one as \"content\"), "
                              f"got {value!r:.80}")
    return value


def _checked_option(path: Path, name: str, value: Any) -> Any:
    """One tokenizer_config.json setting, checked as transformers writes it; CheckpointError names the file, the
    setting and what was expected."""
    if name in _FLAGS or name == "strip_accents":
        if not isinstance(value, bool) and not (name == "strip_accents" and value is None):
            raise CheckpointError(f"{path}: {name} must be true or false{' (or null)' * (name == 'strip_accents')}, "
                                  f"got {value!r:.80}")
        return value
    if name == "model_max_length":
        # transformers writes int(1e30) for "no limit"; a JSON float of an integer value is read as one
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CheckpointError(f"{path}: model_max_length must be a positive integer, got {value!r:.80}")
        return 512 if value >= _NO_LIMIT else value
    if name in _TOKENS:
        return _token(path, name, value)
    if name == "additional_special_tokens":
        if not isinstance(value, list):
            raise CheckpointError(f"{path}: additional_special_tokens must be a list, got {value!r:.80}")
        return tuple(_token(path, f"additional_special_tokens[{i}]", t) for i, t in enumerate(value))
    return value
