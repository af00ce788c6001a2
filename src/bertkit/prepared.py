"""Prepared corpora: raw text tokenized once, in parallel processes, into .npy token shards with a manifest.

A prepared directory holds, for the training documents and (optionally) the held-out ones:

    manifest.json                     what was prepared, from what, with which vocabulary; every shard's sha256
    train/shard-00000.tokens.npy      uint32 token codes (id in the low 30 bits, "begins a word" in bit 30)
    train/shard-00000.sentences.npy   int64 offsets into tokens, one per sentence plus the end
    train/shard-00000.documents.npy   int64 offsets into sentences, one per document plus the end
    train/shard-00000.json            the shard's counts, the sha256 of its text and of each array, written last
    heldout/...                       the same, for held-out documents

Shard boundaries depend only on the text (a shard closes after `shard_chars` characters of whole documents), and
each shard is a pure function of its documents, so the bytes are the same for any number of workers. Every file is
written atomically and a shard's .json last: a prepare that is interrupted resumes by skipping the shards whose
.json, text hash and files check out, and nothing half-written is ever read as a shard.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import itertools
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from bertkit.argtypes import flag, float_range, int_range
from bertkit.corpus import MAX_DOCUMENT_CHARS
from bertkit.errors import DataError
from bertkit.fileio import atomic_write, atomic_write_text, files_intact, open_for_reading, sha256_file
from bertkit.masking import ArrayShard, encode_token
from bertkit.processes import die_with_parent
from bertkit.tokenizer import Tokenizer, TokenizerOptions

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
OPTIONS_NAME = "prepare.json"  # written first: a resumed prepare must have been started with the same options
SPLITS = ("train", "heldout")
ARRAYS = ("tokens", "sentences", "documents")
COUNTS = ("documents", "sentences", "tokens", "characters")  # what a shard's record counts


@dataclass(frozen=True)
class PrepareOptions:
    """How text becomes shards; any change gives other bytes, so a resumed prepare must use the same."""

    whole_word: bool = flag("store jieba word starts (Chinese whole-word masking)", False,
                            name="--whole-word-masking")
    # characters of text per shard (whole documents; the last may be shorter). None: from the inputs' total size,
    # 1/64 of it between 50,000 and 1,000,000, so a small corpus still has shards for every core and a large one
    # keeps a worker's lists near 40 MB; a function of the inputs alone, so the bytes stay the same for any workers
    shard_chars: int | None = flag("characters of text per shard (default: 1/64 of the input size, from 50,000 to "
                                   "1,000,000)", type=int_range(1))
    heldout_fraction: float = flag("without --heldout: hold out this fraction of the documents (chosen by --seed)",
                                   0.0, type=float_range(0.0, 1.0, high_open=True))
    seed: int = flag("held-out choice seed", 0, type=int_range(0))
    max_sentence_chars: int = 256  # long lines are split into sentences, pieces over this cut at commas
    # a document longer than this is cut (with a warning naming the file and line), so a corpus without blank lines
    # or a file of one line becomes many documents, and no shard holds more than shard_chars + this many characters
    max_document_chars: int = flag("a longer document (a file without blank lines, a line of megabytes) is cut into "
                                   "documents of at most this many characters, with a warning naming the file and "
                                   "line", MAX_DOCUMENT_CHARS, type=int_range(1))

    def __post_init__(self) -> None:
        if self.shard_chars is not None and self.shard_chars < 1:
            raise DataError(f"shard_chars must be >= 1, got {self.shard_chars}")
        if self.max_document_chars < 1:
            raise DataError(f"max_document_chars must be >= 1, got {self.max_document_chars}")
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise DataError(f"heldout_fraction must be in [0, 1), got {self.heldout_fraction}")


def vocabulary_fingerprint(tokenizer: Tokenizer) -> str:
    """sha256 of the vocabulary and the normalisation options: two tokenizers with the same one give the same ids."""
    options = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(tokenizer.options).items()}
    if not options["added_tokens"]:
        del options["added_tokens"]  # left out when empty: manifests of vocabularies without any hash no such key
    text = json.dumps({"vocab": tokenizer.vocab, "options": options}, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def input_files(paths: Sequence[str | Path]) -> list[Path]:
    """The files named, and every regular file under the directories named (sorted, hidden names skipped)."""
    files: list[Path] = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file()
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                raise DataError("directory holds no files", str(path))
            files += found
        else:
            open_for_reading(path).close()  # a missing or unreadable file is named now, before any work
            files.append(path)
    if not files:
        raise DataError("no input files given")
    return files


# ---- writing -------------------------------------------------------------------------------------------------------

def _text_digest(documents: list[list[str]]) -> tuple[str, int]:
    """(sha256 of the documents' lines, their size in UTF-8 bytes)."""
    digest = hashlib.sha256()
    size = 0
    for document in documents:
        for line in document:
            data = line.encode("utf-8", "surrogatepass")
            digest.update(data)
            digest.update(b"\n")
            size += len(data) + 1
        digest.update(b"\x00")
    return digest.hexdigest(), size


def _shard_stem(directory: Path, index: int) -> Path:
    return directory / f"shard-{index:05d}"


def _finished_shard(directory: Path, index: int, text_sha256: str) -> dict[str, Any] | None:
    """The record of a shard already written from exactly this text, with intact files; else None."""
    stem = _shard_stem(directory, index)
    try:
        record = json.loads(stem.with_suffix(".json").read_text(encoding="utf-8"))
        if record.get("text_sha256") != text_sha256 or not files_intact(directory, record["files"]):
            return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return record


_WORKER_TOKENIZER: dict[str, Tokenizer] = {}  # one tokenizer per worker process, built on its first shard


def _write_shard(directory: str, index: int, lines: list[list[str]], text_sha256: str,
                 vocab: list[str], options: dict[str, Any], whole_word: bool, max_sentence_chars: int
                 ) -> dict[str, Any]:
    """Split one shard's documents (lists of lines) into sentences, tokenize them and write the arrays, then the
    shard's record (runs in a worker process: the parent only reads lines, so it keeps up with every core)."""
    from bertkit.corpus import split_sentences
    from bertkit.masking import tokenize_documents

    key = hashlib.sha256(json.dumps([vocab, options], sort_keys=True).encode("utf-8", "surrogatepass")).hexdigest()
    if key not in _WORKER_TOKENIZER:
        fields = {k: (tuple(v) if isinstance(v, list) else v) for k, v in options.items()}
        _WORKER_TOKENIZER[key] = Tokenizer(vocab, TokenizerOptions(**fields))
    tokenizer = _WORKER_TOKENIZER[key]
    documents = [[s for line in document for s in split_sentences(line, max_sentence_chars)] for document in lines]
    coded = tokenize_documents(documents, tokenizer, whole_word=whole_word)
    sentences = [sentence for document in coded for sentence in document]
    tokens = np.fromiter((t for sentence in sentences for t in sentence), dtype=np.uint32,
                         count=sum(len(s) for s in sentences))
    sentence_offsets = np.zeros(len(sentences) + 1, dtype=np.int64)
    np.cumsum([len(s) for s in sentences], out=sentence_offsets[1:])
    document_offsets = np.zeros(len(coded) + 1, dtype=np.int64)
    np.cumsum([len(d) for d in coded], out=document_offsets[1:])
    stem = _shard_stem(Path(directory), index)
    files = {}
    for name, array in (("tokens", tokens), ("sentences", sentence_offsets), ("documents", document_offsets)):
        path = stem.with_name(f"{stem.name}.{name}.npy")

        def save(tmp: Path, array: np.ndarray = array) -> None:
            with open(tmp, "wb") as handle:
                np.save(handle, array, allow_pickle=False)

        atomic_write(path, save)
        files[path.name] = sha256_file(path)
    record = {"index": index, "documents": len(coded), "sentences": len(sentences), "tokens": int(tokens.size),
              "characters": sum(len(s) for d in documents for s in d), "text_sha256": text_sha256, "files": files}
    atomic_write_text(stem.with_suffix(".json"), json.dumps(record, indent=1, sort_keys=True) + "\n")
    return record


def _shards_of(documents: Iterable[list[str]], shard_chars: int) -> Iterator[list[list[str]]]:
    """Consecutive runs of whole documents of about `shard_chars` characters (a function of the text alone)."""
    shard: list[list[str]] = []
    size = 0
    for document in documents:
        shard.append(document)
        size += sum(len(s) for s in document)
        if size >= shard_chars:
            yield shard
            shard, size = [], 0
    if shard:
        yield shard


def _is_heldout(seed: int, index: int, fraction: float) -> bool:
    # a hash of (seed, document index), not a shared random stream: the choice does not depend on reading order
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * 2**64


def prepare(inputs: Sequence[str | Path], tokenizer: Tokenizer, output: str | Path, *,
            heldout: Sequence[str | Path] | None = None, options: PrepareOptions | None = None, workers: int = 0,
            progress: bool = True, replace_changed: bool = False) -> dict[str, Any]:
    """Tokenize text files (Google's format: one sentence or paragraph a line, a blank line between documents;
    plain or .gz; directories are read whole) into shards under `output`; returns the manifest.

    `workers`: tokenizing processes (0: one per core, at most one per shard; 1: in this process). Held-out
    documents come from `heldout` files, or from `options.heldout_fraction` of the input documents. A directory
    holding a prepare with other settings is refused, or emptied first with `replace_changed` (a run directory's
    own copy). The vocabulary is saved in `tokenizer/`, so `pretrain --data` needs no --tokenizer.
    """
    from bertkit.corpus import read_documents

    options = options or PrepareOptions()
    if heldout and options.heldout_fraction:
        raise DataError("give held-out files or a held-out fraction, not both")
    output = Path(output)
    files = input_files(inputs)
    heldout_files = input_files(heldout) if heldout else []
    total_bytes = sum(p.stat().st_size for p in files + heldout_files if p.is_file())
    if options.shard_chars is None:
        options = replace(options, shard_chars=min(1_000_000, max(50_000, total_bytes // 64)))
    settings = {"format": FORMAT_VERSION, "vocabulary_sha256": vocabulary_fingerprint(tokenizer),
                "vocab_size": tokenizer.vocab_size, "options": asdict(options),
                "inputs": [os.path.abspath(p) for p in files],
                "heldout_inputs": [os.path.abspath(p) for p in heldout_files]}
    _check_or_write_settings(output, settings, replace_changed)
    if not (output / "tokenizer" / "vocab.txt").is_file():
        tokenizer.save_pretrained(output / "tokenizer")
    shards = max(1, total_bytes // options.shard_chars)  # about: a character is 1 to 3 bytes
    workers = workers or min(os.cpu_count() or 1, shards)
    tokenizer_options = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(tokenizer.options).items()}

    def documents(paths: list[Path]) -> Iterator[list[str]]:
        for path in paths:  # lines (a long one cut at the document limit); the workers split them into sentences
            yield from read_documents(path, split=False, max_document_chars=options.max_document_chars)

    streams: dict[str, Iterator[list[str]]]
    if heldout_files:
        streams = {"train": documents(files), "heldout": documents(heldout_files)}
    elif options.heldout_fraction:
        # two streaming passes over the files (one per split) rather than one pass holding the corpus in memory
        fraction, seed = options.heldout_fraction, options.seed
        streams = {"train": (d for i, d in enumerate(documents(files)) if not _is_heldout(seed, i, fraction)),
                   "heldout": (d for i, d in enumerate(documents(files)) if _is_heldout(seed, i, fraction))}
    else:
        streams = {"train": documents(files)}

    from tqdm.auto import tqdm

    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="prepare", disable=not progress,
               mininterval=0.5 if os.isatty(2) else 30)
    manifest: dict[str, Any] = {**settings, "splits": {}}
    started = time.perf_counter()
    # spawn, not fork: the parent may hold torch and tokenizers thread pools, which a forked child inherits broken
    context = multiprocessing.get_context("spawn")
    pool: concurrent.futures.Executor = (
        _InProcess() if workers == 1 else
        concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                                               initargs=(os.getpid(),)))
    with pool:
        for split, stream in streams.items():
            directory = output / split
            directory.mkdir(parents=True, exist_ok=True)
            records = _run_split(pool, directory, stream, tokenizer, tokenizer_options, options, workers, bar)
            if records:
                manifest["splits"][split] = {
                    "shards": records, **{k: sum(r[k] for r in records)
                                          for k in ("documents", "sentences", "tokens", "characters")}}
    bar.close()
    if "train" not in manifest["splits"] or manifest["splits"]["train"]["documents"] == 0:
        raise DataError("no text in the input files", ", ".join(map(str, files)))
    if (heldout_files or options.heldout_fraction) and "heldout" not in manifest["splits"]:
        raise DataError("no held-out text (the held-out files are empty, or the fraction chose no document)")
    atomic_write_text(output / MANIFEST_NAME, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    manifest["seconds"] = time.perf_counter() - started  # returned, not written: the bytes stay reproducible
    return manifest


class _InProcess(concurrent.futures.Executor):
    """One worker: the shards are written here, one after another (no process start-up for small corpora)."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        return future


def _start_worker(parent: int) -> None:
    """Set up a worker process: no thread pools of its own, and an end when `parent` ends."""
    # one process per core does the parallelism; the Rust tokenizer's own thread pool would oversubscribe the cores
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    die_with_parent(parent)


def _run_split(pool: concurrent.futures.Executor, directory: Path, stream: Iterator[list[str]],
               tokenizer: Tokenizer, tokenizer_options: dict[str, Any], options: PrepareOptions, workers: int,
               bar: Any) -> list[dict[str, Any]]:
    """Shard the stream, skip the shards already written from the same text, write the rest in the pool; at most
    2 x workers shards are held in memory at once."""
    records: dict[int, dict[str, Any]] = {}
    pending: dict[concurrent.futures.Future, int] = {}
    sizes: dict[int, int] = {}

    def collect() -> None:
        done, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
        for future in done:
            index = pending.pop(future)
            records[index] = future.result()
            bar.update(sizes[index])

    index = -1
    assert options.shard_chars is not None
    for index, documents in enumerate(_shards_of(stream, options.shard_chars)):
        text_sha256, sizes[index] = _text_digest(documents)
        finished = _finished_shard(directory, index, text_sha256)
        if finished is not None:
            records[index] = finished
            bar.update(sizes[index])
            continue
        while len(pending) >= 2 * workers:
            collect()
        future = pool.submit(_write_shard, str(directory), index, documents, text_sha256, tokenizer.vocab,
                             tokenizer_options, options.whole_word, options.max_sentence_chars)
        pending[future] = index
    while pending:
        collect()
    # shards past the end (a previous prepare of a longer text in this directory) are not part of this corpus
    for stale in directory.glob("shard-*"):
        number = int(stale.name[len("shard-"):].split(".")[0])
        if number > index:
            stale.unlink()
    return [records[i] for i in range(index + 1)]


def _check_or_write_settings(output: Path, settings: dict[str, Any], replace_changed: bool = False) -> None:
    """A prepare into a directory that already holds one continues it only with the same inputs and options
    (or, with `replace_changed`, starts it again)."""
    path = output / OPTIONS_NAME
    if path.is_file() and replace_changed:
        try:
            same = _read_settings(path) == settings
        except (OSError, ValueError, AttributeError):
            same = False
        if not same:
            import shutil

            for name in (*SPLITS, "tokenizer", MANIFEST_NAME, OPTIONS_NAME):
                target = output / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
    if path.is_file():
        try:
            old = _read_settings(path)
        except (OSError, ValueError, AttributeError) as exc:
            raise DataError(f"unreadable ({exc}); delete the directory to prepare again", str(path)) from exc
        changed = [f"{key}: {old.get(key)!r} -> {value!r}" for key, value in settings.items() if old.get(key) != value]
        if changed:
            raise DataError(f"{output} holds a prepare with other settings ({'; '.join(changed)}); choose another "
                            "--output or delete it", str(path))
        return
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(settings, indent=1, sort_keys=True) + "\n")


# options added since the first format-1 prepares, with the value those were made with: documents under the limit
# give the same bytes, and a shard whose text the new option changes fails its text hash and is written again
_ADDED_OPTIONS = {"max_document_chars": MAX_DOCUMENT_CHARS}


def _read_settings(path: Path) -> dict[str, Any]:
    """The settings a prepare wrote, with the options it predates at the values it used."""
    settings = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(settings.get("options"), dict):
        settings["options"] = {**_ADDED_OPTIONS, **settings["options"]}
    return settings


# ---- reading -------------------------------------------------------------------------------------------------------

class FileArray:
    """A one-dimensional .npy array read piecewise with `os.pread`, never memory-mapped: what a run has read stays in
    the kernel's page cache (shared, evictable), not in the process. A map would keep every page it touched, and the
    16 pages the kernel maps around each fault, resident in the process until the run ends, so a long run over a
    large corpus would end up holding the corpus in its RSS.

    Supports what the example builder needs: `len`, an integer, a slice with step 1 (a new array),
    `searchsorted` (one read through a sample of every 512th value kept in memory), and `np.asarray` (the whole
    array). Forked workers share the descriptor (pread has no file position); pickling reopens the file.
    """

    SAMPLE = 512
    SAMPLE_BLOCK = 8192  # samples taken per read while the sample is built

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        with open(self.path, "rb") as f:
            try:
                version = np.lib.format.read_magic(f)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, _fortran_order, dtype = read_header(f)
            except ValueError as exc:
                raise DataError(f"not a .npy array ({exc})", self.path) from exc
            self.offset = f.tell()
            size = os.fstat(f.fileno()).st_size
        if len(shape) != 1 or dtype.hasobject:
            raise DataError(f"expected a one-dimensional numeric array, found shape {shape} of {dtype}", self.path)
        if size != self.offset + shape[0] * dtype.itemsize:
            # checked now: a short file would otherwise fail in the middle of a run, at the first read past its end
            raise DataError(f"holds {size:,} bytes; its header describes {self.offset + shape[0] * dtype.itemsize:,} "
                            "(a cut or damaged file)", self.path)
        self.dtype, self.shape = dtype, shape
        self.fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self._sample: np.ndarray | None = None

    def __len__(self) -> int:
        return self.shape[0]

    def _read(self, start: int, stop: int) -> np.ndarray:
        size = self.dtype.itemsize
        want = max(stop - start, 0) * size
        out = bytearray(want)
        view, done = memoryview(out), 0
        while done < want:  # pieces of at most 1 GiB (a larger pread fails on some systems); short reads continue
            got = os.preadv(self.fd, [view[done : done + min(want - done, 2**30)]], self.offset + start * size + done)
            if got == 0:
                raise DataError(f"file ends {want - done} bytes early", self.path)
            done += got
        return np.frombuffer(out, dtype=self.dtype)

    def __getitem__(self, key: int | slice) -> Any:
        n = len(self)
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step != 1:
                raise ValueError("FileArray slices take step 1")
            return self._read(start, max(start, stop))
        index = int(key)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(key)
        return self._read(index, index + 1)[0]

    def __iter__(self) -> Iterator[Any]:
        return iter(np.asarray(self))

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        data = self._read(0, len(self))
        return data if dtype is None else data.astype(dtype)

    def searchsorted(self, value: int, side: str = "left") -> int:
        """np.searchsorted on the sorted file: the sample narrows it to one block of SAMPLE values, read at once."""
        if self._sample is None:  # read in blocks, so the whole array is never in memory at once
            block = self.SAMPLE * self.SAMPLE_BLOCK
            parts = [self._read(s, min(s + block, len(self)))[:: self.SAMPLE].copy() for s in
                     range(0, len(self), block)]
            self._sample = np.concatenate(parts) if parts else np.zeros(0, self.dtype)
        block = int(np.searchsorted(self._sample, value, side=side))  # the answer lies in the block before it
        first = max(block - 1, 0) * self.SAMPLE
        stop = min(first + self.SAMPLE + 1, len(self))
        return first + int(np.searchsorted(self[first:stop], value, side=side))

    def sha256(self, inspect: Callable[[int, np.ndarray], None] | None = None) -> str:
        """sha256 of the whole file, read once through the descriptor the array is read by, in blocks of 16 MiB;
        `inspect(start, values)` sees each block of values on the way."""
        digest = hashlib.sha256(os.pread(self.fd, self.offset, 0))
        step = max(1, (16 << 20) // self.dtype.itemsize)
        for start in range(0, len(self), step):
            values = self._read(start, min(start + step, len(self)))
            digest.update(values)
            if inspect is not None:
                inspect(start, values)
        return digest.hexdigest()

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])  # type: ignore[misc]

    def __del__(self) -> None:
        fd = getattr(self, "fd", None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


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


def _shard_files(index: int) -> list[str]:
    """The files of shard `index`, as a record lists them (its arrays), sorted."""
    return sorted(f"{_shard_stem(Path(), index).name}.{name}.npy" for name in ARRAYS)


def _open_shard(directory: Path, record: dict[str, Any]) -> ArrayShard:
    """One shard's arrays, opened and checked against its record: dtypes and lengths (from the headers)."""
    stem = _shard_stem(directory, record["index"])
    files = {name: str(stem.with_name(f"{stem.name}.{name}.npy")) for name in ARRAYS}
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
            json_path = _shard_stem(directory, position).with_suffix(".json")
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
                    (*_shard_files(position), f"{_shard_stem(Path(), position).name}.json")}
        found = {entry.name for entry in os.scandir(directory) if entry.name.startswith("shard-")} \
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
