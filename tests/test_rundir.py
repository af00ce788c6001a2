"""The run directory's lock: one claim takes it, a claim inside it shares it, and the block's end releases it."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from bertkit.errors import TrainingError
from bertkit.rundir import LOCK_NAME, claim_run_dir, held_run_dir


def _locked_by_someone(run: Path) -> bool:
    """Whether a second open file of the lock (as another run would open it) is refused the flock."""
    fd = os.open(run / LOCK_NAME, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_a_claim_holds_the_lock_for_its_block_and_a_nested_claim_shares_it(tmp_path):
    run = tmp_path / "run"
    with claim_run_dir(run, resume=False, overwrite=False) as output:
        assert output == run and held_run_dir(run) and _locked_by_someone(run)
        assert (run / LOCK_NAME).read_text() == f"{os.getpid()}\n"
        with claim_run_dir(run, resume=False, overwrite=False):  # `pretrain` claims it, then its `fit` does
            assert held_run_dir(run)
        assert held_run_dir(run) and _locked_by_someone(run)  # the outer claim releases, not the inner one
    assert not held_run_dir(run) and not _locked_by_someone(run)
    with pytest.raises(KeyError), claim_run_dir(run, resume=False, overwrite=False):
        raise KeyError("any failure inside the block")
    assert not held_run_dir(run) and not _locked_by_someone(run)


def test_a_refused_claim_keeps_nothing_and_overwrite_clears_the_old_run(tmp_path):
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "model" / "config.json").write_text("{}")
    (run / "tokenizer").mkdir()
    refused = pytest.raises(TrainingError, match=r"already holds a run \(model\)")
    with refused, claim_run_dir(run, resume=False, overwrite=False):
        pass
    assert not held_run_dir(run) and not _locked_by_someone(run)
    with claim_run_dir(run, resume=False, overwrite=True, own=("tokenizer",)):
        assert not (run / "model").exists() and not (run / "tokenizer").exists()
        assert (run / "checkpoints").is_dir()
    with claim_run_dir(run, resume=True, overwrite=False, rank=1):  # other ranks never touch the directory
        assert not held_run_dir(run)
