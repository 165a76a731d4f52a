"""Successive halving: at which epochs a sweep's configurations are ranked (rungs), and which go on.

Pure functions of the settings and of each configuration's validation scores per seed; training by rungs is
`lrsweep.run.halving`'s. A configuration's seeds go on or stop together.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from lrsweep.core import checks, stats

QUANTILE = "quantile"  # keep the top 1/eta of the configurations, by seed-mean score (ASHA's, Hyperband's rule)
STATS = "stats"  # stop only the configurations `lrsweep.core.stats` calls worse than the rung's best
RULES = (QUANTILE, STATS)
DIVERGED_SCORE = 0.0  # a seed that diverged counts as this (worse than chance) in its configuration's mean


@dataclass(frozen=True)
class Halving:
    """`hydra.launcher.halving`: eta (None: no halving), the first rung's epochs, and the rule."""

    eta: int | None = None
    min_epochs: int = 1
    rule: str = QUANTILE

    def check(self) -> None:
        """Raises ValueError naming the first setting that cannot work."""
        if self.eta is None:
            return
        checks.check_count("hydra.launcher.halving.eta", self.eta, 2)
        checks.check_count("hydra.launcher.halving.min_epochs", self.min_epochs, 1)
        checks.check_choice("hydra.launcher.halving.rule", self.rule, list(RULES))

    def describe(self) -> str:
        return f"eta={self.eta} min_epochs={self.min_epochs} rule={self.rule}"


def rungs(epochs: int, min_epochs: int, eta: int) -> list[int]:
    """The epochs after which configurations are ranked, min_epochs x eta^k below `epochs`, then `epochs` itself
    (the end, where nothing stops): rungs(9, 1, 3) == [1, 3, 9]."""
    points, epoch = [], min_epochs
    while epoch < epochs:
        points.append(epoch)
        epoch *= eta
    return [*points, epochs]


def going_on(scores: Mapping[str, Mapping[int, float]], eta: int, rule: str = QUANTILE) -> list[str]:
    """The configurations that go on past a rung, in `scores`' order.

    Args:
        scores: {configuration: {seed: validation score at the rung}}; NaN for a seed that diverged
            (`DIVERGED_SCORE`).
        eta: QUANTILE keeps the best max(1, n // eta) of n configurations by seed-mean score.
        rule: QUANTILE, or STATS: keep every configuration `stats.compare_to_best` does not call worse (one run
            per configuration cannot be called worse: with one seed, STATS keeps all).
    """
    values = {key: {s: _score(v) for s, v in seeds.items()} for key, seeds in scores.items()}
    if rule == STATS:
        verdicts = stats.compare_to_best(values)
        return [key for key in values if verdicts[key].verdict != stats.WORSE]
    means = {key: sum(seeds.values()) / len(seeds) for key, seeds in values.items()}
    ranked = sorted(means, key=lambda key: -means[key])  # stable: ties keep the sweep's order
    kept = set(ranked[: max(1, len(ranked) // eta)])
    return [key for key in values if key in kept]


def _score(value: float) -> float:
    return DIVERGED_SCORE if math.isnan(value) else value
