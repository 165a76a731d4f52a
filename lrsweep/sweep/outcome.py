"""How a sweep's jobs ended, in the parent run's terms: its status (`judge`), its summary, unique run names."""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass

from lrsweep import tracking
from lrsweep.analysis import report
from lrsweep.core import identity
from lrsweep.core.errors import listed
from lrsweep.tracking import Settled

SUMMARY_PREFIX = "sweep/"  # the parent's metrics: their own section in MLflow's chart view, apart from the jobs'
# The parent's params: never a name a job's run has, so that grouping the runs by a param (MLflow's "Group by
# choice.strategy") makes one group per value, not one more group of the parent's comma-joined values.
PARAM_PREFIX = "sweep."
BEST = f"{PARAM_PREFIX}best_configuration"


def sorted_by_job(runs: list[report.JobRun]) -> list[report.JobRun]:
    """A sweep's runs in the order of its jobs (the reused ones, of other sweeps, last)."""

    def job_num(run: report.JobRun) -> float:
        value = run.tags.get(tracking.TAG_JOB_NUM, "")
        return int(value) if value.isdigit() and not run.reused else math.inf

    return sorted(runs, key=job_num)


def summary(built: report.SweepReport, failed_jobs: int = 0) -> tuple[dict[str, str], dict[str, float]]:
    """The sweep at a glance, for its parent run: (params, metrics).

    Params, each under `sweep.`: each swept key with the values swept, comma-joined in job order, named as the jobs'
    runs carry it (`sweep.choice.strategy` for `+strategy=...`, `sweep.schedule.initial_lr`); the seeds as
    `sweep.training.seed` (`0,1,2`); `sweep.best_configuration`, the best configuration's label. Metrics
    (`sweep/...`): `runs`, `configurations`, `failed` (runs that did not finish, and jobs that
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

    params = {PARAM_PREFIX + param_key(key): values(key) for key in built.swept}
    if len(seeds := values(report.SEED_KEY).split(",")) > 1:
        params[PARAM_PREFIX + report.SEED_KEY] = ",".join(seeds)
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


def rename_duplicates(built: report.SweepReport) -> dict[str, str]:
    """Keeps run names unique within a sweep: a name its jobs share (a swept key the name does not show, e.g.
    `data.train_size`) gets the swept values it lacks after its seed, `s0 · train_size=512 · adam-constant`.

    Renames the report's runs; returns the new names by run id, for MLflow (`Sweep.record`).
    """
    own = [run for run in built.runs if not run.reused]
    names = collections.Counter(run.name for run in own)
    renamed = {}
    for run in own:
        if names[run.name] > 1:
            missing = [
                f"{report.short_key(k, built.swept)}={run.overrides[k]}"
                for k in built.swept
                if k in run.overrides and f"={run.overrides[k]}" not in run.name
            ]
            if missing:
                run.name = renamed[run.run_id] = identity.with_values(run.name, " ".join(missing))
    return renamed


def left_running(own: list[report.JobRun], settled: Settled) -> list[str]:
    """The sweep's runs left RUNNING, in words: those of one reason together (`jobs #1 (s0 · ...), #3 (...) left
    RUNNING by a process that died: marked stale, rerun them ...`), so that a reason is said once."""
    by_reason: dict[tuple[str, bool], list[str]] = {}
    for run in own:
        stale = run.run_id in settled.stale
        if stale or run.run_id in settled.running:
            reason = (settled.stale if stale else settled.running)[run.run_id]
            by_reason.setdefault((reason, stale), []).append(f"#{run.tags.get(tracking.TAG_JOB_NUM, '?')} ({run.name})")
    problems = []
    for (reason, stale), jobs in by_reason.items():
        one = len(jobs) == 1
        rerun = f": marked stale, rerun {'it' if one else 'them'} with the same command" if stale else ""
        problems.append(f"job{'' if one else 's'} {listed(jobs, ', ')} left RUNNING {reason}{rerun}")
    return problems


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
    problems = left_running(own, settled)
    for run in own:
        if run.run_id not in settled.stale and run.run_id not in settled.running and run.status != "FINISHED":
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
