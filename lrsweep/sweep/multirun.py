"""A multirun as one MLflow parent run: opened before the jobs start, closed with its report however they end."""

from __future__ import annotations

import atexit
import collections
import copy
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from mlflow.entities import RunStatus, RunTag
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from lrsweep import tracking
from lrsweep.analysis import figures, range_test, report
from lrsweep.core import errors, identity, interrupts
from lrsweep.tracking import Settled, settle_running, store_failure_message

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
        uri = self.client.tracking_uri
        settled = settle_running(self.client, tracking.sweep_runs(self.client, self.experiment_id, self.sweep_id))
        built = report.build(tracking.load_sweep(self.client, self.experiment_id, self.sweep_id))
        parent = self.client.get_run(self.run_id)
        outcome = judge(built, parent.data.tags, settled, self.expected_jobs, interrupts.requested())
        store_errors = list(settled.store_errors)
        parts = [f"\nSweep {self.sweep_id}: {len(built.runs)} runs in {len(built.configurations)} configurations"]
        if outcome.reused:
            parts.append(f"{outcome.reused} already finished before, reused (resume=false reruns them)")
        if interrupts.requested():
            parts.append(f"interrupted by {interrupts.requested()}")
        if outcome.problems:
            parts.append(f"not finished: {'; '.join(outcome.problems)}")
        line = "; ".join(parts)
        try:
            rename_duplicates(self.client, built)
            params, metrics = summary(built, len(outcome.failed_jobs) + len(outcome.never_started))
            tracking.log_summary(self.client, self.run_id, params, metrics, built.table(markdown=True))
            out_dir = self.sweep_dir / "report"
            paths = report.write(built, out_dir)
            suggestion, more = range_test.report(
                self.client, self.experiment_id, [r.run_id for r in built.runs], out_dir
            )
            if more:  # the page embeds every figure in the folder: again, with the range test's
                report.write_html(built, out_dir)
                paths += more
            self.client.log_artifacts(self.run_id, str(out_dir), "report")
            print(line)
            print(built.table())
            print("\n".join(built.verdicts(limit=10)))
            if suggestion:
                print(f"\n{suggestion}")
            print(f"Report: {out_dir} ({', '.join(p.name for p in paths)}); MLflow parent run {self.run_id}")
        except Exception as e:
            message = store_failure_message(e, uri)
            if message is None:
                raise  # not the store's fault: SweepCallback.close says so, the parent still ends (below)
            store_errors.append(message)
            print(line)
            print(built.table())
        finally:
            store_errors += self.end(outcome)
            for message in dict.fromkeys(store_errors):  # the same full disk, said once
                print(f"lrsweep: {message}", file=sys.stderr)
        return built

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
            reason = store_failure_message(e, self.client.tracking_uri) or f"{type(e).__name__}: {str(e)[:300]}"
            log.debug("Ending the parent run failed", exc_info=True)
            return [  # the reason apart, so that a full disk said already is not said again
                reason,
                f"The parent run {self.run_id} of sweep {self.sweep_id} stays RUNNING instead of "
                f"{outcome.status}: the next sweep on this store marks it stale (KILLED).",
            ]
        return []


SUMMARY_PREFIX = "sweep/"  # the parent's metrics: their own section in MLflow's chart view, apart from the jobs'
BEST = "best_configuration"


def sorted_by_job(runs: list[report.JobRun]) -> list[report.JobRun]:
    """A sweep's runs in the order of its jobs (the reused ones, of other sweeps, last)."""

    def job_num(run: report.JobRun) -> float:
        value = run.tags.get(tracking.TAG_JOB_NUM, "")
        return int(value) if value.isdigit() and not run.reused else math.inf

    return sorted(runs, key=job_num)


def summary(built: report.SweepReport, failed_jobs: int = 0) -> tuple[dict[str, str], dict[str, float]]:
    """The sweep at a glance, for its parent run: (params, metrics).

    Params: each swept key with the values swept, comma-joined in job order, under the name the jobs' runs carry
    it as, so the sweep's row and its jobs' rows share a column (`choice.strategy` for `+strategy=...`,
    `schedule.initial_lr`); the seeds as `training.seed` (`0,1,2`); `best_configuration`, the best configuration's
    label. Metrics (`sweep/...`): `runs`, `configurations`, `failed` (runs that did not finish, and jobs that
    failed before opening one), `diverged`, `reused`, and the best configuration's `best_val_accuracy_mean`,
    `_std` (2+ seeds) and `best_n`.
    """
    runs = sorted_by_job(built.runs)

    def param_key(key: str) -> str:
        choice = f"choice.{key}"
        return choice if any(choice in run.params for run in runs) else key

    def values(key: str) -> str:
        seen = dict.fromkeys(run.overrides.get(key, run.params.get(key)) for run in runs)
        return ",".join(str(v) for v in seen if v is not None)

    params = {param_key(key): values(key) for key in built.swept}
    if len(seeds := values(report.SEED_KEY).split(",")) > 1:
        params[report.SEED_KEY] = ",".join(seeds)
    metrics = {
        "runs": len(built.runs),
        "configurations": len(built.configurations),
        "failed": sum(run.status != "FINISHED" for run in built.runs) + failed_jobs,
        "diverged": sum(run.diverged for run in built.runs),
        "reused": sum(run.reused for run in built.runs),
    }
    best = next((c for c in built.configurations if c.stat(report.RANK_METRIC)[2]), None)
    if best is not None:
        mean, std, n = best.stat(report.RANK_METRIC)
        params[BEST] = best.label
        metrics[f"best_{report.RANK_METRIC}_mean"] = mean
        if n > 1:
            metrics[f"best_{report.RANK_METRIC}_std"] = std
        metrics["best_n"] = n
    return params, {f"{SUMMARY_PREFIX}{k}": float(v) for k, v in metrics.items()}


def rename_duplicates(client: MlflowClient, built: report.SweepReport) -> None:
    """Keeps run names unique within a sweep: a name its jobs share (a swept key the name does not show, e.g.
    `data.train_size`) gets the swept values it lacks after its seed, `s0 · train_size=512 · adam-constant`."""
    own = [run for run in built.runs if not run.reused]
    names = collections.Counter(run.name for run in own)
    for run in own:
        if names[run.name] > 1:
            missing = [
                f"{report.short_key(k, built.swept)}={run.overrides[k]}"
                for k in built.swept
                if k in run.overrides and f"={run.overrides[k]}" not in run.name
            ]
            if missing:
                run.name = identity.with_values(run.name, " ".join(missing))
                client.update_run(run.run_id, name=run.name)


BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


@dataclass
class Outcome:
    """How a sweep's jobs ended: the parent run's status and, in words, every job that did not finish."""

    status: str
    problems: list[str]
    failed_jobs: dict[str, str]  # job number -> error, of jobs that failed before opening a run
    never_started: list[int]
    reused: int


def judge(
    built: report.SweepReport,
    parent_tags: dict[str, str],
    settled: Settled,
    expected_jobs: int | None,
    interrupted: str | None,
) -> Outcome:
    """The parent's status: KILLED on an interrupt; FAILED if any job failed, was left RUNNING or stale, failed
    before opening a run, or never started (of `expected_jobs`, job numbers 0..n-1); KILLED if a job was
    interrupted; FAILED if there is no run at all; else FINISHED."""
    own = [run for run in sorted_by_job(built.runs) if not run.reused]
    failed_jobs = {
        k.removeprefix(tracking.TAG_FAILED_JOB_PREFIX): v
        for k, v in parent_tags.items()
        if k.startswith(tracking.TAG_FAILED_JOB_PREFIX)
    }
    prefix = tracking.TAG_REUSED_PREFIX
    reused = {k.removeprefix(prefix) for k in parent_tags if k.startswith(prefix)}
    problems = []
    for run in own:
        job = f"job #{run.tags.get(tracking.TAG_JOB_NUM, '?')} ({run.name})"
        if run.run_id in settled.stale:
            rerun = "marked stale, rerun it with the same command"
            problems.append(f"{job} left RUNNING {settled.stale[run.run_id]}: {rerun}")
        elif run.run_id in settled.running:
            problems.append(f"{job} left RUNNING {settled.running[run.run_id]}")
        elif run.status != "FINISHED":
            problems.append(f"{run.name} ({run.status})")
    for num, error in sorted(failed_jobs.items(), key=lambda item: int(item[0]) if item[0].isdigit() else -1):
        problems.append(f"job #{num} before opening a run ({error})")
    started = {run.tags.get(tracking.TAG_JOB_NUM) for run in own} | set(failed_jobs) | reused
    never_started = [n for n in range(expected_jobs or 0) if str(n) not in started]
    if never_started:
        nums = ", ".join(f"#{n}" for n in never_started)
        problems.append(f"job{'s' if len(never_started) > 1 else ''} {nums} never started")
    statuses = {run.status for run in own}
    if interrupted:
        status = "KILLED"
    elif settled.stale or settled.running or failed_jobs or never_started or statuses & {"FAILED", "RUNNING"}:
        status = "FAILED"
    elif "KILLED" in statuses:
        status = "KILLED"
    else:
        status = "FINISHED" if built.runs else "FAILED"
    return Outcome(status, problems, failed_jobs, never_started, sum(run.reused for run in built.runs))


PACKED_LAUNCHER = "hydra_plugins.lrsweep_launcher.packed_launcher.PackedLauncher"


def planned_jobs(config: DictConfig) -> list[list[str]] | None:
    """The overrides of every job Hydra's basic sweeper will launch, in order; None for another sweeper (Optuna).

    The same expansion as `BasicSweeper.sweep`: its `params`, then the command line's overrides.
    """
    if config.hydra.sweeper.get("_target_") != BASIC_SWEEPER:
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = [f"{key}={value}" for key, value in (config.hydra.sweeper.get("params") or {}).items()]
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    overrides = parser.parse_overrides([*params, *config.hydra.overrides.task])
    return BasicSweeper.split_arguments(overrides, None)[0]


def job_configs(loader: Any, config: DictConfig, jobs: Sequence[Sequence[str]], first_num: int = 0) -> list[DictConfig]:
    """Each job's sweep config, as a launcher composes it (Hydra's `load_sweep_config`), numbered from `first_num`."""
    from omegaconf import open_dict

    configs = []
    for num, overrides in enumerate(jobs, start=first_num):
        sweep_config = loader.load_sweep_config(config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = num
            sweep_config.hydra.job.num = num
        configs.append(sweep_config)
    return configs


def task_config(sweep_config: DictConfig) -> DictConfig:
    """A job's task config: its sweep config without the `hydra` node (as Hydra's run_job makes it)."""
    from omegaconf import open_dict, read_write

    task = copy.deepcopy(sweep_config)
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task


def check_planned_jobs(config: DictConfig, jobs: list[list[str]]) -> None:
    """Checks every job's config before the first starts, as the packed launcher does, for the other launchers.

    Imports Keras in this process (with the first job's backend), since checking builds each job's optimizer.

    Raises:
        SystemExit: naming every job that cannot run and why.
    """
    from hydra.core.global_hydra import GlobalHydra

    from lrsweep.core import backend

    sweep_configs = job_configs(GlobalHydra.instance().config_loader(), config, jobs)
    pairs = [(task_config(c), c.hydra) for c in sweep_configs]
    try:
        backend.select(pairs[0][0].backend, pairs[0][0].threads)
    except errors.ConfigError as e:
        raise SystemExit(f"lrsweep: job #0: {e}") from e
    from lrsweep.run import launching

    launching.check_jobs(pairs)


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


class SweepCallback(Callback):
    """Hydra callback: opens the sweep's parent run before any job, closes it with the report after the last.

    With the packed launcher, the parent run is opened by the launcher (`open_parent`) once it has checked every
    job's config; the callback finds it in MLflow by the sweep's id when it closes. Hydra 1.3 does not call
    `on_multirun_end` when a job raised, and a Ctrl-C skips it too, so closing is also registered with `atexit`;
    whichever comes first closes the sweep, once.
    """

    def __init__(self) -> None:
        self.sweep: Sweep | None = None
        self.config: DictConfig | None = None
        self.closed = False
        self.expected_jobs: int | None = None  # how many jobs the sweeper launches, when known before it starts

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        interrupts.clear(config.hydra.sweep.dir)
        self.config = config
        atexit.register(self.close)
        # Ctrl-C / SIGTERM: running jobs (here or, through the stop file, in worker processes) stop at their
        # next step and end KILLED; no new job starts.
        interrupts.install(config.hydra.sweep.dir)
        self.expected_jobs = len(jobs) if (jobs := planned_jobs(config)) is not None else None
        if config.hydra.launcher.get("_target_") != PACKED_LAUNCHER:  # that one checks, then opens (`open_parent`)
            if jobs is not None:
                check_planned_jobs(config, jobs)
            self.open()

    def open(self) -> None:
        """Creates the store and the parent run, once; a store that cannot be used stops the sweep here."""
        if self.sweep is not None or self.closed or self.config is None:
            return
        self.sweep = open_parent(self.config)
        self.sweep.expected_jobs = self.expected_jobs

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        """Notes on the parent run a job that failed before opening a run of its own (e.g. a bad value).

        Runs in the job's process, which is this one for the basic launcher and a worker for others: the note
        goes through MLflow so the main process sees it whichever it is. Hydra calls it for a single run too,
        which has no sweep to note anything on.
        """
        error = job_return._return_value  # the exception; `return_value` would re-raise it
        if (
            job_return.status != JobStatus.FAILED
            or isinstance(error, (interrupts.JobInterrupted, errors.StoreError))
            or config.hydra.mode != RunMode.MULTIRUN
        ):
            return
        try:  # never creates a store: a bad value must leave none behind
            connected = tracking.connect_config(config.tracking, create=False)
        except ConnectionError:
            return  # the job failed on the same store: its own error says so
        if connected is None:
            return  # no store, so no sweep to note it on
        client, experiment_id = connected
        sweep_id = identity.sweep_id(config.hydra.sweep.dir)
        job_num = config.hydra.job.num
        parent = tracking.find_sweep_run(client, experiment_id, sweep_id)
        if parent is not None and tracking.find_job_run(client, experiment_id, sweep_id, job_num) is None:
            message = f"{type(error).__name__}: {error}"[:500]
            client.set_tag(parent.info.run_id, f"{tracking.TAG_FAILED_JOB_PREFIX}{job_num}", message)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.close()

    def close(self) -> None:
        interrupts.disarm()  # an interrupt's grace period: the sweep is closing down, let it write its report
        if self.closed:
            return
        self.closed = True
        sweep, self.sweep = self.sweep, None
        if sweep is None and self.config is not None:  # opened by the packed launcher, if its jobs were valid
            sweep = Sweep.find(self.config)
        if sweep is not None:
            sweep.expected_jobs = self.expected_jobs
            try:
                sweep.close()
            except Exception as e:  # never mask the jobs' own outcome; say what went wrong
                if tracking.as_store_error(e, sweep.client.tracking_uri) is not None:
                    print(
                        f"lrsweep: could not close sweep {sweep.sweep_id}: its MLflow store failed. Its parent run "
                        "stays RUNNING until the next sweep on the store marks it stale.",
                        file=sys.stderr,
                    )
                    return
                log.error("Could not complete the report of sweep %s: %s", sweep.sweep_id, e)
                sweep.client.set_terminated(sweep.run_id, RunStatus.to_string(RunStatus.FAILED))
