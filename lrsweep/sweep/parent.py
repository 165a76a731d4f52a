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
from lrsweep.core import held_back, identity, interrupts
from lrsweep.core.errors import first_line, listed
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
        held_back.keep_in(self.sweep_dir)  # what the console leaves out while no Hydra job log is open (a pack)

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
        printed summary and the parent's tags (`lrsweep.error`, `lrsweep.never_started`).

        A full disk does not stop the report: its files are written first, into the sweep folder (usually on
        another disk than the store), then what the store takes is recorded; what could not be written is said
        once, after the report (`console.Failures`), and not at all if the job that met the full store said it.
        """
        runs = tracking.sweep_runs(self.client, self.experiment_id, self.sweep_id)
        settled = tracking.settle_running(self.client, runs)
        parent = self.client.get_run(self.run_id)
        unchanged = runs if not settled.stale else None  # runs marked stale are read again, with their new status
        loaded = tracking.load_sweep(self.client, self.experiment_id, self.sweep_id, runs=unchanged, parent=parent)
        built = report.build(loaded)
        renamed = rename_duplicates(built)  # the names everything below shows, and MLflow gets (`record`)
        if loaded.superseded:  # a rerun in the same folder: its runs replace the earlier attempt's
            print(
                f"{len(loaded.superseded)} run(s) of an earlier attempt in this sweep folder were run again and are "
                "left out of this report (kept in MLflow): "
                + listed([f"{r.info.run_name} ({r.info.status})" for r in loaded.superseded], ", ")
            )
        outcome = judge(built, parent.data.tags, settled, self.expected_jobs, interrupts.requested())
        line = console.status_line(built, outcome, interrupts.requested())
        failures = console.Failures(self.client.tracking_uri)
        for run_id, error in settled.store_errors.items():
            if not failures.add(error):
                failures.note(f"Could not mark run {run_id} stale: {type(error).__name__}: {first_line(error)}")
        try:
            self.write_report(built, outcome, line, failures, renamed)
        finally:  # an error that is not a full disk goes on (SweepCallback.close says it), once the parent ended
            self.end(outcome, failures)
            failures.print()
        return built

    def write_report(
        self,
        built: report.SweepReport,
        outcome: Outcome,
        line: str,
        failures: console.Failures,
        renamed: dict[str, str],
    ) -> None:
        """The report's files in `<sweep dir>/report`, then the summary on the parent run and the files attached to it
        (`record`), then printed. A full disk where either goes is noted in `failures`, and the rest still done.

        The range test's files are written first, so that report.html, written last, embeds its figure.
        `renamed`: the runs `rename_duplicates` renamed, by run id.
        """
        out_dir = self.sweep_dir / "report"
        suggestion, paths = "", []
        try:
            suggestion, range_paths = range_test.report_jobs(self.client, built.runs, out_dir)
            paths = files.write(built, out_dir) + range_paths
        except Exception as e:
            if not tracking.disk_full(e):
                raise
            failures.note(self.report_not_written(out_dir))
            paths = []
        attached = self.record(built, outcome, renamed, out_dir if paths else None, failures)
        console.print_report(line, built, suggestion, out_dir, paths, self.run_id, attached)

    def report_not_written(self, out_dir: Path) -> str:
        """Where the report could not be written (a full disk), and the command that writes it once there is room."""
        uri = self.client.tracking_uri
        command = f"python -m lrsweep.report --tracking-uri {uri} --sweep {self.sweep_id} --out {out_dir}"
        name = self.client.get_experiment(self.experiment_id).name
        if name != "lrsweep":
            command += f" --experiment {name}"
        return (
            f"The disk is full at {out_dir}{tracking.free_space(out_dir)}: the sweep's report could not be written "
            f"there. Free space, then `{command}` writes it."
        )

    def record(
        self,
        built: report.SweepReport,
        outcome: Outcome,
        renamed: dict[str, str],
        out_dir: Path | None,
        failures: console.Failures,
    ) -> bool:
        """What the store takes of the report: runs' new names, the summary, the files in `out_dir` (None: no files)
        attached. Returns whether all of it was recorded; a full disk is noted in `failures`."""
        try:
            for run_id, name in renamed.items():
                self.client.update_run(run_id, name=name)
            params, metrics = summary(built, len(outcome.failed_jobs) + len(outcome.never_started))
            tracking.log_summary(self.client, self.run_id, params, metrics, built.table(markdown=True))
            if out_dir is not None:
                self.client.log_artifacts(self.run_id, str(out_dir), "report")
        except Exception as e:
            if not failures.add(e):
                raise
            return False
        return True

    def end(self, outcome: Outcome, failures: console.Failures) -> None:
        """Ends the parent run with the outcome's status and tags; notes in `failures` why it could not, if it could
        not (a full disk: said once, the parent's fate in the log file; the next sweep marks it stale)."""
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
            log.debug("Ending the parent run failed", exc_info=True)
            stays = (
                f"The parent run {self.run_id} of sweep {self.sweep_id} stays RUNNING instead of "
                f"{outcome.status}: the next sweep on this store marks it stale (KILLED)."
            )
            if failures.add(e):  # the full disk's line says to rerun, which is all there is to do
                held_back.log(log, logging.WARNING, stays)
            else:
                failures.note(f"{type(e).__name__}: {str(e)[:300]}")
                failures.note(stays)


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
