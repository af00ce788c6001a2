"""CUDA: the GPU side of tests/test_device.py. Every test here needs a GPU and is skipped, with the reason, where
torch sees none (`pytest -m gpu` on a GPU machine runs them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bertkit.model as model_module
from bertkit import Tokenizer
from bertkit.cli import main
from bertkit.config import BertConfig

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (torch sees no GPU here)")]

ROWS = [("1", "这家酒店非常好，服务很棒"), ("0", "房间太差了，服务很糟糕"),
        ("1", "环境好，很满意"), ("0", "糟糕透了，不满意")]
ROOT = Path(__file__).resolve().parents[1]


def _encoder() -> model_module.BertModel:
    config = BertConfig(vocab_size=1000, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=512, max_position_embeddings=128)
    torch.manual_seed(0)
    return model_module.BertModel(config).eval()


def _batch():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (8, 64), generator=generator)
    lengths = torch.randint(8, 65, (8,), generator=generator)
    mask = (torch.arange(64)[None, :] < lengths[:, None]).long()
    return ids, mask, torch.zeros_like(ids)


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 2e-3), (torch.bfloat16, 6e-2)])
def test_gpu_outputs_match_the_cpu(dtype, tolerance):
    """The packed var-len kernel on the GPU (fp32 with TF32 off, and bf16 autocast) against fp32 on the CPU."""
    model = _encoder()
    ids, mask, types = _batch()
    with torch.no_grad():
        expected = model(ids, mask, types).last_hidden_state
        gpu = model.to("cuda")
        torch.backends.cuda.matmul.allow_tf32 = False
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            got = gpu(ids.cuda(), mask.cuda(), types.cuda()).last_hidden_state.float().cpu()
    assert model_module._varlen_failed is None, model_module._varlen_failed
    keep = mask.bool()
    assert float((got[keep] - expected[keep]).abs().max()) < tolerance


def _classifier(root: Path) -> tuple[Path, Path]:
    data = root / "train.tsv"
    data.write_text("label\ttext\n" + "".join(f"{a}\t{b}\n" for a, b in ROWS * 8), encoding="utf-8")
    Tokenizer.train([b for _, b in ROWS], vocab_size=80, min_frequency=1).save_pretrained(root / "vocab")
    return data, root / "vocab"


def _finetune(data: Path, vocab: Path, out: Path, device: str, *extra: str) -> int:
    return main(["finetune", "--task", "classification", "--train", str(data), "--eval", str(data), "--tokenizer",
                 str(vocab), "--model-size", "tiny", "--max-steps", "20", "--lr", "3e-3", "--batch-size", "8",
                 "--warmup", "2", "--no-progress", "--device", device, "--save-every", "10", "--output-dir",
                 str(out), *extra])


def test_fine_tuning_and_pretraining_steps_on_the_gpu(tmp_path):
    data, vocab = _classifier(tmp_path)
    assert _finetune(data, vocab, tmp_path / "ft", "cuda") == 0
    records = [json.loads(x) for x in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in records if r["kind"] == "eval"][-1]["accuracy"] >= 0.75
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join("\n".join(b for _, b in ROWS) for _ in range(20)) + "\n", encoding="utf-8")
    assert main(["pretrain", "--train", str(corpus), "--tokenizer", str(vocab), "--model-size", "tiny",
                 "--max-steps", "3", "--batch-size", "8", "--max-seq-len", "32", "--no-progress", "--device", "cuda",
                 "--output-dir", str(tmp_path / "pt")]) == 0
    train = [json.loads(x) for x in (tmp_path / "pt" / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in train if r["kind"] == "train")


@pytest.mark.parametrize(("first", "then"), [("cuda", "cpu"), ("cpu", "cuda")])
def test_resume_across_devices(tmp_path, first, then):
    """A run checkpointed on one device finishes on the other: same step count, finite weights, the warning."""
    data, vocab = _classifier(tmp_path)
    out = tmp_path / "run"
    assert _finetune(data, vocab, out, first, "--max-steps", "10") == 0
    with pytest.warns(UserWarning, match=f"written on {first}, this run is on {then}"):
        assert _finetune(data, vocab, out, then, "--resume", "--allow-resume-changes") == 0
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in records if r["kind"] == "train") == 20


def test_resume_on_the_gpu_continues_the_run(tmp_path):
    """Cut a GPU run at its step-10 checkpoint and resume it: the weights at step 20 equal the uninterrupted run's
    (to 1e-5, not bitwise: the attention kernels' backward passes may sum in another order)."""
    import shutil

    from safetensors.torch import load_file

    data, vocab = _classifier(tmp_path)
    assert _finetune(data, vocab, tmp_path / "whole", "cuda") == 0
    shutil.copytree(tmp_path / "whole", tmp_path / "cut")
    shutil.rmtree(tmp_path / "cut" / "model")
    for later in sorted((tmp_path / "cut" / "checkpoints").glob("step-*"))[1:]:
        shutil.rmtree(later)
    assert _finetune(data, vocab, tmp_path / "cut", "cuda", "--resume") == 0
    a = load_file(tmp_path / "whole" / "model" / "model.safetensors")
    b = load_file(tmp_path / "cut" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=1e-4)


def test_predictor_on_the_gpu_agrees_with_the_cpu(tmp_path):
    from bertkit.predict import Predictor

    data, vocab = _classifier(tmp_path)
    assert _finetune(data, vocab, tmp_path / "ft", "cpu") == 0
    texts = [b for _, b in ROWS]
    cpu = Predictor(tmp_path / "ft" / "model", device="cpu").predict(texts)
    gpu = Predictor(tmp_path / "ft" / "model", device="cuda").predict(texts)
    assert [r["label"] for r in cpu] == [r["label"] for r in gpu]
    for a, b in zip(cpu, gpu, strict=True):
        for label in a["probabilities"]:
            assert abs(a["probabilities"][label] - b["probabilities"][label]) < 1e-3


def _torchrun(nproc: int, data: Path, vocab: Path, out: Path, batch: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "-m", "bertkit.cli", "finetune",
         "--task", "classification", "--train", str(data), "--eval", str(data), "--tokenizer", str(vocab),
         "--model-size", "tiny", "--max-steps", "10", "--batch-size", str(batch), "--no-progress", "--device", "cuda",
         "--output-dir", str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def test_torchrun_launch_on_one_gpu(tmp_path):
    """torchrun with one process per GPU on a one-GPU machine (LOCAL_RANK 0; one process forms no group)."""
    data, vocab = _classifier(tmp_path)
    _torchrun(1, data, vocab, tmp_path / "one", 8)
    assert (tmp_path / "one" / "model" / "model.safetensors").is_file()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="DDP over NCCL needs two GPUs (one process per GPU)")
def test_ddp_over_nccl_equals_one_gpu_on_the_combined_batch(tmp_path):
    """Pre-training, 2 processes x batch 4 over NCCL against 1 process x batch 8, no dropout: the same update (to the
    order of fp32 sums), as tests/test_train.py checks for gloo on the CPU."""
    from safetensors.torch import load_file

    from bertkit import BertForPreTraining

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join("\n".join(b for _, b in ROWS[i:] + ROWS[:i]) for i in range(4)) * 10 + "\n",
                      encoding="utf-8")
    tok = Tokenizer.train([corpus], vocab_size=200, min_frequency=1)
    torch.manual_seed(0)
    config = BertConfig.preset("tiny", vocab_size=len(tok), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    BertForPreTraining(config).save_pretrained(tmp_path / "start")
    tok.save_pretrained(tmp_path / "start")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    common = ["-m", "bertkit.cli", "pretrain", "--train", str(corpus), "--init-from", str(tmp_path / "start"),
              "--max-steps", "2", "--no-progress", "--lr", "1e-3", "--warmup", "1", "--max-seq-len", "32",
              "--device", "cuda", "--no-bf16"]
    for nproc, batch, out in ((1, 8, "one"), (2, 4, "two")):
        result = subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", *common,
                                 "--batch-size", str(batch), "--output-dir", str(tmp_path / out)],
                                env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    a = load_file(tmp_path / "one" / "model" / "model.safetensors")
    b = load_file(tmp_path / "two" / "model" / "model.safetensors")
    start = load_file(tmp_path / "start" / "model.safetensors")
    assert max((a[k] - start[k]).abs().max().item() for k in a) > 1e-4  # the update is real
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=1e-4)
