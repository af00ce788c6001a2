"""No-regression check for src/bertkit/model.py: the working tree's model against the one of a git revision, in one
process, same weights and batches, timings alternating (bench/speed.py's `alternate`).

    .venv/bin/python bench/ab_model.py --rev HEAD~1      (~3 minutes on 2 cores)

Rows: BERT-base bf16 and fp32 inference on the var-len batch, and the pre-training step at small (fp32, var-len).
Prints time(working tree) / time(revision): below 1 is faster. Compare ratios from one run only.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "src"))
warnings.filterwarnings("ignore")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", required=True, help="git revision whose src/bertkit/model.py is the baseline")
    parser.add_argument("--repeats", type=int, default=8)
    args = parser.parse_args()

    import bertkit.model as current
    import speed
    from bertkit import BertConfig
    from bertkit.checkpoint import load_model

    work = Path(tempfile.mkdtemp())
    source = subprocess.run(["git", "show", f"{args.rev}:src/bertkit/model.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    (work / "baseline_model.py").write_text(source)
    spec = importlib.util.spec_from_file_location("bertkit.baseline_model", work / "baseline_model.py")
    baseline = importlib.util.module_from_spec(spec)
    sys.modules["bertkit.baseline_model"] = baseline
    spec.loader.exec_module(baseline)

    from bertkit.hardware import cpu_name

    print(f"{cpu_name()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; working tree vs {args.rev}")
    base = BertConfig.preset("base", vocab_size=speed.VOCAB)
    torch.manual_seed(0)
    current.BertModel(base).save_pretrained(work / "base")
    batch = speed.make_batch("var")
    ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    for dtype in (torch.bfloat16, torch.float32):
        ours = load_model(current.BertModel, work / "base").to(dtype).eval()
        theirs = load_model(baseline.BertModel, work / "base").to(dtype).eval()
        with torch.inference_mode():
            seconds = speed.alternate({"tree": lambda m=ours: m(ids, mask, types),
                                       "rev": lambda m=theirs: m(ids, mask, types)}, args.repeats)
        name = str(dtype).removeprefix("torch.")
        print(f"inference base {name} var: time ratio {seconds['tree'] / seconds['rev']:.3f} "
              f"({seconds['tree'] * 1e3:.0f} ms vs {seconds['rev'] * 1e3:.0f} ms)", flush=True)
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
