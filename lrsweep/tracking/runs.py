"""Every MLflow call: the store, experiments, one run per job, a sweep's parent, and reading sweeps back."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import requests
from mlflow.entities import Metric, Param, Run, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from lrsweep.core import interrupts
from lrsweep.core.errors import StoreError
from lrsweep.core.identity import JobContext, overrides_dict, sweep_id
from lrsweep.tracking import store
from lrsweep.tracking.store import as_store_error

log = logging.getLogger(__name__)

TAG_SWEEP_ID = "lrsweep.sweep_id"
TAG_SWEEP_DIR = "lrsweep.sweep_dir"
TAG_ERROR = "lrsweep.error"
TAG_ROLE = "lrsweep.role"  # "sweep" on the parent run of a multirun, "job" on each job's run
TAG_OVERRIDES = "lrsweep.overrides"  # the job's Hydra overrides as a JSON object {key: value}
TAG_JOB_NUM = "lrsweep.job_num"  # the job's number within its multirun
TAG_PARENT = "mlflow.parentRunId"  # MLflow's own nesting tag: the UI shows jobs under their sweep
TAG_CONFIG_HASH = "lrsweep.config_hash"  # what the run's results depend on; resume matches on it
TAG_HOST = "lrsweep.host"
TAG_PROCESS = "lrsweep.process"  # "<pid>:<start time>" of the process that owns a RUNNING run
TAG_STALE = "lrsweep.stale"
TAG_FAILED_JOB_PREFIX = "lrsweep.failed_job."  # on a sweep's parent: job number -> the error of a job with no run
TAG_REUSED_PREFIX = "lrsweep.reused."  # on a sweep's parent: job number -> the FINISHED run it reused
TAG_PACK = "lrsweep.pack"  # the pack a run trained in (`<sweep id>/pack<n>`); absent for a run trained alone
TAG_PACK_SIZE = "lrsweep.pack_size"  # how many runs trained in that pack
TAG_PACK_MEMBER = "lrsweep.pack_member"  # this run's position in it
TAG_NOTE = "mlflow.note.content"  # a run's description, Markdown, shown on its page in the UI
PARAM_LIMIT = 6000  # characters MLflow keeps of a param's value
NOTE_LIMIT = 5000
TAG_OPTIMIZER = "lrsweep.optimizer"  # the optimizer's class, `keras.optimizers.Adam` (config `optimizer._target_`)
TAG_VALIDATION = "lrsweep.validation"  # what val_* was measured on, `Dataset.validation`: "held-out 10000 of train"
TAG_SCHEDULE = "lrsweep.schedule"  # the schedule's function, `lrsweep.schedules.linear_warmup` (`schedule._target_`)
# The per-epoch metrics a report reads back as histories.
HISTORY_METRICS = (
    "loss", "val_loss", "accuracy", "val_accuracy", "lr",
    "effective_lr/p10", "effective_lr/p50", "effective_lr/p90", "effective_lr/excluded_fraction",
)  # fmt: skip
_REST_BULK_RUNS = 100  # the tracking server's limit of run ids per bulk metric request
_SQLITE = "sqlite:///"


def normalize_uri(uri: str) -> str:
    """Makes a relative SQLite URI absolute so that every process agrees on it; creates nothing.

    `sqlite:///mlruns/mlflow.db` is relative to the working directory; other URIs pass through unchanged.
    """
    path = store.sqlite_path(uri)
    return uri if path is None else _SQLITE + str(path.resolve())


def _artifact_location(uri: str, experiment_name: str) -> str | None:
    """Artifacts of a SQLite store live beside the database: <db folder>/<experiment>/<run id>/artifacts."""
    if not uri.startswith(_SQLITE):
        return None  # a tracking server decides where artifacts go
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment_name)
    return (Path(uri[len(_SQLITE) :]).parent / slug).as_uri()


def check_server(uri: str, timeout: float = store.HTTP_TIMEOUT) -> None:
    """Fails fast when a tracking server does not answer (MLflow's own client would retry for minutes).

    Raises:
        StoreError: naming the URI and how to start a server.
    """
    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=timeout).raise_for_status()
    except requests.RequestException as e:
        raise StoreError(
            f"No MLflow tracking server answers at tracking.uri={uri} ({type(e).__name__}). Start one, e.g. "
            "`mlflow server --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///mlruns/mlflow.db`, "
            "or fix `tracking.uri`."
        ) from e


def _store_failures() -> tuple[type[BaseException], ...]:
    """What MLflow raises when it cannot open or create a store, wrapped into a StoreError naming the URI.

    Imported here, not at the top: MLflow imports SQLAlchemy and Alembic only for a SQL store (slow imports).
    """
    from alembic.util.exc import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    return MlflowException, SQLAlchemyError, CommandError, OSError, sqlite3.Error, requests.RequestException


@overload
def connect(
    uri: str, experiment_name: str, *, create: Literal[True] = ..., http_timeout: int = ..., http_max_retries: int = ...
) -> tuple[MlflowClient, str]: ...


@overload
def connect(
    uri: str, experiment_name: str, *, create: bool, http_timeout: int = ..., http_max_retries: int = ...
) -> tuple[MlflowClient, str] | None: ...


def connect(
    uri: str,
    experiment_name: str,
    *,
    create: bool = True,
    http_timeout: int = store.HTTP_TIMEOUT,
    http_max_retries: int = store.HTTP_MAX_RETRIES,
) -> tuple[MlflowClient, str] | None:
    """Opens the store (creating the SQLite database and the experiment if needed); returns a client and the id.

    Every way the store can be unusable is a `StoreError` within seconds, and then nothing was created: a server
    that does not answer, a SQLite folder that cannot be created or written, a file that is not a SQLite database
    or is damaged, a schema of an older or newer MLflow (`lrsweep.store`). A fresh SQLite store is created under a
    lock on its folder, so processes starting together on it do not collide. MLflow's HTTP client is set to give up
    on a server within `store.http_call_bound(http_timeout, http_max_retries)` seconds per call (33 s by default).

    Args:
        uri: `tracking.uri`; a relative SQLite path is taken from the working directory.
        experiment_name: `tracking.experiment_name`.
        create: False: create nothing, and return None when there is no store or no such experiment yet (a missing
            or empty SQLite file stays missing or empty).
        http_timeout: `tracking.http_timeout`, seconds per HTTP request.
        http_max_retries: `tracking.http_max_retries`, retries of a failed HTTP request.

    Raises:
        StoreError: the store cannot be used, naming the URI or path, what is wrong and the fix.
        ValueError: the experiment is deleted, or an HTTP setting is out of range.
    """
    store.http_settings(http_timeout, http_max_retries)
    uri = normalize_uri(uri)
    if uri.startswith(("http://", "https://")):
        check_server(uri, http_timeout)
    path = store.sqlite_path(uri)
    lock = contextlib.nullcontext(True)
    if path is not None:
        lock = store.prepare_sqlite(uri, path, create)
        if lock is None:
            return None
    try:
        with lock as go_on:
            if not go_on:
                return None
            _quick_engine_retries()
            client = MlflowClient(tracking_uri=uri)
            experiment = client.get_experiment_by_name(experiment_name)
            if experiment is None:
                if not create:
                    return None
                try:
                    return client, client.create_experiment(
                        experiment_name, artifact_location=_artifact_location(uri, experiment_name)
                    )
                except MlflowException:  # another process (with no lock: a server's store) created it meanwhile
                    experiment = client.get_experiment_by_name(experiment_name)
                    if experiment is None:
                        raise
    except StoreError:
        raise
    except _store_failures() as e:
        raise as_store_error(e, uri) or StoreError(
            f"Cannot use the MLflow store tracking.uri={uri}: {type(e).__name__}: {_one_line(e)}. "
            "Fix or restore the store, start the server, or choose another `tracking.uri`."
        ) from e
    if experiment.lifecycle_stage == "deleted":
        raise ValueError(
            f"MLflow experiment {experiment_name!r} is deleted in {uri}. Restore it "
            f"(`mlflow experiments restore --experiment-id {experiment.experiment_id}`) "
            "or choose another `tracking.experiment_name`."
        )
    return client, experiment.experiment_id


def connect_config(tracking_cfg: Any, create: bool = True) -> tuple[MlflowClient, str] | None:
    """`connect` with the settings of the config group `tracking` (uri, experiment_name, http_timeout, ...)."""
    return connect(
        tracking_cfg.uri,
        tracking_cfg.experiment_name,
        create=create,
        http_timeout=tracking_cfg.get("http_timeout", store.HTTP_TIMEOUT),
        http_max_retries=tracking_cfg.get("http_max_retries", store.HTTP_MAX_RETRIES),
    )


def _one_line(error: BaseException, limit: int = 300) -> str:
    lines = str(error).strip().splitlines()
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[:limit] + "..."


def _quick_engine_retries() -> None:
    """MLflow retries creating a SQLite engine 10 times over ~100 s; the store was just checked, so 3 (0.4 s) do."""
    import mlflow.store.db.utils

    mlflow.store.db.utils.MAX_RETRY_COUNT = min(mlflow.store.db.utils.MAX_RETRY_COUNT, 3)


def sweep_tags(sweep_dir: str | None) -> dict[str, str]:
    if not sweep_dir:
        return {}
    return {TAG_SWEEP_ID: sweep_id(sweep_dir), TAG_SWEEP_DIR: str(Path(sweep_dir).resolve())}


def latest_run(client: MlflowClient, experiment_id: str, query: str) -> Run | None:
    """The most recently started run matching an MLflow search `query`, if any."""
    runs = client.search_runs([experiment_id], query, max_results=1, order_by=["start_time DESC"])
    return runs[0] if runs else None


def find_finished(client: MlflowClient, experiment_id: str, config_hash_: str) -> Run | None:
    """The latest FINISHED job run with this config hash, if any."""
    query = f"tags.`{TAG_CONFIG_HASH}` = '{config_hash_}' and attributes.status = 'FINISHED'"
    return latest_run(client, experiment_id, query)


def process_token(pid: int | None = None) -> str:
    """`pid:start time`, which tells a live process from a later one that got the same pid."""
    pid = pid or os.getpid()
    try:
        start = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        start = "?"
    return f"{pid}:{start}"


def _process_alive(token: str) -> bool:
    pid, _, start = token.partition(":")
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return start == "?" or process_token(int(pid)) == token


def owner_tags() -> dict[str, str]:
    """Who owns a run while it is RUNNING, so a later sweep can tell a live run from one whose process died."""
    return {TAG_HOST: socket.gethostname(), TAG_PROCESS: process_token()}


def mark_stale(client: MlflowClient, experiment_id: str) -> list[Run]:
    """Ends as KILLED (tag `lrsweep.stale`) the RUNNING runs whose process on this host is gone (e.g. SIGKILL).

    Runs owned by other hosts cannot be checked from here and are left as they are.
    """
    host = socket.gethostname()
    stale = []
    for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=1000):
        token = run.data.tags.get(TAG_PROCESS)
        if run.data.tags.get(TAG_HOST) == host and token and process_gone(token):
            end_stale(client, run.info.run_id)
            stale.append(run)
            log.warning("Run %s (%s) was left RUNNING by a process that is gone: marked KILLED (stale)",
                        run.info.run_name, run.info.run_id)  # fmt: skip
    return stale


def find_sweep_run(client: MlflowClient, experiment_id: str, sweep_id: str) -> Run | None:
    """The parent run of a sweep, if one was opened (by `lrsweep.sweep.SweepCallback`)."""
    return latest_run(client, experiment_id, f"tags.`{TAG_ROLE}` = 'sweep' and tags.`{TAG_SWEEP_ID}` = '{sweep_id}'")


def find_job_run(client: MlflowClient, experiment_id: str, sweep_id: str, job_num: int) -> Run | None:
    """The run that job number `job_num` of a sweep opened, if it got that far."""
    return latest_run(
        client, experiment_id, f"tags.`{TAG_SWEEP_ID}` = '{sweep_id}' and tags.`{TAG_JOB_NUM}` = '{job_num}'"
    )


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
    it stale (its process is gone), and the caller raises `error`, which says what happened.
    """
    try:
        if as_store_error(error, client.tracking_uri) is None and not isinstance(error, KeyboardInterrupt):
            close_run(client, run_id, name, error)
        else:  # the store just failed, or the user is waiting: one quick attempt, not another round of retries
            with store.one_try():
                close_run(client, run_id, name, error)
    except Exception as e:
        log.error("Could not mark run %s (%s) ended: %s", name, run_id, " ".join(str(e).split())[:300])


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


def search_all(client: MlflowClient, experiment_id: str, query: str) -> list[Run]:
    """Every run matching `query`, fetched in pages of 1000."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], query, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return sorted(runs, key=lambda r: r.info.start_time)


def sweep_runs(client: MlflowClient, experiment_id: str, sweep_id: str) -> list[Run]:
    """The job runs of one sweep (not its parent run)."""
    return search_all(client, experiment_id, f"tags.`{TAG_SWEEP_ID}` = '{sweep_id}' and tags.`{TAG_ROLE}` = 'job'")


def reused_runs(client: MlflowClient, experiment_id: str, sweep_id: str) -> list[tuple[Run, dict[str, str]]]:
    """Runs of earlier sweeps that this sweep's jobs skipped to, each with the overrides of the job that did."""
    parent = find_sweep_run(client, experiment_id, sweep_id)
    if parent is None:
        return []
    notes = [json.loads(v) for k, v in parent.data.tags.items() if k.startswith(TAG_REUSED_PREFIX)]
    overrides = {note["run_id"]: note["overrides"] for note in notes}
    run_ids = sorted(overrides)
    runs = []
    for start in range(0, len(run_ids), 100):
        chunk = ", ".join(f"'{run_id}'" for run_id in run_ids[start : start + 100])
        runs += search_all(client, experiment_id, f"attributes.run_id IN ({chunk})")
    return [(run, overrides[run.info.run_id]) for run in runs]


def latest_sweep_id(client: MlflowClient, experiment_id: str) -> str | None:
    run = latest_run(client, experiment_id, f"tags.`{TAG_ROLE}` = 'sweep'")
    return run.data.tags[TAG_SWEEP_ID] if run else None


def metric_histories(
    client: MlflowClient, run_ids: Sequence[str], keys: Iterable[str]
) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{run_id: {key: [(step, value), ...]}} with one query per metric for all runs, not one per run.

    A SQL store answers each metric for all runs in one query; a tracking server in requests of 100 runs.
    """
    histories: dict[str, dict[str, list[tuple[int, float]]]] = {run_id: {} for run_id in run_ids}
    if not run_ids:
        return histories
    uri = client.tracking_uri
    store = client._tracking_client.store  # the bulk query is not exposed on MlflowClient
    for key in keys:
        if hasattr(store, "get_metric_history_bulk"):
            points = [(m.run_id, m.step, m.value) for m in store.get_metric_history_bulk(list(run_ids), key, 25000)]
        elif uri.startswith(("http://", "https://")):
            points = []
            for start in range(0, len(run_ids), _REST_BULK_RUNS):
                response = requests.get(
                    f"{uri.rstrip('/')}/ajax-api/2.0/mlflow/metrics/get-history-bulk",
                    params={"run_id": list(run_ids[start : start + _REST_BULK_RUNS]), "metric_key": key},
                    timeout=60,
                )
                response.raise_for_status()
                points += [(m["run_id"], m["step"], m["value"]) for m in response.json().get("metrics", [])]
        else:
            points = [(r, m.step, m.value) for r in run_ids for m in client.get_metric_history(r, key)]
        for run_id, step, value in points:
            histories[run_id].setdefault(key, []).append((step, value))
    for per_run in histories.values():
        for key, series in per_run.items():
            per_run[key] = sorted(dict(series).items())  # the last value logged at a step wins
    return histories


@dataclass
class SweepRuns:
    """What a sweep's report is built from: its job runs, the earlier runs it reused, their metric histories."""

    sweep_id: str | None
    runs: list[Run]
    reused: list[tuple[Run, dict[str, str]]] = field(default_factory=list)  # with the overrides of the job that did
    histories: dict[str, dict[str, list[tuple[int, float]]]] = field(default_factory=dict)  # run id -> key -> points


def load_sweep(
    client: MlflowClient, experiment_id: str, sweep_id: str, history_keys: Sequence[str] = HISTORY_METRICS
) -> SweepRuns:
    """One sweep read back: one search for its runs, one for those it reused, one bulk query per metric."""
    runs = sweep_runs(client, experiment_id, sweep_id)
    reused = reused_runs(client, experiment_id, sweep_id)
    run_ids = list(dict.fromkeys([r.info.run_id for r in runs] + [r.info.run_id for r, _ in reused]))
    return SweepRuns(sweep_id, runs, reused, metric_histories(client, run_ids, history_keys))


TAG_NEVER_STARTED = "lrsweep.never_started"  # on a sweep's parent: the job numbers that never started, "2,3"


def process_gone(token: str) -> bool:
    """Whether the process of a `lrsweep.process` token has exited, a zombie (exited, not yet reaped) included."""
    if not _process_alive(token):
        return True
    try:
        state = Path(f"/proc/{token.partition(':')[0]}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state in ("Z", "X")


def end_stale(client: MlflowClient, run_id: str) -> None:
    """Ends a run left RUNNING by a process that is gone: KILLED with tag `lrsweep.stale`, so resume reruns it."""
    client.set_tag(run_id, TAG_STALE, "true")
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))
