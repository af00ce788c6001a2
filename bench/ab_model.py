"""No-regression check for the model and inference precision: the working tree's `bertkit.model` and
`bertkit.precision` against the `model.py` and int8/bf16 code of a git revision, in one process, same weights and
batches, timings alternating (bench/speed.py's `alternate`).

    .venv/bin/python bench/ab_model.py --rev HEAD~1      (~10 minutes on 2 cores, compiling included)

Rows: BERT-base fp32 inference (var-len batch); bf16 (var-len, where bf16 is native); int8 eager (var-len, full
32 x 128, one sequence of 128); int8 compiled (BERT-mini: full and one sequence; compiling is not timed); the
pre-training step at small (fp32, var-len). Prints time(working tree) / time(revision): below 1 is faster. The
revision's int8 code is its `src/bertkit/quantize.py`, or its `src/bertkit/precision/` package. Compare ratios
from one run only.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from types import ModuleType

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "src"))
warnings.filterwarnings("ignore")


def _git_show(rev: str, path: str) -> str | None:
    done = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else None


def _load(name: str, source: str, work: Path) -> ModuleType:
    """`source` as the module `name` (its file under `work`)."""
    path = work / (name.replace(".", "_") + ".py")
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def baseline_quantize(rev: str, work: Path) -> object:
    """The revision's `quantize(model, precision, compile=...)`, running on the revision's model module."""
    source = _git_show(rev, "src/bertkit/quantize.py")
    if source is None:  # the package form: every module of it, renamed, on the revision's model
        names = ["state", "int8_ops", "int8", "bf16", "policy"]
        for name in names:
            text = _git_show(rev, f"src/bertkit/precision/{name}.py")
            for other in names:
                text = text.replace(f"bertkit.precision.{other}", f"bertkit.baseline_precision_{other}")
            text = text.replace("bertkit.model", "bertkit.baseline_model")
            text = text.replace('"bertkit::int8_matmul"', '"bertkit_baseline::int8_matmul"')
            module = _load(f"bertkit.baseline_precision_{name}", text, work)
        return module.quantize
    source = source.replace("bertkit.model", "bertkit.baseline_model")
    source = source.replace('"bertkit::int8_matmul"', '"bertkit_baseline::int8_matmul"')  # one op per name
    return _load("bertkit.baseline_quantize", source, work).quantize


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", required=True, help="git revision whose model and int8/bf16 code are the baseline")
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--skip-compiled", action="store_true", help="leave out the compiled int8 rows")
    args = parser.parse_args()

    import bertkit.model as current
    import speed
    from bertkit import BertConfig
    from bertkit.checkpoint import load_model
    from bertkit.hardware import cpu_name, native_bf16
    from bertkit.precision import quantize
    from int8 import one_by_128

    work = Path(tempfile.mkdtemp())
    baseline = _load("bertkit.baseline_model", _git_show(args.rev, "src/bertkit/model.py"), work)
    old_quantize = baseline_quantize(args.rev, work)

    print(f"{cpu_name()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; working tree vs {args.rev}", flush=True)

    def row(label: str, ours, theirs, batch) -> None:
        ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
        with torch.inference_mode():
            seconds = speed.alternate({"tree": lambda: ours(ids, mask, types),
                                       "rev": lambda: theirs(ids, mask, types)}, args.repeats)
        print(f"{label}: time ratio {seconds['tree'] / seconds['rev']:.3f} "
              f"({seconds['tree'] * 1e3:.1f} ms vs {seconds['rev'] * 1e3:.1f} ms)", flush=True)

    batches = {"var": speed.make_batch("var"), "full": speed.make_batch("full"), "1x128": one_by_128(speed.VOCAB)}
    for size in ("base", "mini"):
        torch.manual_seed(0)
        current.BertModel(BertConfig.preset(size, vocab_size=speed.VOCAB)).save_pretrained(work / size)

    def pair(size: str) -> tuple[torch.nn.Module, torch.nn.Module]:
        return (load_model(current.BertModel, work / size).eval(), load_model(baseline.BertModel, work / size).eval())

    ours, theirs = pair("base")
    row("inference base fp32 var", ours, theirs, batches["var"])
    if native_bf16():
        ours, theirs = pair("base")
        row("inference base bf16 var", quantize(ours, "bf16"), old_quantize(theirs, "bf16"), batches["var"])
    ours, theirs = pair("base")
    ours, theirs = quantize(ours, "int8"), old_quantize(theirs, "int8")
    for kind in ("var", "full", "1x128"):
        row(f"inference base int8 eager {kind}", ours, theirs, batches[kind])
    if not args.skip_compiled:
        ours, theirs = pair("mini")
        ours, theirs = quantize(ours, "int8", compile=True), old_quantize(theirs, "int8", compile=True)
        for kind in ("full", "1x128"):
            row(f"inference mini int8 compiled {kind}", ours, theirs, batches[kind])

    small = BertConfig.preset("small", vocab_size=speed.VOCAB)
    torch.manual_seed(0)
    current.BertForPreTraining(small).save_pretrained(work / "small")
    batch = speed.make_batch("var", seed=1)
    models = {name: load_model(cls, work / "small").train() for name, cls in
              (("tree", current.BertForPreTraining), ("rev", baseline.BertForPreTraining))}
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-4, fused=True) for name, m in models.items()}
    seconds = speed.alternate({name: (lambda n=name: speed.ours_step(models[n], optimizers[n], batch, False))
                               for name in models}, args.repeats)
    print(f"pre-training step small fp32 var: time ratio {seconds['tree'] / seconds['rev']:.3f} "
          f"({seconds['tree'] * 1e3:.0f} ms vs {seconds['rev'] * 1e3:.0f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
