"""A job's MLflow run: opened with its params, tags and config, its metrics logged, always closed with a status."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mlflow.entities import Metric, Param, Run, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from lrsweep.core import held_back, interrupts
from lrsweep.core.identity import JobContext, overrides_dict, sweep_id
from lrsweep.tracking import store
from lrsweep.tracking.readback import find_sweep_run
from lrsweep.tracking.stale import owner_tags
from lrsweep.tracking.tags import (
    NOTE_LIMIT,
    PARAM_LIMIT,
    TAG_ERROR,
    TAG_JOB_NUM,
    TAG_NOTE,
    TAG_OVERRIDES,
    TAG_PARENT,
    TAG_REUSED_PREFIX,
    TAG_ROLE,
    TAG_SWEEP_DIR,
    TAG_SWEEP_ID,
)

log = logging.getLogger(__name__)

BATCH_LIMIT = 1000  # metric points per `log_batch`: MLflow's limit


def sweep_tags(sweep_dir: str | None) -> dict[str, str]:
    """The tags that name a run's sweep: its id and its folder; none outside a multirun."""
    if not sweep_dir:
        return {}
    return {TAG_SWEEP_ID: sweep_id(sweep_dir), TAG_SWEEP_DIR: str(Path(sweep_dir).resolve())}


def job_tags(client: MlflowClient, experiment_id: str, context: JobContext) -> dict[str, str]:
    """Tags that tie a job's run to its sweep: the sweep id, its overrides, and the parent run for nesting."""
    tags = {TAG_ROLE: "job", TAG_OVERRIDES: json.dumps(overrides_dict(context.overrides)), **owner_tags()}
    if context.sweep_dir:
        tags.update(sweep_tags(context.sweep_dir))
        tags[TAG_JOB_NUM] = str(context.job_num)
        parent = find_sweep_run(client, experiment_id, context.sweep_id)
        if parent is not None:
            tags[TAG_PARENT] = parent.info.run_id
    return tags


@dataclass(frozen=True)
class RunRecord:
    """What a job's run is opened with: its name, params, tags and config artifacts (path -> text)."""

    name: str
    params: Mapping[str, str]
    tags: Mapping[str, str]
    artifacts: Mapping[str, str]


def open_run(client: MlflowClient, experiment_id: str, record: RunRecord) -> str:
    """Creates a job's MLflow run with its params, tags and config artifacts; returns its id.

    A run that fails while being recorded is closed FAILED before the error goes on.
    """
    run_id = client.create_run(experiment_id, run_name=record.name, tags=dict(record.tags)).info.run_id
    try:
        client.log_batch(run_id, params=[Param(k, v) for k, v in record.params.items()])
        for path, text in record.artifacts.items():
            client.log_text(run_id, text, path)
    except BaseException as e:
        close_run_after(client, run_id, record.name, e)
        raise
    return run_id


def set_tags(client: MlflowClient, run_id: str, tags: Mapping[str, str]) -> None:
    """Sets a run's tags in one call."""
    client.log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()])


def copy_metrics(client: MlflowClient, source: str, target: str, keep: Callable[[str, int], bool]) -> int:
    """Copies run `source`'s metric points that `keep(key, step)` accepts to run `target` (timestamps and values as
    they were); returns how many."""
    points = [
        Metric(key, m.value, m.timestamp, m.step)
        for key in client.get_run(source).data.metrics
        for m in client.get_metric_history(source, key)
        if keep(key, m.step)
    ]
    for start in range(0, len(points), BATCH_LIMIT):
        client.log_batch(target, metrics=points[start : start + BATCH_LIMIT])
    return len(points)


def close_run(client: MlflowClient, run_id: str, name: str, error: BaseException | None = None) -> str:
    """Ends a run: FINISHED without an error, KILLED for an interrupt, FAILED (tag `lrsweep.error`) for anything else.

    Returns:
        The status it ended with.
    """
    if error is None:
        status = RunStatus.FINISHED
    elif isinstance(error, (KeyboardInterrupt, interrupts.JobInterrupted)):
        status = RunStatus.KILLED
    else:
        status = RunStatus.FAILED
        client.set_tag(run_id, TAG_ERROR, f"{type(error).__name__}: {error}"[:5000])
    client.set_terminated(run_id, RunStatus.to_string(status))
    log.info("MLflow run %s (%s) ended %s", name, run_id, RunStatus.to_string(status))
    return RunStatus.to_string(status)


@contextlib.contextmanager
def job_run(
    client: MlflowClient,
    experiment_id: str,
    name: str,
    params: Mapping[str, str],
    tags: Mapping[str, str],
    artifacts: Mapping[str, str],
) -> Iterator[str]:
    """Opens one MLflow run for a job and always closes it: FINISHED, FAILED (an exception) or KILLED (Ctrl-C).

    Yields:
        The run id.
    """
    run_id = open_run(client, experiment_id, RunRecord(name, params, tags, artifacts))
    try:
        yield run_id
    except BaseException as e:
        close_run_after(client, run_id, name, e)
        raise
    close_run(client, run_id, name)


def close_run_after(client: MlflowClient, run_id: str, name: str, error: BaseException) -> None:
    """`close_run` for a run that ended with `error`, which a failure to record it must not replace.

    When the store itself failed, closing fails too: the run stays RUNNING until the next sweep on the store marks
    it stale (its process is gone), and the caller raises `error`, which says what happened (and the sweep's summary
    names the run): then the failure to close it goes to the log file only (`held_back`), not once per run to the
    console.
    """
    store_failed = store.as_store_error(error, client.tracking_uri) is not None
    try:
        if not store_failed and not isinstance(error, KeyboardInterrupt):
            close_run(client, run_id, name, error)
        else:  # the store just failed, or the user is waiting: one quick attempt, not another round of retries
            with store.one_try():
                close_run(client, run_id, name, error)
    except Exception as e:
        # The store failed again: the error raised says so and the summary names the run, so the details of each
        # run that stays RUNNING go to the log file.
        args = ("Could not mark run %s (%s) ended: %s", name, run_id, " ".join(str(e).split())[:300])
        if store_failed and store.as_store_error(e, client.tracking_uri) is not None:
            held_back.log(log, logging.ERROR, *args)
        else:
            log.error(*args)


def float32_value(value: float) -> float:
    """A float32 result as the shortest decimal that reads back as the same float32: 0.01, not 0.0099999997764.

    What MLflow's UI then shows, and still exactly the float32 the model computed (`np.float32` of it is equal).
    """
    return float(np.format_float_positional(np.float32(value), unique=True, trim="-"))


def log_metrics(
    client: MlflowClient, run_id: str, metrics: Mapping[str, float], step: int, float32: bool = True
) -> None:
    """Logs several metrics at one step in a single request.

    Args:
        float32: the values are float32 results (losses, accuracies, LRs): logged as `float32_value`s.
    """
    timestamp = int(time.time() * 1000)
    value = float32_value if float32 else float
    client.log_batch(run_id, metrics=[Metric(k, value(v), timestamp, step) for k, v in metrics.items()])


def log_summary(
    client: MlflowClient, run_id: str, params: Mapping[str, str], metrics: Mapping[str, float], note: str = ""
) -> None:
    """Logs a sweep's summary on its parent run: params, metrics (at step 0) and a Markdown description."""
    timestamp = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), timestamp, 0) for k, v in metrics.items()],
        params=[Param(k, v if len(v) <= PARAM_LIMIT else v[: PARAM_LIMIT - 3] + "...") for k, v in params.items()],
        tags=[RunTag(TAG_NOTE, note[:NOTE_LIMIT])] if note else [],
    )


def record_reuse(client: MlflowClient, experiment_id: str, context: JobContext, run: Run) -> None:
    """Notes on the sweep's parent run that this job reused a FINISHED run, so the sweep's report includes it.

    The note holds the run's id and this job's overrides, so the report shows it under this sweep's parameters.
    """
    if context.sweep_dir:
        parent = find_sweep_run(client, experiment_id, context.sweep_id)
        if parent is not None:
            note = json.dumps({"run_id": run.info.run_id, "overrides": overrides_dict(context.overrides)})
            client.set_tag(parent.info.run_id, f"{TAG_REUSED_PREFIX}{context.job_num}", note)
