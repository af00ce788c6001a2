"""HTTP serving over a Predictor: dynamic batching, a bounded queue, size limits, metrics, and the web page.

Requests that arrive together are grouped into one forward pass (up to `max_batch` inputs, waiting at most
`max_wait_ms` for company); when `max_queue` inputs are already waiting the server answers 503 with Retry-After
instead of growing without limit. Bad requests get a 4xx with a readable message, never a traceback, and an
input that fails fails only its own request: a batch that raises is re-run job by job.

Exposure: binding beyond loopback needs an API key (a bearer token on every route but the page) or `--insecure`;
the Host header must name this server (DNS rebinding); POSTs must be `application/json` (a cross-site form can
only send text/plain without a preflight); slow or silent connections are closed after a timeout.

A search index (`bertkit index`) is served the same way: POST /search batches queries as /predict batches inputs,
on the same model thread, within the same limits.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hmac
import ipaddress
import json
import logging
import re
import time
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request  # module level: FastAPI resolves handler annotations from these globals
from fastapi.responses import HTMLResponse, JSONResponse

import bertkit
from bertkit.argtypes import flag, float_range, int_range
from bertkit.device import describe, for_model
from bertkit.errors import BertkitError, DataError
from bertkit.predict import Predictor, check_encodable
from bertkit.search import DEFAULT_TOP_K, Rerank, Searcher, is_index, query_problem, top_k_problem
from bertkit.tasks.base import pad_sequences
from bertkit.tasks.embed import NAME as EMBEDDING_TASK
from bertkit.threads import GOVERNOR


@dataclass
class ServeConfig:
    """The server's limits; those with a help text are `bertkit serve` flags."""

    max_batch: int = flag("inputs per forward pass; 1 = no batching", 32, type=int_range(1))
    max_wait_ms: float = flag("how long a forward pass waits for more requests, in ms", 5.0,
                              type=float_range(0, 10_000))
    max_queue: int = flag("queued inputs before new requests get 503", 256, type=int_range(1))
    max_inputs: int = flag("inputs per request before 413", 64, type=int_range(1))
    max_chars: int = 10_000  # characters per text field (413 above)
    max_body_bytes: int = 2_000_000  # request body (413 above)
    attention_max_tokens: int = 96  # the attention view is for reading, not for long documents
    # Characters, not tokens: what a request costs before truncation (normalising and tokenizing) grows with its
    # characters, and counting them needs no tokenizer work on the event loop; after truncation every input costs
    # at most max_seq_len tokens.
    max_request_chars: int = flag("characters over all texts of one request before 413", 100_000, type=int_range(1))
    # What the model will encode, after a task expands an input (multiple choice: a sequence per choice, the
    # context repeated in each; QA and spelling: windows; NER and triples: chunks), bounded from the characters
    # before any tokenizing (TaskSpec.work). 64 inputs of 512 tokens fit; one request cannot multiply itself.
    max_request_tokens: int = flag("tokens the model may encode for one request, counted after a task expands its "
                                   "inputs (choices, windows, chunks) and before any tokenizing, before 413", 32_768,
                                   type=int_range(1))
    max_choices: int = flag("items of a list field (multiple choice's choices) per input before 413", 32,
                            type=int_range(2))
    max_json_depth: int = 32  # nesting of the request body (400 above), checked before json.loads recurses
    header_timeout_s: float = flag("seconds a connection may take to send its request headers (then it is closed)",
                                   10.0, type=float_range(0.01, 3600), name="--header-timeout",
                                   metavar="SECONDS")
    body_timeout_s: float = 10.0  # a request body not received by then gets 408
    keep_alive_s: int = 5  # an idle keep-alive connection is closed after this
    # open connections; past it a request gets 503 (JSON, Retry-After), past twice it a connection is closed at once
    max_connections: int = flag("open connections before new ones are refused", 512, type=int_range(1))


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass
class _Job:
    items: list[dict[str, Any]]
    future: asyncio.Future
    queued_at: float


class Batcher:
    """Collects jobs from concurrent requests and runs them together on one worker thread. `predictor`: anything
    whose `predict(items)` returns one result per item (a Predictor, or a search index's Searcher); `executor`: the
    thread of another Batcher, so that two routes' batches share one model thread rather than compete for the
    cores."""

    def __init__(self, predictor: Predictor | Searcher, config: ServeConfig,
                 executor: ThreadPoolExecutor | None = None) -> None:
        self.predictor, self.config = predictor, config
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.queued_inputs = 0
        self.executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="bertkit-model")
        self.batch_sizes: collections.deque[int] = collections.deque(maxlen=10_000)
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def submit(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.queued_inputs + len(items) > self.config.max_queue:
            raise HttpError(503, f"server busy: {self.queued_inputs} inputs already queued "
                                 f"(limit {self.config.max_queue}); retry shortly", {"Retry-After": "1"})
        job = _Job(items, asyncio.get_running_loop().create_future(), time.perf_counter())
        self.queued_inputs += len(items)
        await self.queue.put(job)
        return await job.future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            size = len(jobs[0].items)
            deadline = loop.time() + self.config.max_wait_ms / 1000
            while size < self.config.max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self.queue.get(), timeout)
                except TimeoutError:
                    break
                if size + len(job.items) > self.config.max_batch:
                    await self._execute(loop, jobs, size)  # run what we have; this job starts the next batch
                    jobs, size = [job], len(job.items)
                    deadline = loop.time() + self.config.max_wait_ms / 1000
                    continue
                jobs.append(job)
                size += len(job.items)
            await self._execute(loop, jobs, size)

    async def _execute(self, loop: asyncio.AbstractEventLoop, jobs: list[_Job], size: int) -> None:
        items = [item for job in jobs for item in job.items]
        self.queued_inputs -= size
        self.batch_sizes.append(size)
        try:
            results = await loop.run_in_executor(self.executor, self.predictor.predict, items)
        except Exception as exc:  # a failure in one batch must not stop the server
            if len(jobs) > 1:
                # One client's input must not fail the others batched with it: run each job alone, so only the
                # job that raises gets the error (and its message's input index is the one in its own request).
                for job in jobs:
                    try:
                        alone = await loop.run_in_executor(self.executor, self.predictor.predict, job.items)
                    except Exception as job_exc:
                        if not job.future.done():
                            job.future.set_exception(job_exc)
                    else:
                        if not job.future.done():
                            job.future.set_result(alone)
                return
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        start = 0
        for job in jobs:
            if not job.future.done():
                job.future.set_result(results[start : start + len(job.items)])
            start += len(job.items)


ROUTES = ("/", "/health", "/metrics", "/predict", "/attention", "/search")


class Metrics:
    def __init__(self) -> None:
        self.started = time.time()
        self.requests: collections.Counter[str] = collections.Counter()
        self.latencies: collections.deque[float] = collections.deque(maxlen=10_000)
        self.inputs = 0

    def record(self, path: str, status: int, seconds: float) -> None:
        # Unknown paths share one counter: a counter per requested path grows without bound and echoes them.
        self.requests[f"{path if path in ROUTES else 'other'} {status}"] += 1
        if path == "/predict" and status == 200:
            self.latencies.append(seconds)

    def snapshot(self, batcher: Batcher) -> dict[str, Any]:
        latencies = sorted(self.latencies)

        def pct(q: float) -> float | None:
            return round(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 2) if latencies else None

        sizes = list(batcher.batch_sizes)
        return {
            "uptime_s": round(time.time() - self.started, 1),
            "requests": dict(self.requests),
            "inputs_predicted": self.inputs,
            "latency_ms": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "count": len(latencies)},
            "batch_size": {"mean": round(sum(sizes) / len(sizes), 2) if sizes else None,
                           "max": max(sizes) if sizes else None, "forward_passes": len(sizes),
                           "histogram": dict(sorted(collections.Counter(sizes).items()))},
            "queued_inputs": batcher.queued_inputs,
        }


# The closing quote is optional so an unclosed string ends the scan in one pass: with it required, a body of
# escaped quotes that never closes made the regex backtrack quadratically (80 KB took 29 s on the event loop).
_JSON_NESTING = re.compile(rb'"(?:[^"\\]|\\.)*"?|[\[\]{}]', re.S)


def json_depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects in a JSON text (brackets inside strings do not count)."""
    depth = deepest = 0
    for match in _JSON_NESTING.finditer(body):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        elif token in (b"]", b"}"):
            depth -= 1
    return deepest


def _parse_json(body: bytes, max_depth: int = 32) -> Any:
    # json.loads recurses once per level: 100,000 levels raised RecursionError (a 500); refuse deep nesting first.
    if body.count(b"[") + body.count(b"{") > max_depth and json_depth(body) > max_depth:
        raise HttpError(400, f"JSON nested deeper than {max_depth} levels; a request needs 3")
    try:
        return json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise HttpError(400, f"request body is not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise HttpError(400, f"malformed JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from exc
    except (ValueError, RecursionError) as exc:  # e.g. an integer of more than 4,300 digits
        raise HttpError(400, f"JSON value refused: {exc}") from exc


def _check_sizes(items: list[Any], config: ServeConfig) -> None:
    if len(items) > config.max_inputs:
        raise HttpError(413, f"{len(items)} inputs in one request; the limit is {config.max_inputs}")
    total = 0
    for index, item in enumerate(items):
        values = [item] if isinstance(item, str) else list(item.values()) if isinstance(item, dict) else []
        for key, value in item.items() if isinstance(item, dict) else ():
            if isinstance(value, list) and len(value) > config.max_choices:
                raise HttpError(413, f"input {index}: {key!r} has {len(value)} items; the limit is "
                                     f"{config.max_choices} (--max-choices)")
        values = [v for value in values for v in (value if isinstance(value, list) else [value])]  # list fields too
        for value in values:
            if isinstance(value, str) and len(value) > config.max_chars:
                raise HttpError(413, f"input {index} has a text of {len(value)} characters; the limit is "
                                     f"{config.max_chars}")
            total += len(value) if isinstance(value, str) else 0
    if total > config.max_request_chars:
        raise HttpError(413, f"the request's texts have {total} characters in all; the limit per request is "
                             f"{config.max_request_chars} (send fewer inputs per request)")


def _check_work(predictor: Predictor, items: list[dict[str, Any]], config: ServeConfig) -> None:
    """The request's work budget: what the model will encode, counted before any tokenizing."""
    work = predictor.work(items)
    if work.tokens > config.max_request_tokens:
        raise HttpError(413, f"the request would encode up to {work.tokens} tokens in {work.sequences} sequences "
                             f"(the {predictor.task} task expands its inputs); the limit per request is "
                             f"{config.max_request_tokens} tokens (--max-request-tokens): send fewer or shorter "
                             "inputs per request")


def _search_items(body: Any, searcher: Searcher, config: ServeConfig) -> list[dict[str, Any]]:
    """A /search body checked (its shape, top_k, the sizes and each query, the work budget) before any model work,
    as the Batcher's items: {"text": query, "top_k": k}."""
    usage = f'{{"queries": ["...", ...], "top_k": K (optional, default {DEFAULT_TOP_K})}}'
    if not isinstance(body, dict) or "queries" not in body:
        raise HttpError(422, f"expected a JSON object {usage}")
    unknown = sorted(set(body) - {"queries", "top_k"})
    if unknown:
        raise HttpError(422, f"unknown field(s) {unknown}; expected {usage}")
    queries, top_k = body["queries"], body.get("top_k", DEFAULT_TOP_K)
    if not isinstance(queries, list) or not queries:
        raise HttpError(422, '"queries" must be a non-empty list of strings')
    problem = top_k_problem(top_k)
    if problem:
        raise HttpError(422, problem)
    _check_sizes(queries, config)
    for index, query in enumerate(queries):
        problem = query_problem(query, config.max_chars)
        if problem:
            raise HttpError(422, f"query {index} {problem}")
    work = searcher.work(queries, top_k)
    if work.tokens > config.max_request_tokens:
        raise HttpError(413, f"the request would encode up to {work.tokens} tokens in {work.sequences} sequences "
                             "(queries, and candidates for the cross-encoder); the limit per request is "
                             f"{config.max_request_tokens} tokens (--max-request-tokens): send fewer queries per "
                             "request, or a smaller top_k")
    return [{"text": query, "top_k": top_k} for query in queries]


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
log = logging.getLogger("bertkit.serve")


def is_loopback(host: str) -> bool:
    if host.strip("[]").lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost may resolve anywhere
        return False


MIN_API_KEY_CHARS = 16


def check_api_key(api_key: str) -> None:
    """An API key is printable ASCII without spaces (HTTP headers are read as Latin-1: any other character could
    never match what a client sends) and at least MIN_API_KEY_CHARS long (a guessable key guards nothing)."""
    bad = next((c for c in api_key if not "!" <= c <= "~"), None)
    if bad is not None:
        what = "a space" if bad == " " else f"the character {bad!r} (U+{ord(bad):04X})"
        raise BertkitError(f"the API key has {what} at position {api_key.index(bad)}: use printable ASCII without "
                           "spaces (letters, digits, punctuation), e.g. `python -c 'import secrets; "
                           "print(secrets.token_urlsafe())'`")
    if len(api_key) < MIN_API_KEY_CHARS:
        raise BertkitError(f"the API key has {len(api_key)} characters; it needs at least {MIN_API_KEY_CHARS} "
                           "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe())'`)")


def check_exposure(host: str, api_key: str | None, insecure: bool) -> str | None:
    """Whether `serve` may bind `host`: the warning to print (None on loopback), or a BertkitError when binding
    beyond this machine has neither an API key nor `--insecure`, or the key is not one (`check_api_key`)."""
    if api_key is not None:
        check_api_key(api_key)
    if is_loopback(host):
        return None
    if api_key:
        return (f"serving on {host}: reachable from other machines; every request but the page needs "
                "'Authorization: Bearer <key>'; the key travels in clear over HTTP, so put TLS in front")
    if not insecure:
        raise BertkitError(f"--host {host} makes the server reachable from other machines, with no "
                           "authentication: pass --api-key KEY (or set BERTKIT_API_KEY), or --insecure to serve "
                           "anyone who can reach it")
    return (f"serving on {host} WITHOUT authentication (--insecure): anyone who can reach this port can use the "
            "model; requests must name this machine in their Host header as loopback, the bound address or an "
            "--allow-host NAME (pass one for each name clients use, or '*')")


def allowed_host_names(host: str, extra: Collection[str] = (), api_key: str | None = None
                       ) -> set[str] | None:
    """Host-header names this server answers (None: any); a page on another name that resolves here (DNS
    rebinding) is refused. Beyond loopback with an API key any name is answered: a rebinding page cannot send the
    key, and clients reach such a server by names and addresses this process cannot know."""
    if "*" in extra or (api_key and not is_loopback(host)):
        return None
    names = {*LOOPBACK_NAMES, *(e.lower() for e in extra)}
    if host not in ("0.0.0.0", "::", ""):
        names.add(host.strip("[]").lower())
    return names


def _host_name(header: str) -> str:
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def create_app(directory: str | Path, config: ServeConfig | None = None, onnx: str | Path | None = None, *,
               api_key: str | None = None, allowed_hosts: Collection[str] | None = LOOPBACK_NAMES,
               device: str | None = "auto", precision: str = "auto", int8_keep: Collection[str] = (),
               compile: bool | None = None, task: str | None = None, rerank: Rerank | None = None):
    """The FastAPI application serving one checkpoint directory, or a search index (`bertkit.search`: POST /search
    too, its model serving sentence vectors at /predict; `rerank`: a cross-encoder re-orders the hits).

    `api_key`: every request but `GET /` must send `Authorization: Bearer <api_key>`. `allowed_hosts`: the names a
    Host header may carry (default: the loopback names; None: any).
    """
    config = config or ServeConfig()
    if api_key is not None:
        check_api_key(api_key)
    hosts = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}
    expected = f"Bearer {api_key}".encode() if api_key else None
    searcher: Searcher | None = None
    if is_index(directory):
        if onnx is not None or task not in (None, EMBEDDING_TASK):
            raise BertkitError(f"{directory} is a search index: its model serves sentence vectors in PyTorch "
                               "(--onnx and --task do not apply)")
        searcher = Searcher(directory, device=device or "auto", precision=precision, int8_keep=tuple(int8_keep),
                            compile=compile, rerank=rerank)
        predictor = searcher.predictor
    else:
        predictor = Predictor(directory, onnx=onnx, device=device, precision=precision, int8_keep=tuple(int8_keep),
                              compile=compile, task=task)
    batcher = Batcher(predictor, config)
    # the index's queries are batched apart from /predict's inputs (their results differ), on the same model thread
    search_batcher = Batcher(searcher, config, batcher.executor) if searcher is not None else None
    metrics = Metrics()
    @contextlib.asynccontextmanager
    async def lifespan(_app):
        batcher.start()
        if search_batcher is not None:
            search_batcher.start()
        yield

    app = FastAPI(title="bertkit", version=bertkit.__version__, docs_url=None, redoc_url=None, lifespan=lifespan)

    async def read_body(request: Request) -> Any:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > config.max_body_bytes:
            raise HttpError(413, f"request body of {declared} bytes; the limit is {config.max_body_bytes}")
        body = bytearray()
        try:
            async with asyncio.timeout(config.body_timeout_s):  # a client trickling its body holds a connection
                async for chunk in request.stream():
                    body += chunk
                    if len(body) > config.max_body_bytes:
                        raise HttpError(413, f"request body over {config.max_body_bytes} bytes")
        except TimeoutError as exc:
            raise HttpError(408, f"request body not received within {config.body_timeout_s:g} s") from exc
        if not body:
            raise HttpError(400, "empty request body: send JSON")
        return _parse_json(bytes(body), config.max_json_depth)

    def check_request(request: Request) -> None:
        if hosts is not None:
            name = _host_name(request.headers.get("host", ""))
            if name not in hosts:
                raise HttpError(400, f"Host header {name!r} is not one this server answers ({sorted(hosts)}); "
                                     "start it with --allow-host NAME to add one")
        if expected is not None and not (request.method == "GET" and request.url.path == "/"):
            given = request.headers.get("authorization", "").encode("utf-8", "replace")
            if not hmac.compare_digest(given, expected):
                raise HttpError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                                {"WWW-Authenticate": "Bearer"})
        if request.method == "POST":
            media = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if media != "application/json":
                raise HttpError(415, f"Content-Type must be application/json, got {media or 'none'!r}")

    @app.middleware("http")
    async def errors_and_metrics(request: Request, call_next):
        started = time.perf_counter()
        try:
            check_request(request)
            response = await call_next(request)
        except Exception as exc:  # never a plain-text 500 or a traceback to the client
            response = handle(exc)
        metrics.record(request.url.path, response.status_code, time.perf_counter() - started)
        return response

    def handle(exc: Exception) -> JSONResponse:
        if isinstance(exc, HttpError):
            return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)
        if isinstance(exc, (DataError, ValueError, TypeError)):
            return JSONResponse({"error": str(exc)}, status_code=422)
        if isinstance(exc, BertkitError):  # the model's fault, not the request's (e.g. non-finite outputs)
            return JSONResponse({"error": str(exc)}, status_code=500)
        log.error("internal error answering a request", exc_info=exc)  # the operator's log gets the traceback
        return JSONResponse({"error": f"internal error: {type(exc).__name__}"}, status_code=500)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return importlib_resources.files("bertkit").joinpath("web/index.html").read_text(encoding="utf-8")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": Path(directory).resolve().name, "task": predictor.task,
                "spec": predictor.spec.schema(), "info": dataclasses.asdict(predictor.info),
                "labels": predictor.labels,
                "version": bertkit.__version__, "backend": "onnxruntime" if onnx else f"torch {torch.__version__}",
                "device": describe(predictor.device), "precision": predictor.precision,
                "precision_reason": predictor.precision_reason, "compiled": predictor.plan.compile,
                "shapes": predictor.plan.shapes(), "limits": asdict(config),
                "search": searcher.describe() if searcher is not None else None}

    @app.get("/metrics")
    async def get_metrics() -> dict[str, Any]:
        return {**metrics.snapshot(batcher), "threads": GOVERNOR.state()}  # bertkit.threads: one-thread passes

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        started = time.perf_counter()
        try:
            body = await read_body(request)
            if not isinstance(body, dict) or "inputs" not in body:
                fields = ", ".join(f'"{f.name}"' for f in predictor.spec.inputs)
                raise HttpError(422, f'expected a JSON object {{"inputs": [...]}}: objects with {fields}'
                                     + (" (or plain texts)" if predictor.spec.plain_text else ""))
            inputs = body["inputs"]
            if not isinstance(inputs, list) or not inputs:
                raise HttpError(422, '"inputs" must be a non-empty list')
            _check_sizes(inputs, config)
            items = predictor.normalise(inputs)  # every input checked before it can reach the model
            _check_work(predictor, items, config)
            results = await batcher.submit(items)
        except Exception as exc:
            return handle(exc)
        metrics.inputs += len(items)
        return JSONResponse({"task": predictor.task, "predictions": results,
                             "latency_ms": round(1000 * (time.perf_counter() - started), 2)})

    @app.post("/search")
    async def search(request: Request) -> JSONResponse:
        started = time.perf_counter()
        try:
            if searcher is None or search_batcher is None:
                raise HttpError(404, "this server holds no search index: serve one (`bertkit serve INDEX`, built by "
                                     "`bertkit index`) to answer /search")
            items = _search_items(await read_body(request), searcher, config)
            results = await search_batcher.submit(items)
        except Exception as exc:
            return handle(exc)
        return JSONResponse({"results": results, "latency_ms": round(1000 * (time.perf_counter() - started), 2)})

    @app.post("/attention")
    async def attention(request: Request) -> JSONResponse:
        try:
            body = await read_body(request)
            if not isinstance(body, dict) or not isinstance(body.get("text"), str) or not body["text"].strip():
                raise HttpError(422, 'expected {"text": "...", "text_pair": optional}')
            pair = body.get("text_pair")
            if pair is not None and not isinstance(pair, str):
                raise HttpError(422, '"text_pair" must be a string')
            for key in ("text", "text_pair"):
                check_encodable(body.get(key) or "", 0, key)
            _check_sizes([body], config)
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(batcher.executor, attention_view, predictor, body["text"], pair,
                                                config.attention_max_tokens)
        except Exception as exc:
            return handle(exc)
        return JSONResponse(result)

    return app


def attention_view(predictor: Predictor, text: str, pair: str | None, max_tokens: int) -> dict[str, Any]:
    """Tokens and every layer's and head's attention probabilities for one input, rounded for the page."""
    encoder = getattr(predictor.model, "bert", predictor.model)
    if not hasattr(encoder, "attention_maps"):
        raise HttpError(422, "the attention view needs the PyTorch model (not the ONNX one)")
    encodings = predictor.tokenizer.encode_batch([text], [pair], max_length=max_tokens)
    ids = encodings[0].ids
    batch = pad_sequences([ids], predictor.tokenizer.pad_token_id, [encodings[0].type_ids])
    with torch.no_grad():
        batch = for_model(predictor.model, batch)
        maps = encoder.attention_maps(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    maps = maps[:, 0].float().cpu()  # (L, N, T, T)
    return {"tokens": predictor.tokenizer.convert_ids_to_tokens(ids),
            "layers": maps.shape[0], "heads": maps.shape[1], "truncated": encodings.truncated > 0,
            "attention": [[[[round(v, 4) for v in row] for row in head] for head in layer]
                          for layer in maps.tolist()]}


def serve(directory: str | Path, host: str = "127.0.0.1", port: int = 8000, config: ServeConfig | None = None,
          onnx: str | Path | None = None, *, api_key: str | None = None, insecure: bool = False,
          allow_hosts: Collection[str] = (), device: str | None = "auto", precision: str = "auto",
          int8_keep: Collection[str] = (), compile: bool | None = None, task: str | None = None,
          rerank: Rerank | None = None) -> None:
    """Run the server (blocking); `directory` a checkpoint or a search index (`create_app`). A non-loopback `host`
    needs `api_key` or `insecure` (`check_exposure`), and warns on stderr either way; `allow_hosts`: Host-header names
    besides loopback and `host` ("*": any)."""
    import sys

    import uvicorn

    warning = check_exposure(host, api_key, insecure)
    if warning:
        print(f"bertkit serve: warning: {warning}", file=sys.stderr)
    config = config or ServeConfig()
    app = create_app(directory, config, onnx, api_key=api_key,
                     allowed_hosts=allowed_host_names(host, allow_hosts, api_key), device=device,
                     precision=precision, int8_keep=int8_keep, compile=compile, task=task, rerank=rerank)
    uvicorn.Server(uvicorn.Config(
        app, host=host, port=port, log_level="warning", http=_guarded_protocol(config),
        timeout_keep_alive=config.keep_alive_s)).run()


BUSY_HEADER_TIMEOUT_S = 1.0  # a connection over the cap gets this long to send the request it is refused


def _guarded_protocol(config: ServeConfig) -> type:
    """uvicorn's h11 protocol with a header timeout and a connection cap, which uvicorn lacks: a connection that
    opens and sends nothing (or half its headers) was held forever (2,200 of them for as long as they liked).

    Over `max_connections` a connection's request is answered 503 in JSON with Retry-After (uvicorn's own
    concurrency limit answers plain text without it), and the connection closed; over twice the cap a new
    connection is closed at once, before it can hold a file descriptor for a header timeout."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    refusal = json.dumps({"error": f"server busy: over {config.max_connections} open connections "
                                   "(--max-connections); retry shortly"}).encode()

    async def busy(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 503, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(refusal)).encode()),
            (b"retry-after", b"1"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": refusal, "more_body": False})

    class GuardedH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None
        _timeout_s = config.header_timeout_s

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > 2 * config.max_connections:
                transport.close()
                return
            if len(self.connections) > config.max_connections:
                self.app = busy  # this connection's requests are answered 503, then it is closed
                self._timeout_s = min(self._timeout_s, BUSY_HEADER_TIMEOUT_S)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._header_timer is None and (self.cycle is None or self.cycle.response_complete):
                self._arm()  # the next request on a keep-alive connection gets the same deadline
            super().data_received(data)

        def _arm(self) -> None:
            waiting_after = self.cycle  # the request (if any) before the one whose headers we wait for

            def expire() -> None:
                self._header_timer = None
                if self.transport.is_closing():
                    return
                if self.cycle is waiting_after:
                    self.transport.close()
                elif self.cycle.response_complete:
                    self._arm()  # between requests: half the next request's headers may already be here

            self._header_timer = self.loop.call_later(self._timeout_s, expire)

        def connection_lost(self, exc: Exception | None) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            super().connection_lost(exc)

    return GuardedH11Protocol
