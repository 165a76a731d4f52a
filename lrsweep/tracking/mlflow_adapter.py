"""The few MLflow internals lrsweep relies on, in one place; `tests/tracking/test_mlflow_adapter.py` pins each of them.

MLflow 3 has no public way to do these: read a metric's history for many runs at once (`MlflowClient` asks per run),
know which schema revisions a store may have, or shorten the engine retries of a SQLite store that was just checked.
When an MLflow upgrade breaks one, that test names it, and this module is the one to change.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

BULK_HISTORY_ROUTE = "/ajax-api/2.0/mlflow/metrics/get-history-bulk"  # the UI's own route; not in the REST API docs
REST_BULK_RUNS = 100  # the tracking server's limit of run ids per request on that route
SQL_BULK_POINTS = 25000  # points per metric a SQL store returns for all the runs asked (MLflow's UI asks as many)
ENGINE_RETRIES = 3  # MLflow's default, 10, retries creating a SQLite engine for ~100 s; 3 take 0.4 s


def metric_points(client: MlflowClient, run_ids: Sequence[str], key: str) -> list[tuple[str, int, float]]:
    """Every (run id, step, value) of metric `key` of the runs: one query (SQL store) or one request per 100 runs.

    A SQL store's `get_metric_history_bulk` (private: reached through `client._tracking_client.store`) answers for
    all runs at once; a tracking server (`store.get_host_creds`, MLflow's `http_request`: the client's credentials
    and HTTP settings), the UI's bulk route; any other store, one `get_metric_history` per run.
    """
    store = client._tracking_client.store
    if hasattr(store, "get_metric_history_bulk"):
        return [(m.run_id, m.step, m.value) for m in store.get_metric_history_bulk(list(run_ids), key, SQL_BULK_POINTS)]
    if hasattr(store, "get_host_creds"):  # a tracking server: asked as MLflow's client asks it (its credentials too)
        from mlflow.utils.rest_utils import http_request

        points = []
        for start in range(0, len(run_ids), REST_BULK_RUNS):
            response = http_request(
                store.get_host_creds(), BULK_HISTORY_ROUTE, "GET",
                params={"run_id": list(run_ids[start : start + REST_BULK_RUNS]), "metric_key": key},
            )  # fmt: skip
            response.raise_for_status()
            points += [(m["run_id"], m["step"], m["value"]) for m in response.json().get("metrics", [])]
        return points
    return [(run_id, m.step, m.value) for run_id in run_ids for m in client.get_metric_history(run_id, key)]


def schema_revisions() -> tuple[str, set[str]]:
    """The schema revision this MLflow needs (its Alembic head) and every revision it knows.

    From MLflow's Alembic scripts, found by the private `mlflow.store.db.utils._get_alembic_config`.
    """
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    script = ScriptDirectory.from_config(_get_alembic_config(""))
    return script.get_heads()[0], {revision.revision for revision in script.walk_revisions()}


def quick_engine_retries() -> None:
    """Caps MLflow's retries of creating a SQL engine (`mlflow.store.db.utils.MAX_RETRY_COUNT`) at `ENGINE_RETRIES`.

    Only for a store `lrsweep.tracking.store` has just checked: a failure then is not a database still starting.
    """
    import mlflow.store.db.utils

    mlflow.store.db.utils.MAX_RETRY_COUNT = min(mlflow.store.db.utils.MAX_RETRY_COUNT, ENGINE_RETRIES)
