"""The Keras callbacks that watch and record training, one per module; each takes plain values, never the config.

Each touches only its `self.model` and Keras' logs, and MLflow through the client it is given: what they compute
apart from Keras' callback protocol lives in `lrsweep.ml` (`divergence`, `effective_lr`, `range_test`), and
`steps` holds what they share (the optimizer's step, the steps done, the LR at many steps).
"""

from lrsweep.ml.divergence import DivergedError, member_losses, reference_examples
from lrsweep.run.callbacks.batched_writer import BatchedWriter
from lrsweep.run.callbacks.effective_lr_logger import EffectiveLRLogger
from lrsweep.run.callbacks.epoch_logger import MlflowEpochLogger
from lrsweep.run.callbacks.prune_trials import PruneTrials
from lrsweep.run.callbacks.range_test_recorder import RangeTestRecorder
from lrsweep.run.callbacks.step_logger import LR_STEP, MlflowStepLogger
from lrsweep.run.callbacks.steps import (
    current_lr,
    freeze_members,
    lr_at_steps,
    optimizer_schedule,
    optimizer_steps,
    resolve_schedules,
    steps_done,
)
from lrsweep.run.callbacks.stop_on_divergence import TAG_DIVERGED_LOSS, TAG_STARTING_LOSS, StopOnDivergence
from lrsweep.run.callbacks.stop_on_interrupt import StopOnInterrupt

__all__ = [
    "LR_STEP",
    "TAG_DIVERGED_LOSS",
    "TAG_STARTING_LOSS",
    "BatchedWriter",
    "DivergedError",
    "EffectiveLRLogger",
    "MlflowEpochLogger",
    "MlflowStepLogger",
    "PruneTrials",
    "RangeTestRecorder",
    "StopOnDivergence",
    "StopOnInterrupt",
    "current_lr",
    "freeze_members",
    "lr_at_steps",
    "member_losses",
    "optimizer_schedule",
    "optimizer_steps",
    "reference_examples",
    "resolve_schedules",
    "steps_done",
]
