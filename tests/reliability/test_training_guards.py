"""Training guards: non-finite steps are skipped and logged, repeated ones stop the run with the cause named and
the last good checkpoint intact; same seed + same data = same model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from bertkit import BertConfig, BertForPreTraining, Tokenizer
from bertkit.rundir import latest_checkpoint, verify_checkpoint
from bertkit.tasks.pretraining import PretrainingOptions, PretrainingTask, tokenize_documents
from bertkit.train import TrainConfig, TrainingError, fit


class Poisoned(PretrainingTask):
    """Returns NaN losses at the given steps (counted by calls of the loss)."""

    def __init__(self, *args, bad_calls: set[int], **kwargs):
        super().__init__(*args, **kwargs)
        self.bad_calls, self.calls = bad_calls, 0

    def loss(self, model, batch):
        self.calls += 1
        parts = super().loss(model, batch)
        if self.calls in self.bad_calls:
            parts["mlm"] = parts["mlm"] * float("nan")
        return parts


def _task(bad_calls):
    texts = [["北京欢迎你。", "今天天气很好。"], ["人民日报发表社论。", "新年快乐！"],
             ["我们去上海。", "上海很大。"]] * 10
    tok = Tokenizer.train([s for d in texts for s in d], vocab_size=60, min_frequency=1)
    docs = tokenize_documents(texts, tok)
    return tok, Poisoned.from_documents(tok, docs, docs[:3], PretrainingOptions(max_seq_len=32), bad_calls=bad_calls)


def test_a_non_finite_step_is_skipped_and_logged(tmp_path):
    tok, task = _task({3})
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig.preset("tiny", vocab_size=len(tok)))
    config = TrainConfig(output_dir=str(tmp_path), batch_size=4, max_steps=6, lr=1e-3, progress=False, bf16=False,
                         log_every=1)
    with pytest.warns(UserWarning, match="step 3: non-finite loss or gradient, update skipped"):
        fit(model, task, config)
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {"kind": "skipped", "step": 3, "reason": "non-finite"} in records
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the NaN never reached the weights


def test_repeated_non_finite_steps_stop_with_the_cause_and_keep_the_last_checkpoint(tmp_path):
    tok, task = _task(set(range(5, 100)))
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig.preset("tiny", vocab_size=len(tok)))
    config = TrainConfig(output_dir=str(tmp_path), batch_size=4, max_steps=20, lr=1e-3, progress=False, bf16=False,
                         save_every=2, max_bad_steps=3)
    with pytest.raises(TrainingError, match=r"step 7: 3 consecutive non-finite losses or gradients; stopping\. "
                                            r"Likely causes: learning rate too high"), pytest.warns(UserWarning):
        fit(model, task, config)
    good = latest_checkpoint(tmp_path)
    assert good is not None and good.name == "step-00000006" and verify_checkpoint(good)
    weights = load_file(good / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())
    # steps 5 and 6 were skipped: the checkpoint written after them holds exactly step 4's weights
    before = load_file(tmp_path / "checkpoints" / "step-00000004" / "model.safetensors")
    assert all(torch.equal(weights[k], before[k]) for k in weights)


def test_same_seed_same_data_same_model(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("北京举行新年音乐会。江泽民等出席。\n今天天气很好。\n\n人民日报发表社论。新年快乐！\n" * 40,
                      encoding="utf-8")
    runs = []
    for name in ("a", "b"):
        subprocess.run([sys.executable, "-m", "bertkit.cli", "pretrain", "--train", str(corpus), "--output-dir",
                        str(tmp_path / name), "--model-size", "tiny", "--max-steps", "8", "--batch-size", "8",
                        "--no-bf16", "--no-progress", "--vocab-size", "100", "--whole-word-masking"],
                       check=True, capture_output=True, timeout=300)
        runs.append(load_file(tmp_path / name / "model" / "model.safetensors"))
    vocab = [(tmp_path / name / "model" / "vocab.txt").read_bytes() for name in ("a", "b")]
    assert vocab[0] == vocab[1]
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
