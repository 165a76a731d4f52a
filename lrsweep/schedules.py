"""Learning-rate schedules as pure functions of the optimizer step, and their thin Keras adapter.

Every schedule is built the same way, so a config group can swap them: a factory validates its arguments
once and returns a `Schedule`, a function `lr(step)` of the global optimizer step (0-based) written with
`keras.ops`, so it runs inside a compiled train step on any Keras backend and on NumPy input alike.
Run-time quantities (`steps_per_epoch`, `total_steps`) are passed by the caller, never stored in config.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from collections.abc import Callable
from typing import Any

import keras
from keras import ops

StepFn = Callable[[Any], Any]


class Schedule:
    """A pure function `lr(step)` together with the `_target_` config that rebuilds it."""

    def __init__(self, fn: StepFn, config: dict[str, Any]):
        self.fn = fn
        self.config = config

    def __call__(self, step):
        return self.fn(step)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items() if k != "_target_")
        return f"{self.config['_target_'].rsplit('.', 1)[-1]}({args})"


def schedule_factory(factory: Callable[..., StepFn]) -> Callable[..., Schedule]:
    """Wraps a factory so that what it returns remembers its arguments (for `get_config`)."""
    signature = inspect.signature(factory)
    target = f"{factory.__module__}.{factory.__qualname__}"

    @functools.wraps(factory)
    def build(*args, **kwargs) -> Schedule:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return Schedule(factory(*args, **kwargs), {"_target_": target, **bound.arguments})

    return build


def check_lr(name: str, value: Any) -> float:
    """Returns `value` as a Python float if it is a finite learning rate > 0, else raises ValueError.

    Keras 3 optimizers reject int and NumPy scalars, so every LR leaves config through here as a float.
    """
    if value is None:
        raise ValueError(f"`{name}` must be set to a learning rate > 0. Received: {name}=None")
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"`{name}` must be a finite learning rate > 0. Received: {name}={value!r}")
    return float(value)


def check_count(name: str, value: Any, minimum: int, what: str = "") -> int:
    """Returns `value` if it is an int >= `minimum`, else raises a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}{what}. Received: {name}={value!r}")
    return int(value)


def _float(step):
    return ops.cast(step, "float32")


@schedule_factory
def constant(value: float, *, steps_per_epoch: int = 1, total_steps: int | None = None) -> StepFn:
    """lr(step) = value.

    Args:
        value: the learning rate, > 0.
        steps_per_epoch: unused; every schedule accepts the run-time arguments.
        total_steps: unused.
    """
    value = check_lr("value", value)
    return lambda step: ops.zeros_like(_float(step)) + value


@schedule_factory
def linear_warmup(
    initial_lr: float,
    final_lr: float,
    warmup_epochs: int,
    *,
    steps_per_epoch: int,
    total_steps: int | None = None,
) -> StepFn:
    """The tutorial's per-epoch linear warm-up, then held at `final_lr`.

        e = floor(step / steps_per_epoch)
        lr(e) = initial_lr + min(e, warmup_epochs - 1) * (final_lr - initial_lr) / (warmup_epochs - 1)

    so epoch 0 trains at `initial_lr` and epoch `warmup_epochs - 1` at `final_lr`. The tutorial's scheduler
    keeps adding the increment after the warm-up; here the LR is held at `final_lr` from then on.

    Args:
        initial_lr: learning rate of the first epoch, > 0.
        final_lr: learning rate reached at epoch `warmup_epochs - 1` and held after, > 0.
        warmup_epochs: number of epochs the warm-up spans, >= 2.
        steps_per_epoch: optimizer steps in one epoch (batches), >= 1.
        total_steps: unused.
    """
    initial_lr = check_lr("initial_lr", initial_lr)
    final_lr = check_lr("final_lr", final_lr)
    warmup_epochs = check_count("warmup_epochs", warmup_epochs, 2, " for a linear warm-up")
    steps_per_epoch = check_count("steps_per_epoch", steps_per_epoch, 1)
    delta = (final_lr - initial_lr) / (warmup_epochs - 1)

    def schedule(step):
        epoch = ops.floor(_float(step) / steps_per_epoch)
        return initial_lr + ops.minimum(epoch, warmup_epochs - 1) * delta

    return schedule


@keras.saving.register_keras_serializable(package="lrsweep")
class KerasSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Adapts a `Schedule` to Keras: the optimizer evaluates it at its own iteration count."""

    def __init__(self, schedule: Schedule):
        super().__init__()
        self.schedule = schedule

    def __call__(self, step):
        return ops.cast(self.schedule(step), "float32")

    def get_config(self) -> dict[str, Any]:
        return {"schedule": dict(self.schedule.config)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> KerasSchedule:
        from hydra.utils import instantiate

        return cls(instantiate(config["schedule"]))
