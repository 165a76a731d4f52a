"""What `lrsweep.tracking.mlflow_adapter` relies on in MLflow, named one by one: an MLflow upgrade that breaks one of
these internals fails here, by name, rather than deep in a sweep."""

from __future__ import annotations

import inspect
import sqlite3
import time

import mlflow.store.db.utils
import requests
from mlflow.entities import Metric
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.tracking import MlflowClient

from lrsweep import tracking
from lrsweep.tracking import mlflow_adapter
from tests.sweep.test_faults import mlflow_server  # noqa: F401  (a fixture: a real `mlflow server`)


def logged_sweep(client: MlflowClient, experiment_id: str, runs: int = 3) -> list[str]:
    """`runs` runs with 4 epochs of `loss` each, the value at step 2 logged twice (the later one counts)."""
    run_ids = []
    for k in range(runs):
        run_id = client.create_run(experiment_id, run_name=f"r{k}").info.run_id
        now = int(time.time() * 1000)
        points = [Metric("loss", 10.0 * k + step, now, step) for step in range(4)]
        client.log_batch(run_id, metrics=[*points, Metric("loss", -1.0, now + 1, 2)])
        run_ids.append(run_id)
    return run_ids


def one_by_one(client: MlflowClient, run_ids: list[str], key: str) -> list[tuple[str, int, float]]:
    """The same points through MLflow's public API: one request per run."""
    return sorted((r, m.step, m.value) for r in run_ids for m in client.get_metric_history(r, key))


def test_a_sql_store_has_the_private_bulk_history_query_with_the_signature_used(store_uri):
    client, _ = tracking.connect(store_uri, "lrsweep")
    store = client._tracking_client.store  # relied on: MlflowClient keeps its store there
    assert isinstance(store, SqlAlchemyStore)
    assert list(inspect.signature(store.get_metric_history_bulk).parameters) == ["run_ids", "metric_key", "max_results"]


def test_metric_points_reads_every_run_in_one_call_as_the_public_api_does(store_uri):
    client, experiment_id = tracking.connect(store_uri, "lrsweep")
    run_ids = logged_sweep(client, experiment_id)
    points = mlflow_adapter.metric_points(client, run_ids, "loss")
    assert sorted(points) == one_by_one(client, run_ids, "loss")
    assert len(points) == 3 * 5  # every logged point, the repeated step included: readback keeps the last
    histories = tracking.metric_histories(client, run_ids, ["loss"])
    assert histories[run_ids[1]]["loss"] == [(0, 10.0), (1, 11.0), (2, -1.0), (3, 13.0)]
    assert mlflow_adapter.metric_points(client, run_ids, "no_such_metric") == []


def test_a_tracking_server_answers_the_uis_bulk_route_in_requests_of_100_runs(mlflow_server, monkeypatch):  # noqa: F811
    uri, _ = mlflow_server
    client, experiment_id = tracking.connect(uri, "lrsweep")
    assert not hasattr(client._tracking_client.store, "get_metric_history_bulk")  # a REST store: the route instead
    run_ids = logged_sweep(client, experiment_id)
    monkeypatch.setattr(mlflow_adapter, "REST_BULK_RUNS", 2)  # 3 runs: two requests, as 101 runs would make
    points = mlflow_adapter.metric_points(client, run_ids, "loss")
    assert sorted(points) == one_by_one(client, run_ids, "loss")
    too_many = {"run_id": [run_ids[0]] * 101, "metric_key": "loss"}  # why the requests hold 100 runs at most
    refused = requests.get(f"{uri}{mlflow_adapter.BULK_HISTORY_ROUTE}", params=too_many, timeout=30)
    assert refused.status_code == 400 and "cannot specify more than 100" in refused.text


def test_schema_revisions_know_the_revision_a_fresh_store_is_created_at(tmp_path):
    db = tmp_path / "mlflow.db"
    tracking.connect(f"sqlite:///{db}", "lrsweep")
    connection = sqlite3.connect(db)
    (revision,) = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    connection.close()
    head, known = mlflow_adapter.schema_revisions()  # relied on: mlflow.store.db.utils._get_alembic_config
    assert revision == head and head in known and len(known) > 10


def test_the_engine_retries_are_a_module_level_count_mlflow_reads(store_uri):
    assert isinstance(mlflow.store.db.utils.MAX_RETRY_COUNT, int)  # relied on: patched, and read at each engine
    assert "MAX_RETRY_COUNT" in inspect.getsource(mlflow.store.db.utils.create_sqlalchemy_engine_with_retry)
    tracking.connect(store_uri, "lrsweep")
    assert mlflow.store.db.utils.MAX_RETRY_COUNT <= mlflow_adapter.ENGINE_RETRIES


def test_the_bulk_route_is_one_mlflows_server_serves():
    from mlflow.server import app

    assert mlflow_adapter.BULK_HISTORY_ROUTE in {rule.rule for rule in app.url_map.iter_rules()}
