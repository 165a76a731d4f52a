"""The Hydra callback that makes a multirun one MLflow parent run: opened before the first job, closed after."""

from __future__ import annotations

import atexit
import logging
import sys
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from mlflow.entities import RunStatus
from omegaconf import DictConfig

from lrsweep import tracking
from lrsweep.core import errors, identity, interrupts
from lrsweep.sweep import hydra_adapter
from lrsweep.sweep.composition import check_planned_jobs, planned_jobs
from lrsweep.sweep.parent import Sweep, open_parent

log = logging.getLogger(__name__)

PACKED_LAUNCHER = "hydra_plugins.lrsweep_launcher.packed_launcher.PackedLauncher"


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
        error = hydra_adapter.job_error(job_return)
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
        """Closes the sweep once (`Sweep.close`); a failure to close never masks the jobs' own outcome."""
        interrupts.disarm()  # an interrupt's grace period: the sweep is closing down, let it write its report
        if self.closed:
            return
        self.closed = True
        sweep, self.sweep = self.sweep, None
        if sweep is None and self.config is not None:  # opened by the packed launcher, if its jobs were valid
            sweep = Sweep.find(self.config)
        if sweep is None:
            return
        sweep.expected_jobs = self.expected_jobs
        try:
            sweep.close()
        except Exception as e:  # say what went wrong
            if tracking.as_store_error(e, sweep.client.tracking_uri) is not None:
                print(
                    f"lrsweep: could not close sweep {sweep.sweep_id}: its MLflow store failed. Its parent run "
                    "stays RUNNING until the next sweep on the store marks it stale.",
                    file=sys.stderr,
                )
                return
            log.error("Could not complete the report of sweep %s: %s", sweep.sweep_id, e)
            sweep.client.set_terminated(sweep.run_id, RunStatus.to_string(RunStatus.FAILED))
