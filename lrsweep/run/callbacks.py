"""Keras callbacks that report training to MLflow."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops
from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.async_logging.run_operations import RunOperations

from lrsweep import tracking
from lrsweep.core import interrupts
from lrsweep.core.checks import check_count
from lrsweep.ml.data import Dataset
from lrsweep.ml.training import Member, as_members

log = logging.getLogger(__name__)

Targets = str | Sequence[Member]


def optimizer_schedule(optimizer: keras.optimizers.Optimizer) -> Callable[[Any], Any]:
    """The function of the step that the optimizer evaluates for its LR (a constant if it has no schedule)."""
    # Keras keeps the schedule it evaluates at `iterations` here; there is no public accessor for it.
    schedule = getattr(optimizer, "_learning_rate", None)
    if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        return schedule
    value = current_lr(optimizer)
    return lambda steps: np.full(np.shape(steps), value, dtype=np.float32)


def resolve_schedules(members: Sequence[Member], optimizer: keras.optimizers.Optimizer) -> None:
    for member in members:
        if member.schedule is None:
            member.schedule = optimizer_schedule(optimizer)


def current_lr(optimizer: keras.optimizers.Optimizer) -> float:
    """The LR the optimizer applies at its next step (a schedule is evaluated at its iteration count)."""
    return float(ops.convert_to_numpy(optimizer.learning_rate))


class MlflowEpochLogger(keras.callbacks.Callback):
    """Logs `lr`, loss and accuracy (train and validation) to each member's MLflow run each epoch, with step=epoch.

    `lr` is the member's schedule at the optimizer's step when the epoch begins, before its first update, so it
    is the learning rate applied in that epoch (for per-step schedules: at the epoch's first step). All are float32
    results, logged as the shortest decimal of that float32 (`tracking.float32_value`: 0.01, not 0.0099999997764).
    """

    def __init__(self, client: MlflowClient, members: Targets):
        super().__init__()
        self.client = client
        self.members = as_members(members)
        self._epoch_lrs: list[float] = []

    def on_train_begin(self, logs=None) -> None:
        resolve_schedules(self.members, self.model.optimizer)

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        step = optimizer_steps(self.model.optimizer)
        self._epoch_lrs = [member.lr(step) for member in self.members]

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        for member, lr in zip(self.members, self._epoch_lrs, strict=True):
            if member.reports(epoch):
                tracking.log_metrics(self.client, member.run_id, {"lr": lr, **member.metrics(logs or {})}, step=epoch)


LR_STEP = "lr_step"
LR_BLOCK = 64


def optimizer_steps(optimizer: keras.optimizers.Optimizer) -> int:
    """The optimizer's iteration count: the global step its next update applies."""
    return int(ops.convert_to_numpy(optimizer.iterations))


def lr_at_steps(schedule: Callable[[Any], Any]) -> Callable[[np.ndarray], np.ndarray]:
    """The LR a schedule gives at many steps at once, as float64 values of its float32 results."""

    def lr_at(steps: np.ndarray) -> np.ndarray:
        # Evaluated in blocks of one length: JAX compiles every op anew for each new input shape (~0.4 s).
        padded = np.pad(steps, (0, -len(steps) % LR_BLOCK), mode="edge")
        return np.asarray(ops.convert_to_numpy(schedule(padded)), dtype=np.float64)[: len(steps)]

    return lr_at


class MlflowStepLogger(keras.callbacks.Callback):
    """Logs `lr_step`, the LR the optimizer applies at global step k (0-based), for every k that is a multiple of N.

    With `steps_per_execution` > 1 Keras calls `on_train_batch_end` once per chunk of steps, and on JAX the
    optimizer's step count is synced only at epoch ends. So each call works out the steps done from the epoch's
    first step and the batch index, and queues every multiple of N passed since the last call.

    Queued steps are written together, with each member's schedule evaluated at them in one call, at the end
    of each epoch and whenever `flush_seconds` have passed since the last write: at most one `log_batch` per
    member per callback call, handed to MLflow's background writer. Writing to a SQLite store costs about 1 ms per
    point, against CPU epochs well under a second here (scripts/bench_step_lr.py), so training does not wait for
    it; `on_train_end` waits for the writes to land, before the runs are closed. A member of a pack that stopped
    (diverged) gets no steps past the one it stopped at.

    It is `async_safe`: Keras may call `on_train_batch_end` from its worker threads, so training on JAX need not
    wait for each chunk's results before it starts the next one. A lock keeps the queue consistent.
    """

    async_safe = True

    def __init__(self, client: MlflowClient, members: Targets, every_n_steps: int, flush_seconds: float = 10.0):
        super().__init__()
        self.client = client
        self.members = as_members(members)
        self.every_n_steps = check_count("tracking.log_every_n_steps", every_n_steps, 0, " (0: off)")
        self.flush_seconds = flush_seconds
        self._next_step = 0
        self._epoch_start = 0
        self._pending: list[int] = []
        self._last_flush = 0.0
        self._writes: list[RunOperations] = []
        self._lock = threading.Lock()
        self._lr_at: list[Callable[[np.ndarray], np.ndarray]] = []

    def on_train_begin(self, logs=None) -> None:
        resolve_schedules(self.members, self.model.optimizer)
        self._lr_at = [lr_at_steps(member.schedule) for member in self.members]
        self._last_flush = time.monotonic()
        if self.every_n_steps:  # a resumed fit starts at the first multiple not yet reached
            self._next_step = -(-optimizer_steps(self.model.optimizer) // self.every_n_steps) * self.every_n_steps

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self._epoch_start = optimizer_steps(self.model.optimizer)

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        with self._lock:
            self._queue_until(self._epoch_start + steps_done(self.params, batch))
            if self._pending and time.monotonic() - self._last_flush >= self.flush_seconds:
                self._flush()

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        with self._lock:  # Keras has waited for the epoch's batch callbacks by now
            self._queue_until(optimizer_steps(self.model.optimizer))  # exact on every backend by now
            self._flush()

    def on_train_end(self, logs=None) -> None:
        with self._lock:
            self._flush()  # training stopped mid-epoch
        for write in self._writes:
            write.wait()  # raises if a write failed
        self._writes = []

    def _queue_until(self, end: int) -> None:
        """Queues the multiples of N in [next unlogged, end): steps the optimizer has applied.

        Calls may come out of order from Keras' threads: a chunk that ends earlier than one already seen adds nothing.
        """
        if self.every_n_steps and end > self._next_step:
            self._pending.extend(range(self._next_step, end, self.every_n_steps))
            self._next_step = self._pending[-1] + self.every_n_steps

    def _flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self._pending:
            return
        steps, self._pending = np.asarray(self._pending), []
        timestamp = int(time.time() * 1000)
        for member, lr_at in zip(self.members, self._lr_at, strict=True):
            mine = steps if member.stopped_step is None else steps[steps < member.stopped_step]
            if len(mine):
                lrs = lr_at(mine)
                metrics = [
                    Metric(LR_STEP, tracking.float32_value(lr), timestamp, int(k))
                    for k, lr in zip(mine, lrs, strict=True)
                ]
                self._writes.append(self.client.log_batch(member.run_id, metrics=metrics, synchronous=False))


def steps_done(params: dict | None, batch: int) -> int:
    """Steps done in the epoch after Keras' batch `batch`: the chunk's last index, capped at the epoch's steps."""
    steps_in_epoch = params.get("steps") if params else None
    return batch + 1 if not steps_in_epoch else min(batch + 1, steps_in_epoch)


class DivergedError(RuntimeError):
    """Training diverged: the loss became NaN or infinite, or rose above `training.divergence_factor` x its start."""


# The starting loss is measured on these first training examples (file order, the same for every seed and member).
REFERENCE_EXAMPLES = 256
TAG_DIVERGED_LOSS = "lrsweep.diverged.loss"  # the running loss that tripped the rule (repr of a float)
TAG_STARTING_LOSS = "lrsweep.diverged.starting_loss"  # the member's loss before training, on the reference examples


def reference_examples(dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """The fixed examples a run's starting loss is measured on: the first `REFERENCE_EXAMPLES` training examples."""
    return dataset.x_train[:REFERENCE_EXAMPLES], dataset.y_train[:REFERENCE_EXAMPLES]


def member_losses(model: keras.Model, x: np.ndarray, y: np.ndarray, members: Sequence[Member]) -> list[float]:
    """Each member's mean cross-entropy on `(x, y)` with the model's current weights, from one forward pass.

    The loss both a solo model and a pack are trained with (sparse categorical cross-entropy of logits): a solo
    model's output is (examples, classes), a pack's (examples, members, classes) for shared inputs. The model is
    called eagerly (no compiled function is added) and the cross-entropy is taken in float64 NumPy, so the value is
    the same on every backend up to float32 rounding of the logits.
    """
    logits = np.asarray(ops.convert_to_numpy(model(x, training=False)), dtype=np.float64)
    labels = np.asarray(y, dtype=np.int64)
    losses = []
    for member in members:
        z = logits if member.index is None else logits[:, member.index]
        top = z.max(axis=-1, keepdims=True)
        log_norm = top[:, 0] + np.log(np.exp(z - top).sum(axis=-1))
        losses.append(float(np.mean(log_norm - z[np.arange(len(labels)), labels])))
    return losses


def divergence_message(epoch: int, steps: int, factor: float | None) -> str:
    """Why a run stopped: the same text on every backend (not the loss, whose value differs between them)."""
    rule = "not finite" if factor is None else f"not finite or above {factor:g}x its value before training"
    return (
        f"training diverged in epoch {epoch} (by batch {steps}): the loss was {rule} "
        f"(training.divergence_factor={'null' if factor is None else f'{factor:g}'}). "
        "Lower the learning rate (or the warm-up's peak) for this configuration."
    )


class StopOnDivergence(keras.callbacks.Callback):
    """Stops a member as soon as its loss diverges, and remembers where; stops training when all members have.

    A member diverges when the loss Keras reports for it (the epoch's running mean) is NaN or infinite, or above
    `factor` times its starting loss: its loss before any update, measured at train begin on the same fixed
    examples for every member (`reference_examples`, `member_losses`). With float32 an exploding run may stay
    finite on one backend (TensorFlow: SGD at LR 1e9 ends with loss 7.5e32) and turn NaN on another (JAX); the
    factor catches both at the same batch, with the same message (`divergence_message`), the loss being recorded
    as tags `lrsweep.diverged.loss` and `lrsweep.diverged.starting_loss` and in the log. `factor` None: only a
    non-finite loss counts. scripts/measure_divergence.py measures healthy and exploding runs to choose it.

    Checked after every call Keras makes (every `steps_per_execution` steps): a diverged run stops within one
    chunk of steps rather than training on for the rest of its epochs. The caller turns `member.error` into a
    FAILED run. In a pack the member is also frozen: the pack's optimizer freezes a member in the step its loss
    becomes non-finite (`lrsweep.packing`); one flagged by the factor is frozen here, its entry of the optimizer's
    `alive` mask set to 0 before the next step. Members share no weights, so the others train on undisturbed.
    """

    def __init__(
        self,
        members: Sequence[Member],
        factor: float | None = None,
        reference: tuple[np.ndarray, np.ndarray] | None = None,
        client: MlflowClient | None = None,
    ) -> None:
        super().__init__()
        self.members = list(members)
        self.factor = None if factor is None else float(factor)
        self.reference = reference
        self.client = client
        self.starting_losses: list[float | None] = [None] * len(self.members)
        self._epoch = 0
        self._epoch_start = 0

    def on_train_begin(self, logs=None) -> None:
        if self.factor is None or self.reference is None:
            return
        self.starting_losses = member_losses(self.model, *self.reference, self.members)
        for member, start in zip(self.members, self.starting_losses, strict=True):
            log.debug("%s: starting loss %.6g, divergence above %.6g", member.name, start, self.factor * start)

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self._epoch = epoch
        self._epoch_start = optimizer_steps(self.model.optimizer)

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        logs = logs or {}
        flagged = []
        for member, start in zip(self.members, self.starting_losses, strict=True):
            loss = logs.get(member.key("loss"))
            if member.error is not None or loss is None:
                continue
            loss = float(loss)
            # A starting loss that is not finite sets no limit: such a run is caught by its first non-finite loss.
            limit = self.factor * start if self.factor is not None and start is not None else math.inf
            if not math.isfinite(loss) or loss > limit:
                steps = steps_done(self.params, batch)
                member.error = DivergedError(divergence_message(self._epoch, steps, self.factor))
                member.stopped_epoch = self._epoch
                member.stopped_step = self._epoch_start + steps
                flagged.append((member, loss, start))
        if flagged:
            self._flagged(flagged)
        if all(member.error is not None for member in self.members):
            self.model.stop_training = True

    def _flagged(self, flagged: list[tuple[Member, float, float | None]]) -> None:
        """Records why members stopped, and freezes those of a pack whose loss is still finite."""
        for member, loss, start in flagged:
            log.warning(
                "%s: loss %r in epoch %d, step %d, starting loss %r (training.divergence_factor=%s): diverged",
                member.name, loss, member.stopped_epoch, member.stopped_step, start, self.factor,
            )  # fmt: skip
            if self.client is not None:
                tags = [RunTag(TAG_DIVERGED_LOSS, repr(loss))]
                if start is not None:
                    tags.append(RunTag(TAG_STARTING_LOSS, repr(start)))
                self.client.log_batch(member.run_id, tags=tags)
        # The pack's optimizer freezes a member only once its gradients are not finite; one stopped by the factor
        # would otherwise train on, unlogged. Accessing `self.model` on JAX syncs the training state into the
        # variables, and the next step reads it back from them, the new mask included.
        alive = getattr(self.model.optimizer, "alive", None)
        indices = [member.index for member, _, _ in flagged if member.index is not None]
        if alive is not None and indices:
            mask = np.array(ops.convert_to_numpy(alive))
            mask[indices] = 0
            alive.assign(mask)


class StopOnInterrupt(keras.callbacks.Callback):
    """Turns a Ctrl-C/SIGTERM request (`lrsweep.interrupts`) into KeyboardInterrupt between training steps.

    Raised only at batch ends, never inside an epoch's logging, so the epochs logged are the epochs completed.
    """

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        interrupts.check()

    def on_test_batch_end(self, batch: int, logs=None) -> None:
        interrupts.check()
