"""Semantic search: a corpus's sentence vectors in a FAISS index (exact inner product for small corpora, HNSW beyond),
encoded in chunks with the texts kept on disk and bound to its model by fingerprint; queries answered as hits,
optionally re-ranked by a cross-encoder (a pair classifier's probability of its positive label).

An index is a directory: `index.json` (`IndexInfo`: the model, its fingerprint, how vectors are pooled), the FAISS
index (`vectors.faiss`) and the texts (`textstore`). It is built under a temporary name beside its target and renamed
into place when complete, so a crash leaves no half-written index.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bertkit.errors import BertkitError, CheckpointError, DataError
from bertkit.fileio import atomic_write_text, read_lines, read_text
from bertkit.predict import Predictor, check_encodable
from bertkit.tasks.base import TASK_FILE, read_task_info
from bertkit.tasks.classification import SPEC as CLASSIFIER_SPEC
from bertkit.tasks.embed import NAME as EMBEDDING_TASK
from bertkit.tasks.embed import embed
from bertkit.tasks.spec import Work, sequence
from bertkit.textstore import FILES as TEXT_FILES
from bertkit.textstore import TextStore, TextWriter

CLASSIFIER_TASK = CLASSIFIER_SPEC.name

INFO_FILE = "index.json"
VECTORS_FILE = "vectors.faiss"
FORMAT = "bertkit search index"
VERSION = 1
KINDS = ("auto", "flat", "hnsw")
# `auto` searches exactly up to this many vectors and builds HNSW beyond (bench/search.py: docs/search.md)
EXACT_MAX_VECTORS = 100_000
HNSW_NEIGHBOURS = 32  # M: links per vector
HNSW_EF_CONSTRUCTION = 64  # candidates kept while linking a vector
HNSW_EF_SEARCH = 128  # candidates kept while searching
CHUNK_TEXTS = 4096  # texts read, encoded and added to the index at a time
DEFAULT_TOP_K = 10
MAX_TOP_K = 1000  # FAISS allocates top_k results per query up front: 10^9 would be gigabytes
MAX_QUERY_CHARS = 10_000  # the server's per-text limit (ServeConfig.max_chars); a query is a sentence or two
DEFAULT_CANDIDATES = 20  # hits re-ranked per query by --rerank


def faiss_module() -> Any:
    try:
        import faiss
    except ImportError as exc:
        raise BertkitError("search indexes need FAISS: pip install 'bertkit[search]' (faiss-cpu)") from exc
    return faiss


def checkpoint_pooling(directory: str | Path) -> str:
    """How a checkpoint's sentence vectors are pooled: what its task.json records (a model trained for sentence
    embeddings), else mean (what sentence-transformers models such as all-MiniLM-L6-v2 are trained for)."""
    if not (Path(directory) / TASK_FILE).is_file():
        return "mean"
    _, info = read_task_info(directory)
    return str(getattr(info, "pooling", "mean"))


@dataclass(frozen=True)
class IndexInfo:
    """index.json: what an index holds, and how its vectors were made (queries are encoded the same way)."""

    model: str  # the checkpoint directory it was built with (absolute)
    fingerprint: str  # export.fingerprint of that checkpoint's encoder
    pooling: str
    max_seq_len: int
    dimension: int
    count: int  # vectors, one per non-blank corpus line
    kind: str  # flat (exact inner product) or hnsw (approximate)
    corpus: str
    blank_lines: int  # corpus lines skipped as blank
    precision: str  # the encoder's precision while building
    format: str = FORMAT
    version: int = VERSION


def read_index_info(directory: str | Path) -> IndexInfo:
    """An index directory's IndexInfo, checked (every field, its type, and that the index's files are there);
    errors name the path and say what is wrong."""
    directory = Path(directory)
    if not directory.exists():
        raise DataError("no such index directory (build one with `bertkit index`)", str(directory))
    if not directory.is_dir():
        raise DataError("is a file; expected an index directory written by `bertkit index`", str(directory))
    path = directory / INFO_FILE
    if not path.is_file():
        raise DataError(f"no {INFO_FILE}: not an index written by `bertkit index`", str(directory))
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON ({exc.msg} at line {exc.lineno})", str(path)) from exc
    fields = {f.name: f for f in dataclasses.fields(IndexInfo)}
    if not isinstance(data, dict):
        raise DataError("expected a JSON object", str(path))
    if data.get("format") != FORMAT or data.get("version") != VERSION:
        raise DataError(f"not a {FORMAT} of version {VERSION} (format {data.get('format')!r:.60}, version "
                        f"{data.get('version')!r:.20}): build the index again with this bertkit", str(path))
    unknown, missing = sorted(set(data) - set(fields)), sorted(set(fields) - set(data))
    if unknown or missing:
        raise DataError(f"unknown field(s) {unknown}, missing field(s) {missing}", str(path))
    for name, value in data.items():
        expected = int if fields[name].type == "int" else str
        if type(value) is not expected:
            raise DataError(f"{name!r} must be {expected.__name__}, got {type(value).__name__}", str(path))
    info = IndexInfo(**data)
    if info.kind not in KINDS[1:]:
        raise DataError(f"kind must be one of {KINDS[1:]}, got {info.kind!r:.60}", str(path))
    for name in (VECTORS_FILE, *TEXT_FILES):
        if not (directory / name).is_file():
            raise DataError(f"{name} is missing: the index is incomplete; build it again", str(directory))
    return info


def is_index(directory: str | Path) -> bool:
    """Whether a path is an index directory (what `bertkit serve` checks to serve /search)."""
    return (Path(directory) / INFO_FILE).is_file()


def choose_kind(kind: str, count: int) -> str:
    """`auto`: exact (flat) up to EXACT_MAX_VECTORS vectors, HNSW beyond; other kinds as given."""
    if kind not in KINDS:
        raise BertkitError(f"--kind must be one of {KINDS}, got {kind!r}")
    return ("flat" if count <= EXACT_MAX_VECTORS else "hnsw") if kind == "auto" else kind


def new_index(kind: str, dimension: int) -> Any:
    """An empty FAISS index of `kind` scoring by inner product (cosine, on the normalised vectors)."""
    faiss = faiss_module()
    if kind == "flat":
        return faiss.IndexFlatIP(dimension)
    index = faiss.IndexHNSWFlat(dimension, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    return index


def open_model(directory: str | Path, *, device: str = "auto", precision: str = "auto",
               int8_keep: tuple[str, ...] | list[str] = (), compile: bool | None = False) -> Predictor:
    """The sentence-embedding model of an index, set up for inference as every command sets one up (its
    fingerprint taken before any precision change)."""
    return Predictor(directory, task=EMBEDDING_TASK, device=device, precision=precision, int8_keep=tuple(int8_keep),
                     compile=compile, fingerprint=True)


def encode(predictor: Predictor, texts: list[str], pooling: str, max_seq_len: int, batch_size: int = 64
           ) -> np.ndarray:
    """(N, H) float32 unit vectors of `texts`, as the index holds them, row i for text i. The texts are encoded
    fewest tokens first: a batch is padded to its longest text, and in a corpus's own order most batches are padded
    to a few long lines (on 20k English sentences in batches of 64: 866k token positions in their order, 351k
    sorted, for 336k tokens)."""
    order = np.argsort([len(e.ids) for e in predictor.tokenizer.encode_batch(texts)], kind="stable")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="inputs longer than max_length")
        ordered = embed(predictor.model, predictor.tokenizer, [texts[i] for i in order], pooling,
                        batch_size=batch_size, max_seq_len=max_seq_len, normalize=True)
    vectors = np.empty_like(ordered)
    vectors[order] = ordered
    if not np.isfinite(vectors).all():
        raise BertkitError(f"the model produced non-finite vectors (NaN or infinity); its weights in "
                           f"{predictor.directory} may be corrupt")
    return np.ascontiguousarray(vectors, dtype=np.float32)


def corpus_chunks(corpus: str | Path, size: int) -> Iterator[tuple[list[int], list[str]]]:
    """(line numbers, texts) of the corpus's non-blank lines, `size` at a time."""
    lines: list[int] = []
    texts: list[str] = []
    for number, text in read_lines(corpus):
        if not text.strip():
            continue
        lines.append(number)
        texts.append(text)
        if len(texts) == size:
            yield lines, texts
            lines, texts = [], []
    if texts:
        yield lines, texts


def count_texts(corpus: str | Path) -> tuple[int, list[int]]:
    """(non-blank lines, the first blank lines' numbers and then how many in all as the last item)."""
    count, blank, first_blank = 0, 0, []
    for number, text in read_lines(corpus):
        if text.strip():
            count += 1
        else:
            blank += 1
            if len(first_blank) < 5:
                first_blank.append(number)
    return count, [*first_blank, blank]


def build_index(model: str | Path, corpus: str | Path, output: str | Path, *, kind: str = "auto",
                pooling: str | None = None, max_seq_len: int = 128, batch_size: int = 64, device: str = "auto",
                precision: str = "auto", int8_keep: tuple[str, ...] | list[str] = (), compile: bool | None = False,
                overwrite: bool = False, progress: bool = True) -> IndexInfo:
    """Index the non-blank lines of `corpus` (UTF-8, or .gz) with `model`'s sentence vectors: read and encoded
    CHUNK_TEXTS at a time and added to the FAISS index as they come, the texts written to disk (not kept in
    memory). `kind`: auto (flat up to EXACT_MAX_VECTORS texts, else hnsw), flat or hnsw; `pooling`: default the
    checkpoint's (`checkpoint_pooling`). The index appears at `output` only when complete."""
    from tqdm.auto import tqdm

    from bertkit.tasks.embed import POOLINGS

    output, corpus = Path(output), str(corpus)
    _check_output(output, overwrite)
    if pooling is not None and pooling not in POOLINGS:
        raise BertkitError(f"--pooling must be one of {POOLINGS}, got {pooling!r}")
    count, blank = count_texts(corpus)  # the corpus's errors (missing, not UTF-8) before the model loads
    if count == 0:
        raise DataError("no texts to index: " + ("every line is blank" if blank[-1] else "the file is empty"),
                        corpus)
    if blank[-1]:
        shown = ", ".join(map(str, blank[:-1])) + (", ..." if blank[-1] > len(blank) - 1 else "")
        print(f"bertkit index: warning: {corpus}: {blank[-1]} blank line(s) (line {shown}) skipped; a hit's id is "
              "its line number", file=sys.stderr)
    kind = choose_kind(kind, count)
    predictor = open_model(model, device=device, precision=precision, int8_keep=int8_keep, compile=compile)
    config = predictor.model.config
    if max_seq_len > config.max_position_embeddings:
        raise BertkitError(f"--max-seq-len {max_seq_len} exceeds {model}'s max_position_embeddings "
                           f"{config.max_position_embeddings}")
    pooling = pooling or checkpoint_pooling(model)
    faiss = faiss_module()
    index = new_index(kind, config.hidden_size)
    _remove_stale_builds(output)
    tmp = output.parent / f".{output.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    writer = TextWriter(tmp)
    try:
        with tqdm(total=count, desc="index", unit="text", disable=not progress) as bar:
            for lines, texts in corpus_chunks(corpus, CHUNK_TEXTS):
                index.add(encode(predictor, texts, pooling, max_seq_len, batch_size))
                writer.add(lines, texts)
                bar.update(len(texts))
        writer.close()
        if writer.count != count:
            raise DataError(f"held {count} texts when counted and {writer.count} when indexed: it changed while it "
                            "was indexed", corpus)
        faiss.write_index(index, str(tmp / VECTORS_FILE))
        with open(tmp / VECTORS_FILE, "rb") as handle:
            os.fsync(handle.fileno())
        info = IndexInfo(model=str(Path(model).resolve()), fingerprint=str(predictor.fingerprint), pooling=pooling,
                         max_seq_len=max_seq_len, dimension=config.hidden_size, count=count, kind=kind,
                         corpus=str(Path(corpus).resolve()), blank_lines=blank[-1], precision=predictor.precision)
        # written last: a directory without it is not an index
        atomic_write_text(tmp / INFO_FILE, json.dumps(dataclasses.asdict(info), indent=2, ensure_ascii=False) + "\n")
        _publish(tmp, output)
    except BaseException:
        writer.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


def _check_output(output: Path, overwrite: bool) -> None:
    if output.exists() and not overwrite:
        raise DataError("already exists; choose another name, or pass --overwrite to replace it", str(output))
    if output.exists() and not is_index(output):
        raise DataError("exists and is not an index: not replaced, even with --overwrite", str(output))
    parent = output.parent
    if not parent.is_dir():
        raise DataError(f"directory {parent} does not exist", str(output))
    if not os.access(parent, os.W_OK):
        raise DataError("cannot write here (permission denied)", str(output))


def _remove_stale_builds(output: Path) -> None:
    """Temporary directories of builds that were killed (their process is gone)."""
    for stale in output.parent.glob(f".{output.name}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _publish(tmp: Path, output: Path) -> None:
    """Rename the finished build into place; an index it replaces is moved aside first, then removed."""
    old = output.parent / f".{output.name}.old-{os.getpid()}"
    if output.exists():
        os.replace(output, old)
    os.replace(tmp, output)
    shutil.rmtree(old, ignore_errors=True)
    with contextlib.suppress(OSError):
        fd = os.open(output.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def query_problem(query: Any, max_chars: int = MAX_QUERY_CHARS) -> str | None:
    """What is wrong with a query, in words (None: nothing)."""
    if not isinstance(query, str):
        return f"must be a string, got {type(query).__name__}"
    if not query.strip():
        return "is empty"
    if len(query) > max_chars:
        return f"has {len(query):,} characters; the limit is {max_chars:,}"
    try:
        check_encodable(query, 0, "query")
    except DataError as exc:
        return str(exc).split(": ", 1)[1].removeprefix("'query' ")
    return None


def top_k_problem(top_k: Any) -> str | None:
    if type(top_k) is not int or not 1 <= top_k <= MAX_TOP_K:
        return f"top_k must be an integer from 1 to {MAX_TOP_K}, got {top_k!r:.40}"
    return None


@dataclass(frozen=True)
class Rerank:
    """A cross-encoder for the candidates: a pair classifier's checkpoint, fine-tuned on text pairs (query, text);
    its probability of `label` (default "1") re-orders the top `candidates` hits."""

    directory: str
    label: str | None = None
    candidates: int = DEFAULT_CANDIDATES


def rerank_option(directory: str | None, label: str | None, candidates: int) -> Rerank | None:
    """--rerank and its settings as a Rerank (None without --rerank); --rerank-label alone is refused (it would be
    silently unused)."""
    if directory is None:
        if label is not None:
            raise BertkitError("--rerank-label applies with --rerank CROSS_ENCODER_DIR")
        return None
    return Rerank(directory, label, candidates)



class Reranker:
    """Scores (query, candidate text) pairs with a cross-encoder and re-orders the candidates by that score."""

    def __init__(self, rerank: Rerank, *, device: str = "auto", precision: str = "auto",
                 int8_keep: tuple[str, ...] | list[str] = (), compile: bool | None = False) -> None:
        self.predictor = Predictor(rerank.directory, device=device, precision=precision, int8_keep=tuple(int8_keep),
                                   compile=compile)
        if self.predictor.task != CLASSIFIER_TASK:
            raise CheckpointError(f"--rerank {rerank.directory}: a {self.predictor.task} checkpoint; a cross-encoder "
                                  f"is a {CLASSIFIER_TASK} checkpoint fine-tuned on text pairs")
        labels = self.predictor.labels
        self.label = rerank.label if rerank.label is not None else "1"
        if self.label not in labels:
            raise CheckpointError(f"--rerank {rerank.directory}: its labels are {labels}, without {self.label!r}; "
                                  "name the one that means relevant with --rerank-label LABEL")
        self.candidates = rerank.candidates

    def rerank(self, queries: list[str], hits: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
        """Each query's hits scored by the cross-encoder (`score`; the vector's score kept as `vector_score`),
        highest first. All pairs of all queries go to the classifier at once (it batches them)."""
        pairs = [{"text": query, "text_pair": hit["text"]} for query, found in zip(queries, hits, strict=True)
                 for hit in found]
        results = iter(self.predictor.predict(pairs) if pairs else [])
        out = []
        for found in hits:
            scored = [{**hit, "score": round(float(next(results)["probabilities"][self.label]), 6),
                       "vector_score": hit["score"]} for hit in found]
            out.append(sorted(scored, key=lambda hit: -hit["score"]))
        return out

    def work(self, queries: int, hits: int) -> Work:
        """At most what the cross-encoder encodes for `queries` queries of `hits` candidates each."""
        pairs = queries * hits
        return Work(pairs, pairs * self.predictor.info.max_seq_len)


class Searcher:
    """An index opened for queries: its model (refused unless its fingerprint is the index's), the FAISS index,
    the texts on disk, and optionally a cross-encoder that re-ranks the candidates. `predict(items)` answers the
    server's batches as `Predictor.predict` does."""

    def __init__(self, directory: str | Path, *, model: str | Path | None = None, device: str = "auto",
                 precision: str = "auto", int8_keep: tuple[str, ...] | list[str] = (), compile: bool | None = False,
                 rerank: Rerank | None = None) -> None:
        self.directory = Path(directory)
        self.info = read_index_info(self.directory)
        faiss = faiss_module()
        model_dir = Path(model if model is not None else self.info.model)
        if model is None and not model_dir.is_dir():
            raise CheckpointError(f"{self.directory} was built with {model_dir}, which is not there any more: pass "
                                  "--model DIR (a copy of that model; its fingerprint is checked)")
        setup = dict(device=device, precision=precision, int8_keep=int8_keep, compile=compile)
        self.predictor = open_model(model_dir, **setup)
        if self.predictor.fingerprint != self.info.fingerprint:
            raise CheckpointError(f"{model_dir} is not the model {self.directory} was built with ({self.info.model}):"
                                  f" its fingerprint is {str(self.predictor.fingerprint)[:12]}, the index's "
                                  f"{self.info.fingerprint[:12]}; its vectors would not match the index's. Query "
                                  "with that model, or build an index with this one")
        self.index = faiss.read_index(str(self.directory / VECTORS_FILE))
        self.texts = TextStore(self.directory)
        if self.index.ntotal != self.info.count or self.index.d != self.info.dimension or \
                len(self.texts) != self.info.count:
            raise DataError(f"{INFO_FILE} says {self.info.count} vectors of {self.info.dimension}; {VECTORS_FILE} "
                            f"holds {self.index.ntotal} of {self.index.d} and the texts {len(self.texts)}: the index "
                            "is damaged; build it again", str(self.directory))
        if self.info.kind == "hnsw":
            self.index.hnsw.efSearch = HNSW_EF_SEARCH
        self.reranker = Reranker(rerank, **setup) if rerank is not None else None

    def describe(self) -> dict[str, Any]:
        """What /health says about the index."""
        return {"index": self.directory.resolve().name, "count": self.info.count, "kind": self.info.kind,
                "dimension": self.info.dimension, "pooling": self.info.pooling, "max_top_k": MAX_TOP_K,
                "rerank": None if self.reranker is None else
                {"model": self.reranker.predictor.directory.resolve().name, "label": self.reranker.label,
                 "candidates": self.reranker.candidates}}

    def search(self, queries: list[str], top_k: int | list[int] = DEFAULT_TOP_K) -> list[list[dict[str, Any]]]:
        """The `top_k` best hits of each query (a list: one per query), best first: {"id": the text's corpus line
        number, "text", "score": cosine similarity, or the cross-encoder's probability with --rerank}."""
        top_ks = top_k if isinstance(top_k, list) else [top_k] * len(queries)
        for number, (query, k) in enumerate(zip(queries, top_ks, strict=True)):
            problem = query_problem(query) or top_k_problem(k)
            if problem:
                raise DataError(f"query {number}: {problem}")
        if not queries:
            return []
        want = max(top_ks)
        if self.reranker is not None:
            want = max(want, self.reranker.candidates)
        vectors = encode(self.predictor, queries, self.info.pooling, self.info.max_seq_len)
        scores, rows = self.index.search(vectors, min(want, self.info.count))  # (Q, K) each
        hits = [[self._hit(int(row), float(score)) for score, row in zip(scores[q], rows[q], strict=True) if row >= 0]
                for q in range(len(queries))]
        if self.reranker is not None:
            hits = self.reranker.rerank(queries, hits)
        return [found[:k] for found, k in zip(hits, top_ks, strict=True)]

    def _hit(self, row: int, score: float) -> dict[str, Any]:
        line, text = self.texts[row]
        return {"id": line, "text": text, "score": round(score, 6)}

    def predict(self, items: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        """The server's batches: items {"text": query, "top_k": k} from any number of requests."""
        return self.search([item["text"] for item in items], [item["top_k"] for item in items])

    def work(self, queries: list[str], top_k: int) -> Work:
        """At most what one request's queries cost the models, counted from their characters before any tokenizing:
        a sequence per query, and with a cross-encoder a pair per candidate."""
        total = Work()
        for query in queries:
            total += sequence(len(query), self.info.max_seq_len)
        if self.reranker is not None:
            total += self.reranker.work(len(queries), min(max(top_k, self.reranker.candidates), self.info.count))
        return total


def check_queries(queries: list[tuple[str, int | None, str]]) -> None:
    """Queries as (source, line or None, text), checked before any model loads: a bad one is a DataError naming its
    file and line (or its place on the command line)."""
    for source, line, text in queries:
        problem = query_problem(text)
        if problem:
            raise DataError(f"the query {problem}", source, line)


def search_all(searcher: Searcher, texts: list[str], top_k: int, batch_size: int = 32
               ) -> Iterator[list[dict[str, Any]]]:
    """Each query's hits, in order, `batch_size` queries encoded at a time."""
    for start in range(0, len(texts), batch_size):
        yield from searcher.search(texts[start : start + batch_size], top_k)
