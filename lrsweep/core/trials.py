"""Search trials that judge their runs while they train: the Optuna sweeper registers a judge per trial, the training
callback (`lrsweep.run.callbacks.PruneTrials`) reports each epoch's score to it and stops the run when it says so.

A judge lives in one process. For trials that train elsewhere (packs on a cluster: `lrsweep.run.remote`), a judge
whose study is in a database both processes reach carries `elsewhere`, a picklable maker of a judge of its own that
reports to the same study; the worker registers what `portable` gave it (`register_all`). Without one, a trial
that trains in another process trains to its end. No Optuna here: a judge is a function.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass


@dataclass
class Judge:
    """One trial's: `report(value, epoch)` records a run's score after an epoch (0-based) and says whether to stop."""

    report: Callable[[float, int], bool]
    pruned_epoch: int | None = None  # the epoch after which it was stopped, once it has been
    elsewhere: Callable[[], Judge] | None = None  # picklable: makes this trial's judge in another process


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


def portable(trial_keys: Iterable[str | None]) -> dict[str, Callable[[], Judge]]:
    """The makers of the judges of `trial_keys` that can judge in another process (`Judge.elsewhere`), by key."""
    return {k: j.elsewhere for k in trial_keys if k is not None and (j := _judges.get(k)) and j.elsewhere is not None}


def register_all(makers: Mapping[str, Callable[[], Judge]]) -> None:
    """In a worker process: a judge of its own for each trial `portable` found, made here."""
    for trial_key, make in makers.items():
        register(trial_key, make())
