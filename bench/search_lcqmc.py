"""Retrieval on LCQMC's positive pairs, with and without a cross-encoder: each positive test pair's first question is
a query, the distinct second questions of all positive test pairs are the corpus (`bertkit index`), and a query's
answer is its own pair's second question. Recall@1, recall@10 and MRR@10 of that answer from `bertkit search`, then
from `bertkit search --rerank` (the top 20 hits re-ordered by a pair classifier's probability of "same intent").

    OMP_NUM_THREADS=1 .venv/bin/python bench/search_lcqmc.py [--model runs/demo/pretrain/model]

../shared/data/lcqmc has no train set (its SOURCE.md): the cross-encoders are fine-tuned on dev.txt (as SOURCE.md
allows) from the same pre-trained model, and every number is measured on test.txt. Two cross-encoders: one on
dev's 8,802 labelled pairs, one on those pairs plus, for each positive dev pair (a, b), the best vector hits of a
among dev's second questions other than b, labelled 0: hard negatives, the kind of candidate a re-ranker must tell
from the answer (LCQMC's own negatives are lexically close pairs, not the index's near misses). The encoder is used
frozen: `--model` takes any sentence-embedding or pre-trained checkpoint (default: the Chinese model `make demo`
pre-trains, as bench/tasks.py's Chinese rows use).

Writes bench/results/search_lcqmc.json and .md (copied into docs/search.md by bench/readme_tables.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
DATA = Path(os.environ.get("BERTKIT_SHARED", ROOT.parent / "shared")) / "data" / "lcqmc"
OUT = ROOT / "bench" / "results"
WORK = ROOT / "runs" / "search-lcqmc"
CANDIDATES = 20  # hits the cross-encoder re-orders (`--rerank-candidates`, the default)
CROSS_SETTINGS = dict(epochs=3, lr=1e-3, batch_size=32, max_seq_len=64)  # as bench/tasks.py's tiny Chinese rows
# the two cross-encoders: hard negatives per positive dev pair added to dev's labelled pairs
CROSS_ENCODERS = {"dev pairs": 0, "dev pairs + 3 hard negatives per positive": 3}


def read_pairs(path: Path) -> list[tuple[str, str, str]]:
    """(question, question, label) of a file with a header line: text_a, text_b, label."""
    rows = path.read_text(encoding="utf-8").splitlines()[1:]
    return [(a, b, label) for a, b, label in (row.split("\t") for row in rows)]


def rank_metrics(found: list[list[str]], answers: list[str]) -> dict[str, float]:
    """Recall@1, recall@10 and MRR@10 of each query's one answer among its hits (texts, best first), and recall@20
    (the most a re-ranking of 20 candidates can reach)."""
    ranks = [hits.index(answer) + 1 if answer in hits else None for hits, answer in zip(found, answers, strict=True)]

    def share(hit) -> float:
        return sum(hit(rank) for rank in ranks if rank is not None) / len(ranks)

    return {"recall@1": share(lambda rank: rank == 1), "recall@10": share(lambda rank: rank <= 10),
            "mrr@10": share(lambda rank: 1 / rank if rank <= 10 else 0.0),
            f"recall@{CANDIDATES}": share(lambda rank: rank <= CANDIDATES)}


def training_pairs(model: Path, negatives: int, limit: int | None) -> tuple[Path, int]:
    """The cross-encoder's training file, from LCQMC's dev set only: its labelled pairs, and with `negatives` > 0,
    for each positive pair (a, b) the `negatives` best vector hits of a among dev's second questions that are
    neither a nor b, labelled 0. Returns the file and its number of pairs."""
    from bertkit.search import Searcher, build_index, search_all

    dev = read_pairs(DATA / "dev.txt")[:limit]
    rows = list(dev)
    if negatives:
        corpus = list(dict.fromkeys(b for _, b, _ in dev))
        (WORK / "dev-corpus.txt").write_text("".join(f"{text}\n" for text in corpus), encoding="utf-8")
        build_index(model, WORK / "dev-corpus.txt", WORK / "dev-index", kind="flat", max_seq_len=64,
                    overwrite=True, progress=False)
        positives = [(a, b) for a, b, label in dev if label == "1"]
        hits = search_all(Searcher(WORK / "dev-index"), [a for a, _ in positives], negatives + 2)
        for (a, b), found in zip(positives, hits, strict=True):
            rows += [(a, hit["text"], "0") for hit in found if hit["text"] not in (a, b)][:negatives]
    path = WORK / f"cross-train-{negatives}.tsv"
    path.write_text("text_a\ttext_b\tlabel\n" + "".join(f"{a}\t{b}\t{label}\n" for a, b, label in rows),
                    encoding="utf-8")
    return path, len(rows)


def train_cross_encoder(model: Path, negatives: int, limit: int | None) -> dict:
    """A pair classifier fine-tuned from `model` on `training_pairs`; its accuracy on LCQMC's test pairs is
    reported (the test set chooses nothing: the settings are fixed)."""
    from bertkit.tasks import classification
    from bertkit.train import TrainConfig

    train, count = training_pairs(model, negatives, limit)
    output = WORK / f"cross-{negatives}"
    settings = dict(CROSS_SETTINGS)
    config = TrainConfig(output_dir=str(output), warmup=0.1, progress=False, log_every=50, overwrite=True,
                         **{k: settings.pop(k) for k in ("epochs", "lr", "batch_size")})
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="inputs longer than max_length")
        result = classification.finetune(train, config, eval_file=DATA / "test.txt", init_from=model, **settings)
    return {"directory": str((output / "model").relative_to(ROOT)), "pairs": count, "steps": result.step,
            "test_accuracy": result.metrics["accuracy"], "minutes": (time.perf_counter() - started) / 60}


def search(index: Path, queries: list[str], top_k: int, rerank: str | None) -> tuple[list[list[str]], float]:
    """Each query's hits (texts, best first) from `bertkit search`'s Searcher, and the seconds they took."""
    from bertkit.search import Rerank, Searcher, search_all

    searcher = Searcher(index, rerank=Rerank(rerank, candidates=CANDIDATES) if rerank else None)
    started = time.perf_counter()
    found = [[hit["text"] for hit in hits] for hits in search_all(searcher, queries, top_k)]
    return found, time.perf_counter() - started


def describe(model: Path) -> str:
    from bertkit.config import BertConfig

    config = BertConfig.from_pretrained(model)
    shown = model.resolve().relative_to(ROOT) if model.resolve().is_relative_to(ROOT) else model
    return f"{shown} (L{config.num_hidden_layers}/H{config.hidden_size})"


def markdown(results: dict) -> str:
    settings = results["cross_settings"]
    lines = [f"{results['machine']}, {results['date']}: `{results['command']}`. LCQMC test's {results['queries']:,} "
             f"positive pairs: a pair's first question is the query, the {results['corpus']:,} distinct second "
             "questions are the corpus (an exact index), the pair's own second question is the answer. Encoder "
             f"(frozen, not trained for sentence vectors): {results['model']}, {results['pooling']} pooling, "
             f"{results['precision']}. Cross-encoders: pair classifiers fine-tuned from the same model on LCQMC's "
             "dev set (LCQMC's train set is not in ../shared/data; hard negatives: the best vector hits of a dev "
             f"question other than its answer), {settings['epochs']} epochs, lr {settings['lr']}, batch "
             f"{settings['batch_size']}, max_seq_len {settings['max_seq_len']}; each re-orders the top "
             f"{CANDIDATES} hits. Numbers in %.", "",
             "| search | cross-encoder trained on | its test accuracy | recall@1 | recall@10 | MRR@10 | seconds |",
             "|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        cross = row.get("cross_encoder")
        trained = f"{cross['name']} ({cross['pairs']:,} pairs, {cross['steps']} steps)" if cross else ""
        accuracy = f"{100 * cross['test_accuracy']:.1f}" if cross else ""
        lines.append(f"| {row['search']} | {trained} | {accuracy} | {100 * row['recall@1']:.1f} | "
                     f"{100 * row['recall@10']:.1f} | {100 * row['mrr@10']:.1f} | {row['seconds']:.0f} |")
    plain = results["rows"][0]
    lines += ["", f"Recall@{CANDIDATES} of the vector search is {100 * plain[f'recall@{CANDIDATES}']:.1f}: the most "
                  "a re-ranking of its candidates can reach; re-ordering them at random would give recall@10 "
                  f"{50 * plain[f'recall@{CANDIDATES}']:.1f}."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(ROOT / "runs" / "demo" / "pretrain" / "model"))
    parser.add_argument("--limit", type=int, default=None,
                        help="a quick check: the first N queries and N dev pairs; writes no results")
    args = parser.parse_args()
    model = Path(args.model)
    if not (model / "config.json").is_file():
        sys.exit(f"{model}: no pre-trained Chinese model; run `make demo` first (or pass --model)")
    from bertkit.hardware import cpu_name
    from bertkit.search import build_index

    WORK.mkdir(parents=True, exist_ok=True)
    pairs = [(a, b) for a, b, label in read_pairs(DATA / "test.txt") if label == "1"][: args.limit]
    queries, answers = [a for a, _ in pairs], [b for _, b in pairs]
    corpus = list(dict.fromkeys(answers))
    (WORK / "corpus.txt").write_text("".join(f"{text}\n" for text in corpus), encoding="utf-8")
    info = build_index(model, WORK / "corpus.txt", WORK / "index", kind="flat", max_seq_len=64, overwrite=True,
                       progress=False)
    threads = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    command = f"{threads}python bench/search_lcqmc.py" + ("" if sys.argv[1:] == [] else " " + " ".join(sys.argv[1:]))
    results = {"machine": f"{cpu_name()}, {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d"),
               "command": command, "model": describe(model), "pooling": info.pooling, "precision": info.precision,
               "queries": len(queries), "corpus": len(corpus), "cross_settings": CROSS_SETTINGS, "rows": []}
    found, seconds = search(WORK / "index", queries, CANDIDATES, None)
    results["rows"].append({"search": "vectors (`bertkit search`)", **rank_metrics(found, answers),
                            "seconds": seconds})
    print(results["rows"][-1], flush=True)
    for name, negatives in CROSS_ENCODERS.items():
        cross = {"name": name, **train_cross_encoder(model, negatives, args.limit)}
        found, seconds = search(WORK / "index", queries, 10, str(ROOT / cross["directory"]))
        results["rows"].append({"search": f"re-ranked (`--rerank`, top {CANDIDATES})", "cross_encoder": cross,
                                **rank_metrics(found, answers), "seconds": seconds})
        print(results["rows"][-1], flush=True)
    if args.limit is None:
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "search_lcqmc.json").write_text(json.dumps(results, indent=1) + "\n")
        (OUT / "search_lcqmc.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
