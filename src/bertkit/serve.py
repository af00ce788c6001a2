"""HTTP serving over a Predictor: dynamic batching, a bounded queue, size limits, metrics, and the web page.

Requests that arrive together are grouped into one forward pass (up to `max_batch` inputs, waiting at most
`max_wait_ms` for company); when `max_queue` inputs are already waiting the server answers 503 with Retry-After
instead of growing without limit. Bad requests get a 4xx with a readable message, never a traceback.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request  # module level: FastAPI resolves handler annotations from these globals
from fastapi.responses import HTMLResponse, JSONResponse

import bertkit
from bertkit.errors import BertkitError, DataError
from bertkit.predict import Predictor


@dataclass
class ServeConfig:
    max_batch: int = 32  # inputs per forward pass (1 disables dynamic batching)
    max_wait_ms: float = 5.0  # how long a forward pass waits for more requests
    max_queue: int = 256  # inputs waiting before new requests get 503
    max_inputs: int = 64  # inputs per request (413 above)
    max_chars: int = 10_000  # characters per text field (413 above)
    max_body_bytes: int = 2_000_000  # request body (413 above)
    attention_max_tokens: int = 96  # the attention view is for reading, not for long documents


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
    """Collects jobs from concurrent requests and runs them together on one worker thread."""

    def __init__(self, predictor: Predictor, config: ServeConfig) -> None:
        self.predictor, self.config = predictor, config
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.queued_inputs = 0
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bertkit-model")
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
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        start = 0
        for job in jobs:
            if not job.future.done():
                job.future.set_result(results[start : start + len(job.items)])
            start += len(job.items)


class Metrics:
    def __init__(self) -> None:
        self.started = time.time()
        self.requests: collections.Counter[str] = collections.Counter()
        self.latencies: collections.deque[float] = collections.deque(maxlen=10_000)
        self.inputs = 0

    def record(self, path: str, status: int, seconds: float) -> None:
        self.requests[f"{path} {status}"] += 1
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


def _parse_json(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise HttpError(400, f"request body is not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise HttpError(400, f"malformed JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from exc


def _check_sizes(items: list[Any], config: ServeConfig) -> None:
    if len(items) > config.max_inputs:
        raise HttpError(413, f"{len(items)} inputs in one request; the limit is {config.max_inputs}")
    for index, item in enumerate(items):
        values = [item] if isinstance(item, str) else list(item.values()) if isinstance(item, dict) else []
        for value in values:
            if isinstance(value, str) and len(value) > config.max_chars:
                raise HttpError(413, f"input {index} has a text of {len(value)} characters; the limit is "
                                     f"{config.max_chars}")


def create_app(directory: str | Path, config: ServeConfig | None = None, onnx: str | Path | None = None):
    """The FastAPI application serving one checkpoint directory."""
    config = config or ServeConfig()
    predictor = Predictor(directory, onnx=onnx)
    batcher = Batcher(predictor, config)
    metrics = Metrics()
    @contextlib.asynccontextmanager
    async def lifespan(_app):
        batcher.start()
        yield

    app = FastAPI(title="bertkit", version=bertkit.__version__, docs_url=None, redoc_url=None, lifespan=lifespan)

    async def read_body(request: Request) -> Any:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > config.max_body_bytes:
            raise HttpError(413, f"request body of {declared} bytes; the limit is {config.max_body_bytes}")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > config.max_body_bytes:
                raise HttpError(413, f"request body over {config.max_body_bytes} bytes")
        if not body:
            raise HttpError(400, "empty request body: send JSON")
        return _parse_json(body)

    @app.middleware("http")
    async def errors_and_metrics(request: Request, call_next):
        started = time.perf_counter()
        try:
            response = await call_next(request)
        except HttpError as exc:
            response = JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)
        metrics.record(request.url.path, response.status_code, time.perf_counter() - started)
        return response

    def handle(exc: Exception) -> JSONResponse:
        if isinstance(exc, HttpError):
            return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)
        if isinstance(exc, (DataError, BertkitError, ValueError, TypeError)):
            return JSONResponse({"error": str(exc)}, status_code=422)
        return JSONResponse({"error": f"internal error: {type(exc).__name__}"}, status_code=500)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return importlib_resources.files("bertkit").joinpath("web/index.html").read_text(encoding="utf-8")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": Path(directory).resolve().name, "task": predictor.task,
                "labels": predictor.labels, "intents": predictor.info.get("intents"),
                "version": bertkit.__version__, "backend": "onnxruntime" if onnx else f"torch {torch.__version__}",
                "limits": asdict(config)}

    @app.get("/metrics")
    async def get_metrics() -> dict[str, Any]:
        return metrics.snapshot(batcher)

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        started = time.perf_counter()
        try:
            body = await read_body(request)
            if not isinstance(body, dict) or "inputs" not in body:
                raise HttpError(422, 'expected a JSON object {"inputs": [...]} (texts, or objects such as '
                                     '{"text": ...} / {"question": ..., "context": ...})')
            inputs = body["inputs"]
            if not isinstance(inputs, list) or not inputs:
                raise HttpError(422, '"inputs" must be a non-empty list')
            _check_sizes(inputs, config)
            items = predictor.normalise(inputs)  # every input checked before it can reach the model
            results = await batcher.submit(items)
        except Exception as exc:
            return handle(exc)
        metrics.inputs += len(items)
        return JSONResponse({"task": predictor.task, "predictions": results,
                             "latency_ms": round(1000 * (time.perf_counter() - started), 2)})

    @app.post("/attention")
    async def attention(request: Request) -> JSONResponse:
        try:
            body = await read_body(request)
            if not isinstance(body, dict) or not isinstance(body.get("text"), str) or not body["text"].strip():
                raise HttpError(422, 'expected {"text": "...", "text_pair": optional}')
            pair = body.get("text_pair")
            if pair is not None and not isinstance(pair, str):
                raise HttpError(422, '"text_pair" must be a string')
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
    encoder = predictor.model.bert
    if not hasattr(encoder, "attention_maps"):
        raise HttpError(422, "the attention view needs the PyTorch model (not the ONNX one)")
    batch = predictor.tokenizer(text, pair, max_length=max_tokens)
    with torch.no_grad():
        maps = encoder.attention_maps(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    maps = maps[:, 0].float()  # (L, N, T, T)
    return {"tokens": predictor.tokenizer.convert_ids_to_tokens(batch["input_ids"][0]),
            "layers": maps.shape[0], "heads": maps.shape[1],
            "truncated": predictor.tokenizer.truncated_count > 0 and len(batch["input_ids"][0]) == max_tokens,
            "attention": [[[[round(v, 4) for v in row] for row in head] for head in layer]
                          for layer in maps.tolist()]}


def serve(directory: str | Path, host: str = "127.0.0.1", port: int = 8000, config: ServeConfig | None = None,
          onnx: str | Path | None = None) -> None:
    import uvicorn

    uvicorn.run(create_app(directory, config, onnx), host=host, port=port, log_level="warning")
