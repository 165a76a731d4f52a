"""Is a difference between two configurations real? Seed-aware comparisons with scipy and statsmodels.

Every configuration of a sweep is compared with the best one (highest mean of the ranking metric):
- paired by seed when both ran the same seeds (same seed = same initial weights and data order, so the seed's
  own luck cancels): a paired t-test on the per-seed differences (`scipy.stats.ttest_rel`);
- otherwise Welch's t-test (`scipy.stats.ttest_ind(equal_var=False)`);
- the p-values of a sweep's comparisons corrected for their number with Holm's method
  (`statsmodels.stats.multitest.multipletests`), so more configurations do not mean more false "worse" verdicts;
- a verdict: "worse" when the corrected p < 0.05; otherwise "tied with best" when the 95% interval includes 0,
  and "worse before correction" when it does not (worse taken alone, not among all the sweep's comparisons);
- how many seeds would detect a difference of the size seen (80% power at the corrected level,
  `statsmodels.stats.power`), which is what to do about a "tied" verdict.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestIndPower, TTestPower

ALPHA = 0.05  # family-wise error rate of a sweep's verdicts; the intervals are 1 - ALPHA
POWER = 0.8  # for "about N seeds would detect a difference of this size"
MAX_SEEDS = 10_000

BEST, TIED, WORSE, NO_TEST = "best", "tied with best", "worse", "n/a"
# The interval excludes 0 but the corrected p does not reach ALPHA: worse taken alone, not among all comparisons.
WORSE_UNCORRECTED = "worse before correction"

Samples = Mapping[int, float]  # {seed: final value}


@dataclass(frozen=True)
class Comparison:
    """One configuration against the best one: `difference` = mean(this) - mean(best), with its interval."""

    label: str
    reference: str
    n: int
    n_reference: int
    difference: float
    low: float
    high: float
    p: float  # two-sided, as the test gives it
    p_adjusted: float  # Holm-corrected over the sweep's comparisons
    test: str  # "paired" | "welch" | "" (none possible)
    verdict: str  # BEST | TIED | WORSE | WORSE_UNCORRECTED | NO_TEST
    # Per configuration, to detect `difference` at the sweep's Bonferroni level ALPHA / comparisons, a bound on
    # Holm's (None: no difference to detect).
    seeds_needed: int | None = None

    def sentence(self, metric: str = "val_accuracy") -> str:
        """The comparison in words, e.g. `adam_linear vs adam_constant: -0.0047 [-0.0170, +0.0076], p=0.37 ...`."""
        if self.verdict == BEST:
            return f"{self.label}: best mean {metric}"
        if not self.test:
            return f"{self.label} vs {self.reference}: {self.difference:+.4f}, not testable ({_why_not(self)})"
        head = (
            f"{self.label} vs {self.reference}: {self.difference:+.4f} [{self.low:+.4f}, {self.high:+.4f}], "
            f"p={self.p_adjusted:.2g} ({self.test}, n={self.n}"
            + ("" if self.n == self.n_reference else f" vs {self.n_reference}")
            + ("" if math.isclose(self.p, self.p_adjusted) else f", Holm-corrected from p={self.p:.2g}")
            + ")"
        )
        if self.verdict == WORSE:
            return f"{head}: worse"
        tail = "worse taken alone, not after correction" if self.verdict == WORSE_UNCORRECTED else "not distinguishable"
        if self.seeds_needed is not None:
            tail += f"; about {self.seeds_needed if self.seeds_needed < MAX_SEEDS else f'{MAX_SEEDS}+'} seeds"
            tail += " would detect a difference of this size"
        return f"{head}: {tail}"


def _why_not(comparison: Comparison) -> str:
    return f"n={comparison.n} vs {comparison.n_reference}; a test needs 2 or more runs of each"


def mean_interval(values: Sequence[float], confidence: float = 1 - ALPHA) -> tuple[float, float]:
    """The t-interval of the mean of `values` (nan, nan for fewer than 2)."""
    if len(values) < 2:
        return math.nan, math.nan
    result = stats.ttest_1samp(np.asarray(values, dtype=float), 0.0)
    interval = result.confidence_interval(confidence)
    return float(interval.low), float(interval.high)


def _paired(a: Samples, b: Samples) -> bool:
    return len(a) >= 2 and set(a) == set(b)


def _test(a: Samples, b: Samples) -> tuple[str, float, float, float, float | None]:
    """(test, p, low, high, effect size) of mean(a) - mean(b); ("", nan, ...) when no test is possible."""
    if _paired(a, b):
        seeds = sorted(a)
        x, y = np.array([a[s] for s in seeds]), np.array([b[s] for s in seeds])
        diffs = x - y
        if np.all(diffs == diffs[0]):  # no spread: scipy's t is undefined; the difference is exact
            return "paired", (1.0 if diffs[0] == 0 else 0.0), float(diffs[0]), float(diffs[0]), None
        result = stats.ttest_rel(x, y)
        interval = result.confidence_interval(1 - ALPHA)
        effect = abs(float(diffs.mean())) / float(diffs.std(ddof=1))
        return "paired", float(result.pvalue), float(interval.low), float(interval.high), effect
    if len(a) < 2 or len(b) < 2:
        return "", math.nan, math.nan, math.nan, None
    x, y = np.array(list(a.values())), np.array(list(b.values()))
    spread = math.sqrt((x.var(ddof=1) + y.var(ddof=1)) / 2)
    if spread == 0:
        difference = float(x.mean() - y.mean())
        return "welch", (1.0 if difference == 0 else 0.0), difference, difference, None
    result = stats.ttest_ind(x, y, equal_var=False)
    interval = result.confidence_interval(1 - ALPHA)
    return "welch", float(result.pvalue), float(interval.low), float(interval.high), abs(x.mean() - y.mean()) / spread


def seeds_needed(effect_size: float | None, paired: bool, alpha: float = ALPHA) -> int | None:
    """Runs per configuration (pairs, if paired) for a two-sided t-test at `alpha` to detect `effect_size`
    (Cohen's d) with POWER: the smallest n in 2..MAX_SEEDS whose power reaches it (MAX_SEEDS if none does)."""
    if effect_size is None or not math.isfinite(effect_size) or effect_size == 0:
        return None
    n = np.arange(2, MAX_SEEDS + 1)
    with np.errstate(invalid="ignore"):  # power is nan at n = 2 when alpha is tiny: not reached
        if paired:
            power = TTestPower().power(effect_size=effect_size, nobs=n, alpha=alpha)
        else:
            power = TTestIndPower().power(effect_size=effect_size, nobs1=n, alpha=alpha)
    reached = np.nan_to_num(power) >= POWER
    return int(n[np.argmax(reached)]) if reached.any() else MAX_SEEDS


def compare_to_best(samples: Mapping[str, Samples]) -> dict[str, Comparison]:
    """Compares every configuration with the one of highest mean; {label: Comparison}, in `samples`' order.

    Args:
        samples: {configuration label: {seed: final value of the ranking metric}}; a configuration with no values
            is left out.
    """
    means = {label: float(np.mean(list(values.values()))) for label, values in samples.items() if values}
    if not means:
        return {}
    best = max(means, key=means.get)
    reference = samples[best]
    raw: dict[str, tuple[str, float, float, float, float | None]] = {
        label: _test(samples[label], reference) for label in means if label != best
    }
    testable = [label for label, result in raw.items() if result[0]]
    adjusted = dict.fromkeys(raw, math.nan)
    if testable:
        corrected = multipletests([raw[label][1] for label in testable], alpha=ALPHA, method="holm")[1]
        adjusted.update(zip(testable, (float(p) for p in corrected), strict=True))
    comparisons = {}
    for label in means:
        n, n_reference = len(samples[label]), len(reference)
        if label == best:
            comparisons[label] = Comparison(label, best, n, n_reference, 0.0, 0.0, 0.0, math.nan, math.nan, "", BEST)
            continue
        test, p, low, high, effect = raw[label]
        if not test:
            verdict = NO_TEST
        elif adjusted[label] < ALPHA:
            verdict = WORSE
        else:
            verdict = TIED if low <= 0 <= high else WORSE_UNCORRECTED
        comparisons[label] = Comparison(
            label, best, n, n_reference, means[label] - means[best], low, high, p, adjusted[label], test, verdict,
            seeds_needed(effect, test == "paired", ALPHA / max(1, len(testable))) if test else None,
        )  # fmt: skip
    return comparisons
