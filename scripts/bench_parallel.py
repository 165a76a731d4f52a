"""Benchmark: the same sweep run one job at a time and two at once (joblib), with and without `threads=1`.

    .venv/bin/python scripts/bench_parallel.py                                # 4 jobs, full data, 2 epochs, JAX
    .venv/bin/python scripts/bench_parallel.py --backend tensorflow --epochs 1 --train-size 20000

Each variant is a real `python train.py -m ...` into its own temporary folder and SQLite store, as a user would
run it. Prints, per variant, the wall time of the whole command, jobs per minute, and the span from the first
job's run start to the last job's run end in MLflow (training without start-up). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from lrsweep import tracking

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "1 job at a time (basic launcher), default threads": ["hydra/launcher=basic"],
    "2 jobs at once (hydra/launcher=parallel), threads=1": ["hydra/launcher=parallel", "threads=1"],
    "2 jobs at once (hydra/launcher=parallel), default threads": ["hydra/launcher=parallel"],
}


def run_sweep(folder: Path, overrides: list[str]) -> tuple[float, list]:
    store = f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"
    command = [sys.executable, str(ROOT / "train.py"), "-m", f"tracking.uri={store}", f"hydra.sweep.dir={folder}/sweep"]
    start = time.perf_counter()
    result = subprocess.run(command + overrides, cwd=folder, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"train.py exited {result.returncode}:\n{result.stderr[-4000:]}")
    client = MlflowClient(store)
    experiment_id = client.get_experiment_by_name("lrsweep").experiment_id
    return wall, client.search_runs([experiment_id], f"tags.`{tracking.TAG_ROLE}` = 'job'")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["jax", "tensorflow"], default="jax")
    parser.add_argument("--jobs", type=int, default=4, help="jobs in the sweep (seeds 0..jobs-1)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-size", type=int, default=None, help="first N training images (default: all 60k)")
    args = parser.parse_args()

    sweep = [
        f"backend={args.backend}",
        f"training.epochs={args.epochs}",
        "training.verbose=0",
        f"training.seed={','.join(str(seed) for seed in range(args.jobs))}",
    ]
    if args.train_size:
        sweep.append(f"data.train_size={args.train_size}")
    data = f"first {args.train_size} training images" if args.train_size else "all 60k training images"
    print(f"{args.jobs} jobs x {args.epochs} epoch(s), {data}, 10k validation, backend {args.backend}, "
          f"{os.cpu_count()} CPUs, load average before: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")  # fmt: skip
    print(f"{'variant':<58} {'wall s':>7} {'jobs/min':>9} {'runs span s':>12}  finished")
    for name, overrides in VARIANTS.items():
        with tempfile.TemporaryDirectory(prefix="lrsweep-bench-") as tmp:
            wall, runs = run_sweep(Path(tmp), overrides + sweep)
        span = (max(r.info.end_time for r in runs) - min(r.info.start_time for r in runs)) / 1000
        finished = sum(r.info.status == "FINISHED" for r in runs)
        rate = 60 * args.jobs / wall
        print(f"{name:<58} {wall:>7.1f} {rate:>9.2f} {span:>12.1f}  {finished}/{args.jobs}", flush=True)
    print(f"load average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
