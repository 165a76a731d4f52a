"""A search's runs stopped after an epoch when their trial's pruner says so (`lrsweep.core.trials`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import keras
from mlflow.tracking import MlflowClient

from lrsweep import tracking
from lrsweep.core import trials
from lrsweep.ml.training import Member
from lrsweep.run.callbacks.steps import freeze_members, optimizer_steps

log = logging.getLogger(__name__)


class PruneTrials(keras.callbacks.Callback):
    """After each epoch, reports each member's `val_accuracy` to its trial's judge (an Optuna pruner, through
    `trial.report` and `trial.should_prune`); a member it prunes stops there: in a pack it is frozen (its weights,
    slots and later metrics stay as they were) and training ends when every member has stopped. Its run is tagged
    `lrsweep.optuna.pruned` and `lrsweep.halving.stopped_epoch` (epochs trained), and ends FINISHED as a stopped run.

    Args:
        members: the runs watched; those whose trial has no judge in this process are left alone.
        client: where the tags go.
    """

    def __init__(self, members: Sequence[Member], client: MlflowClient) -> None:
        super().__init__()
        self.members = list(members)
        self.client = client

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        logs = logs or {}
        pruned = []
        for member in self.members:
            judge = trials.judge(member.trial)
            value = logs.get(member.key("val_accuracy"))
            if judge is None or value is None or member.error is not None or member.stopped_epoch is not None:
                continue
            own = member.own_epoch(epoch)
            if judge.report(float(value), own):
                judge.pruned_epoch = own
                member.pruned = True
                member.stopped_epoch, member.stopped_step = epoch, optimizer_steps(self.model.optimizer)
                tags = {tracking.TAG_OPTUNA_PRUNED: "true", tracking.TAG_STOPPED_EPOCH: str(own + 1)}
                tracking.set_tags(self.client, member.run_id, tags)
                log.info("%s: pruned after epoch %d (val_accuracy %.4f), trial %s", member.name, own + 1,
                         value, member.trial)  # fmt: skip
                pruned.append(member)
        freeze_members(self.model, [m.index for m in pruned if m.index is not None])
        if all(m.error is not None or m.stopped_epoch is not None for m in self.members):
            self.model.stop_training = True
