"""A sweep at a glance: its runs (read by `lrsweep.tracking`) grouped into configurations over seeds, ranked, compared
to the best with verdicts, as a table and as a grid; the data model that `figures` draws and `files` writes."""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from mlflow.entities import Run

from lrsweep import tracking
from lrsweep.core import errors, identity, stats
from lrsweep.ml.data import VALIDATION_IS_TEST

SEED_KEY = identity.SEED_KEY
RANK_METRIC = "val_accuracy"
FINAL_METRICS = ("val_accuracy", "val_loss", "accuracy", "loss")
TEST_METRICS = ("test_accuracy", "test_loss")  # once per run, when validation is held out of the training set
# A run diverged if training stopped it for divergence (FAILED with DivergedError: its loss became NaN/inf or rose
# above training.divergence_factor x its starting loss, `lrsweep.run.callbacks.StopOnDivergence`) or it ended no better
# than guessing: a final training loss at or above the cross-entropy of a uniform guess over the 10 classes, ln 10.
CHANCE_LOSS = math.log(10)
STOPPED_LISTED = 10  # stopped configurations named in the verdicts' line
SEEDS_SHOWN = 15  # configurations in seeds.png


@dataclass
class JobRun:
    """One job's run: identity, status, the overrides that made it, final metrics and per-epoch histories."""

    run_id: str
    name: str
    status: str
    overrides: dict[str, str]
    params: dict[str, str]
    final: dict[str, float]
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    reused: bool = False  # a FINISHED run of an earlier sweep that this sweep's job skipped to (resume)
    tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_mlflow(cls, run: Run) -> JobRun:
        return cls(
            run_id=run.info.run_id,
            name=run.info.run_name,
            status=run.info.status,
            overrides=json.loads(run.data.tags.get(tracking.TAG_OVERRIDES, "{}")),
            params=dict(run.data.params),
            final=dict(run.data.metrics),
            tags=dict(run.data.tags),
        )

    @property
    def seed(self) -> int | None:
        value = self.params.get(SEED_KEY, self.overrides.get(SEED_KEY))
        try:
            return int(value) if value is not None else None
        except ValueError:
            return None

    @property
    def stopped_epoch(self) -> int | None:
        """The epochs it trained before successive halving stopped it (FINISHED all the same), or None."""
        value = self.tags.get(tracking.TAG_STOPPED_EPOCH)
        return int(value) if value is not None else None

    @property
    def diverged(self) -> bool:
        """Stopped for divergence (FAILED with DivergedError), or ended no better than chance (final loss >= ln 10)."""
        if self.status == "FAILED":
            return "DivergedError" in self.tags.get(tracking.TAG_ERROR, "")
        loss = self.final.get("loss")
        return self.status == "FINISHED" and loss is not None and not loss < CHANCE_LOSS


@dataclass
class Configuration:
    """The runs of one configuration, which differ only by seed."""

    values: dict[str, str]
    runs: list[JobRun]
    label: str

    @property
    def finished(self) -> list[JobRun]:
        return [r for r in self.runs if r.status == "FINISHED"]

    @property
    def diverged(self) -> int:
        return sum(r.diverged for r in self.runs)

    def samples(self, metric: str = RANK_METRIC) -> dict[int, float]:
        """{seed: final value} of the finished runs (a run without a seed is keyed by its position)."""
        values = {}
        for i, run in enumerate(r for r in self.finished if metric in r.final):
            values[run.seed if run.seed is not None else -1 - i] = run.final[metric]
        return values

    def stat(self, metric: str) -> tuple[float, float, int]:
        """Mean, sample standard deviation (nan for n < 2) and n of a final metric over finished runs."""
        values = [r.final[metric] for r in self.finished if metric in r.final]
        if not values:
            return math.nan, math.nan, 0
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan, len(values)

    def curve(self, metric: str) -> tuple[list[int], list[float], list[float]]:
        """Steps, mean and std across finished runs of a per-epoch metric (steps all runs reached)."""
        series = [dict(r.history[metric]) for r in self.finished if r.history.get(metric)]
        if not series:
            return [], [], []
        steps = sorted(set.intersection(*(set(s) for s in series)))
        means = [statistics.fmean(s[t] for s in series) for t in steps]
        stds = [statistics.stdev(s[t] for s in series) if len(series) > 1 else 0.0 for t in steps]
        return steps, means, stds


@dataclass
class SweepReport:
    sweep_id: str | None
    runs: list[JobRun]
    swept: list[str]
    configurations: list[Configuration]
    comparisons: dict[str, stats.Comparison] = field(default_factory=dict)  # by configuration label
    # Configurations successive halving stopped (every run of them), most epochs first: not finished, so not ranked.
    stopped: list[Configuration] = field(default_factory=list)

    @property
    def validation(self) -> str:
        """What ranked the configurations: the validation set the runs report `val_*` on."""
        described = sorted({r.tags[tracking.TAG_VALIDATION] for r in self.runs if tracking.TAG_VALIDATION in r.tags})
        return " / ".join(described) if described else VALIDATION_IS_TEST

    @property
    def test_metrics(self) -> tuple[str, ...]:
        return tuple(m for m in TEST_METRICS if any(m in r.final for r in self.runs))

    @property
    def comparable(self) -> bool:
        """Whether any configuration has 2 or more finished runs, so that a comparison is possible."""
        return any(len(c.samples()) >= 2 for c in self.configurations)

    def rows(self) -> list[dict[str, object]]:
        """One row per configuration, best mean val_accuracy first: swept values, mean/std/n, verdict vs the best."""
        rows = []
        for rank, config in enumerate(self.configurations, start=1):
            row: dict[str, object] = {"rank": rank, **{short_key(k, self.swept): config.values[k] for k in self.swept}}
            for metric in (*FINAL_METRICS, *self.test_metrics):
                mean, std, n = config.stat(metric)
                row[f"{metric}_mean"], row[f"{metric}_std"] = mean, std
            comparison = self.comparisons.get(config.label)
            row["verdict"] = comparison.verdict if comparison else "no finished run"
            for key in ("difference", "low", "high", "p_adjusted", "test", "seeds_needed"):
                row[f"vs_best_{key}"] = getattr(comparison, key) if comparison else math.nan
            row["n"] = config.stat(RANK_METRIC)[2]
            row["failed"] = len(config.runs) - len(config.finished)
            row["diverged"] = config.diverged
            row["reused"] = sum(r.reused for r in config.runs)
            row["runs"] = " ".join(r.name for r in config.runs)
            rows.append(row)
        return rows

    def table(self, markdown: bool = False) -> str:
        return format_table(*self.table_cells(), markdown=markdown)

    def table_cells(self) -> tuple[list[str], list[list[object]]]:
        """The table's header and rows of cells, as `table()` prints them (and report.html shows them)."""
        header = ["rank", *([short_key(k, self.swept) for k in self.swept] or ["configuration"])]
        header += [f"{RANK_METRIC} (mean ± std)", "vs best [95% CI]", "p (Holm)", "verdict"]
        others = [m for m in (*FINAL_METRICS, *self.test_metrics) if m != RANK_METRIC]
        header += [f"{m} (mean ± std)" for m in others] + ["n", "failed", "diverged", "reused"]
        body = []
        lead = self.lead()
        for config, row in zip(self.configurations, self.rows(), strict=True):
            cells = [row["rank"], *([short_number(config.values[k]) for k in self.swept] or [config.label])]
            cells.append(_mean_std(row[f"{RANK_METRIC}_mean"], row[f"{RANK_METRIC}_std"]))
            cells += _comparison_cells(self.comparisons.get(config.label), lead)
            cells += [_mean_std(row[f"{m}_mean"], row[f"{m}_std"]) for m in others]
            body.append([*cells, row["n"], row["failed"], row["diverged"], row["reused"]])
        return header, body

    def lead(self) -> str:
        """The best's verdict as the table and seeds.png show it: `best`, or `best (tied with k)` when k
        configurations are tied with it (a lead, not a win)."""
        tied = sum(c.verdict == stats.TIED for c in self.comparisons.values())
        return f"{stats.BEST} (tied with {tied})" if tied else stats.BEST

    def verdicts(self, limit: int | None = None) -> list[str]:
        """The comparisons in words, one line each (the `limit` closest to the best), headed by what ranked them;
        or why none is possible."""
        head = f"Ranked by final {RANK_METRIC} on the {self.validation}."
        if self.validation == VALIDATION_IS_TEST:
            head += " (data.validation_size=null, the tutorial's way: the best is chosen on the data it is scored on.)"
        if len(self.configurations) < 2:
            return [head, *self.stopped_lines()]
        if not self.comparable:
            return [
                f"{head} One run per configuration: no comparison is possible, and the ranking may be noise. "
                f"Sweep seeds to compare, e.g. {SEED_KEY}=0,1,2.",
                *self.stopped_lines(),
            ]
        lines = [
            f"{head} Each configuration vs the best: difference in mean {RANK_METRIC} [95% CI], p corrected for "
            f"{plural(sum(1 for c in self.comparisons.values() if c.test), 'comparison')} (Holm); paired by seed "
            "when both ran the same seeds, else Welch."
        ]
        others = [c.sentence(RANK_METRIC) for c in self.comparisons.values() if c.verdict != stats.BEST]
        if limit is not None and len(others) > limit:
            verdicts = Counter(c.verdict for c in self.comparisons.values())
            counts = ", ".join(f"{n} {v}" for v, n in verdicts.items())
            others = [*others[:limit], f"... {len(others) - limit} more in summary.md ({counts})"]
        return lines + others + self.stopped_lines()

    def stopped_lines(self) -> list[str]:
        """One line on the configurations stopped early (successive halving, a pruner), if any: where, and their
        score there."""
        if not self.stopped:
            return []
        parts = []
        for config in self.stopped:
            mean = config.stat(RANK_METRIC)[0]
            parts.append(f"{config.label} (epoch {config.runs[0].stopped_epoch}, {RANK_METRIC} {mean:.4f})")
        shown = errors.listed(parts, "; ", STOPPED_LISTED)
        return [
            f"Stopped early by successive halving or the search's pruner (behind, not finished), so not ranked above: "
            f"{plural(len(self.stopped), 'configuration')}: {shown}."
        ]


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _comparison_cells(comparison: stats.Comparison | None, lead: str = stats.BEST) -> list[str]:
    """The vs-best interval, p and verdict cells; the best's verdict is `lead` (`SweepReport.lead`)."""
    if comparison is None:
        return ["-", "-", "no finished run"]
    if comparison.verdict == stats.BEST:
        return ["-", "-", lead]
    if not comparison.test:
        return [f"{comparison.difference:+.4f}", "-", f"{stats.NO_TEST} (n={comparison.n})"]
    interval = f"{comparison.difference:+.4f} [{comparison.low:+.4f}, {comparison.high:+.4f}]"
    return [interval, f"{comparison.p_adjusted:.2g}", comparison.verdict]


def short_number(value: str) -> str:
    """`0.00019460990342853233` -> `0.0001946` for display (CSV keeps every digit); other values as they are."""
    try:
        return value if len(value) <= 8 else f"{float(value):.4g}"
    except ValueError:
        return value


def _mean_std(mean: object, std: object) -> str:
    if not isinstance(mean, float) or math.isnan(mean):
        return "-"
    return f"{mean:.4f}" if not isinstance(std, float) or math.isnan(std) else f"{mean:.4f} ± {std:.4f}"


def short_key(key: str, keys: Sequence[str]) -> str:
    """`schedule.initial_lr` -> `initial_lr` unless another key shares that last part."""
    leaf = key.rsplit(".", 1)[-1]
    return leaf if sum(k.rsplit(".", 1)[-1] == leaf for k in keys) == 1 else key


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]], markdown: bool = False) -> str:
    """A plain-text (or Markdown) table, floats to 4 decimals."""

    def cell(value: object) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    cells = [list(header)] + [[cell(v) for v in row] for row in rows]
    if markdown:
        lines = ["| " + " | ".join(r) + " |" for r in cells]
        lines.insert(1, "|" + "|".join("---" for _ in header) + "|")
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def swept_keys(runs: Sequence[JobRun]) -> list[str]:
    """Override keys whose value differs between runs (or is missing in some), the seed excluded."""
    keys: dict[str, None] = {}
    for run in runs:
        keys.update(dict.fromkeys(run.overrides))
    return [key for key in keys if key != SEED_KEY and len({run.overrides.get(key) for run in runs}) > 1]


def build(sweep: tracking.SweepRuns) -> SweepReport:
    """Groups a sweep's runs (and the finished runs it reused) by configuration, seed aside, and ranks them."""
    jobs = [JobRun.from_mlflow(run) for run in sweep.runs]
    own = {job.run_id for job in jobs}
    for run, overrides in sweep.reused:
        if run.info.run_id not in own:
            jobs.append(JobRun.from_mlflow(run))
            jobs[-1].reused = True
            jobs[-1].overrides = overrides  # as this sweep's job asked for it
    for job in jobs:
        job.history = sweep.histories.get(job.run_id, {})
    return from_jobs(sweep.sweep_id, jobs)


def from_jobs(sweep_id: str | None, jobs: list[JobRun]) -> SweepReport:
    """Groups runs by configuration, seed aside, ranks the finished ones and compares them to the best; the
    configurations stopped early are listed apart."""
    swept = swept_keys(jobs)
    groups: dict[tuple[str | None, ...], list[JobRun]] = {}
    for job in jobs:
        groups.setdefault(tuple(job.overrides.get(k) for k in swept), []).append(job)
    configurations = []
    for values, members in groups.items():
        named = dict(zip(swept, (v if v is not None else "-" for v in values), strict=True))
        label = ", ".join(f"{short_key(k, swept)}={v}" for k, v in named.items()) or identity.without_seed(
            members[0].name
        )
        configurations.append(Configuration(named, members, label))
    configurations.sort(key=lambda c: (c.stat(RANK_METRIC)[2] == 0, -_nan_to(c.stat(RANK_METRIC)[0], -1.0)))
    stopped, ranked = [], []
    for config in configurations:
        (stopped if all(r.stopped_epoch is not None for r in config.runs) else ranked).append(config)
    stopped.sort(key=lambda c: -c.runs[0].stopped_epoch)  # stable: the best first within a rung
    configurations = ranked
    comparisons = stats.compare_to_best({c.label: c.samples() for c in configurations})
    return SweepReport(sweep_id, jobs, swept, configurations, comparisons, stopped)


def _nan_to(value: float, default: float) -> float:
    return default if math.isnan(value) else value
