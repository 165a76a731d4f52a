"""The command lines that read a past sweep back from MLflow: `python -m lrsweep.report`, `... lrsweep.range_test`.

Both only read a store: where there is none they say so in one line and create nothing.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from mlflow.tracking import MlflowClient

from lrsweep import tracking
from lrsweep.analysis import files, headline, range_test, report

DEFAULT_URI = "sqlite:///mlruns/mlflow.db"


def sweep_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A command line that reads one sweep of a store: --tracking-uri, --experiment, --sweep."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--tracking-uri", default=DEFAULT_URI, help="default: %(default)s")
    parser.add_argument("--experiment", default="lrsweep", help="MLflow experiment name (default: %(default)s)")
    parser.add_argument("--sweep", help="sweep id, the multirun folder's name (default: the latest sweep)")
    return parser


def open_store(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[MlflowClient, str]:
    """The store and experiment the command line names; exits with one line when either is not there (or unusable)."""
    try:
        connected = tracking.connect(args.tracking_uri, args.experiment, create=False)
    except (ConnectionError, ValueError) as e:  # StoreError, a deleted experiment
        parser.exit(1, f"lrsweep: {e}\n")
    if connected is None:
        path = tracking.store.sqlite_path(args.tracking_uri)
        if path is not None and not path.is_file():
            parser.exit(1, f"No MLflow store at {path}: nothing to read (--tracking-uri names the store).\n")
        parser.exit(1, f"No experiment {args.experiment!r} in {args.tracking_uri} (--experiment names it).\n")
    return connected


def report_main(argv: Sequence[str] | None = None) -> None:
    """`python -m lrsweep.report`: a past sweep's report (table, CSV, Markdown, figures), rebuilt from MLflow."""
    parser = sweep_parser(
        "python -m lrsweep.report", "Rebuild a sweep's report (table, CSV, Markdown, figures) from MLflow."
    )
    parser.add_argument("--out", type=Path, help="output folder (default: reports/<sweep id>)")
    parser.add_argument("--log", action="store_true", help="also attach the report to the sweep's parent run")
    args = parser.parse_args(argv)
    client, experiment_id = open_store(parser, args)
    sweep_id = args.sweep or tracking.latest_sweep_id(client, experiment_id)
    if sweep_id is None:
        parser.exit(1, f"No sweep in experiment {args.experiment!r} at {args.tracking_uri}.\n")
    built = report.build(tracking.load_sweep(client, experiment_id, sweep_id))
    if not built.runs:
        parser.exit(1, f"No runs of sweep {sweep_id!r} in experiment {args.experiment!r}.\n")
    out_dir = args.out or Path("reports") / sweep_id
    paths = files.write(built, out_dir)
    print(f"Sweep {sweep_id}: {len(built.runs)} runs, {len(built.configurations)} configurations")
    print("\n".join(headline.answer(built, files.range_suggestion(out_dir))))
    if not headline.range_test_only(built):
        print(f"\n{built.table()}")
        print("\n".join(built.verdicts()))
    print("\n".join(f"wrote {p}" for p in paths))
    parent = tracking.find_sweep_run(client, experiment_id, sweep_id)
    if args.log and parent is not None:
        client.log_artifacts(parent.info.run_id, str(out_dir), "report")
        print(f"attached to MLflow run {parent.info.run_id}")


def range_test_main(argv: Sequence[str] | None = None) -> None:
    """`python -m lrsweep.range_test`: the LR range test's suggestion for a past sweep (or given runs)."""
    parser = sweep_parser(
        "python -m lrsweep.range_test",
        "Suggest LR bounds for a warm-up grid from the range test runs of a sweep (or given runs).",
    )
    parser.add_argument("--run", action="append", default=[], help="a run id instead of a sweep (repeatable)")
    parser.add_argument("--out", type=Path, help="output folder (default: reports/<sweep id or first run id>)")
    args = parser.parse_args(argv)
    client, experiment_id = open_store(parser, args)
    if args.run:
        run_ids, name = args.run, args.run[0]
    else:
        name = args.sweep or tracking.latest_sweep_id(client, experiment_id)
        if name is None:
            parser.exit(1, f"No sweep in experiment {args.experiment!r} at {args.tracking_uri}.\n")
        run_ids = [run.info.run_id for run in tracking.sweep_runs(client, experiment_id, name)]
    summary, paths = range_test.report(client, run_ids, args.out or Path("reports") / name)
    if not summary:
        parser.exit(1, f"No range test runs (schedule=lr_range) among the {len(run_ids)} runs of {name}.\n")
    print(summary)
    print("\n".join(f"wrote {p}" for p in paths))
