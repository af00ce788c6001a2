"""--report-to tensorboard: metrics.jsonl's records also go to TensorBoard event files in the run directory (read
back here with TensorBoard's own reader), a resumed run's events replace what the crashed run wrote past its
checkpoint, and a missing tensorboard package is a clear error before any work."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from bertkit import BertConfig, BertForPreTraining, Tokenizer
from bertkit.cli import main
from bertkit.tasks.pretraining import PretrainingOptions, PretrainingTask, tokenize_documents
from bertkit.train import TrainConfig, TrainingError, fit

DOCS = [["北京欢迎你。", "今天天气很好。"], ["人民日报发表社论。", "新年快乐！"], ["我们去上海。", "上海很大。"]]


class Crashing(PretrainingTask):
    """Raises (as a crash would stop the process) at the `crash_at`-th loss call."""

    crash_at = 0
    calls = 0

    def loss(self, model, batch):
        self.calls += 1
        if self.calls == self.crash_at:
            raise RuntimeError("crash")
        return super().loss(model, batch)


def _fit(run, crash_at: int = 0, resume: bool = False):
    tok = Tokenizer.train([s for d in DOCS for s in d], vocab_size=80, min_frequency=1)
    encoded = tokenize_documents(DOCS * 10, tok)
    task = Crashing.from_documents(tok, encoded, encoded[:3], PretrainingOptions(max_seq_len=32))
    task.crash_at = crash_at
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig.preset("tiny", vocab_size=len(tok)))
    config = TrainConfig(output_dir=str(run), batch_size=4, max_steps=6, save_every=3, eval_every=2, log_every=1,
                         lr=1e-3, warmup=1, progress=False, bf16=False, report_to="tensorboard", resume=resume)
    return fit(model, task, config)


def test_metrics_are_written_as_tensorboard_scalars_and_a_resume_replaces_the_crashed_steps(tmp_path):
    pytest.importorskip("tensorboard", reason="the optional tensorboard package (pip install 'bertkit[tensorboard]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="crash"):
        _fit(run, crash_at=5)  # steps 1-4 logged, the checkpoint of step 3 saved
    _fit(run, resume=True)  # from step 3: step 4 again, then 5 and 6
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2  # one file per process that wrote

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    logged = events.Scalars("train/loss")
    assert [e.step for e in logged] == [1, 2, 3, 4, 5, 6]  # the crashed run's step 4 is gone, not doubled
    assert [e.value for e in logged] == pytest.approx([r["loss"] for r in train], rel=1e-6)
    assert [e.step for e in events.Scalars("eval/mlm_loss")] == [2, 4, 6]
    assert [e.value for e in events.Scalars("eval/mlm_loss")] == pytest.approx([r["mlm_loss"] for r in evals],
                                                                               rel=1e-6)
    tags = set(events.Tags()["scalars"])
    assert {"train/lr", "train/grad_norm", "train/loss_mlm", "eval/mlm_accuracy", "best/value",
            "best/best_step"} <= tags


def test_a_missing_tensorboard_package_is_named_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the package were not installed
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("北京欢迎你。\n今天天气很好。\n", encoding="utf-8")
    assert main(["pretrain", "--train", str(corpus), "--output-dir", str(tmp_path / "run"), "--model-size", "tiny",
                 "--report-to", "tensorboard"]) == 2
    err = capsys.readouterr().err
    assert "--report-to tensorboard needs the tensorboard package" in err
    assert "pip install 'bertkit[tensorboard]'" in err
    assert not (tmp_path / "run").exists()  # refused before the run directory was made
    with pytest.raises(TrainingError, match=r"pip install 'bertkit\[tensorboard\]'"):
        _fit(tmp_path / "api")
