"""A sweep at a glance, rebuilt from MLflow alone: a ranked table over seeds, CSV/Markdown and figures."""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import requests
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from lrsweep import tracking

SEED_KEY = "training.seed"
FINAL_METRICS = ("val_accuracy", "val_loss", "accuracy", "loss")
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

    @classmethod
    def from_mlflow(cls, run: Run) -> JobRun:
        return cls(
            run_id=run.info.run_id,
            name=run.info.run_name,
            status=run.info.status,
            overrides=json.loads(run.data.tags.get(tracking.TAG_OVERRIDES, "{}")),
            params=dict(run.data.params),
            final=dict(run.data.metrics),
        )


@dataclass
class Configuration:
    """The runs of one configuration, which differ only by seed."""

    values: dict[str, str]
    runs: list[JobRun]
    label: str

    @property
    def finished(self) -> list[JobRun]:
        return [r for r in self.runs if r.status == "FINISHED"]

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

    def rows(self) -> list[dict[str, object]]:
        """One row per configuration, best mean val_accuracy first: swept values, mean/std/n of final metrics."""
        rows = []
        for rank, config in enumerate(self.configurations, start=1):
            row: dict[str, object] = {"rank": rank, **{short_key(k, self.swept): config.values[k] for k in self.swept}}
            for metric in FINAL_METRICS:
                mean, std, n = config.stat(metric)
                row[f"{metric}_mean"], row[f"{metric}_std"] = mean, std
            row["n"] = config.stat("val_accuracy")[2]
            row["failed"] = len(config.runs) - len(config.finished)
            row["reused"] = sum(r.reused for r in config.runs)
            row["runs"] = " ".join(r.name for r in config.runs)
            rows.append(row)
        return rows

    def table(self, markdown: bool = False) -> str:
        header = ["rank", *([short_key(k, self.swept) for k in self.swept] or ["configuration"])]
        header += [f"{m} (mean ± std)" for m in FINAL_METRICS] + ["n", "failed", "reused"]
        body = []
        for config, row in zip(self.configurations, self.rows(), strict=True):
            cells = [row["rank"], *([_short_number(config.values[k]) for k in self.swept] or [config.label])]
            cells += [_mean_std(row[f"{m}_mean"], row[f"{m}_std"]) for m in FINAL_METRICS]
            body.append([*cells, row["n"], row["failed"], row["reused"]])
        return format_table(header, body, markdown=markdown)


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
    configurations.sort(key=lambda c: (c.stat("val_accuracy")[2] == 0, -_nan_to(c.stat("val_accuracy")[0], -1.0)))
    return SweepReport(sweep_id, jobs, swept, configurations)


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


def plot_heatmap(report: SweepReport):
    """Mean final val_accuracy over a grid of two numeric swept parameters, values written in the cells.

    Returns None when the sweep is not such a grid.
    """
    if len(report.swept) != 2:
        return None
    row_key, col_key = report.swept
    row_values = sorted({c.values[row_key] for c in report.configurations}, key=lambda v: _numeric([v]) or [0.0])
    col_values = sorted({c.values[col_key] for c in report.configurations}, key=lambda v: _numeric([v]) or [0.0])
    if _numeric(row_values) is None or _numeric(col_values) is None:
        return None
    plt = _pyplot()
    grid = [[math.nan] * len(col_values) for _ in row_values]
    for config in report.configurations:
        mean, std, n = config.stat("val_accuracy")
        grid[row_values.index(config.values[row_key])][col_values.index(config.values[col_key])] = mean
    fig, ax = plt.subplots(figsize=(1.6 * len(col_values) + 3, 1.1 * len(row_values) + 2))
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            red, green, blue, _ = image.cmap(image.norm(value))
            dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
            text = "-" if math.isnan(value) else f"{value:.4f}"
            ax.text(j, i, text, ha="center", va="center", color="white" if dark else "black")
    ax.set_xticks(range(len(col_values)), col_values)
    ax.set_yticks(range(len(row_values)), row_values)
    ax.set(xlabel=col_key, ylabel=row_key, title="Final validation accuracy (mean over seeds)")
    fig.colorbar(image, ax=ax, label="val_accuracy")
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
    path.write_text(f"# Sweep {report.sweep_id}\n\n{report.table(markdown=True)}\n")
    written.append(path)
    path = out_dir / "runs.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "run_id", "status", "reused", *report.swept, SEED_KEY, *FINAL_METRICS])
        for run in report.runs:
            values = [run.overrides.get(k, "") for k in report.swept]
            writer.writerow(
                [run.name, run.run_id, run.status, run.reused, *values, run.params.get(SEED_KEY, ""),
                 *(run.final.get(m, "") for m in FINAL_METRICS)]
            )  # fmt: skip
    written.append(path)
    for name, figure in (("lr", plot_lr(report)), ("curves", plot_curves(report)), ("heatmap", plot_heatmap(report))):
        if figure is not None:
            path = out_dir / f"{name}.png"
            figure.savefig(path, dpi=120)
            plt.close(figure)
            written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lrsweep.report",
        description="Rebuild a sweep's report (table, CSV, Markdown, figures) from MLflow.",
    )
    parser.add_argument("--tracking-uri", default="sqlite:///mlruns/mlflow.db", help="default: %(default)s")
    parser.add_argument("--experiment", default="lrsweep", help="MLflow experiment name (default: %(default)s)")
    parser.add_argument("--sweep", help="sweep id, the multirun folder's name (default: the latest sweep)")
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
    print("\n".join(f"wrote {p}" for p in paths))
    parent = tracking.find_sweep_run(client, experiment_id, sweep_id)
    if args.log and parent is not None:
        client.log_artifacts(parent.info.run_id, str(out_dir), "report")
        print(f"attached to MLflow run {parent.info.run_id}")


if __name__ == "__main__":
    main()
