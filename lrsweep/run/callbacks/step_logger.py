"""`lr_step`: the LR the optimizer applies at global step k, logged to MLflow for every k that is a multiple of N."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import keras
import numpy as np
from mlflow.tracking import MlflowClient

from lrsweep import tracking
from lrsweep.core.checks import check_count
from lrsweep.ml.training import Member, as_members
from lrsweep.run.callbacks.batched_writer import BatchedWriter, Point
from lrsweep.run.callbacks.steps import lr_at_steps, optimizer_steps, resolve_schedules, steps_done

LR_STEP = "lr_step"


class MlflowStepLogger(keras.callbacks.Callback):
    """Logs `lr_step`, the LR the optimizer applies at global step k (0-based), for every k that is a multiple of N.

    With `steps_per_execution` > 1 Keras calls `on_train_batch_end` once per chunk of steps, and on JAX the
    optimizer's step count is synced only at epoch ends. So each call works out the steps done from the epoch's
    first step and the batch index, and queues every multiple of N passed since the last call.

    Queued steps are written together (`BatchedWriter`), with each member's schedule evaluated at them in one call,
    at the end of each epoch and whenever `flush_seconds` have passed since the last write: at most one `log_batch`
    per member per callback call. `on_train_end` waits for the writes to land, before the runs are closed. A member
    of a pack that stopped (diverged) gets no steps past the one it stopped at.

    It is `async_safe`: Keras may call `on_train_batch_end` from its worker threads, so training on JAX need not
    wait for each chunk's results before it starts the next one. A lock keeps the queue consistent.

    Args:
        client: the MLflow client the runs are written with.
        members: the runs to log to (a run id: a solo model whose LR is its optimizer's).
        every_n_steps: N; 0 logs nothing.
        flush_seconds: the longest time queued steps wait within an epoch.
    """

    async_safe = True

    def __init__(
        self, client: MlflowClient, members: str | Sequence[Member], every_n_steps: int, flush_seconds: float = 10.0
    ):
        super().__init__()
        self.members = as_members(members)
        self.every_n_steps = check_count("tracking.log_every_n_steps", every_n_steps, 0, " (0: off)")
        self.writer = BatchedWriter(client, flush_seconds)
        self._next_step = 0  # the first pack step not queued yet
        self._epoch_start = 0
        self._pending = (0, 0)  # pack steps [from, to) passed and not written
        self._lock = threading.Lock()
        self._lr_at: list[Callable[[np.ndarray], np.ndarray]] = []

    def on_train_begin(self, logs=None) -> None:
        resolve_schedules(self.members, self.model.optimizer)
        self._lr_at = [lr_at_steps(member.schedule) for member in self.members]
        self.writer.start()
        self._next_step = optimizer_steps(self.model.optimizer)  # a resumed fit: where it goes on
        self._pending = (self._next_step, self._next_step)

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self._epoch_start = optimizer_steps(self.model.optimizer)

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        with self._lock:
            self._queue_until(self._epoch_start + steps_done(self.params, batch))
            if self._pending[1] > self._pending[0] and self.writer.due():
                self._flush()

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        with self._lock:  # Keras has waited for the epoch's batch callbacks by now
            self._queue_until(optimizer_steps(self.model.optimizer))  # exact on every backend by now
            self._flush()

    def on_train_end(self, logs=None) -> None:
        with self._lock:
            self._flush()  # training stopped mid-epoch
        self.writer.wait()

    def _queue_until(self, end: int) -> None:
        """Queues the pack steps in [next unqueued, end): steps the optimizer has applied.

        Calls may come out of order from Keras' threads: a chunk that ends earlier than one already seen adds nothing.
        """
        if self.every_n_steps and end > self._next_step:
            self._pending = (self._pending[0], end)
            self._next_step = end

    def _flush(self) -> None:
        (start, end), self._pending = self._pending, (self._next_step, self._next_step)
        members = zip(self.members, self._lr_at, strict=True)
        points = ((m.run_id, self._points(m, lr_at, start, end, self.every_n_steps)) for m, lr_at in members)
        self.writer.write(points)

    @staticmethod
    def _points(
        member: Member, lr_at: Callable[[np.ndarray], np.ndarray], start: int, end: int, every: int
    ) -> list[Point]:
        """`lr_step` at the member's own steps (the pack's plus its `step_offset`) that are multiples of N, among
        the pack steps [start, end) it trained (all, unless it stopped); its schedule is shifted already."""
        end = end if member.stopped_step is None else min(end, member.stopped_step)
        if not every or end <= start:
            return []
        first = -(-(start + member.step_offset) // every) * every  # its first own multiple of N from `start`
        own = np.arange(first, end + member.step_offset, every, dtype=np.int64)
        if not len(own):
            return []
        points = zip(own, lr_at(own - member.step_offset), strict=True)
        return [(LR_STEP, tracking.float32_value(lr), int(k)) for k, lr in points]
