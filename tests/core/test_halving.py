"""Successive halving's decisions: the rungs, and which configurations go on past one."""

from __future__ import annotations

import math

import pytest

from lrsweep.core.halving import QUANTILE, STATS, Halving, going_on, rungs


@pytest.mark.parametrize(
    ("epochs", "min_epochs", "eta", "expected"),
    [(9, 1, 3, [1, 3, 9]), (10, 1, 3, [1, 3, 9, 10]), (5, 1, 2, [1, 2, 4, 5]), (4, 2, 3, [2, 4]), (1, 1, 3, [1])],
)
def test_rungs_are_min_epochs_times_powers_of_eta_then_the_end(epochs, min_epochs, eta, expected):
    assert rungs(epochs, min_epochs, eta) == expected


def test_quantile_keeps_the_best_third_by_seed_mean_and_seeds_go_together():
    # Six configurations, 2 seeds each: "c" is best on average although "d" has the single best run.
    scores = {
        "a": {0: 0.50, 1: 0.52},
        "b": {0: 0.70, 1: 0.71},
        "c": {0: 0.80, 1: 0.79},
        "d": {0: 0.90, 1: 0.40},
        "e": {0: 0.10, 1: 0.12},
        "f": {0: 0.60, 1: 0.61},
    }
    assert going_on(scores, eta=3) == ["b", "c"]  # 6 // 3 = 2, in the sweep's order
    assert going_on(scores, eta=2) == ["b", "c", "d"]


def test_quantile_keeps_one_at_least_and_counts_a_diverged_seed_as_zero():
    assert going_on({"a": {0: 0.5}, "b": {0: 0.6}}, eta=3) == ["b"]
    # "a" would lead on its finite seed; its diverged one (NaN) counts 0, so its mean is 0.45.
    assert going_on({"a": {0: 0.9, 1: math.nan}, "b": {0: 0.6, 1: 0.6}}, eta=2) == ["b"]


def test_stats_rule_stops_only_what_is_worse_than_the_best():
    scores = {
        "best": {s: 0.80 + 0.001 * s for s in range(5)},
        "tied": {s: 0.799 + 0.002 * (s % 2) for s in range(5)},  # within the noise
        "worse": {s: 0.50 + 0.001 * s for s in range(5)},
    }
    assert going_on(scores, eta=3, rule=STATS) == ["best", "tied"]
    assert going_on(scores, eta=3, rule=QUANTILE) == ["best"]
    # One seed per configuration: nothing can be called worse, so the stats rule keeps them all.
    assert going_on({"a": {0: 0.1}, "b": {0: 0.9}}, eta=3, rule=STATS) == ["a", "b"]


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        (Halving(eta=1), "hydra.launcher.halving.eta"),
        (Halving(eta=3, min_epochs=0), "hydra.launcher.halving.min_epochs"),
        (Halving(eta=3, rule="median"), "hydra.launcher.halving.rule"),
    ],
)
def test_bad_settings_name_the_key(settings, named):
    with pytest.raises(ValueError, match=named):
        settings.check()
    Halving().check()  # no eta: no halving, nothing to check
