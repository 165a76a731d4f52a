"""Quantiles of the per-parameter effective LR (`lrsweep.ml.effective_lr`) logged to MLflow at every epoch's end."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import ops
from mlflow.tracking import MlflowClient

from lrsweep import tracking
from lrsweep.ml.effective_lr import effective_lr, flatten, summarize
from lrsweep.ml.training import Member, as_members
from lrsweep.run.callbacks.steps import optimizer_steps


class EffectiveLRLogger(keras.callbacks.Callback):
    """Logs quantiles of the per-parameter effective LR to an MLflow run at each epoch end, with step=epoch.

    The values describe the epoch's last update (see `lrsweep.ml.effective_lr.effective_lr`). Logs nothing for
    optimizers without a formula (SGD, whose effective LR is the logged `lr`).

    Args:
        client: the MLflow client the runs are written with.
        members: the runs to log to (a run id: a solo model whose LR is its optimizer's).
        quantiles: the percentiles logged, as `effective_lr/p<q>`.
    """

    def __init__(
        self, client: MlflowClient, members: str | Sequence[Member], quantiles: Sequence[float] = (10, 50, 90)
    ):
        super().__init__()
        self.client = client
        self.members = as_members(members)
        self.quantiles = tuple(quantiles)

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        step = optimizer_steps(self.model.optimizer)
        read: dict[int, np.ndarray] = {}  # each slot variable read once, whatever the number of members

        def values(variable: keras.Variable) -> np.ndarray:
            if id(variable) not in read:
                read[id(variable)] = ops.convert_to_numpy(variable)
            return read[id(variable)]

        for member in self.members:
            if not member.reports(epoch):
                continue
            lr = None if member.schedule is None else member.lr(step - 1)
            effective = effective_lr(member.optimizer or self.model.optimizer, lr, member.select or flatten, values)
            if effective is not None:
                tracking.log_metrics(
                    self.client,
                    member.run_id,
                    summarize(effective, self.quantiles),
                    step=member.own_epoch(epoch),
                    float32=False,
                )  # computed in float64 from the slots: logged as they are
