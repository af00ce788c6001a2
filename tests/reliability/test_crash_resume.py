"""kill -9 at random moments during pre-training and fine-tuning, then --resume: no corrupt checkpoint is ever
loaded, nothing finished before the last save is lost, and the final model equals an uninterrupted run's."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bertkit.rundir import checkpoint_dirs, latest_checkpoint

pytestmark = pytest.mark.slow
CYCLES = int(os.environ.get("BERTKIT_KILL_CYCLES", "6"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from bertkit.corpus import prepare_embedded_corpus

    out = tmp_path_factory.mktemp("corpus")
    prepare_embedded_corpus(out)
    return out


def _pretrain(corpus: Path, output: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bertkit.cli", "pretrain", "--train", str(corpus / "heldout.txt"),
            "--output-dir", str(output), "--model-size", "tiny", "--vocab-size", "2000", "--batch-size", "8",
            "--max-steps", "400", "--save-every", "10", "--no-bf16", "--no-progress", "--seed", "5", *extra]


def _finetune(corpus: Path, output: Path, init: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bertkit.cli", "finetune", "--task", "classification", "--train",
            str(corpus / "sentiment" / "test.tsv"), "--format", "snownlp", "--init-from", str(init),
            "--output-dir", str(output), "--batch-size", "8", "--max-steps", "300", "--save-every", "10",
            "--no-bf16", "--no-progress", "--seed", "5", "--limit", "400", *extra]


def _newest_name(output: Path) -> str | None:
    """The newest checkpoint directory's name: a cheap progress signal, polled while the run works (verifying
    checksums here would hash whole checkpoints many times a second beside the run being timed)."""
    dirs = checkpoint_dirs(output)
    return dirs[0].name if dirs else None


def _kill_resume_loop(make_command, output: Path, rng: random.Random) -> int:
    """Start, kill -9 at a random moment, resume; repeat until a run finishes. Returns the kills survived.

    The moment is drawn relative to the run's own progress, not to the clock alone (a fixed delay lets a fast
    machine finish before the kill): one kill in four lands during start-up, the others a random 0-1.5 s after
    the run has saved a new checkpoint — mid-step, mid-save or mid-evaluation."""
    kills = 0
    command = make_command(output)
    while True:
        process = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if kills < CYCLES:
            start_state, started = _newest_name(output), time.monotonic()
            early = rng.random() < 0.25
            deadline = started + rng.uniform(0.5, 2.0) if early else None
            while process.poll() is None and time.monotonic() - started < 300:
                if deadline is None and _newest_name(output) != start_state:
                    deadline = time.monotonic() + rng.uniform(0.0, 1.5)
                if deadline is not None and time.monotonic() >= deadline:
                    break
                time.sleep(0.05)
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait()
                kills += 1
                newest = latest_checkpoint(output)  # whatever it finds has passed its checksums
                assert newest is None or (newest / "model.safetensors").is_file()
                command = [*make_command(output), "--resume"]
                continue
        process.wait(timeout=600)
        assert process.returncode == 0, process.stderr.read().decode()[-2000:]
        return kills


def _same(a: Path, b: Path) -> bool:
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_pretraining_survives_random_kills(tmp_path, corpus):
    subprocess.run(_pretrain(corpus, tmp_path / "reference"), check=True, env=ENV, capture_output=True)
    kills = _kill_resume_loop(lambda out: _pretrain(corpus, out), tmp_path / "killed", random.Random(1))
    print(f"pre-training: {kills} kill -9 / resume cycles")
    assert kills == CYCLES
    assert _same(tmp_path / "reference" / "model", tmp_path / "killed" / "model")


def test_finetuning_survives_random_kills(tmp_path, corpus):
    base = tmp_path / "base"
    subprocess.run(_pretrain(corpus, base, "--max-steps", "6"), check=True, env=ENV, capture_output=True)
    subprocess.run(_finetune(corpus, tmp_path / "reference", base / "model"), check=True, env=ENV,
                   capture_output=True)
    started = time.time()
    kills = _kill_resume_loop(lambda out: _finetune(corpus, out, base / "model"), tmp_path / "killed",
                              random.Random(2))
    print(f"fine-tuning: {kills} kill -9 / resume cycles in {time.time() - started:.0f}s")
    assert kills == CYCLES
    assert _same(tmp_path / "reference" / "model", tmp_path / "killed" / "model")
