"""The thread governor: packed batches narrow to one thread while the calling thread waits for a CPU (measured from
schedstat), unpadded batches keep every thread, the count comes back after each pass, and nothing changes in
training or where waiting is low."""

from __future__ import annotations

import pytest
import torch

from bertkit import BertConfig, BertModel, threads
from bertkit.threads import ThreadGovernor

CONFIG = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=37, max_position_embeddings=16)


@pytest.fixture
def governed(monkeypatch):
    """A fresh governor over a fake clock of waiting: each read of the calling thread's run delay advances it by
    `wait[0]` seconds (the share of a pass spent waiting is then about wait / pass time)."""
    fresh = ThreadGovernor()
    fresh.enabled = True
    monkeypatch.setattr(threads, "GOVERNOR", fresh)
    import bertkit.model as model_module

    monkeypatch.setattr(model_module, "GOVERNOR", fresh)
    wait = [0.0]
    total = [0]

    def fake_delay(tid):
        total[0] += int(wait[0] * 1e9)
        return total[0]

    monkeypatch.setattr(threads, "run_delay", fake_delay)
    monkeypatch.setattr(threads, "WINDOW", 0.0)  # every pass decides
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield fresh, wait
    torch.set_num_threads(previous)


def _threads_in_layers(model):
    seen = []
    model.layers[0].register_forward_pre_hook(lambda m, a: seen.append(torch.get_num_threads()))
    return seen


def test_packed_batches_narrow_while_the_caller_waits_and_unpadded_ones_do_not(governed):
    governor, wait = governed
    torch.manual_seed(0)
    model = BertModel(CONFIG).eval()
    seen = _threads_in_layers(model)
    ids = torch.randint(4, 100, (3, 8))
    padded = torch.ones_like(ids)
    padded[0, 5:] = 0
    with torch.no_grad():
        model(ids, padded)  # no waiting: measured at full width, nothing narrows
        model(ids, padded)
        assert seen == [2, 2] and governor.narrowed == 0
        wait[0] = 10.0  # the pass's thread waited far more than THRESHOLD of its time
        model(ids, padded)  # measured: contended from now on
        reference = model(ids, padded).last_hidden_state  # narrowed
        assert seen[-1] == 1 and governor.narrowed == 1 and torch.get_num_threads() == 2  # restored after
        assert governor.state() == {"adaptive": True, "contended": True, "one_thread_passes": 1}
        model(ids, torch.ones_like(ids))  # no padding: all threads
        assert seen[-1] == 2
        governor.contended_until = 0.0  # HOLD passed: measured again at full width
        assert governor.state()["contended"] is False
        wait[0] = 0.0
        again = model(ids, padded).last_hidden_state
        model(ids, padded)
        assert seen[-2:] == [2, 2]
    torch.testing.assert_close(again, reference)  # the same numbers on one thread


def test_no_governing_in_training_or_when_turned_off(governed):
    governor, wait = governed
    wait[0] = 10.0
    torch.manual_seed(0)
    model = BertModel(CONFIG)
    seen = _threads_in_layers(model)
    ids = torch.randint(4, 100, (3, 8))
    padded = torch.ones_like(ids)
    padded[0, 5:] = 0
    for _ in range(3):
        model.train()(ids, padded).last_hidden_state.sum().backward()  # training: never measured, never narrowed
    assert governor.contended_until == 0.0 and seen == [2, 2, 2]
    governor.enabled = False
    with torch.no_grad():
        for _ in range(3):
            model.eval()(ids, padded)
    assert governor.narrowed == 0 and governor.contended_until == 0.0


def test_run_delay_reads_this_threads_schedstat():
    import threading
    from pathlib import Path

    tid = threading.get_native_id()
    if not Path(f"/proc/self/task/{tid}/schedstat").is_file():
        pytest.skip("this kernel has no schedstat")
    first = threads.run_delay(tid)
    assert isinstance(first, int) and first >= 0
    assert threads.run_delay(tid) >= first  # a running total
    assert threads.run_delay(-1) is None  # no such thread: unknown, not an error
