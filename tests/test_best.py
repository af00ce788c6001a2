"""--best-metric and --patience: model/ holds the best evaluated weights (not the last), patience stops at the
evaluation that runs it out, an interrupted and resumed run ends as an uninterrupted one, and an unknown metric is
an error naming the ones the evaluation reports."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from bertkit import BertConfig, BertForPreTraining, Tokenizer
from bertkit.best import Best, lower_is_better
from bertkit.cli import main
from bertkit.rundir import latest_checkpoint
from bertkit.tasks.pretraining import PretrainingOptions, PretrainingTask, tokenize_documents
from bertkit.train import TrainConfig, TrainingError, fit

DOCS = [["北京欢迎你。", "今天天气很好。"], ["人民日报发表社论。", "新年快乐！"], ["我们去上海。", "上海很大。"]]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train([s for d in DOCS for s in d], vocab_size=80, min_frequency=1)


class Scripted(PretrainingTask):
    """Pre-training whose evaluation reports `score` from a table keyed by the step (grad_accum 1: one loss call a
    step), and keeps a copy of the weights each evaluation saw."""

    def __init__(self, *args, scores: dict[int, float], **kwargs):
        super().__init__(*args, **kwargs)
        self.scores, self.step, self.seen = scores, 0, {}

    def loss(self, model, batch):
        self.step += 1
        return super().loss(model, batch)

    def evaluate(self, model):
        self.seen[self.step] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return {"score": self.scores[self.step], "score_loss": self.scores[self.step]}


def _task(tokenizer: Tokenizer, scores: dict[int, float], step: int = 0) -> Scripted:
    encoded = tokenize_documents(DOCS * 10, tokenizer)
    task = Scripted.from_documents(tokenizer, encoded, encoded[:3], PretrainingOptions(max_seq_len=32), scores=scores)
    task.step = step  # a resumed run's task starts at the checkpoint's step
    return task


def _model(tokenizer: Tokenizer) -> BertForPreTraining:
    torch.manual_seed(0)  # dropout stays on (the preset's 0.1): resume must reproduce it
    return BertForPreTraining(BertConfig.preset("tiny", vocab_size=len(tokenizer)))


def _config(output: Path, **overrides) -> TrainConfig:
    values = {"output_dir": str(output), "batch_size": 4, "max_steps": 8, "eval_every": 2, "lr": 1e-3, "warmup": 1,
              "log_every": 1, "progress": False, "bf16": False, "best_metric": "score"}
    return TrainConfig(**{**values, **overrides})


def _published(run: Path) -> dict[str, torch.Tensor]:
    return BertForPreTraining.from_pretrained(run / "model").state_dict()


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _records(run: Path, *kinds: str) -> list[dict]:
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] in kinds]


@pytest.mark.parametrize(("metric", "best"), [("score", 4), ("score_loss", 2)])
def test_model_holds_the_weights_of_the_best_evaluation_not_the_last(tmp_path, tokenizer, metric, best):
    """Higher is better for `score`, lower for `score_loss` (the same numbers): model/ is the weights evaluated at
    the best step, on disk under best/, and metrics.jsonl says which step and value."""
    task = _task(tokenizer, {2: 0.3, 4: 0.7, 6: 0.5, 8: 0.6})
    result = fit(_model(tokenizer), task, _config(tmp_path, best_metric=metric))
    assert result.step == 8 and result.best_step == best and not result.stopped_early
    assert result.metrics == {"score": task.scores[best], "score_loss": task.scores[best]}
    assert _same(_published(tmp_path), task.seen[best])
    assert not _same(_published(tmp_path), task.seen[8])  # training moved on: the last weights are not the best
    assert [p.name for p in (tmp_path / "best").iterdir()] == [f"step-{best:08d}"]
    final = _records(tmp_path, "best")[-1]
    assert (final["step"], final["metric"], final["best_step"], final["value"]) == (8, metric, best, task.scores[best])


def test_patience_stops_at_the_evaluation_that_runs_it_out(tmp_path, tokenizer):
    scores = {2: 0.5, 4: 0.6, 6: 0.55, 8: 0.58, 10: 0.9, 12: 0.95}  # 6 and 8 do not beat 4
    task = _task(tokenizer, scores)
    result = fit(_model(tokenizer), task, _config(tmp_path, max_steps=40, patience=2))
    assert result.stopped_early and result.step == 8 and task.step == 8  # no step trained past the stop
    assert result.best_step == 4 and _same(_published(tmp_path), task.seen[4])
    assert [r["step"] for r in _records(tmp_path, "eval")] == [2, 4, 6, 8]  # no final evaluation of the same step
    assert _records(tmp_path, "stopped") == [{"kind": "stopped", "step": 8, "best_step": 4,
                                              "reason": "2 evaluations without a better score"}]
    assert latest_checkpoint(tmp_path).name == "step-00000008"
    # --resume of a stopped run trains nothing more
    again = fit(_model(tokenizer), _task(tokenizer, scores, step=8), _config(tmp_path, max_steps=40, patience=2,
                                                                            resume=True))
    assert again.step == 8 and again.best_step == 4 and _same(_published(tmp_path), task.seen[4])


def _ctrl_c_in_update(number: int):
    """A Ctrl-C sent from inside the optimizer's `number`-th update (the run saves the step it completes)."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    updates = []

    def hook(optimizer, args, kwargs):
        updates.append(optimizer)
        if len(updates) == number:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)

    return register_optimizer_step_post_hook(hook)


def test_an_interrupted_and_resumed_run_ends_with_the_same_best_weights_and_stop_step(tmp_path, tokenizer):
    """Interrupted twice: after step 6 before its evaluation (the resumed run evaluates it first), and after step
    11, one evaluation after the best (the count towards --patience resumes at 1, so the run stops at 12, not 14)."""
    scores = {2: 0.5, 4: 0.8, 6: 0.6, 8: 0.85, 10: 0.7, 12: 0.75, 14: 1.0, 16: 1.0}
    settings = {"max_steps": 16, "patience": 2, "save_every": 4}
    reference = _task(tokenizer, scores)
    expected = fit(_model(tokenizer), reference, _config(tmp_path / "reference", **settings))
    assert (expected.step, expected.best_step, expected.stopped_early) == (12, 8, True)

    run = tmp_path / "run"
    resume_at, step = 0, 0
    for interrupt in (6, 11, None):
        hook = _ctrl_c_in_update(interrupt - step) if interrupt else None
        try:
            if hook is None:
                result = fit(_model(tokenizer), _task(tokenizer, scores, step), _config(run, resume=True, **settings))
            else:
                with pytest.raises(KeyboardInterrupt):
                    fit(_model(tokenizer), _task(tokenizer, scores, step), _config(run, resume=bool(step), **settings))
        finally:
            if hook is not None:
                hook.remove()
        if interrupt:
            resume_at = int(latest_checkpoint(run).name.removeprefix("step-"))
            assert resume_at == interrupt
            step = resume_at
    assert (result.step, result.best_step, result.stopped_early) == (12, 8, True)
    assert _same(_published(run), _published(tmp_path / "reference"))
    assert _same(_published(run), reference.seen[8])
    keys = ("kind", "step", "score", "value", "best_step", "evaluations_without_improvement")
    assert [{k: r.get(k) for k in keys} for r in _records(run, "eval", "best", "stopped")] == \
        [{k: r.get(k) for k in keys} for r in _records(tmp_path / "reference", "eval", "best", "stopped")]


def test_an_unknown_metric_is_an_error_naming_the_reported_ones(tmp_path, tokenizer):
    task = _task(tokenizer, dict.fromkeys(range(2, 9, 2), 0.5))
    with pytest.raises(TrainingError, match=r"--best-metric is 'f2', but the evaluation reports score, score_loss; "
                                            r"choose one of score, score_loss, loss"):
        fit(_model(tokenizer), task, _config(tmp_path, best_metric="f2"))
    assert task.step == 2  # stopped at the first evaluation


def test_loss_ranks_by_the_training_loss_since_the_previous_evaluation(tmp_path, tokenizer):
    fit(_model(tokenizer), _task(tokenizer, dict.fromkeys(range(2, 9, 2), 0.5)), _config(tmp_path, best_metric="loss"))
    losses = {r["step"]: r["loss"] for r in _records(tmp_path, "train")}
    means = {step: (losses[step - 1] + losses[step]) / 2 for step in (2, 4, 6, 8)}
    best = min(means, key=means.get)
    final = _records(tmp_path, "best")[-1]
    assert final["metric"] == "loss" and final["best_step"] == best
    assert final["value"] == pytest.approx(means[best], rel=1e-12)


def test_direction_and_ranking_rules():
    assert lower_is_better("loss") and lower_is_better("mlm_loss") and not lower_is_better("f1")
    best = Best.start(None, None)  # no headline: the evaluation's first metric
    assert best.judge({"f1": 0.4, "precision": 0.9}, patience=0) == ("f1", 0.4)
    assert best.judge({}, patience=0) is None  # nothing to rank (no held-out data)
    with pytest.raises(TrainingError, match="--patience counts evaluations"):
        best.judge({}, patience=3)
    best.record(2, {"f1": 0.4}, ("f1", 0.4))
    assert not best.record(4, {"f1": float("nan")}, ("f1", float("nan")))  # NaN never improves
    assert (best.step, best.stale) == (2, 1)


def test_finetune_ranks_by_the_task_headline_and_refuses_patience_without_evaluations(tmp_path, capsys):
    from tests.conftest import finetune_tiny_classifier

    root = finetune_tiny_classifier(tmp_path, "--eval-every", "10", "--patience", "5")
    ranked = _records(root / "run", "best")
    assert [r["step"] for r in ranked] == [10, 20, 30] and {r["metric"] for r in ranked} == {"accuracy"}
    assert main(["finetune", "--task", "classification", "--train", str(root / "train.tsv"), "--tokenizer",
                 str(root / "vocab"), "--patience", "2", "--output-dir", str(tmp_path / "x")]) == 2
    assert "patience counts evaluations: give eval_every too" in capsys.readouterr().err
