"""A multirun as one MLflow parent run: opened before the jobs start, closed with its report however they end."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from lrsweep import tracking
from lrsweep.analysis import figures, files, range_test, report
from lrsweep.core import identity, interrupts
from lrsweep.core.errors import listed
from lrsweep.sweep import console
from lrsweep.sweep.outcome import Outcome, judge, rename_duplicates, summary

log = logging.getLogger(__name__)


class Sweep:
    """The parent run of a multirun, which its jobs' runs nest under (tag `mlflow.parentRunId`).

    Jobs find it by the sweep id, so they can run in this process or in others (joblib, a cluster).
    """

    def __init__(self, client: MlflowClient, experiment_id: str, sweep_dir: str, run_id: str):
        self.client = client
        self.experiment_id = experiment_id
        self.sweep_dir = Path(sweep_dir)
        self.sweep_id = identity.sweep_id(sweep_dir)
        self.run_id = run_id
        self.expected_jobs: int | None = None  # how many jobs the sweeper launched, if known: the rest never started

    @classmethod
    def open(cls, config: DictConfig) -> Sweep:
        """Creates the store and experiment (before parallel jobs could race to), then the parent run."""
        client, experiment_id = tracking.connect_config(config.tracking)
        stale = tracking.mark_stale(client, experiment_id)
        if stale:
            print(f"Marked {len(stale)} stale run(s) KILLED: {', '.join(r.info.run_name for r in stale)}")
        sweep_dir = str(Path(config.hydra.sweep.dir).resolve())
        tags = {
            **tracking.sweep_tags(sweep_dir),
            **tracking.owner_tags(),
            tracking.TAG_ROLE: "sweep",
            "lrsweep.command": " ".join(["python", *sys.argv]),
        }
        run = client.create_run(experiment_id, run_name=f"sweep-{identity.sweep_id(sweep_dir)}", tags=tags)
        sweep = cls(client, experiment_id, sweep_dir, run.info.run_id)
        sweep.log_samples(config)
        return sweep

    @classmethod
    def find(cls, config: DictConfig) -> Sweep | None:
        """The sweep's parent run, if it was opened and is still RUNNING; creates nothing."""
        try:
            connected = tracking.connect_config(config.tracking, create=False)
        except ConnectionError:
            return None
        if connected is None:
            return None
        client, experiment_id = connected
        sweep_dir = str(Path(config.hydra.sweep.dir).resolve())
        run = tracking.find_sweep_run(client, experiment_id, identity.sweep_id(sweep_dir))
        if run is None or run.info.status != "RUNNING":
            return None
        return cls(client, experiment_id, sweep_dir, run.info.run_id)

    def log_samples(self, config: DictConfig) -> None:
        """The dataset at a glance, once per sweep: the first four training images with class names."""
        from lrsweep.ml import data

        try:
            dataset = data.load(dir=config.data.dir, train_size=4, test_size=1)  # scales only what it shows
        except (data.DataError, ValueError) as e:
            log.warning("No sample figure: %s", e)  # the jobs will report the data problem themselves
            return
        figure = figures.plot_samples(dataset.x_train, dataset.y_train, data.CLASS_NAMES)
        self.client.log_figure(self.run_id, figure, "dataset/samples.png")
        figures.pyplot().close(figure)

    def close(self) -> report.SweepReport:
        """Builds the report from MLflow, writes it to `<sweep dir>/report`, attaches it, ends the parent run.

        Before it ends, the parent run gets the sweep's summary as params and metrics (`summary`), so the UI's
        runs table shows them on the sweep's row, and its table as the run's description.
        Job runs still RUNNING whose process is gone are marked stale first (`settle_running`); the parent then
        ends as `judge` says: KILLED on an interrupt, FAILED if any job did not finish (failed, left RUNNING,
        stale, failed before opening a run, never started), else FINISHED. What did not finish goes into the
        printed summary and the parent's tags (`lrsweep.error`, `lrsweep.never_started`). A store that cannot
        take writes (a full disk) is said in one line naming its path; the summary is printed all the same.
        """
        runs = tracking.sweep_runs(self.client, self.experiment_id, self.sweep_id)
        settled = tracking.settle_running(self.client, runs)
        parent = self.client.get_run(self.run_id)
        unchanged = runs if not settled.stale else None  # runs marked stale are read again, with their new status
        loaded = tracking.load_sweep(self.client, self.experiment_id, self.sweep_id, runs=unchanged, parent=parent)
        built = report.build(loaded)
        if loaded.superseded:  # a rerun in the same folder: its runs replace the earlier attempt's
            print(
                f"{len(loaded.superseded)} run(s) of an earlier attempt in this sweep folder were run again and are "
                "left out of this report (kept in MLflow): "
                + listed([f"{r.info.run_name} ({r.info.status})" for r in loaded.superseded], ", ")
            )
        outcome = judge(built, parent.data.tags, settled, self.expected_jobs, interrupts.requested())
        line = console.headline(built, outcome, interrupts.requested())
        store_errors = list(settled.store_errors)
        try:
            self.write_report(built, outcome, line)
        except Exception as e:
            message = tracking.store_failure_message(e, self.client.tracking_uri)
            if message is None:
                raise  # not the store's fault: SweepCallback.close says so, the parent still ends (below)
            store_errors.append(message)
            console.print_table(line, built)
        finally:
            store_errors += self.end(outcome)
            console.print_store_errors(store_errors)
        return built

    def write_report(self, built: report.SweepReport, outcome: Outcome, line: str) -> None:
        """The summary on the parent run, the report's files in `<sweep dir>/report` attached to it, then printed.

        The range test's files are written first, so that report.html, written last, embeds its figure.
        """
        rename_duplicates(self.client, built)
        params, metrics = summary(built, len(outcome.failed_jobs) + len(outcome.never_started))
        tracking.log_summary(self.client, self.run_id, params, metrics, built.table(markdown=True))
        out_dir = self.sweep_dir / "report"
        suggestion, range_paths = range_test.report_jobs(self.client, built.runs, out_dir)
        paths = files.write(built, out_dir) + range_paths
        self.client.log_artifacts(self.run_id, str(out_dir), "report")
        console.print_report(line, built, suggestion, out_dir, paths, self.run_id)

    def end(self, outcome: Outcome) -> list[str]:
        """Ends the parent run with the outcome's status and tags; returns why it could not, if it could not."""
        tags = {}
        if outcome.problems:
            tags[tracking.TAG_ERROR] = f"not finished: {'; '.join(outcome.problems)}"[:5000]
        if outcome.never_started:
            tags[tracking.TAG_NEVER_STARTED] = ",".join(map(str, outcome.never_started))
        try:
            if tags:
                self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
            self.client.set_terminated(self.run_id, outcome.status)
        except Exception as e:
            reason = (
                tracking.store_failure_message(e, self.client.tracking_uri) or f"{type(e).__name__}: {str(e)[:300]}"
            )
            log.debug("Ending the parent run failed", exc_info=True)
            return [  # the reason apart, so that a full disk said already is not said again
                reason,
                f"The parent run {self.run_id} of sweep {self.sweep_id} stays RUNNING instead of "
                f"{outcome.status}: the next sweep on this store marks it stale (KILLED).",
            ]
        return []


def open_parent(config: DictConfig) -> Sweep:
    """Creates the store and the sweep's parent run; a store that cannot be used stops the sweep, in one line.

    The packed launcher calls it once it has checked every job's config, so a bad value anywhere opens no run;
    `SweepCallback` calls it before the first job for the other launchers.

    Raises:
        SystemExit: the store or the parent run cannot be used, so no job may start.
    """
    try:
        return Sweep.open(config)
    except (ConnectionError, ValueError) as e:  # StoreError, a deleted experiment
        # Hydra turns a callback's exception into a warning and launches the jobs anyway: stop here instead.
        raise SystemExit(f"lrsweep: {e}") from e
    except Exception as e:  # whatever it is, a sweep with no parent run would run unrecorded: stop
        reason = tracking.as_store_error(e, str(config.tracking.uri)) or f"{type(e).__name__}: {e}"
        raise SystemExit(f"lrsweep: could not open the sweep's parent run, so no job was started: {reason}") from e
