"""Devices on the CPU-only machine: what `auto` picks, every command's --device, checkpoints that do not depend on
the device, the var-len attention kernel against the per-sequence loop, the fp16 loss-scaling path and the
torch.compile fallback. The CUDA side of the same paths is in tests/test_gpu.py (skipped without a GPU)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import warnings
from collections import namedtuple
from pathlib import Path

import pytest
import torch

import bertkit.model as model_module
from bertkit.cli import main
from bertkit.compiled import CompiledOrEager
from bertkit.config import BertConfig
from bertkit.device import device_of, for_model, resolve_device, to_device
from bertkit.errors import DeviceError
from bertkit.train import autocast_dtype
from tests.conftest import CLASSIFIER_ROWS, finetune_tiny_classifier

ROWS = CLASSIFIER_ROWS


def _no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _fake_gpus(monkeypatch, count: int):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_auto_is_the_cpu_without_cuda_and_the_local_rank_gpu_with_it(monkeypatch):
    _no_cuda(monkeypatch)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device(None) == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu") and resolve_device(torch.device("cpu")).type == "cpu"
    with pytest.raises(DeviceError, match="CUDA is not available here"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match="CUDA is not available here"):
        resolve_device("cuda:0")
    _fake_gpus(monkeypatch, 4)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert resolve_device("auto") == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "2")  # torchrun: one process per GPU
    assert resolve_device("auto") == torch.device("cuda", 2) == resolve_device("cuda")
    assert resolve_device("cuda:3") == torch.device("cuda", 3)  # an explicit index wins over LOCAL_RANK
    with pytest.raises(DeviceError, match=r"4 GPU\(s\), numbered 0 to 3"):
        resolve_device("cuda:4")
    monkeypatch.setenv("LOCAL_RANK", "5")
    with pytest.raises(DeviceError, match="LOCAL_RANK 5"):
        resolve_device("auto")
    for bad in ("gpu", "mps", "cuda:x", "cuda:-1", ""):
        if bad == "":
            continue  # empty is auto
        with pytest.raises(DeviceError, match="expected auto, cpu, cuda or cuda:N"):
            resolve_device(bad)


def test_to_device_moves_nested_tensors_and_leaves_the_rest():
    Point = namedtuple("Point", "x y")
    batch = {"ids": torch.ones(2, 3), "parts": [torch.zeros(1), ("a", 3)], "point": Point(1, 2), "n": 4}
    moved = to_device(batch, torch.device("cpu"))
    assert moved["ids"] is batch["ids"] and moved["parts"][0] is batch["parts"][0]  # already there: no copy
    assert moved["parts"][1] == ("a", 3) and moved["point"] is batch["point"] and moved["n"] == 4
    assert to_device(torch.ones(2), torch.device("meta")).device.type == "meta"
    linear = torch.nn.Linear(2, 2).to("meta")
    assert device_of(linear).type == "meta" and for_model(linear, {"x": torch.ones(1)})["x"].device.type == "meta"
    assert device_of(torch.nn.ReLU()).type == "cpu"


def test_autocast_dtype_is_bf16_where_native_fp16_on_older_gpus_else_fp32(monkeypatch):
    import bertkit.train as train

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    monkeypatch.setattr(train, "bf16_supported", lambda device: False)
    assert autocast_dtype(cpu, None) is None  # emulated bf16 would be slower than fp32
    assert autocast_dtype(cpu, True) == torch.bfloat16 and autocast_dtype(cpu, False) is None
    assert autocast_dtype(gpu, None) == torch.float16  # a GPU without bf16 (V100, T4): fp16 + loss scaling
    monkeypatch.setattr(train, "bf16_supported", lambda device: True)
    assert autocast_dtype(cpu, None) == torch.bfloat16 == autocast_dtype(gpu, None)
    assert autocast_dtype(gpu, False) is None


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return finetune_tiny_classifier(tmp_path_factory.mktemp("dev"), "--device", "cpu", "--save-every", "10")


def test_every_command_takes_device_cpu_and_refuses_a_missing_gpu(classifier, tmp_path, capsys, monkeypatch):
    model = str(classifier / "run" / "model")
    data = str(classifier / "train.tsv")
    texts = tmp_path / "in.txt"
    texts.write_text("服务很棒，非常好\n房间糟糕，不满意\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["evaluate", model, "--data", data, "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == 1.0
    assert main(["predict", model, "--input", str(texts), "--output", str(tmp_path / "p.jsonl"), "--no-progress",
                 "--device", "cpu"]) == 0
    assert [json.loads(x)["label"] for x in (tmp_path / "p.jsonl").read_text().splitlines()] == ["1", "0"]
    assert main(["embed", model, "--input", str(texts), "--output", str(tmp_path / "v.npy"), "--device", "cpu"]) == 0
    pytest.importorskip("onnxruntime")
    assert main(["export", model, "--onnx", str(tmp_path / "m.onnx"), "--device", "cpu"]) == 0
    _no_cuda(monkeypatch)
    capsys.readouterr()
    commands = [["evaluate", model, "--data", data], ["predict", model, "--input", str(texts)],
                ["embed", model, "--input", str(texts), "--output", str(tmp_path / "w.npy")],
                ["export", model, "--onnx", str(tmp_path / "n.onnx")], ["serve", model],
                ["finetune", "--task", "classification", "--train", data, "--init-from", model, "--output-dir",
                 str(tmp_path / "ft")],
                ["pretrain", "--train", str(texts), "--tokenizer", model, "--output-dir", str(tmp_path / "pt")]]
    for argv in commands:
        assert main([*argv, "--device", "cuda"]) == 2, argv
        err = capsys.readouterr().err
        assert "device 'cuda': CUDA is not available here" in err and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "ft").exists() and not (tmp_path / "pt").exists()  # refused before any work
    assert not (tmp_path / "w.npy").exists() and not (tmp_path / "n.onnx").exists()


def test_a_checkpoint_written_on_another_device_resumes_here(classifier, tmp_path, capsys):
    """Checkpoints hold CPU tensors only and say which device wrote them; a checkpoint marked as written on a GPU
    resumes on the CPU with a warning that names the difference, and continues to the same weights (the CPU random
    state comes from the checkpoint either way)."""
    import shutil

    from safetensors.torch import load_file

    run = classifier / "run"
    state_path = sorted((run / "checkpoints").glob("step-*"))[0] / "training_state.pt"
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    assert state["device_type"] == "cpu" and state["cuda_rng"] is None
    tensors = [v for v in state["optimizer"]["state"].values() for v in v.values() if isinstance(v, torch.Tensor)]
    assert tensors and all(t.device.type == "cpu" for t in tensors)
    gpu_run = tmp_path / "run"
    shutil.copytree(run, gpu_run)
    for later in sorted((gpu_run / "checkpoints").glob("step-*"))[1:]:
        shutil.rmtree(later)
    first = sorted((gpu_run / "checkpoints").glob("step-*"))[0]
    state["device_type"], state["cuda_rng"] = "cuda", [torch.zeros(16, dtype=torch.uint8)]
    torch.save(state, first / "training_state.pt")
    manifest = json.loads((first / "checkpoint.json").read_text())
    from bertkit.fileio import sha256_file

    manifest["files"]["training_state.pt"] = sha256_file(first / "training_state.pt")
    (first / "checkpoint.json").write_text(json.dumps(manifest))
    data = str(classifier / "train.tsv")
    with pytest.warns(UserWarning, match="written on cuda, this run is on cpu"):
        assert main(["finetune", "--task", "classification", "--train", data, "--eval", data, "--tokenizer",
                     str(classifier / "vocab"), "--model-size", "tiny", "--max-steps", "30", "--lr", "3e-3",
                     "--batch-size", "8", "--warmup", "2", "--no-progress", "--no-bf16", "--device", "cpu",
                     "--save-every", "10", "--output-dir", str(gpu_run), "--resume"]) == 0
    ours, theirs = load_file(gpu_run / "model" / "model.safetensors"), load_file(run / "model" / "model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def _tiny_encoder(dropout: float = 0.0) -> model_module.BertModel:
    config = BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=64, hidden_dropout_prob=dropout,
                        attention_probs_dropout_prob=dropout)
    torch.manual_seed(0)
    return model_module.BertModel(config)


def test_the_var_len_kernel_equals_the_per_sequence_loop(monkeypatch):
    """The packed layout's one-call var-len attention (nested jagged SDPA; on CUDA the FlashAttention/memory-
    efficient kernels) gives the per-sequence loop's outputs and gradients; here it runs on the CPU."""
    model = _tiny_encoder()
    ids = torch.randint(5, 100, (4, 20), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, 12:] = 0
    mask[2, 5:] = 0
    mask[3, 19:] = 0
    results = {}
    for mode in ("loop", "kernel"):
        monkeypatch.setattr(model_module, "VARLEN", mode)
        model.zero_grad()
        hidden = model(ids, mask, torch.zeros_like(ids)).last_hidden_state
        hidden[mask.bool()].square().sum().backward()
        results[mode] = (hidden.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert model_module._varlen_failed is None
    torch.testing.assert_close(results["kernel"][0], results["loop"][0], atol=1e-5, rtol=1e-5)
    for a, b in zip(results["kernel"][1], results["loop"][1], strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)  # fp32 sums in another order


def test_the_var_len_kernel_falls_back_to_the_loop_once_with_a_warning(monkeypatch):
    model = _tiny_encoder().eval()
    ids = torch.randint(5, 100, (2, 10), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    monkeypatch.setattr(model_module, "VARLEN", "loop")
    with torch.no_grad():
        expected = model(ids, mask).last_hidden_state
    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def no_nested(q, *args, **kwargs):
        if q.is_nested:
            raise RuntimeError("No viable backend for scaled_dot_product_attention was found.")
        return real_sdpa(q, *args, **kwargs)

    monkeypatch.setattr(model_module.F, "scaled_dot_product_attention", no_nested)
    monkeypatch.setattr(model_module, "VARLEN", "kernel")
    monkeypatch.setattr(model_module, "_varlen_failed", None)
    with pytest.warns(UserWarning, match="var-len attention kernel unavailable .*No viable backend"), torch.no_grad():
        got = model(ids, mask).last_hidden_state
    torch.testing.assert_close(got, expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once per process, not at every layer and batch
        with torch.no_grad():
            model(ids, mask)


def test_compile_falls_back_to_eager_with_a_warning(monkeypatch):
    model = _tiny_encoder().eval()
    model.head = torch.nn.Linear(2, 2)  # a task head, reached through the wrapper as tasks reach DDP's .module

    def broken_compile(module, **kwargs):
        def run(*args, **kw):
            raise RuntimeError("inductor: no working C++ compiler\nmore detail")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    wrapped = CompiledOrEager(model)
    ids = torch.randint(5, 100, (2, 8))
    with pytest.warns(UserWarning, match=r"--compile: torch.compile failed \(RuntimeError: inductor: no working"):
        out = wrapped(ids)
    torch.testing.assert_close(out.last_hidden_state, model(ids).last_hidden_state)
    assert wrapped.head is model.head and wrapped.failed.startswith("RuntimeError")
    assert wrapped(ids).last_hidden_state.shape == (2, 8, 64)  # eager from now on, no second warning needed


def test_fp16_autocast_with_loss_scaling_trains(classifier, tmp_path, monkeypatch):
    """The path a GPU without bf16 takes (fp16 autocast + GradScaler, overflow steps skipped and the scale halved),
    run on the CPU: the run finishes with finite weights that still classify the training set."""
    import bertkit.train as train

    monkeypatch.setattr(train, "autocast_dtype", lambda device, bf16: torch.float16)
    real_scaler = torch.amp.GradScaler

    def big_scale(device, enabled=True):  # starts so high that the first steps overflow
        return real_scaler(device, init_scale=2.0**24, enabled=enabled)

    monkeypatch.setattr(torch.amp, "GradScaler", big_scale)
    data = str(classifier / "train.tsv")
    out = tmp_path / "fp16"
    assert main(["finetune", "--task", "classification", "--train", data, "--eval", data, "--tokenizer",
                 str(classifier / "vocab"), "--model-size", "tiny", "--max-steps", "40", "--lr", "3e-3",
                 "--batch-size", "8", "--warmup", "2", "--no-progress", "--device", "cpu",
                 "--output-dir", str(out)]) == 0
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    overflows = [r for r in records if r["kind"] == "skipped"]
    assert overflows and all(r["reason"] == "fp16 overflow" for r in overflows)
    assert overflows[-1]["scale"] < 2.0**24
    assert [r for r in records if r["kind"] == "eval"][-1]["accuracy"] >= 0.75


_FREE_A_LARGE_BLOCK = """
import sys, torch
from bertkit.memory import keep_freed_memory
def rss():
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmRSS")).split()[1]) * 1024
took = keep_freed_memory() if sys.argv[1] == "keep" else False
x = torch.ones(80 * 2**20 // 4)  # 80 MiB, over glibc's 32 MiB mmap threshold: mapped afresh by default
before = rss()
del x
print(took, before - rss())
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
@pytest.mark.parametrize("mode, kept", [("keep", True), ("default", False)])
def test_keep_freed_memory_makes_malloc_keep_a_large_freed_block(mode, kept):
    """With keep_freed_memory, freeing an 80 MiB tensor keeps its memory in the process for the next large
    activation; under glibc's defaults it is unmapped (resident memory drops by the block)."""
    done = subprocess.run([sys.executable, "-c", _FREE_A_LARGE_BLOCK, mode], capture_output=True, text=True,
                          check=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")})
    took, dropped = done.stdout.split()
    assert took == str(kept)
    if kept:
        assert int(dropped) < 8 * 2**20
    else:
        assert int(dropped) > 60 * 2**20


@pytest.mark.parametrize("env, kept", [({}, False), ({"BERTKIT_MALLOC": "keep"}, True),
                                       ({"BERTKIT_MALLOC": "system"}, False)])
def test_the_cli_keeps_freed_memory_only_when_asked(env, kept, tmp_path, monkeypatch, capsys):
    """BERTKIT_MALLOC=keep opts a bertkit process into keep_freed_memory, for any command (here one that then fails
    on a missing checkpoint); without it glibc's defaults stay."""
    import bertkit.cli as cli

    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(True) or True)
    monkeypatch.delenv("BERTKIT_MALLOC", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["predict", str(tmp_path / "missing"), "--input", str(tmp_path / "none.txt")]) == 2
    assert calls == ([True] if kept else [])
