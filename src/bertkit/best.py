"""The best evaluation of a run (`--best-metric`, `--patience`): the metric that ranks evaluations and its
direction, the best value and its step, the evaluations since it last improved, and the training loss since the
previous evaluation (the metric `loss`); saved in each checkpoint, so a resumed run ranks as an uninterrupted one."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from bertkit.errors import TrainingError

LOSS = "loss"  # the training loss averaged over the steps since the previous evaluation


def lower_is_better(metric: str) -> bool:
    """`loss` and held-out losses (`mlm_loss`) fall as the model improves; every other metric rises."""
    return metric == LOSS or metric.endswith("_loss")


@dataclass
class Best:
    """Where a run's best evaluation stands. `metric` is None until the first evaluation resolves it (the task's
    headline, else the first metric the evaluation reports); `step` is None while no evaluation has ranked."""

    metric: str | None = None
    requested: bool = False  # the metric was named (--best-metric), not the task's default
    value: float | None = None
    step: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # the whole evaluation of the best step
    stale: int = 0  # evaluations since the best one
    evaluated_step: int = -1  # the step of the last evaluation (a resumed run evaluates a step it missed)
    loss_sum: float = 0.0  # training loss summed over the steps since the last evaluation
    loss_steps: int = 0

    @classmethod
    def start(cls, best_metric: str | None, headline: str | None) -> Best:
        return cls(metric=best_metric or headline, requested=best_metric is not None)

    def add_step_loss(self, loss: float) -> None:
        self.loss_sum += loss
        self.loss_steps += 1

    def exhausted(self, patience: int) -> bool:
        """Whether `patience` evaluations in a row (0: never) have not improved on the best."""
        return patience > 0 and self.step is not None and self.stale >= patience

    def judge(self, metrics: dict[str, float], patience: int) -> tuple[str, float] | None:
        """(metric, value) of this evaluation, or None where the run ranks nothing (no metric asked for, and the
        evaluation reports none). Raises TrainingError for a metric the evaluation does not report, naming those
        it does. Changes nothing: `record` does, once the best weights are safe on disk."""
        metric = self.metric
        if metric is None or (metric != LOSS and not self.requested and not metrics):
            if not metrics:
                if patience > 0:
                    raise TrainingError("--patience counts evaluations of a metric, and this evaluation reports "
                                        "none (no held-out data: give --eval); --best-metric loss ranks by the "
                                        "training loss instead")
                return None
            metric = next(iter(metrics))
        if metric == LOSS:
            return metric, self.loss_sum / self.loss_steps if self.loss_steps else math.nan
        if metric not in metrics:
            which = "--best-metric" if self.requested else "the task's headline metric (--best-metric's default)"
            reported = ", ".join(metrics) if metrics else "no metrics (no held-out data: give --eval)"
            raise TrainingError(f"{which} is {metric!r}, but the evaluation reports {reported}; choose one of "
                                f"{', '.join([*metrics, LOSS])}")
        return metric, metrics[metric]

    def improves(self, metric: str, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.value is None or metric != self.metric:
            return True
        return value < self.value if lower_is_better(metric) else value > self.value

    def record(self, step: int, metrics: dict[str, float], judged: tuple[str, float] | None) -> bool:
        """Count the evaluation of `step` (judged by `judge`); returns whether it is the new best."""
        self.evaluated_step = step
        self.loss_sum, self.loss_steps = 0.0, 0
        if judged is None:
            return False
        metric, value = judged
        improved = self.improves(metric, value)
        self.metric = metric
        if improved:
            self.value, self.step, self.metrics, self.stale = value, step, dict(metrics), 0
        else:
            self.stale += 1
        return improved

    def record_line(self, step: int) -> dict[str, Any]:
        """metrics.jsonl's record of where the best stands after the evaluation of `step`."""
        return {"kind": "best", "step": step, "metric": self.metric, "value": self.value, "best_step": self.step,
                "evaluations_without_improvement": self.stale}

    def state(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Best:
        return cls(**state)

    def reset(self) -> None:
        """Forget the best (its weights are gone, or the run now ranks by another metric); keep the position."""
        self.value, self.step, self.metrics, self.stale = None, None, {}, 0
