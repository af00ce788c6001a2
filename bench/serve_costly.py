"""The costliest request each task's server accepts within its default limits, and what it does to valid clients.

For every task `bertkit serve` serves, a checkpoint with random weights (max_seq_len 512, the widest a BERT reads,
a 21,128-entry vocabulary as Chinese BERT's) is served with its defaults (`--precision auto`). A hostile round sends
a grid of request shapes that stay inside the default limits (inputs per request, characters per text and per
request, the work budget, choices per question, [MASK]s per text) and maximise what each task expands: every text
as long as allowed, one token a character (CJK), 32 choices, long QA contexts, 16 masks, entities that repeat. Each
shape is timed alone, with the server's peak resident memory sampled every 10 ms; the costliest shape answered 200 is
then sent by 2 hostile clients for `--seconds` beside 4 clients of valid requests, whose failures and latency are
reported.

    .venv/bin/python bench/serve_costly.py                    (~8 minutes: BERT-tiny, every task)
    .venv/bin/python bench/serve_costly.py --preset base --seconds 0
                                       (each task's costliest shape of the tiny run, timed alone on BERT-base)

Writes bench/results/serve_costly_<preset>.json and .md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import threading
import time
import warnings
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "results"
MAX_SEQ_LEN, VOCAB = 512, 21_128
PRETRAINED = ("fill_mask", "sentence_embedding")
CJK = "北京是中国的首都上海是一座大城市张三去了广州李四住在深圳天气很好我们去公园散步吧"
VALID = {
    "classification": [{"text": "这家酒店很好", "text_pair": "服务不错"}, "it is raining"],
    "ner": ["张三去北京了", "李四住在上海"], "intent_slot": ["play a song by adele", "weather in paris"],
    "relation": [{"text": "张三去了北京", "head": "张三", "tail": "北京"}, "the <e1> fire </e1> made <e2> smoke </e2>"],
    "spelling": ["今天天汽很好"], "qa": [{"question": "谁住在北京", "context": "小明住在北京，小红住在上海。"}],
    "multiple_choice": [{"question": "哪个", "choices": ["北京", "上海", "广州"], "context": "首都是北京"}],
    "triples": ["《青花瓷》是周杰伦演唱的歌曲"], "fill_mask": ["北京是[MASK]国的首都"],
    "sentence_embedding": ["a sentence to embed", "北京是中国的首都"],
}


def text(chars: int, offset: int = 0) -> str:
    return "".join(CJK[(offset + i) % len(CJK)] for i in range(chars))


def item(task: str, chars: int, k: int, n: int = 1) -> Any:
    """One input of `chars` characters in all (about), shaped to make `task` expand it most (one of `n` alike)."""
    if task == "classification":
        return {"text": text(chars // 2, k), "text_pair": text(chars - chars // 2, k + 7)}
    if task == "relation":  # head and tail recur all through the text
        return {"text": ("张三" * (chars // 4) + "北京" * (chars // 4)) or "张三北京", "head": "张", "tail": "京"}
    if task == "qa":
        return {"question": text(min(200, chars // 10) or 1, k), "context": text(chars, k + 3)}
    if task == "multiple_choice":
        per = max(1, chars // 40)
        return {"question": text(per, k), "context": text(chars - 33 * per, k + 5),
                "choices": [f"{i}{text(per, k + i)}" for i in range(32)]}
    if task == "fill_mask":  # as many masks as the work budget lets n such texts have (at most 16), in one sequence
        chars = min(chars, MAX_SEQ_LEN - 20)
        masks = max(1, min(16, (32_768 // n // (chars + 3 + 6 * 16) - 1) // 5))
        return "[MASK]" * masks + text(chars, k)
    return text(chars, k)


def shapes(task: str) -> list[tuple[int, int]]:
    """(inputs per request, characters per input) pairs inside the default limits (64 inputs, 10,000 characters a
    text, 100,000 a request)."""
    grid = [(1, 10_000), (10, 9_900), (16, 6_000), (32, 3_000), (64, 1_500), (64, 505), (64, 250), (1, 505),
            (16, 505), (4, 1_000), (1, 4_000)]
    if task == "fill_mask":  # one sequence a text; the masks' candidates are what grows
        grid = [(1, 300), (1, 100), (4, 100), (16, 30), (64, 40), (64, 100)]
    if task == "multiple_choice":  # 32 choices x 512 tokens = 16,384: two questions fill the token budget
        grid = [(1, 10_000), (2, 10_000), (2, 2_000), (1, 600), (3, 600)]
    return grid


def payload(task: str, n: int, chars: int) -> dict[str, Any]:
    return {"inputs": [item(task, chars, k, n) for k in range(n)]}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def timed(server: Any, body: dict[str, Any]) -> tuple[int, float, float, str]:
    """(status, seconds, peak RSS over the start, error) of one request, the server's memory sampled meanwhile."""
    pid, before = server.process.pid, rss_mib(server.process.pid)
    peak, done = before, threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_mib(pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    try:
        status, answer, _ = server.post("/predict", body)
    finally:
        seconds = time.perf_counter() - started
        done.set()
        sampler.join()
    return status, seconds, max(peak, rss_mib(pid)) - before, "" if status == 200 else str(answer)[:120]


def beside(server: Any, task: str, hostile: dict[str, Any], seconds: float) -> dict[str, Any]:
    """4 valid clients and 2 sending the costliest request, for `seconds`: valid failures and latency."""
    latencies: list[float] = []
    failures: list[Any] = []
    hostile_done = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def valid() -> None:
        while time.perf_counter() < stop:
            started = time.perf_counter()
            try:
                status, body, _ = server.post("/predict", {"inputs": VALID[task]})
            except OSError as exc:  # the client's own timeout (60 s): a failure, as a user would see it
                status, body = -1, repr(exc)
            with lock:
                (latencies.append(time.perf_counter() - started) if status == 200 else failures.append(
                    (status, str(body)[:120])))

    def costly() -> None:
        while time.perf_counter() < stop:
            with contextlib.suppress(OSError):  # the client may give up on a long request; the server goes on
                server.post("/predict", hostile)
            with lock:
                hostile_done[0] += 1

    threads = [threading.Thread(target=valid) for _ in range(4)] + [threading.Thread(target=costly)
                                                                   for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies.sort()

    def pct(q: float) -> float | None:
        return round(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1) if latencies else None

    return {"valid_requests": len(latencies) + len(failures), "valid_failed": len(failures),
            "failures_sample": failures[:3], "valid_p50_ms": pct(0.5), "valid_p99_ms": pct(0.99),
            "hostile_requests": hostile_done[0]}


def run_task(task: str, root: Path, preset: str, grid: list[tuple[int, int]], seconds: float) -> dict[str, Any]:
    from bench._serving import Server, random_checkpoint

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        checkpoint = random_checkpoint(task, root / task, MAX_SEQ_LEN, preset, vocab_size=VOCAB)
    # as `bertkit serve` runs for a user: every core (the test helper pins servers to one thread)
    server = Server(checkpoint, *(["--task", task] if task in PRETRAINED else []),
                    env={"OMP_NUM_THREADS": str(os.cpu_count() or 1)})
    server.timeout = 600.0  # BERT-base's costliest requests take about a minute
    try:
        health = server.get("/health")[1]
        status, _, _ = server.post("/predict", {"inputs": VALID[task]})
        assert status == 200, f"{task}: a valid request got {status}"
        baseline = rss_mib(server.process.pid)
        tried = []
        for n, chars in grid:
            status, seconds_taken, growth, error = timed(server, payload(task, n, chars))
            tried.append({"inputs": n, "chars": chars, "status": status, "seconds": round(seconds_taken, 3),
                          "peak_growth_mib": round(growth, 1), "error": error})
        served = [t for t in tried if t["status"] == 200]
        worst = max(served, key=lambda t: t["seconds"])
        load = beside(server, task, payload(task, worst["inputs"], worst["chars"]), seconds)
        growth_overall = rss_mib(server.process.pid) - baseline
        return {"task": task, "precision": health["precision"], "tried": tried, "worst": worst, "beside": load,
                "rss_baseline_mib": round(baseline, 1), "rss_growth_after_mib": round(growth_overall, 1),
                "server_tracebacks": server.stop().count("Traceback")}
    finally:
        if server.process.poll() is None:
            server.stop()


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main() -> int:
    from bertkit.tasks import TASKS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", help="model size (default: tiny; base reruns the costliest "
                        "shape per task of the tiny results)")
    parser.add_argument("--seconds", type=float, default=10.0, help="valid + hostile clients together, per task")
    parser.add_argument("--only", nargs="*", default=None, help="these tasks only (the other rows of the last "
                        "results file are kept)")
    args = parser.parse_args()
    tasks = args.only or list(TASKS)
    previous = OUT / "serve_costly_tiny.json"
    if args.preset != "tiny" and not previous.is_file():
        parser.error(f"{previous} not found: run with --preset tiny first (it finds each task's costliest shape)")
    worst_of = ({r["task"]: (r["worst"]["inputs"], r["worst"]["chars"]) for r in json.loads(previous.read_text())
                 ["tasks"]} if args.preset != "tiny" else {})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for task in tasks:
            grid = [worst_of[task]] if task in worst_of else shapes(task)
            row = run_task(task, Path(tmp), args.preset, grid, args.seconds)
            rows.append(row)
            print(f"{task}: {row['worst']} beside: {row['beside']}", flush=True)
    last = OUT / f"serve_costly_{args.preset}.json"
    if args.only and last.is_file():  # the other tasks' rows of the last run stay, in task order
        kept = {r["task"]: r for r in json.loads(last.read_text())["tasks"]} | {r["task"]: r for r in rows}
        rows = [kept[t] for t in TASKS if t in kept]
    ok = all(r["worst"]["seconds"] <= 2 and r["worst"]["peak_growth_mib"] <= 300 and r["beside"]["valid_failed"] == 0
             and r["server_tracebacks"] == 0 for r in rows)
    machine = f"{cpu_name()}, {os.cpu_count()} cores"
    result = {"date": date.today().isoformat(), "machine": machine, "preset": args.preset, "max_seq_len": MAX_SEQ_LEN,
              "vocab_size": VOCAB, "tasks": rows, "bound_held": ok}
    lines = [f"Costliest request within the default limits, per task: BERT-{args.preset} (random weights, "
             f"max_seq_len {MAX_SEQ_LEN}, vocabulary {VOCAB:,}), `--precision auto`, {machine}, {result['date']}. "
             "Shape: inputs x characters each. "
             + (f"Beside: 4 valid clients + 2 sending that request for {args.seconds:g} s." if args.seconds > 0
                else "Each task's costliest shape of the BERT-tiny run, timed alone."), "",
             "| task | precision | costliest shape | seconds | peak RSS growth | shapes refused (413/422) | "
             "valid requests beside (failed) | valid p50 / p99 |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        w, b = r["worst"], r["beside"]
        refused = sum(t["status"] in (413, 422) for t in r["tried"])
        beside_cells = (f"{b['valid_requests']} ({b['valid_failed']}) | {b['valid_p50_ms']} / {b['valid_p99_ms']} ms"
                        if args.seconds > 0 else "– | –")
        lines.append(f"| {r['task']} | {r['precision']} | {w['inputs']} x {w['chars']:,} | {w['seconds']:.2f} | "
                     f"+{w['peak_growth_mib']:.0f} MiB | {refused} of {len(r['tried'])} | {beside_cells} |")
    if args.preset == "tiny":
        verdict = "held" if ok else "NOT held"
        lines += ["", f"Bound (at most 2 s and +300 MiB per request, 0 valid failures): **{verdict}**."]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"serve_costly_{args.preset}.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    (OUT / f"serve_costly_{args.preset}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if ok or args.preset != "tiny" else 1


if __name__ == "__main__":
    sys.exit(main())
