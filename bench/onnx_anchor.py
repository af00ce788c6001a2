"""Is bench/int8.py's onnxruntime anchor at its best? onnxruntime's BERT optimizer fuses attention only in graphs
shaped like transformers' (three Q/K/V MatMuls); bertkit exports one fused QKV MatMul and a Split, so in the
bench's anchor attention stays unfused. This times, in one process and on the same weights, onnxruntime int8 on
bertkit's export (the bench's anchor) against onnxruntime int8 on transformers' export (eager attention: fused
into QAttention, SkipLayerNormalization, BiasGelu, QEmbedLayerNormalization), same optimizer and quantization.

    .venv/bin/python bench/onnx_anchor.py            (~5 minutes on 2 cores)

Writes bench/results/onnx_anchor.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "src"))
warnings.filterwarnings("ignore")
OUT = ROOT / "bench" / "results"
INPUTS = ["input_ids", "attention_mask", "token_type_ids"]


def export_transformers(directory: Path, path: Path) -> Path:
    import transformers

    model = transformers.BertModel.from_pretrained(directory, attn_implementation="eager").eval()

    class Outputs(torch.nn.Module):  # keyword arguments (transformers' positional order has changed)
        def __init__(self, bert) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            out = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return out.last_hidden_state, out.pooler_output

    ids = torch.ones(2, 16, dtype=torch.long)
    torch.onnx.export(Outputs(model), (ids, torch.ones_like(ids), torch.zeros_like(ids)), str(path),
                      input_names=INPUTS, output_names=["last_hidden_state", "pooler_output"],
                      dynamic_axes={n: {0: "batch", 1: "tokens"} for n in INPUTS}, opset_version=17, dynamo=False)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", nargs="+", default=["mini:1x128", "mini:full", "base:var", "base:1x128"])
    args = parser.parse_args()
    import onnx
    import onnxruntime as ort
    import transformers

    import speed
    from bertkit import BertConfig, BertModel
    from bertkit.export import export_onnx, quantize_onnx
    from bertkit.hardware import cpu_name
    from int8 import one_by_128

    transformers.logging.set_verbosity_error()
    rows, graphs = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for size in dict.fromkeys(cell.split(":")[0] for cell in args.cells):
            config = BertConfig.preset(size, vocab_size=speed.VOCAB)
            torch.manual_seed(0)
            directory = work / size
            BertModel(config).save_pretrained(directory)
            sessions = {}
            for name, exported in (("bertkit graph", export_onnx(BertModel.from_pretrained(directory).eval(),
                                                                 work / f"{size}.bk.onnx")),
                                   ("transformers graph", export_transformers(directory, work / f"{size}.hf.onnx"))):
                quantized = quantize_onnx(exported, work / f"{size}.{name[0]}.int8.onnx",
                                          num_heads=config.num_attention_heads, hidden_size=config.hidden_size)
                ops = collections.Counter(n.op_type for n in onnx.load(str(quantized)).graph.node)
                graphs[f"{size} {name}"] = dict(ops.most_common())
                options = ort.SessionOptions()
                options.intra_op_num_threads = torch.get_num_threads()
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                sessions[name] = ort.InferenceSession(str(quantized), options, providers=["CPUExecutionProvider"])
            for kind in (cell.split(":")[1] for cell in args.cells if cell.startswith(size + ":")):
                batch = one_by_128(speed.VOCAB) if kind == "1x128" else speed.make_batch(kind)
                feeds = {n: batch[n].numpy() for n in INPUTS}
                seconds = speed.alternate({n: (lambda s=s: s.run(None, feeds)) for n, s in sessions.items()}, 5,
                                          min_seconds=6.0, block=4, settle=0.3, max_repeats=120)
                keep = batch["attention_mask"].bool()
                a, b = (torch.from_numpy(s.run(None, feeds)[0])[keep] for s in sessions.values())
                row = {"size": size, "batch": kind,
                       **{f"{n} ms": 1e3 * s for n, s in seconds.items()},
                       "transformers graph vs bertkit graph": seconds["bertkit graph"] / seconds["transformers graph"],
                       "worst-token cosine between them": float(torch.nn.functional.cosine_similarity(a, b).min())}
                rows.append(row)
                print(json.dumps(row), flush=True)
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu_name(), "threads": torch.get_num_threads(),
              "onnxruntime": ort.__version__, "rows": rows, "graph ops": graphs}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "onnx_anchor.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
