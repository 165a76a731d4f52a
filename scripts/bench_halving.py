"""Benchmark: successive halving and a pruned Optuna search against the full grid, in one session, fresh stores.

    .venv/bin/python scripts/bench_halving.py                      # 6x6 warm-up grid x 3 seeds, 9 epochs (~25 min)
    .venv/bin/python scripts/bench_halving.py --epochs 3 --train-size 5000 --rules quantile --search 0   # quick
    .venv/bin/python scripts/bench_halving.py --rules ""         # the grid and the searches only (~9 min)

The grid: the linear warm-up (schedule=linear), Adam, initial_lr x final_lr 6 x 6, seeds 0, 1, 2, on the full data
(50,000 training examples, validation on 10,000 held out), each arm a real `python train.py -m ...` into a fresh
temporary folder and SQLite store, packed as a user's sweep is. Arms: the full grid; the pruned Optuna search over
the same 36 configurations (`+experiment=warmup_grid_search`: TPE, successive-halving pruner, seed 0), one trial at
a time, with 4 places in a pack, each refilled as its trial is pruned or ends, and in batches of 4 trials each
trained as one pack to its end (`--places`); halving (eta 3, rungs after epochs 1 and 3 of 9) with each rule. Per
arm: wall time, model-epochs trained (the epochs each run logged: in batches a pruned member also rides along,
frozen, until its pack ends), and the configuration it ends with as best (best seed-mean final val_accuracy among
those that trained to the end); that configuration is then compared, on the full grid's runs, with the full grid's
best (`lrsweep.core.stats`): tied, or worse. Prints a table; asserts nothing. Timings vary by about 20% on a shared
2-core machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

INITIAL_LRS = "0.0001,0.0003,0.001,0.003,0.01,0.03"
FINAL_LRS = "0.001,0.002,0.005,0.01,0.02,0.05"
KEYS = ("schedule.initial_lr", "schedule.final_lr")


def sweep(folder: Path, backend: str, epochs: int, train_size: int | None, arm: list[str], extra=()) -> dict:
    """One arm: `python train.py -m` over the grid (`arm`: the halving settings) or the search (`arm` starting
    with +experiment=...); its wall time and, per configuration, per seed: the epochs trained and the final
    val_accuracy (None: stopped early or failed)."""
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{folder}/mlruns/mlflow.db"
    grid = [] if arm and arm[0].startswith("+experiment") else [
        "schedule=linear", f"schedule.initial_lr={INITIAL_LRS}", f"schedule.final_lr={FINAL_LRS}", "training.seed=0,1,2"
    ]  # fmt: skip
    command = [
        sys.executable, str(ROOT / "train.py"), "-m", f"tracking.uri={store}", f"hydra.sweep.dir={folder}/sweep",
        f"backend={backend}", "training.verbose=0", *grid, f"training.epochs={epochs}", *arm,
        *([f"data.train_size={train_size}"] if train_size else []), *extra,
    ]  # fmt: skip
    start = time.perf_counter()
    result = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode not in (0, 1):  # 1: some runs diverged (FAILED), as a user's sweep reports them
        sys.exit(f"train.py exited {result.returncode}:\n{result.stderr[-4000:]}")
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("lrsweep")
    if experiment is None:
        sys.exit(f"train.py exited {result.returncode} with no runs:\n{result.stderr[-4000:]}")
    experiment_id = experiment.experiment_id
    configs: dict[tuple[str, str], dict[int, tuple[int, float | None]]] = {}
    for run in client.search_runs([experiment_id], "tags.`lrsweep.role` = 'job'", max_results=1000):
        epochs_trained = len(client.get_metric_history(run.info.run_id, "val_accuracy"))
        finished = run.info.status == "FINISHED" and "lrsweep.halving.stopped_epoch" not in run.data.tags
        value = run.data.metrics.get("val_accuracy") if finished else None
        key = tuple(run.data.params[k] for k in KEYS)
        configs.setdefault(key, {})[int(run.data.params["training.seed"])] = (epochs_trained, value)
    return {"wall": wall, "configs": configs}


def best(configs: dict) -> tuple[str, str] | None:
    """The configuration with the best seed-mean final val_accuracy among those all of whose seeds finished (the
    search trains seed 0 only: its best trial's configuration)."""
    means = {
        key: statistics.fmean(v for _, v in seeds.values())
        for key, seeds in configs.items()
        if all(v is not None for _, v in seeds.values())
    }
    return max(means, key=means.get) if means else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="jax")
    parser.add_argument("--epochs", type=int, default=9)
    parser.add_argument("--eta", type=int, default=3)
    parser.add_argument("--rules", default="quantile,stats")
    parser.add_argument("--train-size", type=int, default=None, help="default: the full 50,000")
    parser.add_argument("--search", type=int, default=30, help="trials of the pruned search (0: no search arm)")
    parser.add_argument(
        "--places", default="1,4", help="trials training at once in the search (hydra.sweeper.n_jobs), one arm each; "
        "above 1 a freed place is refilled at once (hydra.sweeper.refill)"
    )  # fmt: skip
    parser.add_argument(
        "--extra", default="", help="overrides for every arm, e.g. 'model=cnn training.jit_compile=false'"
    )
    parser.add_argument("--no-grid", action="store_true", help="the searches only: no full grid to compare with")
    args = parser.parse_args()

    from lrsweep.core import stats

    arms = {} if args.no_grid else {"full grid": []}
    for places in args.places.split(",") if args.search else []:
        search = [
            "+experiment=warmup_grid_search",
            f"hydra.sweeper.n_trials={args.search}",
            f"hydra.sweeper.n_jobs={places}",
        ]
        if int(places) == 1:
            arms["search, pruned, one trial at a time"] = search
            continue
        arms[f"search, pruned, {places} places refilled"] = [*search, "hydra.sweeper.refill=true"]
        arms[f"search, pruned, batches of {places}"] = [*search, "hydra.sweeper.refill=false"]
    for rule in filter(None, args.rules.split(",")):
        arms[f"halving eta={args.eta} {rule}"] = [
            f"hydra.launcher.halving.eta={args.eta}",
            f"hydra.launcher.halving.rule={rule}",
        ]
    results = {}
    with tempfile.TemporaryDirectory() as root:
        for name, halving in arms.items():
            folder = Path(root) / f"arm{len(results)}"
            folder.mkdir()
            results[name] = sweep(folder, args.backend, args.epochs, args.train_size, halving, args.extra.split())
            print(f"{name}: {results[name]['wall']:.0f} s", file=sys.stderr, flush=True)
    if args.no_grid:
        print(f"{args.extra or 'the MLP'}, {args.epochs} epochs, {args.backend}, {args.train_size or 'all'} examples")
        print("| arm | wall (s) | model-epochs logged | best configuration (initial, final) | its val_accuracy |")
        print("|---|---|---|---|---|")
        for name, result in results.items():
            model_epochs = sum(e for seeds in result["configs"].values() for e, _ in seeds.values())
            chosen = best(result["configs"])
            value = result["configs"][chosen][0][1] if chosen else None
            print(f"| {name} | {result['wall']:.0f} | {model_epochs} | {chosen} | {value} |")
        return

    full = results["full grid"]
    full_model_epochs = sum(e for seeds in full["configs"].values() for e, _ in seeds.values())
    full_best = best(full["configs"])

    def samples(key):
        return {seed: v for seed, (_, v) in full["configs"][key].items() if v is not None}

    print(f"6x6 linear warm-up grid (initial_lr x final_lr), Adam, seeds 0-2, {args.epochs} epochs, {args.backend}")
    print("| arm | wall (s) | model-epochs | share of the full grid's | best configuration (initial, final) | "
          "its val_accuracy in the full grid | vs the full grid's best |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name, result in results.items():
        model_epochs = sum(e for seeds in result["configs"].values() for e, _ in seeds.values())
        chosen = best(result["configs"])
        values = list(samples(chosen).values()) if chosen else []
        if chosen is None:
            verdict = "none finished"
        elif chosen == full_best:
            verdict = "the same"
        else:
            comparison = stats.compare_to_best({"full": samples(full_best), "halving": samples(chosen)})["halving"]
            verdict = f"{comparison.verdict} ({comparison.difference:+.4f}, p={comparison.p_adjusted:.2g})"
        share = f"{model_epochs / full_model_epochs:.0%} / {result['wall'] / full['wall']:.0%} of wall"
        mean = f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}" if len(values) > 1 else "-"
        print(f"| {name} | {result['wall']:.0f} | {model_epochs} | {share} | {chosen} | {mean} | {verdict} |")
    print(json.dumps({name: {"wall": r["wall"]} for name, r in results.items()}))


if __name__ == "__main__":
    main()
