"""Seed-aware comparisons: the numbers on fixed data (closed forms and scipy), then verdicts from real sweeps."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from lrsweep import tracking
from lrsweep.analysis import report
from lrsweep.core import stats
from tests.conftest import TINY, train


def test_paired_comparison_matches_the_closed_form_t_test():
    best = {0: 0.90, 1: 0.91, 2: 0.92, 3: 0.93, 4: 0.94}
    other = {s: v - d for (s, v), d in zip(best.items(), (0.01, 0.02, 0.03, 0.04, 0.05), strict=True)}
    comparison = stats.compare_to_best({"best": best, "other": other})["other"]
    # Differences -0.01..-0.05: mean -0.03, sd sqrt(2.5)/100, t = -0.03 / (sd / sqrt 5) = -4.2426 with 4 df.
    sd = math.sqrt(2.5) / 100
    t = -0.03 / (sd / math.sqrt(5))
    assert t == pytest.approx(-4.242641, rel=1e-6)
    p = 2 * scipy_stats.t.sf(abs(t), df=4)
    assert p == pytest.approx(0.013236, rel=1e-4)
    half_width = scipy_stats.t.ppf(0.975, df=4) * sd / math.sqrt(5)
    assert comparison.test == "paired" and comparison.n == comparison.n_reference == 5
    assert comparison.difference == pytest.approx(-0.03)
    assert (comparison.low, comparison.high) == pytest.approx((-0.03 - half_width, -0.03 + half_width))
    assert comparison.p == pytest.approx(p) and comparison.p_adjusted == pytest.approx(p)  # one comparison
    assert comparison.verdict == stats.WORSE
    assert comparison.sentence().startswith("other vs best: -0.0300 [-0.0496, -0.0104], p=0.013 (paired, n=5)")


def test_unpaired_comparison_is_welch_as_scipy_computes_it():
    best = {0: 0.85, 1: 0.86, 2: 0.84, 3: 0.87}
    other = {10: 0.80, 11: 0.86, 12: 0.83}  # other seeds: nothing to pair
    comparison = stats.compare_to_best({"best": best, "other": other})["other"]
    expected = scipy_stats.ttest_ind(list(other.values()), list(best.values()), equal_var=False)
    interval = expected.confidence_interval(0.95)
    assert comparison.test == "welch"
    assert comparison.p == pytest.approx(expected.pvalue)
    assert (comparison.low, comparison.high) == pytest.approx((interval.low, interval.high))
    # The Welch-Satterthwaite degrees of freedom by hand.
    va, vb = np.var(list(other.values()), ddof=1) / 3, np.var(list(best.values()), ddof=1) / 4
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 3)
    assert expected.df == pytest.approx(df)


def test_holm_correction_and_verdicts_over_several_comparisons():
    rng = np.random.default_rng(0)
    seeds = range(6)
    samples = {
        "best": {s: 0.90 + rng.normal(0, 0.002) for s in seeds},
        "same": {s: 0.90 + rng.normal(0, 0.002) for s in seeds},
        "worse": {s: 0.80 + rng.normal(0, 0.002) for s in seeds},
    }
    # Per-seed differences with p = 0.030 alone; second smallest of 3 p-values, Holm doubles it to 0.060.
    differences = (-0.002, -0.004, 0.0005, -0.003, -0.002, -0.001)
    samples["slightly"] = {s: samples["best"][s] + d for s, d in zip(seeds, differences, strict=True)}
    comparisons = stats.compare_to_best(samples)
    assert comparisons["best"].verdict == stats.BEST
    raw = {k: scipy_stats.ttest_rel([samples[k][s] for s in seeds], [samples["best"][s] for s in seeds]).pvalue
           for k in ("same", "worse", "slightly")}  # fmt: skip
    # Holm by hand: sort ascending, multiply the i-th smallest by (m - i), keep the running maximum, cap at 1.
    order = sorted(raw, key=raw.get)
    adjusted, running = {}, 0.0
    for i, key in enumerate(order):
        running = max(running, min(1.0, (3 - i) * raw[key]))
        adjusted[key] = running
    for key in raw:
        assert comparisons[key].p == pytest.approx(raw[key])
        assert comparisons[key].p_adjusted == pytest.approx(adjusted[key])
    assert comparisons["worse"].verdict == stats.WORSE
    assert comparisons["same"].verdict == stats.TIED
    # Worse taken alone (interval below 0), not after correcting for 3 comparisons.
    assert comparisons["slightly"].high < 0 and 0.05 > comparisons["slightly"].p
    assert comparisons["slightly"].p_adjusted >= 0.05 and comparisons["slightly"].verdict == stats.WORSE_UNCORRECTED


def test_seeds_needed_is_the_t_test_sample_size_for_80_percent_power():
    # Cohen's d = 0.5, paired (one-sample t on the differences): n = 33.4 by the noncentral t; 34 seeds.
    assert stats.seeds_needed(0.5, paired=True) == 34
    assert stats.seeds_needed(0.5, paired=False) == 64  # two groups: 63.8 per group
    assert stats.seeds_needed(None, paired=True) is None

    # The power at the answer reaches 0.8, one seed fewer does not.
    def power(n):
        return scipy_stats.nct.sf(scipy_stats.t.ppf(0.975, n - 1), n - 1, 0.5 * math.sqrt(n))

    assert power(34) >= 0.8 > power(33)


def test_no_comparison_without_two_runs_and_exact_ties():
    comparisons = stats.compare_to_best({"a": {0: 0.8}, "b": {0: 0.7}})
    assert comparisons["b"].verdict == stats.NO_TEST and "not testable" in comparisons["b"].sentence()
    same = stats.compare_to_best({"a": {0: 0.8, 1: 0.7}, "b": {0: 0.8, 1: 0.7}})
    assert {c.verdict for c in same.values()} == {stats.BEST, stats.TIED}
    assert all(math.isnan(v) for v in stats.mean_interval([1.0]))
    low, high = stats.mean_interval([1.0, 2.0, 3.0])  # mean 2, sd 1: 2 -+ t(0.975, 2) / sqrt 3
    assert (low, high) == pytest.approx((2 - 4.302653 / math.sqrt(3), 2 + 4.302653 / math.sqrt(3)))


@pytest.fixture(scope="module")
def adam_vs_adadelta(tmp_path_factory):
    """A real packed sweep: Adam and Adadelta (nominal LR 0.001, a slow learner here) x 4 seeds, tiny data."""
    tmp_path = tmp_path_factory.mktemp("verdicts")
    result = train(
        tmp_path, "optimizer=adam,adadelta", "training.seed=0,1,2,3", "training.epochs=2", "training.verbose=0",
        "backend=jax", "tracking.effective_lr=false", *TINY,
    )  # fmt: skip
    client, experiment_id = tracking.connect(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}", "lrsweep")
    return tmp_path, result, client, experiment_id


def test_a_clearly_worse_optimizer_is_marked_worse(adam_vs_adadelta):
    tmp_path, result, client, experiment_id = adam_vs_adadelta
    built = report.build(tracking.load_sweep(client, experiment_id, "multirun"))
    labels = [c.label for c in built.configurations]
    assert labels == ["optimizer=adam", "optimizer=adadelta"]
    comparison = built.comparisons["optimizer=adadelta"]
    assert comparison.test == "paired" and comparison.n == 4
    assert comparison.verdict == stats.WORSE and comparison.p_adjusted < 0.05 and comparison.high < 0
    # The numbers are those of the runs in MLflow, paired by seed.
    adam, adadelta = (c.samples() for c in built.configurations)
    expected = scipy_stats.ttest_rel([adadelta[s] for s in range(4)], [adam[s] for s in range(4)])
    assert comparison.p == pytest.approx(expected.pvalue)
    # Printed, and in summary.csv / summary.md.
    assert "optimizer=adadelta vs optimizer=adam: -0." in result.stdout and ": worse" in result.stdout
    assert "Ranked by final val_accuracy on the held-out" in result.stdout
    summary = (tmp_path / "multirun" / "report" / "summary.md").read_text()
    assert "| 2 | adadelta |" in summary and "| worse |" in summary
    assert (tmp_path / "multirun" / "report" / "seeds.png").stat().st_size > 10_000


def test_identical_configurations_under_different_seeds_are_tied(adam_vs_adadelta):
    """Adam's runs of seeds 0-1 and of seeds 2-3 as two configurations: the same training, different seeds."""
    _, _, client, experiment_id = adam_vs_adadelta
    built = report.build(tracking.load_sweep(client, experiment_id, "multirun"))
    adam = built.configurations[0].samples()
    comparisons = stats.compare_to_best(
        {"seeds 0-1": {s: adam[s] for s in (0, 1)}, "seeds 2-3": {s: adam[s] for s in (2, 3)}}
    )
    (other,) = [c for c in comparisons.values() if c.verdict != stats.BEST]
    assert other.test == "welch" and other.verdict == stats.TIED and other.low < 0 < other.high
