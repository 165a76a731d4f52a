"""Search trials that judge their runs while they train: the Optuna sweeper registers a judge per trial, the training
callback (`lrsweep.run.callbacks.PruneTrials`) reports each epoch's score to it and stops the run when it says so.

Within one process: a search whose trials train in the sweeper's process (the packed and basic launchers, without a
cluster) prunes; elsewhere no judge is found and every trial trains to its end. No Optuna here: a judge is a function.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass
class Judge:
    """One trial's: `report(value, epoch)` records a run's score after an epoch (0-based) and says whether to stop."""

    report: Callable[[float, int], bool]
    pruned_epoch: int | None = None  # the epoch after which it was stopped, once it has been


_judges: dict[str, Judge] = {}


def key(study: str, trial: int | str) -> str:
    """What a run names its trial by: its study and number (MLflow tags `lrsweep.optuna.study` and `.trial`)."""
    return f"{study}/{trial}"


def register(trial_key: str, judge: Judge) -> None:
    _judges[trial_key] = judge


def judge(trial_key: str | None) -> Judge | None:
    """The judge of a trial, if its sweeper registered one in this process."""
    return _judges.get(trial_key) if trial_key is not None else None


def unregister(trial_keys: Iterable[str]) -> None:
    for trial_key in trial_keys:
        _judges.pop(trial_key, None)
