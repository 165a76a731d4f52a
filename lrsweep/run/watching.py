"""What watches and records a job's training, for a solo model and a pack alike: its callbacks and test scores."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import keras
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from lrsweep import tracking
from lrsweep.ml.data import Dataset
from lrsweep.ml.range_test import is_range_test
from lrsweep.ml.training import EpochPrinter, Member
from lrsweep.run.callbacks import (
    EffectiveLRLogger,
    MlflowEpochLogger,
    MlflowStepLogger,
    PruneTrials,
    RangeTestRecorder,
    StopOnDivergence,
    StopOnInterrupt,
    reference_examples,
)

log = logging.getLogger(__name__)


def callbacks(
    client: MlflowClient, cfg: DictConfig, members: Sequence[Member], dataset: Dataset
) -> list[keras.callbacks.Callback]:
    """What watches and records training, for a solo model (one member) and a pack alike.

    A range test's loss rises on purpose and its recorder stops it by its own rule (smoothed loss above 4x its
    minimum), so there `StopOnDivergence` counts only a non-finite loss (which the recorder then takes back).
    """
    range_test = is_range_test(cfg)
    factor = None if range_test else cfg.training.get("divergence_factor")
    reference = reference_examples(dataset) if factor is not None else None
    watching: list[keras.callbacks.Callback] = [StopOnDivergence(members, factor, reference, client)]
    if range_test:  # after StopOnDivergence, whose verdict it overrules
        watching.append(range_test_recorder(client, cfg, members, len(dataset.x_train)))
    watching += [
        StopOnInterrupt(),
        MlflowEpochLogger(client, members),
        MlflowStepLogger(client, members, cfg.tracking.log_every_n_steps),
    ]
    if any(member.trial is not None for member in members):  # a search's trials: their pruner may stop them
        watching.append(PruneTrials(members, client))
    if cfg.tracking.effective_lr:
        watching.append(EffectiveLRLogger(client, members))
    if cfg.training.verbose not in (0, "0"):
        watching.append(EpochPrinter(members, cfg.training.epochs))
    return watching


def range_test_recorder(
    client: MlflowClient, cfg: DictConfig, members: Sequence[Member], examples: int
) -> RangeTestRecorder:
    """The range test's recorder for a job training on `examples` examples per epoch."""
    batch_size = int(cfg.training.batch_size)
    planned = int(cfg.training.epochs) * math.ceil(examples / batch_size)
    if cfg.training.steps_per_execution != 1:
        log.warning(
            "Range test with training.steps_per_execution=%s: one loss per %s steps (their mean, logged at the "
            "last of them). Set training.steps_per_execution=1 (the lr_range preset does) for one per step.",
            cfg.training.steps_per_execution, cfg.training.steps_per_execution,
        )  # fmt: skip
    return RangeTestRecorder(client, members, batch_size, examples, planned)


def log_test_metrics(
    client: MlflowClient, model: keras.Model, dataset: Dataset, members: Sequence[Member], batch_size: int, epoch: int
) -> None:
    """Scores the test set once, after training, and logs `test_loss` and `test_accuracy` to each member's run.

    Only when validation was on held-out examples (otherwise val_* already is the test score), and only for
    members that trained to the end: a diverged member (`error` set) gets none, nor one a range test stopped
    (`stopped_step` set; in a pack its weights trained on, unlogged). A pack is evaluated once for all its members
    (its logs hold `loss_<k>`, `accuracy_<k>`).

    Args:
        epoch: the last epoch the pack trained (0-based): each member's own is its step.
    """
    finished = [member for member in members if member.error is None and member.stopped_step is None]
    if dataset.validates_on_test or not finished:
        return
    logs = model.evaluate(dataset.x_test, dataset.y_test, batch_size=batch_size, verbose=0, return_dict=True)
    for member in finished:
        scores = member.metrics(logs)
        test = {f"test_{name}": scores[name] for name in ("loss", "accuracy")}
        tracking.log_metrics(client, member.run_id, test, step=member.own_epoch(epoch))
        log.info("%s: %s", member.name, ", ".join(f"{k}={v:.4f}" for k, v in test.items()))
