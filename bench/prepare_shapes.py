"""`prepare-data` on one text in three shapes: (a) one line, (b) one sentence a line without blank lines, (c) one
sentence a line with a blank line between documents (the normal shape). Promise: each finishes, the whole process
tree (main process, workers, multiprocessing's resource tracker) stays under 1.5 GB of RSS, and (a) and (b) take at
most 1.5x the time of (c). The text is random Chinese and English sentences made here (no download), written to a
temporary directory one shape at a time and run one after another.

    .venv/bin/python bench/prepare_shapes.py [--mb 200] [--workers 2]     (~25 minutes at 200 MB on 2 cores)

Writes bench/results/prepare_shapes.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "results"
HANZI = ("的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可里后小"
         "么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长知"
         "民样现分将外但身些与高意进把法此实回二理美点月明其种声全工己话儿者向情部正名定女问力机给等几很业最间"
         "新什打便位因重被走电四第门相次东政海口使教西再平真听世气信北少关并内加化由却代军产入先山五太水万市眼"
         "体别处总才场师书比住员九笑性通目华报立马命张活难神数件安表原车白应路期叫死常提感金何更反合放做系计或"
         "司利受光王果亲界及今京务制解各任至清物台象记边共风战干接它许八特觉望直服毛林题建")
ENGLISH = ("the of and to in is was he for it with as his on be at by had are but from or have an they which one you "
           "were all we her she there would their will when who him been has more if no out so said what up its about "
           "into than them can only other new some could time these two may then do first any my now such like our "
           "over man me even most made after also did many before must through back years where much your way well "
           "down should because each just those people how too little state good very make world still own see men "
           "work long get here between both life being under never day same another know while last might great "
           "old year off come since against go came right used take three city river music school market train window")
SHAPES = {"a": "one line", "b": "no blank lines", "c": "normal (blank line between documents)"}


def sentences(rng: random.Random, count: int) -> list[str]:
    """Random sentences, 70% Chinese (6-30 characters, a comma in half, ending 。！？) and 30% English (4-14 words,
    ending . ! ?); `.` ends no sentence for the splitter, so some English sentences run on into the next."""
    out, vocabulary = [], ENGLISH.split()
    for _ in range(count):
        if rng.random() < 0.7:
            body = "".join(rng.choices(HANZI, k=rng.randint(6, 30)))
            if rng.random() < 0.5:
                cut = rng.randint(2, len(body) - 2)
                body = body[:cut] + "，" + body[cut:]
            out.append(body + rng.choice("。。。。。。。。！？"))
        else:
            words = rng.choices(vocabulary, k=rng.randint(4, 14))
            out.append(" ".join([words[0].capitalize(), *words[1:]]) + rng.choice(".......!?"))
    return out


def documents(pool: list[str], seed: int, target_bytes: int) -> Iterator[list[str]]:
    """Documents of 3-40 sentences drawn from `pool` until about `target_bytes` of UTF-8; the same for a seed."""
    rng = random.Random(seed)
    size = 0
    while size < target_bytes:
        document = rng.choices(pool, k=rng.randint(3, 40))
        size += sum(len(s.encode("utf-8")) + 1 for s in document) + 1
        yield document


def write_shape(path: Path, shape: str, pool: list[str], seed: int, target_bytes: int) -> int:
    """The text in one shape: (a) every sentence on one line, space-separated, no newline at all; (b) a sentence a
    line; (c) a sentence a line and a blank line after each document. Returns the size in bytes."""
    with open(path, "w", encoding="utf-8") as handle:
        buffer: list[str] = []
        for document in documents(pool, seed, target_bytes):
            if shape == "a":
                buffer.append(" ".join(document) + " ")
            else:
                buffer.append("\n".join(document) + ("\n\n" if shape == "c" else "\n"))
            if len(buffer) >= 2000:
                handle.write("".join(buffer))
                buffer = []
        handle.write("".join(buffer))
    return path.stat().st_size


def _status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants (from /proc/PID/task/TID/children, which every thread that started a child lists)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def run(path: Path, vocab: Path, output: Path, workers: int, interval: float) -> dict[str, object]:
    """`bertkit prepare-data` on one file in a fresh process: seconds, the peak of the process tree's summed RSS
    (sampled every `interval` s), the main process's peak RSS (wait4) and each other process's (VmHWM, last seen)."""
    argv = [sys.executable, "-m", "bertkit.cli", "prepare-data", str(path), "--tokenizer", str(vocab), "--output",
            str(output), "--workers", str(workers), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    log = output.with_suffix(".log")
    started = time.perf_counter()
    with open(log, "wb") as handle:
        process = subprocess.Popen(argv, env=env, stdout=handle, stderr=subprocess.STDOUT)
    peak_tree_kb, high_water = 0, {}
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        total = 0
        for member in _tree(process.pid):
            total += _status_kb(member, "VmRSS")
            if member != process.pid:
                high_water[member] = max(high_water.get(member, 0), _status_kb(member, "VmHWM"))
        peak_tree_kb = max(peak_tree_kb, total)
        time.sleep(interval)
    seconds = time.perf_counter() - started
    text = log.read_text(encoding="utf-8", errors="replace")
    if status:
        sys.exit(f"prepare-data {path} failed (status {status}):\n{text[-3000:]}")
    manifest = json.loads((output / "manifest.json").read_text())
    train = manifest["splits"]["train"]
    return {"seconds": round(seconds, 1), "peak_tree_rss_mb": round(peak_tree_kb / 1024),
            "main_peak_rss_mb": round(usage.ru_maxrss / 1024),
            "other_peak_rss_mb": sorted((round(v / 1024) for v in high_water.values()), reverse=True),
            "documents": train["documents"], "sentences": train["sentences"], "tokens": train["tokens"],
            "shards": len(train["shards"]), "largest_shard_chars": max(r["characters"] for r in train["shards"]),
            "warnings": [w.replace(f"{path.parent}{os.sep}", "") for w in re.findall(r"UserWarning: (.*)", text)]}


def table(result: dict) -> str:
    """The markdown of bench/results/prepare_shapes.md."""
    rows = result["shapes"]
    lines = [f"{result['cpu']}, {result['cores']} cores. `prepare-data --workers {result['workers']}` on "
             f"{result['mb']:g} MB of random Chinese and English sentences in three shapes, one run each, one after "
             "another (peak RSS of the whole process tree: the sum over main process, workers and resource tracker, "
             f"sampled every {result['interval_s']} s):", "",
             "| shape | MB | seconds | vs (c) | peak RSS, whole tree (MB) | main (MB) | workers, tracker (MB) | "
             "documents | shards | largest shard (chars) | warnings |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| ({r['shape']}) {r['name']} | {r['mb']} | {r['seconds']} | "
              f"{'-' if r['time_vs_normal'] is None else str(r['time_vs_normal']) + 'x'} | "
              f"{r['peak_tree_rss_mb']} | {r['main_peak_rss_mb']} | {', '.join(map(str, r['other_peak_rss_mb']))} | "
              f"{r['documents']:,} | {r['shards']} | {r['largest_shard_chars']:,} | {len(r['warnings'])} |"
              for r in rows]
    lines += ["", "Promise (each finishes under 1.5 GB for the whole tree; (a) and (b) within 1.5x the time of (c)): "
              f"**{'met' if result['passed'] else 'NOT met'}**."]
    lines += [f"({r['shape']}) warns: \"{r['warnings'][0]}\"" for r in rows if r["warnings"]]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=float, default=200.0, help="megabytes of text in each shape")
    parser.add_argument("--workers", type=int, default=2, help="prepare-data --workers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--interval", type=float, default=0.25, help="seconds between memory samples")
    parser.add_argument("--shapes", default="cba", help="which shapes, in this order (default: cba, normal first)")
    args = parser.parse_args()

    from bertkit.hardware import cpu_name
    from bertkit.tokenizer import Tokenizer

    pool = sentences(random.Random(args.seed), 100_000)
    rows = []
    with tempfile.TemporaryDirectory(prefix="prepare-shapes-") as tmp:
        work = Path(tmp)
        Tokenizer.train(pool, vocab_size=8000, min_frequency=2).save_pretrained(work / "vocab")
        for shape in args.shapes:
            path = work / f"{shape}.txt"
            size = write_shape(path, shape, pool, args.seed, int(args.mb * 1e6))
            row = {"shape": shape, "name": SHAPES[shape], "mb": round(size / 1e6, 1),
                   **run(path, work / "vocab", work / f"out-{shape}", args.workers, args.interval)}
            rows.append(row)
            print(json.dumps(row, ensure_ascii=False), flush=True)
            path.unlink()  # one shape on disk at a time
            for file in sorted((work / f"out-{shape}").rglob("*"), reverse=True):
                file.rmdir() if file.is_dir() else file.unlink()
    by_shape = {r["shape"]: r for r in rows}
    normal = by_shape.get("c")
    for row in rows:
        row["time_vs_normal"] = round(row["seconds"] / normal["seconds"], 2) if normal else None
    passed = all(r["peak_tree_rss_mb"] < 1536 for r in rows) and all(
        r["time_vs_normal"] is None or r["time_vs_normal"] <= 1.5 for r in rows)
    result = {"cpu": cpu_name(), "cores": os.cpu_count(), "workers": args.workers, "mb": args.mb, "seed": args.seed,
              "interval_s": args.interval, "shapes": rows, "passed": passed}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "prepare_shapes.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    (OUT / "prepare_shapes.md").write_text(table(result))
    print(table(result))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
