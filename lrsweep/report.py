"""What a sweep produced, read back from MLflow: a table of final metrics per run and per configuration."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from lrsweep import tracking

FINAL_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


def sweep_runs(client: MlflowClient, experiment_id: str, sweep_id: str | None = None) -> list[Run]:
    """All runs of the experiment (or of one sweep of it), fetched in pages of up to 1000."""
    query = f"tags.`{tracking.TAG_SWEEP_ID}` = '{sweep_id}'" if sweep_id else ""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], query, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return sorted(runs, key=lambda r: r.info.start_time)


def latest_sweep_id(client: MlflowClient, experiment_id: str) -> str | None:
    runs = client.search_runs(
        [experiment_id], f"tags.`{tracking.TAG_SWEEP_ID}` != ''", max_results=1, order_by=["start_time DESC"]
    )
    return runs[0].data.tags[tracking.TAG_SWEEP_ID] if runs else None


@dataclass(frozen=True)
class Row:
    name: str
    status: str
    metrics: dict[str, float]


def run_rows(runs: Iterable[Run]) -> list[Row]:
    """One row per run with its last logged value of each metric, best val_accuracy first."""
    rows = [
        Row(
            run.info.run_name,
            run.info.status,
            {k: run.data.metrics[k] for k in FINAL_METRICS if k in run.data.metrics},
        )
        for run in runs
    ]
    return sorted(rows, key=lambda row: -row.metrics.get("val_accuracy", float("-inf")))


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table, numbers to 4 decimals, columns aligned."""

    def cell(value: object) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    cells = [list(header)] + [[cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def runs_table(runs: Iterable[Run]) -> str:
    rows = run_rows(runs)
    return format_table(
        ["run", "status", *FINAL_METRICS],
        [[r.name, r.status, *(r.metrics.get(k, "-") for k in FINAL_METRICS)] for r in rows],
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print the final metrics of a sweep's runs from MLflow.")
    parser.add_argument("--tracking-uri", default="sqlite:///mlruns/mlflow.db")
    parser.add_argument("--experiment", default="lrsweep")
    parser.add_argument("--sweep", help="sweep id (the multirun folder's name); default: the latest sweep")
    args = parser.parse_args(argv)
    client, experiment_id = tracking.connect(args.tracking_uri, args.experiment)
    sweep_id = args.sweep or latest_sweep_id(client, experiment_id)
    print(f"sweep {sweep_id}")
    print(runs_table(sweep_runs(client, experiment_id, sweep_id)))


if __name__ == "__main__":
    main()
