"""The LR range test while it trains: each step's loss against its LR, logged to MLflow; a run stops when it explodes.

The rule (smoothing, stop factor, names) is `lrsweep.ml.range_test`'s; the analysis is `lrsweep.analysis.range_test`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import keras
import numpy as np
from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient

from lrsweep.ml.divergence import DivergedError
from lrsweep.ml.range_test import (
    BETA,
    LOSS,
    LR,
    SMOOTHED,
    STOP_FACTOR,
    TAG_PLANNED_STEPS,
    TAG_STOP_REASON,
    TAG_STOPPED_AT_LR,
    TAG_STOPPED_AT_STEP,
    Smoother,
)
from lrsweep.ml.training import Member
from lrsweep.run.callbacks.batched_writer import BatchedWriter, Point
from lrsweep.run.callbacks.steps import lr_at_steps, optimizer_steps, resolve_schedules, steps_done

log = logging.getLogger(__name__)


@dataclass
class _MemberState:
    smoother: Smoother = field(default_factory=Smoother)
    best: float = math.inf
    prev_examples: int = 0  # examples seen in the epoch at the previous call, and the running mean then
    prev_mean: float = 0.0
    pending: list[tuple[int, float, float]] = field(default_factory=list)  # (step, loss, smoothed) not yet logged
    stopped_step: int | None = None
    stopped_epoch: int | None = None


class RangeTestRecorder(keras.callbacks.Callback):
    """Logs each member's per-step loss against its LR; stops a member when its smoothed loss explodes.

    Keras' batch logs hold the loss's running mean over the epoch (per member `loss_<k>` in a pack), so the
    loss of the steps since the last call is (n * mean - n' * mean') / (n - n') with n, n' the examples seen
    by this and the previous call: with `steps_per_execution=1`, one step's loss, exact to float32 rounding.

    A member stops when its smoothed loss (`Smoother`) exceeds `stop_factor` x its minimum so far, or its
    loss is not finite: `member.stopped_step` / `stopped_epoch` are set, not `member.error`, so its run ends
    FINISHED with tags `lrsweep.range_test.stopped_at_lr` etc.; a loss that becomes NaN is how a range test
    ends, so the DivergedError `StopOnDivergence` (called before this) set is taken back. Training stops when
    every member has. In a pack, a stopped member's weights keep training (unlogged) until the others stop.

    Points are written in batches (`BatchedWriter`) at every epoch end, at the end, and every `flush_seconds`;
    `on_train_end` waits for them to land.

    Args:
        client: the MLflow client the runs are written with.
        members: the runs recorded (a pack's members, or one).
        batch_size: examples per step.
        examples: training examples per epoch (the last batch may be short).
        planned_steps: the steps the whole test would take, recorded as a tag.
        stop_factor: a member stops once its smoothed loss is above this many times its minimum.
        beta: the smoothing of the loss (`Smoother`).
        flush_seconds: the longest time points wait within an epoch.
    """

    def __init__(
        self,
        client: MlflowClient,
        members: Sequence[Member],
        batch_size: int,
        examples: int,
        planned_steps: int,
        stop_factor: float = STOP_FACTOR,
        beta: float = BETA,
        flush_seconds: float = 10.0,
    ):
        super().__init__()
        self.client = client
        self.members = list(members)
        self.batch_size = batch_size
        self.examples = examples
        self.planned_steps = planned_steps
        self.stop_factor = stop_factor
        self.beta = beta
        self.writer = BatchedWriter(client, flush_seconds)
        self.states = [_MemberState(Smoother(beta)) for _ in self.members]
        self._epoch = 0
        self._epoch_start = 0
        self._lr_at: list[Callable[[np.ndarray], np.ndarray]] = []

    def on_train_begin(self, logs=None) -> None:
        resolve_schedules(self.members, self.model.optimizer)
        self._lr_at = [lr_at_steps(member.schedule) for member in self.members]
        self.writer.start()
        for member in self.members:
            self.client.set_tag(member.run_id, TAG_PLANNED_STEPS, str(self.planned_steps))

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self._epoch = epoch
        self._epoch_start = optimizer_steps(self.model.optimizer)
        for state in self.states:  # Keras' running means start again
            state.prev_examples, state.prev_mean = 0, 0.0

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        logs = logs or {}
        done = steps_done(self.params, batch)
        seen = min(done * self.batch_size, self.examples)
        step = self._epoch_start + done - 1  # the global step of the last update in this call
        for member, state in zip(self.members, self.states, strict=True):
            if isinstance(member.error, DivergedError):  # the end of a range test, not a failure
                member.error = None
                if state.stopped_step is not None:  # stopped before: keep where
                    member.stopped_step, member.stopped_epoch = state.stopped_step, state.stopped_epoch
            if state.stopped_step is not None or member.error is not None or member.key("loss") not in logs:
                continue
            self._record(member, state, step, seen, float(logs[member.key("loss")]))
        if all(state.stopped_step is not None or m.error is not None for m, state in zip(
                self.members, self.states, strict=True)):  # fmt: skip
            self.model.stop_training = True
        if self.writer.due():
            self._flush()

    def _record(self, member: Member, state: _MemberState, step: int, seen: int, mean: float) -> None:
        """Queues the loss of the steps since the last call, from the epoch's running mean; stops the member if due."""
        if seen > state.prev_examples:
            loss = (seen * mean - state.prev_examples * state.prev_mean) / (seen - state.prev_examples)
        else:
            loss = mean
        state.prev_examples, state.prev_mean = seen, mean
        if not math.isfinite(loss):
            self._stop(member, state, step, "loss not finite")
            return
        smoothed = state.smoother.update(loss)
        state.pending.append((step, loss, smoothed))
        state.best = min(state.best, smoothed)
        if smoothed > self.stop_factor * state.best:
            self._stop(member, state, step, f"smoothed loss above {self.stop_factor:g}x its minimum")

    def _stop(self, member: Member, state: _MemberState, step: int, reason: str) -> None:
        state.stopped_step, state.stopped_epoch = step + 1, self._epoch  # steps before it were trained
        member.stopped_step, member.stopped_epoch = state.stopped_step, state.stopped_epoch
        lr = member.lr(step)
        log.info("%s: range test stopped at step %d, lr=%.3g (%s)", member.name, step, lr, reason)
        self.client.log_batch(
            member.run_id,
            tags=[
                RunTag(TAG_STOPPED_AT_LR, repr(lr)),
                RunTag(TAG_STOPPED_AT_STEP, str(step)),
                RunTag(TAG_STOP_REASON, reason),
            ],
        )

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        self._flush()

    def on_train_end(self, logs=None) -> None:
        self._flush()
        self.writer.wait()

    def _flush(self) -> None:
        members = zip(self.members, self.states, self._lr_at, strict=True)
        self.writer.write((member.run_id, self._points(state, lr_at)) for member, state, lr_at in members)

    @staticmethod
    def _points(state: _MemberState, lr_at: Callable[[np.ndarray], np.ndarray]) -> list[Point]:
        """A member's pending steps as (key, value, step) points, their LR evaluated in one call; it has none after."""
        if not state.pending:
            return []
        lrs = lr_at(np.array([step for step, _, _ in state.pending]))
        points = []
        for (step, loss, smoothed), lr in zip(state.pending, lrs, strict=True):
            points += [(LOSS, loss, step), (SMOOTHED, smoothed, step), (LR, float(lr), step)]
        state.pending = []
        return points
