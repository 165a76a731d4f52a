"""Benchmark: how long a sweep report takes to build from MLflow, batched vs one query per run and metric.

    .venv/bin/python scripts/bench_report.py --runs 100 --epochs 5

Fills a fresh SQLite store (in a temp folder) with a sweep of real MLflow runs shaped like lrsweep's
(params, tags, per-epoch metrics), then times `tracking.load_sweep` + `report.build` + `files.write` and,
for comparison, reading the same histories with one `get_metric_history` call per run and metric. Prints figures;
asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from mlflow.entities import Metric, Param, RunStatus

from lrsweep import tracking
from lrsweep.analysis import files, report


def fill(client, experiment_id: str, runs: int, epochs: int) -> list[str]:
    run_ids = []
    rng = random.Random(0)
    for i in range(runs):
        initial_lr, final_lr, seed = [0.001, 0.002, 0.005, 0.01, 0.02][i % 5], [0.01, 0.02][(i // 5) % 2], i // 10
        overrides = {
            "schedule.initial_lr": str(initial_lr),
            "schedule.final_lr": str(final_lr),
            "training.seed": str(seed),
        }
        tags = {**tracking.sweep_tags("/tmp/bench-sweep"), tracking.TAG_ROLE: "job",
                tracking.TAG_OVERRIDES: json.dumps(overrides)}  # fmt: skip
        run = client.create_run(experiment_id, run_name=f"adam-linear-{i}-seed{seed}", tags=tags)
        params = [Param(k, v) for k, v in overrides.items()]
        metrics = [Metric(key, rng.random(), 0, epoch) for epoch in range(epochs) for key in tracking.HISTORY_METRICS]
        client.log_batch(run.info.run_id, metrics=metrics, params=params)
        client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FINISHED))
        run_ids.append(run.info.run_id)
    return run_ids


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        client, experiment_id = tracking.connect(f"sqlite:///{tmp}/mlflow.db", "bench")
        start = time.perf_counter()
        run_ids = fill(client, experiment_id, args.runs, args.epochs)
        print(f"filled {args.runs} runs x {args.epochs} epochs x {len(tracking.HISTORY_METRICS)} metrics "
              f"in {time.perf_counter() - start:.1f} s")  # fmt: skip

        start = time.perf_counter()
        built = report.build(tracking.load_sweep(client, experiment_id, "bench-sweep"))
        loaded = time.perf_counter() - start
        start = time.perf_counter()
        files.write(built, Path(tmp) / "report")
        written = time.perf_counter() - start
        print(
            f"load_sweep + build (batched): {loaded:.2f} s for {len(built.runs)} runs, "
            f"{len(built.configurations)} configurations"
        )
        print(f"files.write (CSV, Markdown, figures, report.html): {written:.2f} s")

        start = time.perf_counter()
        for run_id in run_ids:
            for key in tracking.HISTORY_METRICS:
                client.get_metric_history(run_id, key)
        print(f"one get_metric_history per run and metric ({len(run_ids) * len(tracking.HISTORY_METRICS)} calls): "
              f"{time.perf_counter() - start:.2f} s")  # fmt: skip


if __name__ == "__main__":
    main()
