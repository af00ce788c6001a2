"""Prepared corpora on disk: the layout, one shard's writing, and the reader that checks a directory as a whole.

A prepared directory holds, for the training documents and (optionally) the held-out ones:

    prepare.json                      the settings of the prepare writing it, written first (`bertkit.prepare`)
    tokenizer/                        the vocabulary the tokens index
    manifest.json                     what was prepared, from what, with which vocabulary; every shard's sha256
    train/shard-00000.tokens.npy      uint32 token codes (id in the low 30 bits, "begins a word" in bit 30)
    train/shard-00000.sentences.npy   int64 offsets into tokens, one per sentence plus the end
    train/shard-00000.documents.npy   int64 offsets into sentences, one per document plus the end
    train/shard-00000.json            the shard's counts, the sha256 of its text and of each array, written last
    heldout/...                       the same, for held-out documents

Every file is written atomically and a shard's .json last, so nothing half-written is ever read as a shard. The
reader opens the arrays as `FileArray`s: read piecewise, never memory-mapped.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from bertkit.errors import DataError
from bertkit.filearray import FileArray
from bertkit.fileio import atomic_write, atomic_write_text, files_intact, sha256_file
from bertkit.masking import ArrayShard, encode_token
from bertkit.tokenizer import Tokenizer

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
OPTIONS_NAME = "prepare.json"  # written first: a resumed prepare must have been started with the same options
SPLITS = ("train", "heldout")
ARRAYS = ("tokens", "sentences", "documents")
COUNTS = ("documents", "sentences", "tokens", "characters")  # what a shard's record counts


def vocabulary_fingerprint(tokenizer: Tokenizer) -> str:
    """sha256 of the vocabulary and the normalisation options: two tokenizers with the same one give the same ids."""
    options = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(tokenizer.options).items()}
    if not options["added_tokens"]:
        del options["added_tokens"]  # left out when empty: manifests of vocabularies without any hash no such key
    text = json.dumps({"vocab": tokenizer.vocab, "options": options}, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---- one shard's files ---------------------------------------------------------------------------------------------

_SHARD_PREFIX = "shard-"  # how the name of each file of a shard begins


def _shard_stem(directory: Path, index: int) -> Path:
    return directory / f"{_SHARD_PREFIX}{index:05d}"


def _array_path(directory: Path, index: int, name: str) -> Path:
    """The .npy file of one of shard `index`'s arrays (`name` in ARRAYS)."""
    stem = _shard_stem(directory, index)
    return stem.with_name(f"{stem.name}.{name}.npy")


def _record_path(directory: Path, index: int) -> Path:
    """The .json record of shard `index`."""
    return _shard_stem(directory, index).with_suffix(".json")


def _shard_files(index: int) -> list[str]:
    """The files of shard `index`, as a record lists them (its arrays), sorted."""
    return sorted(_array_path(Path(), index, name).name for name in ARRAYS)


def write_shard(directory: Path, index: int, tokens: np.ndarray, sentence_offsets: np.ndarray,
                document_offsets: np.ndarray, *, characters: int, text_sha256: str) -> dict[str, Any]:
    """Write shard `index`: its arrays, each atomically, then its record (counts, the sha256 of its text and of each
    array's file) last, so a shard with a record is whole; returns the record."""
    files = {}
    for name, array in (("tokens", tokens), ("sentences", sentence_offsets), ("documents", document_offsets)):
        path = _array_path(directory, index, name)

        def save(tmp: Path, array: np.ndarray = array) -> None:
            with open(tmp, "wb") as handle:
                np.save(handle, array, allow_pickle=False)

        atomic_write(path, save)
        files[path.name] = sha256_file(path)
    record = {"index": index, "documents": len(document_offsets) - 1, "sentences": len(sentence_offsets) - 1,
              "tokens": int(tokens.size), "characters": characters, "text_sha256": text_sha256, "files": files}
    atomic_write_text(_record_path(directory, index), json.dumps(record, indent=1, sort_keys=True) + "\n")
    return record


def finished_shard(directory: Path, index: int, text_sha256: str) -> dict[str, Any] | None:
    """The record of a shard already written from exactly this text, with intact files; else None."""
    try:
        record = json.loads(_record_path(directory, index).read_text(encoding="utf-8"))
        if record.get("text_sha256") != text_sha256 or not files_intact(directory, record["files"]):
            return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return record


def remove_shards_after(directory: Path, last: int) -> None:
    """Delete the files of the shards numbered above `last`: left by a prepare of a longer text, not of this one."""
    for stale in directory.glob(f"{_SHARD_PREFIX}*"):
        number = int(stale.name[len(_SHARD_PREFIX):].split(".")[0])
        if number > last:
            stale.unlink()


# ---- reading -------------------------------------------------------------------------------------------------------

class PreparedSplit:
    """The documents of one split, read from their files on demand (`FileArray`): `len(split)` documents;
    `split[i]` is document i as a list of token-code arrays. Built by `PreparedCorpus`, from the records it has
    checked; opening a shard checks its arrays' dtypes and lengths against its record."""

    def __init__(self, directory: Path, records: list[dict[str, Any]]) -> None:
        self.shards = [_open_shard(directory, record) for record in records]
        self.starts = np.concatenate([[0], np.cumsum([r["documents"] for r in records], dtype=np.int64)])
        self.tokens = sum(r["tokens"] for r in records)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, index: int) -> list[np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        shard = int(np.searchsorted(self.starts, index, side="right")) - 1
        arrays = self.shards[shard]
        local = index - int(self.starts[shard])
        first, last = int(arrays.documents[local]), int(arrays.documents[local + 1])
        offsets = arrays.sentences[first : last + 1]
        return [arrays.tokens[int(a) : int(b)] for a, b in itertools.pairwise(offsets.tolist())]


# what each array holds: its dtype (kind, bytes; either byte order), and its length from the record's counts
_ARRAY_TYPES = {"tokens": ("u", 4, "uint32"), "sentences": ("i", 8, "int64"), "documents": ("i", 8, "int64")}
# each offsets array starts at 0 and ends at the count of what it points into
_OFFSETS_OF = {"sentences": "tokens", "documents": "sentences"}
_ID_BITS = np.uint32(encode_token(0, True) - 1)  # a token code's id: the bits below its "begins a word" bit


def _open_shard(directory: Path, record: dict[str, Any]) -> ArrayShard:
    """One shard's arrays, opened and checked against its record: dtypes and lengths (from the headers)."""
    files = {name: str(_array_path(directory, record["index"], name)) for name in ARRAYS}
    arrays = {name: FileArray(path) for name, path in files.items()}
    for name, array in arrays.items():
        kind, size, expected = _ARRAY_TYPES[name]
        if (array.dtype.kind, array.dtype.itemsize) != (kind, size):
            raise DataError(f"{array.dtype.name} values; expected {expected}", array.path)
        length = record[name] + (name in _OFFSETS_OF)
        if len(array) != length:
            raise DataError(f"holds {len(array):,} values; its record says {record[name]:,} {name}"
                            + (" (an offset each, and the end)" if name in _OFFSETS_OF else ""), array.path)
    return ArrayShard(**arrays, files=files)


def _check_ends(shard: ArrayShard, record: dict[str, Any]) -> None:
    """Each offsets array starts at 0 and ends at the count of what it points into (reads four values)."""
    for name, target in _OFFSETS_OF.items():
        array = getattr(shard, name)
        first, last = int(array[0]), int(array[-1])
        if first != 0:
            raise DataError(f"its first offset is {first}; expected 0", array.path)
        if last != record[target]:
            raise DataError(f"its last offset is {last:,}; the shard has {record[target]:,} {target}", array.path)


class _ArrayCheck:
    """What verifying sees of one array while it is hashed, block by block: offsets never go back, token ids lie
    inside the vocabulary. The first problem is kept, to be reported only if the file's sha256 matches (a damaged
    file is called damaged, not a bad offset)."""

    def __init__(self, name: str, vocab_size: int) -> None:
        self.name, self.vocab_size = name, vocab_size
        self.previous: int | None = None
        self.problem: str | None = None

    def __call__(self, start: int, values: np.ndarray) -> None:
        if self.problem is not None or not len(values):
            return
        if self.name == "tokens":
            ids = values & _ID_BITS
            if int(ids.max()) >= self.vocab_size:  # the common case costs one pass; the culprit is sought only here
                bad = int(np.flatnonzero(ids >= self.vocab_size)[0])
                self.problem = f"token {start + bad:,} has id {int(ids[bad]):,}; the vocabulary has {self.vocab_size:,}"
            return
        if self.previous is not None and int(values[0]) < self.previous:
            self.problem = f"offset {start:,} ({int(values[0])}) is below the one before it"
        elif (values[1:] < values[:-1]).any():
            bad = int(np.flatnonzero(values[1:] < values[:-1])[0]) + 1
            self.problem = f"offset {start + bad:,} ({int(values[bad])}) is below the one before it"
        self.previous = int(values[-1])


def _count(record: dict[str, Any], field: str, where: str, path: Path) -> None:
    value = record.get(field)
    if type(value) is not int or value < 0:  # not bool (an int subclass), nor a float or a string of digits
        raise DataError(f"{where}{field!r} must be an integer >= 0, got {value!r}", str(path))


def _check_record(record: Any, where: str, path: Path) -> None:
    """The fields of a shard's record, typed: its index and counts integers, its text and file hashes strings."""
    if not isinstance(record, dict):
        raise DataError(f"{where}expected a record (a JSON object), got {record!r}", str(path))
    for field in ("index", *COUNTS):
        _count(record, field, where, path)
    files = record.get("files")
    if not isinstance(record.get("text_sha256"), str) or not isinstance(files, dict) or not all(
            isinstance(v, str) for v in files.values()):
        raise DataError(f"{where}expected 'text_sha256' and 'files' (name -> sha256) strings", str(path))


def _raise_open_files_limit(needed: int) -> None:
    """Each shard array holds a file descriptor: lift the soft limit (often 1,024) toward the hard one."""
    try:
        import resource
    except ImportError:  # not on this platform
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < needed:
            raise DataError(f"{needed // 3} shards need {needed} open files; the limit is {hard}: prepare with a "
                            "larger --shard-chars, or raise `ulimit -n`")


class PreparedCorpus:
    """A prepared directory, checked as a whole before use.

    Always (cheap: the manifest, each shard's .json, a listing, a few bytes of each array): the manifest lists each
    split's shards once, in order from shard 0; each record names its own shard's files and equals the shard's
    .json; counts are integers and the split totals their sums; the shard files on disk are exactly those listed;
    each array's dtype, length and first and last offsets match its record. With `verify` (rank 0 of a run given
    --data), each array is read once: its sha256 against its record, offsets that never go back, token ids inside
    the vocabulary; and the vocabulary is the tokenizer's when one is given.

    What this claims: the data a run reads is exactly the data the manifest's hashes name. A directory rewritten
    consistently (arrays, records, manifest) is a valid corpus, only another one: nothing here can tell it from the
    original, but its `digest` differs, and a run's checkpoint records that digest, so `--resume` on it is refused.
    """

    def __init__(self, directory: str | Path, tokenizer: Tokenizer | None = None, *, verify: bool = True) -> None:
        self.directory = Path(directory)
        path = manifest_path(self.directory)
        try:
            self.manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"unreadable manifest ({exc})", str(path)) from exc
        splits = self._check_manifest(path)
        if tokenizer is not None and self.manifest["vocabulary_sha256"] != vocabulary_fingerprint(tokenizer):
            raise DataError(f"prepared with another vocabulary ({self.manifest['vocab_size']} tokens, sha256 "
                            f"{self.manifest['vocabulary_sha256'][:12]}) than the model's ({tokenizer.vocab_size} "
                            f"tokens, sha256 {vocabulary_fingerprint(tokenizer)[:12]}); prepare it again with this "
                            "--tokenizer", str(self.directory))
        for split in SPLITS:
            self._check_split(path, split, splits.get(split, {"shards": []})["shards"])
        _raise_open_files_limit(3 * sum(len(info["shards"]) for info in splits.values()) + 256)
        self.splits = {split: PreparedSplit(self.directory / split, info["shards"]) for split, info in splits.items()}
        vocab_size = tokenizer.vocab_size if tokenizer is not None else self.manifest["vocab_size"]
        for split, info in splits.items():
            for record, shard in zip(info["shards"], self.splits[split].shards, strict=True):
                if verify:  # first: a damaged file is called damaged, not a bad offset
                    for name in ARRAYS:
                        self._verify_array(split, name, getattr(shard, name), record, vocab_size)
                _check_ends(shard, record)

    def _check_manifest(self, path: Path) -> dict[str, Any]:
        """The manifest's own fields, typed; returns its splits."""
        manifest = self.manifest
        if not isinstance(manifest, dict):
            raise DataError(f"expected a JSON object, got {type(manifest).__name__}", str(path))
        if manifest.get("format") != FORMAT_VERSION:
            raise DataError(f"format {manifest.get('format')!r}; this bertkit reads format {FORMAT_VERSION}",
                            str(path))
        options, splits = manifest.get("options"), manifest.get("splits")
        if not isinstance(manifest.get("vocabulary_sha256"), str) or type(manifest.get("vocab_size")) is not int \
                or not isinstance(options, dict) or not isinstance(options.get("whole_word"), bool) \
                or not isinstance(splits, dict):
            raise DataError("expected 'vocabulary_sha256' (a string), 'vocab_size' (an integer), 'options' (with "
                            "'whole_word', true or false) and 'splits'", str(path))
        unknown = sorted(set(splits) - set(SPLITS))
        if unknown or "train" not in splits:
            raise DataError(f"splits {sorted(splits)}; expected 'train', and 'heldout' or none", str(path))
        for split, info in splits.items():
            if not isinstance(info, dict) or not isinstance(info.get("shards"), list) or not info["shards"]:
                raise DataError(f"{split}: expected a record with a list of shards", str(path))
        return splits

    def _check_split(self, path: Path, split: str, records: list[Any]) -> None:
        """One split's records against each other, their shard's .json and the files on disk (none read whole)."""
        directory = self.directory / split
        for position, record in enumerate(records):
            _check_record(record, f"{split} shard {position}: ", path)
            if record["index"] != position:
                raise DataError(f"{split} shard {position} is recorded as shard {record['index']}: each shard is "
                                f"listed once, in order from shard 0", str(path))
            if sorted(record["files"]) != _shard_files(position):
                raise DataError(f"{split}/{_shard_stem(Path(), position).name}: the record lists "
                                f"{', '.join(sorted(record['files']))}; expected {', '.join(_shard_files(position))}",
                                str(path))
            json_path = _record_path(directory, position)
            try:
                own = json.loads(json_path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise DataError(f"{split}/{json_path.name} is missing (the manifest lists shard {position})",
                                str(self.directory)) from None
            except (OSError, ValueError) as exc:
                raise DataError(f"unreadable ({exc})", str(json_path)) from exc
            _check_record(own, "", json_path)
            for field in sorted(set(own) | set(record)):
                if own.get(field) != record.get(field):
                    raise DataError(f"{field} {own.get(field)!r} here, {record.get(field)!r} in {MANIFEST_NAME}",
                                    str(json_path))
        if records:
            totals = self.manifest["splits"][split]
            for field in COUNTS:
                total = sum(r[field] for r in records)
                if totals.get(field) != total or type(totals.get(field)) is not int:
                    raise DataError(f"{split}: {field} {totals.get(field)!r}; its shards hold {total}", str(path))
        expected = {name for position in range(len(records)) for name in
                    (*_shard_files(position), _record_path(Path(), position).name)}
        found = {entry.name for entry in os.scandir(directory) if entry.name.startswith(_SHARD_PREFIX)} \
            if directory.is_dir() else set()
        for name in sorted(expected - found):
            raise DataError(f"{split}/{name} is missing (the manifest lists it)", str(self.directory))
        for name in sorted(found - expected):
            listed = f"{split} shards 0 to {len(records) - 1}" if records else f"no {split} shards"
            raise DataError(f"{split}/{name} is not in the manifest (it lists {listed}): a prepared directory holds "
                            "only its own shards; prepare the corpus again", str(self.directory))

    def _verify_array(self, split: str, name: str, array: FileArray, record: dict[str, Any], vocab_size: int
                      ) -> None:
        file = Path(array.path).name
        check = _ArrayCheck(name, vocab_size)
        if array.sha256(check) != record["files"][file]:
            raise DataError(f"shard {split}/{file} does not match its sha256 in the manifest (the file changed or is "
                            "damaged); prepare the corpus again", str(self.directory))
        if check.problem is not None:
            raise DataError(check.problem, array.path)

    def digest(self) -> list[str]:
        """What identifies the corpus's data, recorded by a run's checkpoint: the sha256 of every array of the
        training split, in order, then "heldout" and the held-out split's (held-out shards make the evaluations a
        run logs). Without a held-out split: the training split's list alone, the value runs on such corpora have
        always recorded."""
        listed = [record["files"][name] for record in self.manifest["splits"]["train"]["shards"]
                  for name in sorted(record["files"])]
        if "heldout" in self.manifest["splits"]:
            listed += ["heldout", *(record["files"][name] for record in self.manifest["splits"]["heldout"]["shards"]
                                    for name in sorted(record["files"]))]
        return listed

    @property
    def whole_word(self) -> bool:
        return bool(self.manifest["options"]["whole_word"])

    def split(self, name: str) -> PreparedSplit | None:
        return self.splits.get(name)


def manifest_path(directory: Path) -> Path:
    """The manifest of a prepared directory; a missing directory, a file, or a directory without one is named."""
    path = directory / MANIFEST_NAME
    if path.is_file():
        return path
    if not directory.exists():
        raise DataError("no such directory (expected one written by `bertkit prepare-data`)", str(directory))
    if not directory.is_dir():
        raise DataError("is a file; expected a directory written by `bertkit prepare-data`", str(directory))
    partial = (directory / OPTIONS_NAME).is_file()
    raise DataError("no manifest.json: " + ("the prepare did not finish; run `bertkit prepare-data` again with the "
                    "same arguments to complete it" if partial else "not a directory written by `bertkit "
                    "prepare-data`"), str(directory))
