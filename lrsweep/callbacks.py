"""Keras callbacks that report training to MLflow."""

from __future__ import annotations

import time
from collections.abc import Callable

import keras
import numpy as np
from keras import ops
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from lrsweep import tracking
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


def optimizer_steps(optimizer: keras.optimizers.Optimizer) -> int:
    """The optimizer's iteration count: the global step its next update applies."""
    return int(ops.convert_to_numpy(optimizer.iterations))


def lr_at_steps(optimizer: keras.optimizers.Optimizer) -> Callable[[np.ndarray], np.ndarray]:
    """The LR the optimizer applies at any step: its schedule evaluated there, or its current LR if it has none."""
    # Keras keeps the schedule it evaluates at `iterations` here; there is no public accessor for it.
    schedule = getattr(optimizer, "_learning_rate", None)
    if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        return lambda steps: np.asarray(ops.convert_to_numpy(schedule(steps)), dtype=np.float64)
    return lambda steps: np.full(len(steps), current_lr(optimizer))


class MlflowStepLogger(keras.callbacks.Callback):
    """Logs `lr_step`, the LR the optimizer applies at global step k (0-based), for every k that is a multiple of N.

    With `steps_per_execution` > 1 Keras calls `on_train_batch_end` once per chunk of steps, and on JAX the
    optimizer's step count is synced only at epoch ends. So each call works out the steps done from the epoch's
    first step and the batch index, and logs every multiple of N passed since the last call, at that step, with
    the optimizer's own schedule evaluated there: one `log_batch` per call that passed any.
    """

    def __init__(self, client: MlflowClient, run_id: str, every_n_steps: int):
        super().__init__()
        self.client = client
        self.run_id = run_id
        self.every_n_steps = check_count("tracking.log_every_n_steps", every_n_steps, 0, " (0: off)")
        self._next_step = 0
        self._epoch_start = 0
        self._lr_at: Callable[[np.ndarray], np.ndarray] | None = None

    def on_train_begin(self, logs=None) -> None:
        self._lr_at = lr_at_steps(self.model.optimizer)
        if self.every_n_steps:  # a resumed fit starts at the first multiple not yet reached
            self._next_step = -(-optimizer_steps(self.model.optimizer) // self.every_n_steps) * self.every_n_steps

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self._epoch_start = optimizer_steps(self.model.optimizer)

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        # `batch` is the chunk's last index, even when the epoch's last chunk is short: cap it at the epoch's steps.
        steps_in_epoch = self.params.get("steps") if self.params else None
        done = batch + 1 if not steps_in_epoch else min(batch + 1, steps_in_epoch)
        self._log_until(self._epoch_start + done)

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        self._log_until(optimizer_steps(self.model.optimizer))  # exact on every backend by now

    def _log_until(self, end: int) -> None:
        """Logs the multiples of N in [next unlogged, end): the steps the optimizer has applied."""
        if not self.every_n_steps or end <= self._next_step:
            return
        steps = np.arange(self._next_step, end, self.every_n_steps)
        self._next_step = int(steps[-1]) + self.every_n_steps
        timestamp = int(time.time() * 1000)
        metrics = [
            Metric(LR_STEP, float(lr), timestamp, int(step)) for step, lr in zip(steps, self._lr_at(steps), strict=True)
        ]
        self.client.log_batch(self.run_id, metrics=metrics)
