"""Keras callbacks that report training to MLflow."""

from __future__ import annotations

import keras
from keras import ops
from mlflow.tracking import MlflowClient

from lrsweep import tracking

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
