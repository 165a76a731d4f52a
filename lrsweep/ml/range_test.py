"""The LR range test's rule (Smith 2017; fastai's `lr_find`): its names, the smoothed loss, when a run stops,
and the two LRs read off a curve. Pure NumPy: the recorder (`lrsweep.run.callbacks.range_test_recorder`) and
the analysis (`lrsweep.analysis.range_test`) both follow it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

SCHEDULE_TARGET = "lrsweep.schedules.lr_range"
LOSS = "range_test/loss"  # the loss of the batch at that step, before its update
SMOOTHED = "range_test/smoothed_loss"  # its exponential moving average, bias-corrected
LR = "range_test/lr"  # the LR of that step's update
TAG_STOPPED_AT_LR = "lrsweep.range_test.stopped_at_lr"
TAG_STOPPED_AT_STEP = "lrsweep.range_test.stopped_at_step"
TAG_STOP_REASON = "lrsweep.range_test.stop_reason"
TAG_PLANNED_STEPS = "lrsweep.range_test.planned_steps"
BETA = 0.98  # fastai's smoothing of the loss
STOP_FACTOR = 4.0  # stop once the smoothed loss is above this many times its minimum (fastai's `stop_div`)
SKIP_START = 0.1  # the first 10% of the planned steps are left out of the suggestions (fastai: num_it // 10)


def is_range_test(cfg: Mapping[str, Any]) -> bool:
    """Whether a job's config trains on the range test's ramp (`schedule=lr_range`)."""
    schedule = cfg.get("schedule") or {}
    return schedule.get("_target_") == SCHEDULE_TARGET


class Smoother:
    """fastai's smoothed loss: an exponential moving average with bias correction, updated one loss at a time.

    avg_i = beta * avg_(i-1) + (1 - beta) * loss_i, avg_(-1) = 0;   smoothed_i = avg_i / (1 - beta ** (i + 1))
    """

    def __init__(self, beta: float = BETA):
        self.beta = beta
        self.average = 0.0
        self.count = 0

    def update(self, loss: float) -> float:
        self.count += 1
        self.average = self.beta * self.average + (1.0 - self.beta) * loss
        return self.average / (1.0 - self.beta**self.count)


def smooth(losses: Sequence[float] | np.ndarray, beta: float = BETA) -> np.ndarray:
    """The smoothed loss of each step of a series (`Smoother`)."""
    smoother = Smoother(beta)
    return np.array([smoother.update(float(loss)) for loss in losses], dtype=np.float64)


@dataclass(frozen=True)
class Suggestion:
    """Two LRs read off one smoothed loss curve."""

    steepest: float  # the LR where the smoothed loss falls fastest against log LR
    minimum: float  # the LR where the smoothed loss is lowest

    @property
    def min10(self) -> float:
        return self.minimum / 10.0


def suggest(lrs: Sequence[float] | np.ndarray, smoothed: Sequence[float] | np.ndarray, skip: int = 0) -> Suggestion:
    """The steepest descent of `smoothed` against log LR, and its minimum, after the first `skip` points.

    The slope d(smoothed)/d(log lr) is taken by central differences (`np.gradient`), so a point's slope uses its
    two neighbours. The steepest point is looked for up to the minimum only: past it the loss is exploding, and a
    spike it recovers from falls steeply too.

    Raises:
        ValueError: with fewer than 3 points after `skip`.
    """
    lrs = np.asarray(lrs, dtype=np.float64)[skip:]
    smoothed = np.asarray(smoothed, dtype=np.float64)[skip:]
    if len(lrs) < 3:
        raise ValueError(f"a suggestion needs at least 3 points after the first {skip}; there are {len(lrs)}")
    lowest = int(np.argmin(smoothed))
    slope = np.gradient(smoothed, np.log(lrs))[: lowest + 1]
    return Suggestion(steepest=float(lrs[np.argmin(slope)]), minimum=float(lrs[lowest]))
