"""What a config value may be: ranges declared beside a schema field's type (`spec`), checked by `schema.check`.

Each range is called with the dotted key and the value, and raises a ValueError in the house format:
"`optimizer.beta_1` must be a number in [0, 1). Received: optimizer.beta_1=1.5".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from lrsweep.core.checks import check_choice, check_count, check_lr, check_number

RANGE = "range"  # the field metadata key of a value's allowed range


@dataclass(frozen=True)
class Number:
    """A finite real in an interval: `[low, high]`, open at either end on request, `high=None`: unbounded."""

    low: float
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __call__(self, name: str, value: Any) -> None:
        check_number(name, value, self.low, self.high, low_open=self.low_open, high_open=self.high_open)


@dataclass(frozen=True)
class LearningRate:
    """A finite learning rate > 0 (>= 0 with `zero_ok`)."""

    zero_ok: bool = False

    def __call__(self, name: str, value: Any) -> None:
        check_lr(name, value, zero_ok=self.zero_ok)


@dataclass(frozen=True)
class Count:
    """An integer >= `minimum`; `what` follows the bound in the message, e.g. " (0: off)"."""

    minimum: int
    what: str = ""

    def __call__(self, name: str, value: Any) -> None:
        check_count(name, value, self.minimum, self.what)


@dataclass(frozen=True)
class Choice:
    """One of `choices`, compared with their types (true is not 1)."""

    choices: tuple[Any, ...]

    def __call__(self, name: str, value: Any) -> None:
        check_choice(name, value, self.choices)


Range = Callable[[str, Any], None]


def spec(default: Any = MISSING, allowed: Range | None = None) -> Any:
    """A schema field: its default (`MISSING`: the option's YAML file sets it) and its allowed range."""
    return field(default=default, metadata={RANGE: allowed} if allowed else {})
