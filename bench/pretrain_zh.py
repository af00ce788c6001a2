"""Pre-training at scale, measured: the largest Chinese corpus bertkit can build offline (`bench/corpus_zh.py`:
the embedded corpus and the training splits of ../shared/data), a vocabulary, `prepare-data`, then `mini` pre-trained
through the streamed path (`pretrain --data`) for 5,600 steps (over 60 minutes on 2 cores).

    .venv/bin/python bench/pretrain_zh.py [--output runs/zh-scale]      (~65-90 min on 2 cores)
    .venv/bin/python bench/pretrain_zh.py --report-only [--output DIR]  (the table from a finished run)

Then `bench/tasks.py --only chnsenticorp-mini msra-mini cais-mini` fine-tunes the model (`make bench-pretrain-zh`
runs both). Writes bench/results/pretrain_zh.{json,md}: the corpus, the commands, held-out MLM accuracy over the run.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results"
STEPS = 5600


def commands(output: Path) -> list[list[str]]:
    bertkit = [sys.executable, "-m", "bertkit.cli"]
    return [
        [sys.executable, str(ROOT / "bench" / "corpus_zh.py"), "--output", str(output / "corpus")],
        [*bertkit, "train-tokenizer", str(output / "corpus" / "corpus.txt"), "--output", str(output / "vocab"),
         "--vocab-size", "8000"],
        [*bertkit, "prepare-data", str(output / "corpus" / "corpus.txt"), "--tokenizer", str(output / "vocab"),
         "--output", str(output / "data"), "--whole-word-masking", "--heldout-fraction", "0.01", "--no-progress"],
        [*bertkit, "pretrain", "--data", str(output / "data"), "--output-dir", str(output / "run"), "--overwrite",
         "--model-size", "mini", "--no-nsp", "--whole-word-masking", "--batch-size", "64", "--max-steps", str(STEPS),
         "--lr", "7e-4", "--eval-every", "500", "--save-every", "500", "--log-every", "50", "--no-progress",
         "--seed", "42"],
    ]


def report(output: Path) -> dict:
    corpus = json.loads((output / "corpus" / "corpus.json").read_text())
    manifest = json.loads((output / "data" / "manifest.json").read_text())
    records = [json.loads(line) for line in (output / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    return {"corpus": corpus, "splits": {k: {f: v[f] for f in ("documents", "sentences", "tokens", "characters")}
                                         for k, v in manifest["splits"].items()},
            "steps": train[-1]["step"], "minutes": round(train[-1]["elapsed_s"] / 60, 1),
            "mean_tokens_per_s": round(sum(r["tokens_per_s"] for r in train) / len(train)),
            "heldout": [{"step": r["step"], "mlm_accuracy": r["mlm_accuracy"], "mlm_loss": r["mlm_loss"]}
                        for r in evals],
            "commands": [shlex.join(c).replace(sys.executable, "python") for c in commands(Path("runs/zh-scale"))]}


def markdown(result: dict) -> str:
    splits = result["splits"]
    lines = [f"Corpus: {result['corpus']['total']['characters']:,} characters "
             f"({splits['train']['tokens']:,} training tokens in {splits['train']['documents']:,} documents; "
             f"{splits['heldout']['tokens']:,} held-out tokens, 1% of the documents). mini (L4/H256, 5.4M parameters), "
             f"MLM only (packed), whole-word masking, batch 64 x 128: {result['steps']:,} steps in "
             f"{result['minutes']} minutes ({result['mean_tokens_per_s']:,} tokens/s on average).", "",
             "| step | held-out MLM accuracy | held-out MLM loss |", "|---|---|---|"]
    lines += [f"| {r['step']:,} | {100 * r['mlm_accuracy']:.1f}% | {r['mlm_loss']:.3f} |" for r in result["heldout"]]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=str(ROOT / "runs" / "zh-scale"))
    parser.add_argument("--report-only", action="store_true", help="write the table from a finished run")
    args = parser.parse_args()
    output = Path(args.output)
    if not args.report_only:
        for command in commands(output):
            print("$", shlex.join(command), flush=True)
            started = time.perf_counter()
            subprocess.run(command, check=True)
            print(f"  {time.perf_counter() - started:.0f} s", flush=True)
    result = report(output)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "pretrain_zh.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    (OUT / "pretrain_zh.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
