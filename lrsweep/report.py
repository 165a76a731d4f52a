"""A sweep at a glance, rebuilt from MLflow alone: a ranked table over seeds with verdicts, CSV/Markdown, figures."""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import requests
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from lrsweep import stats, tracking

SEED_KEY = "training.seed"
RANK_METRIC = "val_accuracy"
FINAL_METRICS = ("val_accuracy", "val_loss", "accuracy", "loss")
TEST_METRICS = ("test_accuracy", "test_loss")  # once per run, when validation is held out of the training set
TAG_VALIDATION = "lrsweep.validation"  # what the validation set is, e.g. "held-out 10000 of train" or "test set"
# A run diverged if its loss became NaN/inf (it ended FAILED) or it ended no better than guessing: a final
# training loss at or above the cross-entropy of a uniform guess over the 10 classes, ln 10 = 2.303.
CHANCE_LOSS = math.log(10)
SEEDS_SHOWN = 15  # configurations in seeds.png
CURVE_METRICS = ("loss", "val_loss", "accuracy", "val_accuracy")
EFFECTIVE_LR = ("effective_lr/p10", "effective_lr/p50", "effective_lr/p90")
HISTORY_METRICS = (*CURVE_METRICS, "lr", *EFFECTIVE_LR)
_REST_BULK_RUNS = 100  # the tracking server's limit of run ids per bulk metric request


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
    def diverged(self) -> bool:
        """The loss became NaN/inf (FAILED), or training ended no better than chance (final loss >= ln 10)."""
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

    @property
    def validation(self) -> str:
        """What ranked the configurations: the validation set the runs report `val_*` on."""
        described = sorted({r.tags[TAG_VALIDATION] for r in self.runs if TAG_VALIDATION in r.tags})
        return " / ".join(described) if described else "test set"

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
        header = ["rank", *([short_key(k, self.swept) for k in self.swept] or ["configuration"])]
        header += [f"{RANK_METRIC} (mean ± std)", "vs best [95% CI]", "p (Holm)", "verdict"]
        others = [m for m in (*FINAL_METRICS, *self.test_metrics) if m != RANK_METRIC]
        header += [f"{m} (mean ± std)" for m in others] + ["n", "failed", "diverged", "reused"]
        body = []
        for config, row in zip(self.configurations, self.rows(), strict=True):
            cells = [row["rank"], *([_short_number(config.values[k]) for k in self.swept] or [config.label])]
            cells.append(_mean_std(row[f"{RANK_METRIC}_mean"], row[f"{RANK_METRIC}_std"]))
            cells += _comparison_cells(self.comparisons.get(config.label))
            cells += [_mean_std(row[f"{m}_mean"], row[f"{m}_std"]) for m in others]
            body.append([*cells, row["n"], row["failed"], row["diverged"], row["reused"]])
        return format_table(header, body, markdown=markdown)

    def verdicts(self, limit: int | None = None) -> list[str]:
        """The comparisons in words, one line each (the `limit` closest to the best), headed by what ranked them;
        or why none is possible."""
        head = f"Ranked by final {RANK_METRIC} on the {self.validation}."
        if self.validation == "test set":
            head += " (data.validation_size=null, the tutorial's way: the best is chosen on the data it is scored on.)"
        if len(self.configurations) < 2:
            return [head]
        if not self.comparable:
            return [
                f"{head} One run per configuration: no comparison is possible, and the ranking may be noise. "
                f"Sweep seeds to compare, e.g. {SEED_KEY}=0,1,2."
            ]
        lines = [
            f"{head} Each configuration vs the best: difference in mean {RANK_METRIC} [95% CI], p corrected for "
            f"{_plural(sum(1 for c in self.comparisons.values() if c.test), 'comparison')} (Holm); paired by seed "
            "when both ran the same seeds, else Welch."
        ]
        others = [c.sentence(RANK_METRIC) for c in self.comparisons.values() if c.verdict != stats.BEST]
        if limit is not None and len(others) > limit:
            verdicts = Counter(c.verdict for c in self.comparisons.values())
            counts = ", ".join(f"{n} {v}" for v, n in verdicts.items())
            others = [*others[:limit], f"... {len(others) - limit} more in summary.md ({counts})"]
        return lines + others


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _comparison_cells(comparison: stats.Comparison | None) -> list[str]:
    if comparison is None:
        return ["-", "-", "no finished run"]
    if comparison.verdict == stats.BEST:
        return ["-", "-", stats.BEST]
    if not comparison.test:
        return [f"{comparison.difference:+.4f}", "-", f"{stats.NO_TEST} (n={comparison.n})"]
    interval = f"{comparison.difference:+.4f} [{comparison.low:+.4f}, {comparison.high:+.4f}]"
    return [interval, f"{comparison.p_adjusted:.2g}", comparison.verdict]


def _short_number(value: str) -> str:
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


def search_all(client: MlflowClient, experiment_id: str, query: str) -> list[Run]:
    """Every run matching `query`, fetched in pages of 1000."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], query, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return sorted(runs, key=lambda r: r.info.start_time)


def sweep_runs(client: MlflowClient, experiment_id: str, sweep_id: str) -> list[Run]:
    """The job runs of one sweep (not its parent run)."""
    return search_all(
        client, experiment_id, f"tags.`{tracking.TAG_SWEEP_ID}` = '{sweep_id}' and tags.`{tracking.TAG_ROLE}` = 'job'"
    )


def reused_runs(client: MlflowClient, experiment_id: str, sweep_id: str) -> list[tuple[Run, dict[str, str]]]:
    """Runs of earlier sweeps that this sweep's jobs skipped to, each with the overrides of the job that did."""
    parent = tracking.find_sweep_run(client, experiment_id, sweep_id)
    if parent is None:
        return []
    notes = [json.loads(v) for k, v in parent.data.tags.items() if k.startswith(tracking.TAG_REUSED_PREFIX)]
    overrides = {note["run_id"]: note["overrides"] for note in notes}
    run_ids = sorted(overrides)
    runs = []
    for start in range(0, len(run_ids), 100):
        chunk = ", ".join(f"'{run_id}'" for run_id in run_ids[start : start + 100])
        runs += search_all(client, experiment_id, f"attributes.run_id IN ({chunk})")
    return [(run, overrides[run.info.run_id]) for run in runs]


def latest_sweep_id(client: MlflowClient, experiment_id: str) -> str | None:
    run = tracking.latest_run(client, experiment_id, f"tags.`{tracking.TAG_ROLE}` = 'sweep'")
    return run.data.tags[tracking.TAG_SWEEP_ID] if run else None


def metric_histories(
    client: MlflowClient, run_ids: Sequence[str], keys: Iterable[str]
) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{run_id: {key: [(step, value), ...]}} with one query per metric for all runs, not one per run.

    A SQL store answers each metric for all runs in one query; a tracking server in requests of 100 runs.
    """
    histories: dict[str, dict[str, list[tuple[int, float]]]] = {run_id: {} for run_id in run_ids}
    if not run_ids:
        return histories
    uri = client.tracking_uri
    store = client._tracking_client.store  # the bulk query is not exposed on MlflowClient
    for key in keys:
        if hasattr(store, "get_metric_history_bulk"):
            points = [(m.run_id, m.step, m.value) for m in store.get_metric_history_bulk(list(run_ids), key, 25000)]
        elif uri.startswith(("http://", "https://")):
            points = []
            for start in range(0, len(run_ids), _REST_BULK_RUNS):
                response = requests.get(
                    f"{uri.rstrip('/')}/ajax-api/2.0/mlflow/metrics/get-history-bulk",
                    params={"run_id": list(run_ids[start : start + _REST_BULK_RUNS]), "metric_key": key},
                    timeout=60,
                )
                response.raise_for_status()
                points += [(m["run_id"], m["step"], m["value"]) for m in response.json().get("metrics", [])]
        else:
            points = [(r, m.step, m.value) for r in run_ids for m in client.get_metric_history(r, key)]
        for run_id, step, value in points:
            histories[run_id].setdefault(key, []).append((step, value))
    for per_run in histories.values():
        for key, series in per_run.items():
            per_run[key] = sorted(dict(series).items())  # the last value logged at a step wins
    return histories


def swept_keys(runs: Sequence[JobRun]) -> list[str]:
    """Override keys whose value differs between runs (or is missing in some), the seed excluded."""
    keys: dict[str, None] = {}
    for run in runs:
        keys.update(dict.fromkeys(run.overrides))
    return [key for key in keys if key != SEED_KEY and len({run.overrides.get(key) for run in runs}) > 1]


def build(
    runs: Sequence[Run],
    client: MlflowClient | None = None,
    sweep_id: str | None = None,
    reused: Sequence[tuple[Run, dict[str, str]]] = (),
) -> SweepReport:
    """Groups a sweep's runs (and the finished runs it reused) by configuration, seed aside, and ranks them."""
    jobs = [JobRun.from_mlflow(run) for run in runs]
    own = {job.run_id for job in jobs}
    for run, overrides in reused:
        if run.info.run_id not in own:
            jobs.append(JobRun.from_mlflow(run))
            jobs[-1].reused = True
            jobs[-1].overrides = overrides  # as this sweep's job asked for it
    if client is not None:
        for job, history in zip(jobs, metric_histories(client, [j.run_id for j in jobs], HISTORY_METRICS).values(),
                                strict=True):  # fmt: skip
            job.history = history
    swept = swept_keys(jobs)
    groups: dict[tuple[str | None, ...], list[JobRun]] = {}
    for job in jobs:
        groups.setdefault(tuple(job.overrides.get(k) for k in swept), []).append(job)
    configurations = []
    for values, members in groups.items():
        named = dict(zip(swept, (v if v is not None else "-" for v in values), strict=True))
        label = ", ".join(f"{short_key(k, swept)}={v}" for k, v in named.items()) or re.sub(
            r"-seed\d+$", "", members[0].name
        )
        configurations.append(Configuration(named, members, label))
    configurations.sort(key=lambda c: (c.stat(RANK_METRIC)[2] == 0, -_nan_to(c.stat(RANK_METRIC)[0], -1.0)))
    comparisons = stats.compare_to_best({c.label: c.samples() for c in configurations})
    return SweepReport(sweep_id, jobs, swept, configurations, comparisons)


def _nan_to(value: float, default: float) -> float:
    return default if math.isnan(value) else value


def load(client: MlflowClient, experiment_id: str, sweep_id: str) -> SweepReport:
    """The report of one sweep, from MLflow: one search for the runs, one bulk query per metric."""
    reused = reused_runs(client, experiment_id, sweep_id)
    return build(sweep_runs(client, experiment_id, sweep_id), client, sweep_id, reused)


# Figures -------------------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _epoch_axis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch (0-based, as logged)")


def _log_if_spans_decades(ax, values: Iterable[float]) -> None:
    positive = [v for v in values if v > 0 and math.isfinite(v)]
    if positive and max(positive) / min(positive) >= 10:
        ax.set_yscale("log")


def plot_lr(report: SweepReport):
    """The schedule's LR of every configuration per epoch; beside it, the effective per-parameter step size."""
    plt = _pyplot()
    effective = [c for c in report.configurations if c.curve("effective_lr/p50")[0]]
    fig, axes = plt.subplots(1, 2 if effective else 1, figsize=(13 if effective else 7, 4.5), squeeze=False)
    ax = axes[0][0]
    seen = []
    for i, config in enumerate(report.configurations):
        steps, lrs, _ = config.curve("lr")
        if steps:
            # Schedules often coincide (two optimizers at the same constant LR): vary the dashes so none hides.
            ax.plot(steps, lrs, marker="o", linestyle=("-", "--", "-.", ":")[i % 4], label=config.label)
            seen += lrs
    _log_if_spans_decades(ax, seen)
    ax.set(title="Learning rate set by the schedule", ylabel="learning rate")
    _epoch_axis(ax)
    ax.legend(fontsize="small")
    if effective:
        ax = axes[0][1]
        for config in effective:
            steps, p50, _ = config.curve("effective_lr/p50")
            (line,) = ax.plot(steps, p50, marker="o", label=config.label)
            _, p10, _ = config.curve("effective_lr/p10")
            _, p90, _ = config.curve("effective_lr/p90")
            if len(p10) == len(p90) == len(steps):
                ax.fill_between(steps, p10, p90, color=line.get_color(), alpha=0.2)
        ax.set_yscale("log")
        ax.set(title="Effective per-parameter step size (median, band p10-p90)", ylabel="effective learning rate")
        _epoch_axis(ax)
        ax.legend(fontsize="small")
    fig.suptitle(f"Sweep {report.sweep_id}" if report.sweep_id else "Learning rates")
    fig.tight_layout()
    return fig


def plot_curves(report: SweepReport):
    """Train and validation loss and accuracy per epoch: one line per configuration, a band of ±1 std over seeds."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=True)
    titles = {
        "loss": "Training loss",
        "val_loss": "Validation loss",
        "accuracy": "Training accuracy",
        "val_accuracy": "Validation accuracy",
    }
    for ax, metric in zip(axes.flat, ("loss", "val_loss", "accuracy", "val_accuracy"), strict=True):
        for config in report.configurations:
            steps, means, stds = config.curve(metric)
            if not steps:
                continue
            n = len(config.finished)
            (line,) = ax.plot(steps, means, marker="o", label=f"{config.label} (n={n})")
            if n > 1:
                lows = [m - s for m, s in zip(means, stds, strict=True)]
                highs = [m + s for m, s in zip(means, stds, strict=True)]
                ax.fill_between(steps, lows, highs, color=line.get_color(), alpha=0.2)
        unit = "cross-entropy" if "loss" in metric else "fraction correct"
        ax.set(title=titles[metric], ylabel=f"{metric} ({unit})")
        _epoch_axis(ax)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, max(1, len(labels))), fontsize="small")
    fig.suptitle(("Sweep " + report.sweep_id if report.sweep_id else "Training curves") + ": mean ± std over seeds")
    fig.tight_layout(rect=(0, 0.06 + 0.025 * math.ceil(len(labels) / 4), 1, 1))
    return fig


def _numeric(values: Iterable[str]) -> list[float] | None:
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        return None


LR_KEY = re.compile(r"(^|[._])(lr|learning_rate)$")


@dataclass
class Cell:
    """One cell of a two-parameter grid: its configurations' runs pooled."""

    mean: float  # mean final val_accuracy of the finished runs (nan: none finished)
    runs: int
    finished: int
    diverged: int  # finished no better than chance, or failed on a NaN/inf loss
    failed: int  # failed for another reason (a crash), or killed

    @property
    def trains(self) -> bool:
        return self.finished > 0 and self.diverged == 0 and self.finished == self.runs


def grid_axes(report: SweepReport) -> tuple[str, str, list[str]] | None:
    """(row key, column key, facet keys) when the sweep is a grid of two numeric keys (times categorical ones).

    A learning-rate key (`...lr`, `...learning_rate`) goes on the columns, so that a row reads from small to
    large LR; None when there are not exactly two numeric swept keys.
    """
    numeric = [k for k in report.swept if _numeric(c.values[k] for c in report.configurations) is not None]
    if len(numeric) != 2:
        return None
    rows, cols = numeric
    if LR_KEY.search(rows) and not LR_KEY.search(cols):
        rows, cols = cols, rows
    return rows, cols, [k for k in report.swept if k not in numeric]


def grid_cells(
    report: SweepReport, row_key: str, col_key: str, facet: dict[str, str]
) -> tuple[list[str], list[str], list[list[Cell | None]]]:
    """Row values, column values (numerically sorted) and the cells of one facet (None: not in the sweep)."""

    def ordered(key: str) -> list[str]:
        return sorted({c.values[key] for c in report.configurations}, key=lambda v: float(v))

    row_values, col_values = ordered(row_key), ordered(col_key)
    grid: list[list[Cell | None]] = [[None] * len(col_values) for _ in row_values]
    for config in report.configurations:
        if any(config.values[k] != v for k, v in facet.items()):
            continue
        mean, _, _ = config.stat(RANK_METRIC)
        failed = sum(r.status != "FINISHED" and not r.diverged for r in config.runs)
        cell = Cell(mean, len(config.runs), len(config.finished), config.diverged, failed)
        grid[row_values.index(config.values[row_key])][col_values.index(config.values[col_key])] = cell
    return row_values, col_values, grid


def largest_training_column(row: Sequence[Cell | None]) -> int | None:
    """The index of the largest column value whose every run trained (finished, none diverged), or None."""
    trained = [j for j, cell in enumerate(row) if cell is not None and cell.trains]
    return max(trained) if trained else None


def plot_heatmap(report: SweepReport):
    """Mean final val_accuracy over a grid of two numeric swept keys, one panel per value of any other swept key.

    Cells where a run diverged (NaN/inf loss, or no better than chance) are hatched and say how many of their runs
    did; cells with no finished run are grey. When the columns are a learning rate, a red line marks, per row,
    the largest LR at which every run trained: with rows = warm-up length, the warm-up phase diagram.
    Returns None when the sweep is not such a grid.
    """
    axes_keys = grid_axes(report)
    if axes_keys is None:
        return None
    row_key, col_key, facet_keys = axes_keys
    facets = list(dict.fromkeys(tuple(c.values[k] for k in facet_keys) for c in report.configurations))
    plt = _pyplot()
    from matplotlib.patches import Patch, Rectangle

    row_values, col_values, _ = grid_cells(report, row_key, col_key, {})
    width, height = 1.25 * len(col_values) + 3, 0.8 * len(row_values) + 2.2
    fig, axes = plt.subplots(
        1, len(facets), figsize=(width * len(facets) + 1, height), squeeze=False, layout="constrained"
    )
    is_lr = bool(LR_KEY.search(col_key))
    # From chance (a uniform guess over the 10 classes) to the best cell, so that the trained cells differ.
    finished_means = [c.stat(RANK_METRIC)[0] for c in report.configurations if c.finished]
    top = max((m for m in finished_means if math.isfinite(m)), default=1.0)
    low = min(0.1, top - 0.01)
    for ax, facet_values in zip(axes[0], facets, strict=True):
        facet = dict(zip(facet_keys, facet_values, strict=True))
        _, _, grid = grid_cells(report, row_key, col_key, facet)
        means = [[cell.mean if cell is not None else math.nan for cell in row] for row in grid]
        image = ax.imshow(means, cmap="viridis", aspect="auto", vmin=low, vmax=top)
        for i, row in enumerate(grid):
            for j, cell in enumerate(row):
                if cell is None:
                    continue
                if cell.finished == 0:  # no value to colour by
                    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, color="0.6"))
                    text, colour = "-", "black"
                else:
                    red, green, blue, _ = image.cmap(image.norm(cell.mean))
                    colour = "white" if 0.299 * red + 0.587 * green + 0.114 * blue < 0.5 else "black"
                    text = f"{cell.mean:.3f}"
                if cell.diverged:
                    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="red", lw=0))
                    text += f"\n✗ {cell.diverged}/{cell.runs}"
                if cell.failed:
                    text += f"\nfailed {cell.failed}/{cell.runs}"
                ax.text(j, i, text, ha="center", va="center", color=colour, fontsize="small")
        if is_lr:
            boundary = [largest_training_column(row) for row in grid]
            xs, ys = [], []
            for i, j in enumerate(boundary):
                x = (j if j is not None else -1) + 0.5
                xs += [x, x]
                ys += [i - 0.5, i + 0.5]
            ax.plot(xs, ys, color="red", lw=2.5, label="largest LR at which every seed trains")
        ax.set_xticks(range(len(col_values)), [_short_number(v) for v in col_values])
        ax.set_yticks(range(len(row_values)), [_short_number(v) for v in row_values])
        title = ", ".join(f"{short_key(k, report.swept)}={v}" for k, v in facet.items())
        ax.set(xlabel=col_key, ylabel=row_key, title=title or None)
    handles = [Patch(facecolor="white", edgecolor="red", hatch="///", label="diverged in ✗ k/n runs")]
    if is_lr:
        handles.append(axes[0][0].get_lines()[0])
    fig.legend(handles=handles, loc="outside lower center", ncol=2, fontsize="small")
    fig.colorbar(image, ax=list(axes[0]), label=f"final {RANK_METRIC} (mean over seeds)")
    fig.suptitle(
        f"Final {RANK_METRIC} (mean over seeds, {report.validation})\ndiverged: NaN/inf loss, or no better than chance"
    )
    return fig


def plot_seeds(report: SweepReport):
    """Each seed's final val_accuracy as a dot per configuration, the mean with its 95% CI, the verdict as colour.

    Returns None when no configuration has a finished run.
    """
    configs = [c for c in report.configurations if c.samples()]
    if not configs:
        return None
    shown = configs[:SEEDS_SHOWN]  # the leading ones: a phase diagram has dozens
    plt = _pyplot()
    colours = {
        stats.BEST: "tab:green",
        stats.TIED: "tab:blue",
        stats.WORSE_UNCORRECTED: "tab:orange",
        stats.WORSE: "tab:red",
    }
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(shown) + 3), 4.8))
    for x, config in enumerate(shown):
        samples = config.samples()
        verdict = report.comparisons[config.label].verdict if config.label in report.comparisons else stats.NO_TEST
        colour = colours.get(verdict, "0.4")
        values = list(samples.values())
        offsets = [0.08 * (k - (len(values) - 1) / 2) for k in range(len(values))]
        ax.scatter([x + o for o in offsets], values, color=colour, alpha=0.6, s=22, zorder=3)
        mean = statistics.fmean(values)
        low, high = stats.mean_interval(values)
        if math.isnan(low):
            ax.plot([x - 0.25, x + 0.25], [mean, mean], color=colour, lw=2)
        else:
            ax.errorbar(x + 0.3, mean, yerr=[[mean - low], [high - mean]], fmt="D", color=colour, capsize=4, zorder=4)
    ax.set_xticks(range(len(shown)), [c.label for c in shown], rotation=30 if len(shown) > 3 else 0, ha="right")
    ax.set(ylabel=f"final {RANK_METRIC} ({report.validation})")
    ax.grid(axis="y", alpha=0.3)
    from matplotlib.lines import Line2D

    legend = [Line2D([], [], marker="o", ls="", color="0.4", alpha=0.6, label="one seed")]
    legend.append(Line2D([], [], marker="D", color="0.4", label="mean, 95% CI"))
    legend += [Line2D([], [], marker="s", ls="", color=c, label=v) for v, c in colours.items()]
    ax.legend(handles=legend, fontsize="small", loc="best")
    title = f"Sweep {report.sweep_id}: final {RANK_METRIC} per seed" if report.sweep_id else f"Final {RANK_METRIC}"
    ax.set_title(title + (f" (the best {len(shown)} of {len(configs)} configurations)" if shown != configs else ""))
    fig.tight_layout()
    return fig


def plot_samples(x, y, class_names: Sequence[str]):
    """The tutorial's first four training images with their class names."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(6, 6))
    for i, ax in enumerate(axes.flat):
        ax.imshow(x[i], cmap=plt.cm.binary)
        ax.set(xticks=[], yticks=[])
        ax.set_xlabel(class_names[int(y[i])])
    fig.suptitle("Fashion-MNIST: first four training images")
    fig.tight_layout()
    return fig


def write(report: SweepReport, out_dir: Path) -> list[Path]:
    """Writes summary.csv, summary.md, runs.csv and the figures (PNG) into `out_dir`; returns the paths."""
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    rows = report.rows()
    path = out_dir / "summary.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["rank"])
        writer.writeheader()
        writer.writerows(rows)
    written.append(path)
    path = out_dir / "summary.md"
    verdicts = "\n".join(f"- {line}" for line in report.verdicts())
    path.write_text(f"# Sweep {report.sweep_id}\n\n{report.table(markdown=True)}\n\n{verdicts}\n")
    written.append(path)
    path = out_dir / "runs.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        metrics = (*FINAL_METRICS, *report.test_metrics)
        writer.writerow(["run", "run_id", "status", "diverged", "reused", *report.swept, SEED_KEY, *metrics])
        for run in report.runs:
            values = [run.overrides.get(k, "") for k in report.swept]
            writer.writerow(
                [run.name, run.run_id, run.status, run.diverged, run.reused, *values, run.params.get(SEED_KEY, ""),
                 *(run.final.get(m, "") for m in metrics)]
            )  # fmt: skip
    written.append(path)
    figures = (
        ("lr", plot_lr(report)),
        ("curves", plot_curves(report)),
        ("seeds", plot_seeds(report)),
        ("heatmap", plot_heatmap(report)),
    )
    for name, figure in figures:
        if figure is not None:
            path = out_dir / f"{name}.png"
            figure.savefig(path, dpi=120)
            plt.close(figure)
            written.append(path)
    return written


def sweep_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A command line that reads one sweep of a store: --tracking-uri, --experiment, --sweep."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--tracking-uri", default="sqlite:///mlruns/mlflow.db", help="default: %(default)s")
    parser.add_argument("--experiment", default="lrsweep", help="MLflow experiment name (default: %(default)s)")
    parser.add_argument("--sweep", help="sweep id, the multirun folder's name (default: the latest sweep)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = sweep_parser(
        "python -m lrsweep.report", "Rebuild a sweep's report (table, CSV, Markdown, figures) from MLflow."
    )
    parser.add_argument("--out", type=Path, help="output folder (default: reports/<sweep id>)")
    parser.add_argument("--log", action="store_true", help="also attach the report to the sweep's parent run")
    args = parser.parse_args(argv)
    client, experiment_id = tracking.connect(args.tracking_uri, args.experiment)
    sweep_id = args.sweep or latest_sweep_id(client, experiment_id)
    if sweep_id is None:
        parser.exit(1, f"No sweep in experiment {args.experiment!r} at {args.tracking_uri}.\n")
    report = load(client, experiment_id, sweep_id)
    if not report.runs:
        parser.exit(1, f"No runs of sweep {sweep_id!r} in experiment {args.experiment!r}.\n")
    out_dir = args.out or Path("reports") / sweep_id
    paths = write(report, out_dir)
    print(f"Sweep {sweep_id}: {len(report.runs)} runs, {len(report.configurations)} configurations")
    print(report.table())
    print("\n".join(report.verdicts()))
    print("\n".join(f"wrote {p}" for p in paths))
    parent = tracking.find_sweep_run(client, experiment_id, sweep_id)
    if args.log and parent is not None:
        client.log_artifacts(parent.info.run_id, str(out_dir), "report")
        print(f"attached to MLflow run {parent.info.run_id}")


if __name__ == "__main__":
    main()
