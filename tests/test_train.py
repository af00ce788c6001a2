"""The training loop: exact resume after kill -9, torn checkpoints never loaded, DDP == one big batch, schedule."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from bertkit import BertConfig, BertForPreTraining, Tokenizer
from bertkit.rundir import latest_checkpoint, verify_checkpoint
from bertkit.train import parameter_groups, warmup_linear_decay

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    """~360 real documents (People's Daily articles and reviews) from the embedded corpus."""
    from bertkit.corpus import prepare_embedded_corpus

    out = tmp_path_factory.mktemp("corpus")
    prepare_embedded_corpus(out)
    return out / "heldout.txt"


@pytest.fixture(scope="session")
def tiny_start(tmp_path_factory, small_corpus) -> Path:
    """A tiny BERT with its vocabulary and no dropout (so runs can be compared across process layouts)."""
    out = tmp_path_factory.mktemp("tiny")
    tok = Tokenizer.train([small_corpus], vocab_size=3000, min_frequency=2)
    torch.manual_seed(0)
    config = BertConfig.preset("tiny", vocab_size=len(tok), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    BertForPreTraining(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _pretrain_cmd(corpus: Path, output: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bertkit.cli", "pretrain", "--train", str(corpus), "--output-dir", str(output),
            "--model-size", "tiny", "--vocab-size", "2000", "--batch-size", "8", "--max-steps", "24",
            "--save-every", "4", "--log-every", "2", "--no-bf16", "--no-progress", "--seed", "3",
            "--whole-word-masking", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "model.safetensors")


def test_kill_9_then_resume_equals_uninterrupted_run(tmp_path, small_corpus):
    """Dropout on, fp32: the resumed run must reproduce the uninterrupted one bit for bit."""
    full = tmp_path / "full"
    subprocess.run(_pretrain_cmd(small_corpus, full), check=True, env=_env(), capture_output=True, timeout=300)
    killed = tmp_path / "killed"
    process = subprocess.Popen(_pretrain_cmd(small_corpus, killed), env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline:
        done = [d for d in (killed / "checkpoints").glob("step-*") if (d / "checkpoint.json").is_file()]
        if any(int(d.name.split("-")[1]) >= 12 for d in done):
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "model").exists(), "the run finished before it could be killed"
    resumed_at = latest_checkpoint(killed)
    assert resumed_at is not None and int(resumed_at.name.split("-")[1]) < 24
    # resumed with two batch-building workers: the same batches, so the same weights
    result = subprocess.run(_pretrain_cmd(small_corpus, killed, "--resume", "--workers", "2"), check=True, env=_env(),
                            capture_output=True, text=True, timeout=300)
    assert f"resumed from {resumed_at}" in result.stdout
    a, b = _weights(full / "model"), _weights(killed / "model")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    # no step replayed or lost in the log: each logged step exactly once, same losses as the uninterrupted run
    records = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r["kind"] == "train"]
    assert steps == list(range(2, 25, 2))
    reference = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in records if r["kind"] == "train"] == [r["loss"] for r in reference
                                                                    if r["kind"] == "train"]


def test_step_batches_are_the_same_for_any_number_of_workers_across_epochs():
    from bertkit.loader import batches
    from bertkit.tasks.pretraining import PretrainingOptions, PretrainingTask
    from bertkit.train import TrainConfig

    rng = np.random.default_rng(0)
    docs = [[list(rng.integers(5, 60, int(rng.integers(3, 20)))) for _ in range(int(rng.integers(2, 6)))]
            for _ in range(40)]
    tok = Tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *[f"w{i}" for i in range(60)]])
    task = PretrainingTask.from_documents(tok, docs, [], PretrainingOptions(max_seq_len=32), seed=5)
    examples = task.num_examples(0)
    runs = {}
    for workers in (0, 2, 3):
        config = TrainConfig(batch_size=4, grad_accum=2, workers=workers, seed=5)
        steps = list(batches(task, config, world=1, rank=0, epoch=0, step_in_epoch=1, steps=examples // 8 + 3))
        runs[workers] = steps
    assert {e for e, _, _ in runs[0]} == {0, 1}  # the run crosses an epoch boundary
    for workers in (2, 3):
        assert [(e, s) for e, s, _ in runs[workers]] == [(e, s) for e, s, _ in runs[0]]
        for (_, _, a), (_, _, b) in zip(runs[0], runs[workers], strict=True):
            assert all(torch.equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in x)


def test_torn_or_damaged_checkpoints_are_never_loaded(tmp_path, small_corpus):
    run = tmp_path / "run"
    subprocess.run(_pretrain_cmd(small_corpus, run, "--max-steps", "8", "--keep-checkpoints", "3"), check=True,
                   env=_env(), capture_output=True, timeout=300)
    root = run / "checkpoints"
    newest, older = sorted(root.glob("step-*"), reverse=True)[:2]
    assert verify_checkpoint(newest) is not None
    # a write torn before the rename leaves only a temporary directory: ignored
    (root / ".tmp-step-00000099-1").mkdir()
    assert latest_checkpoint(run) == newest
    # a damaged file (torn mid-write, disk error, edited by hand) fails its checksum: the older one is used
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.warns(UserWarning, match="incomplete or damaged checkpoint"):
        assert latest_checkpoint(run) == older
    (older / "checkpoint.json").unlink()  # no manifest: never complete
    with pytest.warns(UserWarning):
        assert latest_checkpoint(run) not in (newest, older)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_equal_one_process_on_the_combined_batch(tmp_path, small_corpus, tiny_start):
    common = ["pretrain", "--train", str(small_corpus), "--init-from", str(tiny_start), "--max-steps", "2",
              "--no-bf16", "--no-progress", "--log-every", "1", "--lr", "1e-3", "--warmup", "1"]
    single = tmp_path / "single"
    subprocess.run([sys.executable, "-m", "bertkit.cli", *common, "--batch-size", "8", "--output-dir", str(single)],
                   check=True, env=_env(), capture_output=True, timeout=300)
    ddp = tmp_path / "ddp"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
         "-m", "bertkit.cli", *common, "--batch-size", "4", "--output-dir", str(ddp)],
        env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = _weights(single / "model"), _weights(ddp / "model")
    start = load_file(tiny_start / "model.safetensors")
    moved = max((a[k] - start[k]).abs().max().item() for k in a)
    assert moved > 1e-4  # the update is real
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-6, f"DDP update differs from the single-process update by {worst}"
    losses_single = [json.loads(x)["loss"] for x in (single / "metrics.jsonl").read_text().splitlines()
                     if '"train"' in x]
    losses_ddp = [json.loads(x)["loss"] for x in (ddp / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    assert losses_single == pytest.approx(losses_ddp, abs=1e-5)


def test_schedule_and_weight_decay_groups():
    factor = warmup_linear_decay(total_steps=100, warmup_steps=10)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(10) == pytest.approx(1.0) and factor(55) == pytest.approx(0.5) and factor(100) == 0.0
    model = BertForPreTraining(BertConfig.preset("tiny", vocab_size=50))
    decay, no_decay = parameter_groups(model, 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(n.endswith("weight") and "norm" not in n for n in (names[id(p)] for p in decay["params"]))
    assert {names[id(p)] for p in no_decay["params"]} >= {"mlm_bias", "bert.embeddings.norm.weight",
                                                           "bert.layers.0.qkv.bias"}


def test_pretraining_learns_and_writes_metrics_and_curves(tmp_path, small_corpus):
    from bertkit.tasks.pretraining import PretrainingOptions, pretrain
    from bertkit.train import TrainConfig

    config = TrainConfig(output_dir=str(tmp_path / "run"), batch_size=16, max_steps=60, lr=2e-3, warmup=5,
                         eval_every=30, log_every=10, progress=False, bf16=False)
    result = pretrain([small_corpus], config, heldout_fraction=0.1, vocab_size=2000, model_size="tiny",
                      options=PretrainingOptions(max_seq_len=64))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert train[-1]["loss_mlm"] < train[0]["loss_mlm"] - 0.5
    assert [e["step"] for e in evals] == [30, 60]
    assert evals[-1]["mlm_loss"] < evals[0]["mlm_loss"]  # held-out loss falls between the two evaluations
    assert evals[-1]["mlm_accuracy"] > 20 / 2000  # far above chance (1 / vocabulary)
    assert 0 <= evals[-1]["nsp_accuracy"] <= 1
    assert result.metrics == {k: v for k, v in evals[-1].items() if k not in ("kind", "step", "epoch")}
    png = (tmp_path / "run" / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    model = BertForPreTraining.from_pretrained(tmp_path / "run" / "model")
    assert model.config.vocab_size == len(Tokenizer.from_pretrained(tmp_path / "run" / "model"))
