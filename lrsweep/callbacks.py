"""Keras callbacks that report training to MLflow."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import keras
import numpy as np
from keras import ops
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from mlflow.utils.async_logging.run_operations import RunOperations

from lrsweep import interrupts, tracking
from lrsweep.schedules import check_count

EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


def current_lr(optimizer: keras.optimizers.Optimizer) -> float:
    """The LR the optimizer applies at its next step (a schedule is evaluated at its iteration count)."""
    return float(ops.convert_to_numpy(optimizer.learning_rate))


class MlflowEpochLogger(keras.callbacks.Callback):
    """Logs `lr`, loss and accuracy (train and validation) to an MLflow run each epoch, with step=epoch.

    `lr` is read back from the optimizer when the epoch begins, before its first update, so it is the
    learning rate applied in that epoch (for per-step schedules: at the epoch's first step).
    """

    def __init__(self, client: MlflowClient, run_id: str):
        super().__init__()
        self.client = client
        self.run_id = run_id
        self._epoch_lr = float("nan")

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self._epoch_lr = current_lr(self.model.optimizer)

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        logs = logs or {}
        metrics = {"lr": self._epoch_lr, **{k: float(logs[k]) for k in EPOCH_METRICS if k in logs}}
        tracking.log_metrics(self.client, self.run_id, metrics, step=epoch)


LR_STEP = "lr_step"
LR_BLOCK = 64


def optimizer_steps(optimizer: keras.optimizers.Optimizer) -> int:
    """The optimizer's iteration count: the global step its next update applies."""
    return int(ops.convert_to_numpy(optimizer.iterations))


def lr_at_steps(optimizer: keras.optimizers.Optimizer) -> Callable[[np.ndarray], np.ndarray]:
    """The LR the optimizer applies at any step: its schedule evaluated there, or its current LR if it has none."""
    # Keras keeps the schedule it evaluates at `iterations` here; there is no public accessor for it.
    schedule = getattr(optimizer, "_learning_rate", None)
    if not isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        return lambda steps: np.full(len(steps), current_lr(optimizer))

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

    Queued steps are written together, with the optimizer's own schedule evaluated at them in one call, at the end
    of each epoch and whenever `flush_seconds` have passed since the last write: at most one `log_batch` per
    callback call, handed to MLflow's background writer. Writing to a SQLite store costs about 1 ms per point,
    against CPU epochs well under a second here (scripts/bench_step_lr.py), so training does not wait for it;
    `on_train_end` waits for the writes to land, before the run is closed.

    It is `async_safe`: Keras may call `on_train_batch_end` from its worker threads, so training on JAX need not
    wait for each chunk's results before it starts the next one. A lock keeps the queue consistent.
    """

    async_safe = True

    def __init__(self, client: MlflowClient, run_id: str, every_n_steps: int, flush_seconds: float = 10.0):
        super().__init__()
        self.client = client
        self.run_id = run_id
        self.every_n_steps = check_count("tracking.log_every_n_steps", every_n_steps, 0, " (0: off)")
        self.flush_seconds = flush_seconds
        self._next_step = 0
        self._epoch_start = 0
        self._pending: list[int] = []
        self._last_flush = 0.0
        self._writes: list[RunOperations] = []
        self._lock = threading.Lock()
        self._lr_at: Callable[[np.ndarray], np.ndarray] | None = None

    def on_train_begin(self, logs=None) -> None:
        self._lr_at = lr_at_steps(self.model.optimizer)
        self._last_flush = time.monotonic()
        if self.every_n_steps:  # a resumed fit starts at the first multiple not yet reached
            self._next_step = -(-optimizer_steps(self.model.optimizer) // self.every_n_steps) * self.every_n_steps

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self._epoch_start = optimizer_steps(self.model.optimizer)

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        # `batch` is the chunk's last index, even when the epoch's last chunk is short: cap it at the epoch's steps.
        steps_in_epoch = self.params.get("steps") if self.params else None
        done = batch + 1 if not steps_in_epoch else min(batch + 1, steps_in_epoch)
        with self._lock:
            self._queue_until(self._epoch_start + done)
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
        lrs = self._lr_at(steps)
        metrics = [Metric(LR_STEP, float(lr), timestamp, int(step)) for step, lr in zip(steps, lrs, strict=True)]
        self._writes.append(self.client.log_batch(self.run_id, metrics=metrics, synchronous=False))


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


class StopOnDivergence(keras.callbacks.Callback):
    """Stops training as soon as the loss is NaN or infinite, and remembers where.

    Checked after every call Keras makes (every `steps_per_execution` steps): a diverged run stops within one
    chunk of steps rather than training on for the rest of its epochs. The caller turns `error` into a FAILED run.
    """

    def __init__(self) -> None:
        super().__init__()
        self.error: DivergedError | None = None
        self._epoch = 0

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self._epoch = epoch

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(loss)) and self.error is None:
            self.error = DivergedError(
                f"loss became {float(loss)} in epoch {self._epoch} (by batch {batch + 1}): training diverged. "
                "Lower the learning rate (or the warm-up's peak) for this configuration."
            )
            self.model.stop_training = True


class StopOnInterrupt(keras.callbacks.Callback):
    """Turns a Ctrl-C/SIGTERM request (`lrsweep.interrupts`) into KeyboardInterrupt between training steps.

    Raised only at batch ends, never inside an epoch's logging, so the epochs logged are the epochs completed.
    """

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        interrupts.check()

    def on_test_batch_end(self, batch: int, logs=None) -> None:
        interrupts.check()
