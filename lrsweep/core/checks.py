"""Argument checks: a value that cannot run fails before any work starts, with a message naming the key,
what it must be and what was received, e.g. "`initial_lr` must be a finite learning rate > 0. Received: ...".

The config's ranges (`lrsweep.config.schema`) and the schedules' own arguments are checked with these."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

FLOAT32_TINY = float(np.finfo(np.float32).smallest_subnormal)  # smaller positive values round to 0
FLOAT32_MAX = float(np.finfo(np.float32).max)
# An optimizer counts its steps in an int32 on some backends: a schedule's lengths in steps must stay below this.
MAX_STEPS = 2**31 - 1


def check_lr(name: str, value: Any, zero_ok: bool = False) -> float:
    """Returns `value` as a Python float if it is a finite learning rate > 0 (>= 0 if `zero_ok`), else raises.

    Keras 3 optimizers reject int and NumPy scalars, so every LR leaves config through here as a float.
    """
    bound = ">= 0" if zero_ok else "> 0"
    if value is None:
        raise ValueError(f"`{name}` must be set to a learning rate {bound}. Received: {name}=None")
    real = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not real or value < 0 or (value == 0 and not zero_ok):
        raise ValueError(f"`{name}` must be a finite learning rate {bound}. Received: {name}={value!r}")
    with np.errstate(over="ignore"):  # an LR beyond float32 becomes inf: said below, not as NumPy's warning
        as_float32 = float(np.float32(value))  # what a Keras optimizer keeps
    if (value > 0 and as_float32 == 0) or not math.isfinite(as_float32):
        raise ValueError(
            f"`{name}` must be a learning rate float32 can hold, {FLOAT32_TINY:g} to {FLOAT32_MAX:.4g} "
            f"(Keras keeps it as float32). Received: {name}={value!r}"
        )
    return float(value)


def check_count(name: str, value: Any, minimum: int, what: str = "") -> int:
    """Returns `value` if it is an int >= `minimum`, else raises a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}{what}. Received: {name}={value!r}")
    return int(value)


def check_number(
    name: str, value: Any, low: float, high: float | None = None, *, low_open: bool = False, high_open: bool = False
) -> float:
    """Returns `value` as a float if it is a finite real between `low` and `high` (None: no bound), else raises.

    The interval is closed unless `low_open` / `high_open`; the message names it, e.g. "in (0, 1]".
    """
    upper = "inf)" if high is None else f"{high:g}{')' if high_open else ']'}"
    interval = f"{'(' if low_open else '['}{low:g}, {upper}"
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value < low
        or (low_open and value == low)
        or (high is not None and (value > high or (high_open and value == high)))
    ):
        raise ValueError(f"`{name}` must be a number in {interval}. Received: {name}={value!r}")
    return float(value)


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """Returns `value` if it is one of `choices`, else raises a ValueError listing them.

    Compared with their types, so that true is not 1; booleans are listed as the config writes them (true, false).
    """
    if any(value is choice or (type(value) is type(choice) and value == choice) for choice in choices):
        return value
    listed = ", ".join(str(choice).lower() if isinstance(choice, bool) else str(choice) for choice in choices)
    raise ValueError(f"`{name}` must be one of {listed}. Received: {name}={value!r}")
