"""`bertkit compile DIR`: compile a checkpoint's int8 encoder for this machine ahead of deployment, so that
`bertkit serve DIR` (and any process that compiles it: `--compile`, `quantize(model, "auto")`) loads the compiled
graphs from the on-disk cache (`compiled.compile_cache`) instead of compiling them at start-up."""

from __future__ import annotations

import argparse
import sys
import time


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a checkpoint directory (what `bertkit serve` will serve)")
    p.add_argument("--task", default=None, help="for a pre-trained checkpoint: the task `bertkit serve --task` "
                   "will serve it as")
    p.add_argument("--precision", default="auto", choices=("auto", "int8"),
                   help="auto: what `bertkit serve` runs here (int8 on CPUs with int8 dot products) (default: auto)")
    p.add_argument("--int8-keep", action="append", default=[], metavar="LAYER",
                   help="an encoder layer kept in fp32, as it will be served (repeatable)")


def run(args: argparse.Namespace) -> int:
    """Compile a checkpoint's int8 encoder for this CPU and keep it on disk, so `bertkit serve` starts in seconds."""
    from bertkit.compiled import compile_cache
    from bertkit.errors import BertkitError
    from bertkit.precision.state import STATE
    from bertkit.predict import Predictor

    start = time.perf_counter()
    predictor = Predictor(args.checkpoint, device="cpu", precision=args.precision, int8_keep=args.int8_keep,
                          compile=True, task=args.task)
    plan = predictor.plan
    if not plan.compile:
        raise BertkitError(f"nothing to compile: --precision {args.precision} runs {plan.precision} here "
                           f"({plan.why}); compiled code is for int8")
    if STATE.compile_failed or STATE.frozen_failed:
        raise BertkitError(f"torch.compile failed here ({STATE.compile_failed or STATE.frozen_failed}): "
                           "`bertkit serve` will run the int8 layers eagerly")
    print("\n".join(plan.shape_lines()), file=sys.stderr)
    print(f"compiled {args.checkpoint} ({plan.precision}, {plan.why}) in {time.perf_counter() - start:.1f} s; "
          f"cached in {compile_cache()}", file=sys.stderr)
    return 0
