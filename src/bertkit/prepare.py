"""`prepare-data`: text files tokenized once, in parallel processes, into a prepared corpus (`bertkit.prepared`).

Shard boundaries depend only on the text (a shard closes after `shard_chars` characters of whole documents), and
each shard is a pure function of its documents, so the bytes are the same for any number of workers. A prepare that
is interrupted resumes by skipping the shards whose .json, text hash and files check out; a prepare into a directory
that holds one with other settings is refused.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from bertkit.argtypes import flag, float_range, int_range
from bertkit.corpus import MAX_DOCUMENT_CHARS
from bertkit.errors import DataError
from bertkit.fileio import atomic_write_text, open_for_reading
from bertkit.prepared import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    OPTIONS_NAME,
    SPLITS,
    finished_shard,
    remove_shards_after,
    vocabulary_fingerprint,
    write_shard,
)
from bertkit.processes import die_with_parent
from bertkit.tokenizer import Tokenizer, TokenizerOptions


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
    return write_shard(Path(directory), index, tokens, sentence_offsets, document_offsets,
                       characters=sum(len(s) for d in documents for s in d), text_sha256=text_sha256)


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
        finished = finished_shard(directory, index, text_sha256)
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
    remove_shards_after(directory, index)
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
