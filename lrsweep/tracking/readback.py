"""Reading runs back from MLflow: a sweep's parent and jobs, the runs it reused, their metric histories in bulk."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from lrsweep.tracking import mlflow_adapter
from lrsweep.tracking.tags import (
    HISTORY_METRICS,
    TAG_CONFIG_HASH,
    TAG_HALVING,
    TAG_JOB_NUM,
    TAG_PARENT,
    TAG_REUSED_PREFIX,
    TAG_ROLE,
    TAG_STOPPED_EPOCH,
    TAG_SWEEP_ID,
)

SEARCH_PAGE = 1000  # runs per search request: MLflow's largest page
IDS_PER_QUERY = 100  # run ids per `attributes.run_id IN (...)` filter


def latest_run(client: MlflowClient, experiment_id: str, query: str) -> Run | None:
    """The most recently started run matching an MLflow search `query`, if any."""
    runs = client.search_runs([experiment_id], query, max_results=1, order_by=["start_time DESC"])
    return runs[0] if runs else None


def find_finished(client: MlflowClient, experiment_id: str, config_hash_: str) -> Run | None:
    """The latest FINISHED job run with this config hash that trained to its end (successive halving stops runs
    FINISHED, tagged `TAG_STOPPED_EPOCH`: those are not results to reuse), if any."""
    return _latest_finished(client, experiment_id, config_hash_, stopped=False)


def find_stopped(client: MlflowClient, experiment_id: str, config_hash_: str, halving: str) -> Run | None:
    """The latest run with this config hash that successive halving with these settings (`TAG_HALVING`) stopped
    (FINISHED, tagged `TAG_STOPPED_EPOCH`), if any: a rerun of the same halving sweep keeps it stopped."""
    also = f"tags.`{TAG_HALVING}` = '{halving}'"
    return _latest_finished(client, experiment_id, config_hash_, stopped=True, also=also)


def _latest_finished(
    client: MlflowClient, experiment_id: str, config_hash_: str, stopped: bool, also: str = ""
) -> Run | None:
    """The latest FINISHED run with this config hash (and matching `also`, a further search clause) that was
    stopped early (`TAG_STOPPED_EPOCH`), or that was not."""
    query = f"tags.`{TAG_CONFIG_HASH}` = '{config_hash_}' and attributes.status = 'FINISHED'"
    query += f" and {also}" if also else ""
    runs = client.search_runs([experiment_id], query, max_results=SEARCH_PAGE, order_by=["start_time DESC"])
    return next((run for run in runs if (TAG_STOPPED_EPOCH in run.data.tags) == stopped), None)


def find_sweep_run(client: MlflowClient, experiment_id: str, sweep_id: str) -> Run | None:
    """The parent run of a sweep, if one was opened (by `lrsweep.sweep.SweepCallback`)."""
    return latest_run(client, experiment_id, f"tags.`{TAG_ROLE}` = 'sweep' and tags.`{TAG_SWEEP_ID}` = '{sweep_id}'")


def find_job_run(client: MlflowClient, experiment_id: str, sweep_id: str, job_num: int) -> Run | None:
    """The run that job number `job_num` of a sweep opened, if it got that far."""
    return latest_run(
        client, experiment_id, f"tags.`{TAG_SWEEP_ID}` = '{sweep_id}' and tags.`{TAG_JOB_NUM}` = '{job_num}'"
    )


def latest_sweep_id(client: MlflowClient, experiment_id: str) -> str | None:
    """The id of the sweep whose parent run started last, if any."""
    run = latest_run(client, experiment_id, f"tags.`{TAG_ROLE}` = 'sweep'")
    return run.data.tags[TAG_SWEEP_ID] if run else None


def search_all(client: MlflowClient, experiment_id: str, query: str) -> list[Run]:
    """Every run matching `query`, fetched in pages of 1000, oldest first."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], query, max_results=SEARCH_PAGE, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return sorted(runs, key=lambda r: r.info.start_time)


def sweep_runs(client: MlflowClient, experiment_id: str, sweep_id: str) -> list[Run]:
    """The job runs of one sweep (not its parent run)."""
    return search_all(client, experiment_id, f"tags.`{TAG_SWEEP_ID}` = '{sweep_id}' and tags.`{TAG_ROLE}` = 'job'")


def reused_runs(
    client: MlflowClient, experiment_id: str, sweep_id: str, parent: Run | None = None
) -> list[tuple[Run, dict[str, str]]]:
    """Runs of earlier sweeps that this sweep's jobs skipped to, each with the overrides of the job that did.

    Args:
        parent: the sweep's parent run, when the caller has it: not searched again.
    """
    parent = parent or find_sweep_run(client, experiment_id, sweep_id)
    if parent is None:
        return []
    notes = [json.loads(v) for k, v in parent.data.tags.items() if k.startswith(TAG_REUSED_PREFIX)]
    overrides = {note["run_id"]: note["overrides"] for note in notes}
    run_ids = sorted(overrides)
    runs = []
    for start in range(0, len(run_ids), IDS_PER_QUERY):
        chunk = ", ".join(f"'{run_id}'" for run_id in run_ids[start : start + IDS_PER_QUERY])
        runs += search_all(client, experiment_id, f"attributes.run_id IN ({chunk})")
    return [(run, overrides[run.info.run_id]) for run in runs]


def metric_histories(
    client: MlflowClient, run_ids: Sequence[str], keys: Iterable[str]
) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{run_id: {key: [(step, value), ...]}} with one query per metric for all runs, not one per run.

    A SQL store answers each metric for all runs in one query; a tracking server in requests of 100 runs
    (`mlflow_adapter.metric_points`). The last value logged at a step wins.
    """
    histories: dict[str, dict[str, list[tuple[int, float]]]] = {run_id: {} for run_id in run_ids}
    if not run_ids:
        return histories
    for key in keys:
        for run_id, step, value in mlflow_adapter.metric_points(client, run_ids, key):
            histories[run_id].setdefault(key, []).append((step, value))
    for per_run in histories.values():
        for key, series in per_run.items():
            per_run[key] = sorted(dict(series).items())
    return histories


@dataclass
class SweepRuns:
    """What a sweep's report is built from: its job runs, the earlier runs it reused, their metric histories."""

    sweep_id: str | None
    runs: list[Run]
    reused: list[tuple[Run, dict[str, str]]] = field(default_factory=list)  # with the overrides of the job that did
    histories: dict[str, dict[str, list[tuple[int, float]]]] = field(default_factory=dict)  # run id -> key -> points
    # Runs of an earlier attempt at the same sweep folder whose configuration this attempt ran again: not reported.
    superseded: list[Run] = field(default_factory=list)


def split_superseded(runs: list[Run], parent: Run | None) -> tuple[list[Run], list[Run]]:
    """(this attempt's runs, superseded runs): a sweep rerun in its folder (after a crash or Ctrl-C) has a new parent
    run, and a run under an earlier parent is superseded when a run under this parent has its configuration."""
    if parent is None:
        return runs, []
    parent_id = parent.info.run_id
    rerun = {r.data.tags.get(TAG_CONFIG_HASH) for r in runs if r.data.tags.get(TAG_PARENT) == parent_id}
    kept, superseded = [], []
    for run in runs:
        earlier = run.data.tags.get(TAG_PARENT) != parent_id
        (superseded if earlier and run.data.tags.get(TAG_CONFIG_HASH) in rerun else kept).append(run)
    return kept, superseded


def load_sweep(
    client: MlflowClient,
    experiment_id: str,
    sweep_id: str,
    history_keys: Sequence[str] = HISTORY_METRICS,
    runs: list[Run] | None = None,
    parent: Run | None = None,
) -> SweepRuns:
    """One sweep read back: one search for its runs, one for those it reused, one bulk query per metric.

    Args:
        runs: the sweep's job runs, when the caller has just read them (`sweep_runs`): not searched again.
        parent: the sweep's parent run, likewise.
    """
    runs = sweep_runs(client, experiment_id, sweep_id) if runs is None else runs
    parent = parent or find_sweep_run(client, experiment_id, sweep_id)
    runs, superseded = split_superseded(runs, parent)
    reused = reused_runs(client, experiment_id, sweep_id, parent)
    run_ids = list(dict.fromkeys([r.info.run_id for r in runs] + [r.info.run_id for r, _ in reused]))
    return SweepRuns(sweep_id, runs, reused, metric_histories(client, run_ids, history_keys), superseded)
