"""`lr`, loss and accuracy (train and validation) logged to each member's MLflow run at every epoch's end."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from mlflow.tracking import MlflowClient

from lrsweep import tracking
from lrsweep.ml.training import Member, as_members
from lrsweep.run.callbacks.steps import optimizer_steps, resolve_schedules


class MlflowEpochLogger(keras.callbacks.Callback):
    """Logs `lr`, loss and accuracy (train and validation) to each member's MLflow run each epoch, with step=epoch
    (the member's own: `Member.own_epoch`).

    `lr` is the member's schedule at the optimizer's step when the epoch begins, before its first update, so it
    is the learning rate applied in that epoch (for per-step schedules: at the epoch's first step). All are float32
    results, logged as the shortest decimal of that float32 (`tracking.float32_value`: 0.01, not 0.0099999997764).

    Args:
        client: the MLflow client the runs are written with.
        members: the runs to log to (a run id: a solo model whose LR is its optimizer's).
    """

    def __init__(self, client: MlflowClient, members: str | Sequence[Member]):
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
                metrics = {"lr": lr, **member.metrics(logs or {})}
                tracking.log_metrics(self.client, member.run_id, metrics, step=member.own_epoch(epoch))
