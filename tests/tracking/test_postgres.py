"""A tracking server for many writers (scripts/tracking_server.py): a real PostgreSQL of the test's own (`initdb` in a
temp folder, run as a non-root user) behind a real `mlflow server` with proxied artifacts."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from lrsweep import tracking
from scripts import tracking_server
from tests.conftest import TINY, job_runs, train
from tests.sweep.test_faults import free_port, logged_epochs, start_train, wait_for

EPOCH_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "lr")


@pytest.fixture(scope="module")
def postgres_server():
    """PostgreSQL in a temp folder (as the `postgres` user when the tests run as root) and `mlflow server` over it."""
    folder = Path(tempfile.mkdtemp(prefix="lrsweep-postgres-"))  # not under pytest's tmp: postgres must reach it
    database = tracking_server.Postgres(folder, free_port()).start()
    port = free_port()
    log = open(folder / "mlflow-server.log", "w")
    server = tracking_server.mlflow_server(database.uri, folder / "artifacts", port=port, workers=1,
                                           backend_env=database.server_env, stdout=log, stderr=log)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        tracking_server.wait_healthy(url, server)
        yield url, database, folder
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
        database.stop()
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


def test_postgres_runs_as_a_non_root_user_on_a_socket_only(postgres_server):
    _, database, folder = postgres_server
    assert database.sql("SELECT current_setting('listen_addresses')") == ""  # no TCP port: the socket only
    assert oct(database.socket_dir.stat().st_mode & 0o777) == "0o700"
    owner = database.cluster.stat().st_uid
    assert owner != 0 and owner == database.socket_dir.stat().st_uid


def test_mlflow_logs_in_with_a_password_as_a_role_that_owns_its_database_and_nothing_more(postgres_server):
    _, database, folder = postgres_server
    role = tracking_server.DB_ROLE
    assert database.uri.startswith(f"postgresql+psycopg2://{role}@/")  # no password in the URI
    assert database.sql(f"SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = '{role}'") == (
        "f|f|f"
    )
    database_owner = f"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{tracking_server.DATABASE}'"
    assert database.sql(database_owner) == role
    tables = database.sql("SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'")
    assert tables == role  # MLflow's tables, made by the server's migrations as the role
    assert oct((folder / "postgres-credentials").stat().st_mode & 0o777) == "0o600"
    assert (database.cluster / "pg_hba.conf").read_text().splitlines()[1:] == ["local all all scram-sha-256"]
    psql = tracking_server.postgres_binary("psql")
    login = [psql, "-h", str(database.socket_dir), "-p", str(database.port), "-U", role, "-d", "mlflow", "-c", ";"]
    env = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}
    refused = subprocess.run(["runuser", "-u", database.os_user, "--", *login] if os.getuid() == 0 else login,
                             capture_output=True, text=True, env=env)  # fmt: skip
    assert refused.returncode != 0 and "no password supplied" in refused.stderr


@pytest.mark.timeout(600)
def test_a_packed_sweep_lands_whole_in_postgres_with_its_artifacts_on_the_server(tmp_path, postgres_server):
    url, database, folder = postgres_server
    result = train(tmp_path, "schedule=linear,constant", "training.seed=0,1", "training.epochs=2", "backend=jax",
                   "training.verbose=0", *TINY, f"tracking.uri={url}", "tracking.log_every_n_steps=1",
                   fresh_store=True)  # fmt: skip
    assert "4 runs in 2 configurations" in result.stdout
    client = MlflowClient(url)
    experiment_id = client.get_experiment_by_name("lrsweep").experiment_id
    runs = job_runs(client, experiment_id, "multirun")
    assert len(runs) == 4 and {r.info.status for r in runs.values()} == {"FINISHED"}
    for run in runs.values():
        assert logged_epochs(client, run) == [0, 1]
        for key in EPOCH_KEYS:
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [0, 1], key
        # per step: 512 examples in batches of 64 is 8 steps an epoch, every one logged
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "lr_step"))
        assert steps == list(range(16))
        assert "config.yaml" in {a.path for a in client.list_artifacts(run.info.run_id)}
    parent = tracking.find_sweep_run(client, experiment_id, "multirun")
    assert parent.info.status == "FINISHED"
    assert "report/report.html" in {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    # The rows are PostgreSQL's and the files the server's (proxied), none in the sweep's folder.
    ids = "', '".join(r.info.run_id for r in runs.values())
    assert database.sql(f"SELECT count(*) FROM runs WHERE run_uuid IN ('{ids}') AND status = 'FINISHED'") == "4"
    points = sum(len(client.get_metric_history(r.info.run_id, k)) for r in runs.values() for k in r.data.metrics)
    assert database.sql(f"SELECT count(*) FROM metrics WHERE run_uuid IN ('{ids}')") == str(points)
    stored = {p.name for p in (folder / "artifacts").rglob("*") if p.is_file()}
    assert {"config.yaml", "report.html"} <= stored
    assert not (tmp_path / "mlruns").exists()


def start_two_packs(tmp_path: Path, client: MlflowClient, url: str, name: str, *overrides: str):
    """Trains a 2-epoch job, then starts the same sweep with a 200-epoch job added (the first reused, FINISHED);
    returns once the second has logged an epoch. `overrides` should make the jobs this test's own: a FINISHED run of
    the same configuration anywhere in the experiment would be reused."""
    sweep = [f"tracking.uri={url}", f"hydra.sweep.dir={tmp_path / name}", *overrides]
    train(tmp_path, "training.epochs=2", *sweep, "backend=jax", "training.verbose=0", *TINY, fresh_store=True)
    sweep.insert(0, "training.epochs=2,200")
    process = start_train(tmp_path, *sweep)

    def training_the_long_one():
        long = runs_by_epochs(client, name).get("200")
        return long is not None and client.get_metric_history(long.info.run_id, "loss")

    wait_for(training_the_long_one, timeout=180, what="the 200-epoch job training")
    return process, sweep


def runs_by_epochs(client: MlflowClient, sweep_id: str) -> dict[str, object]:
    """The sweep's job runs by `training.epochs` (both are named `s0 · adam-constant`), the latest of each; a run
    whose params are not logged yet (a job logs them just after creating its run) is left out."""
    experiment = client.get_experiment_by_name("lrsweep")
    if experiment is None:
        return {}
    query = f"tags.`{tracking.TAG_ROLE}` = 'job' and tags.`{tracking.TAG_SWEEP_ID}` = '{sweep_id}'"
    runs = client.search_runs([experiment.experiment_id], query, order_by=["attributes.start_time ASC"])
    return {r.data.params["training.epochs"]: r for r in runs if "training.epochs" in r.data.params}


@pytest.mark.timeout(900)
def test_postgres_down_mid_sweep_fails_the_unfinished_job_within_the_http_bound_and_the_rerun_completes_it(
    tmp_path, postgres_server
):
    """PostgreSQL crashes (`pg_ctl stop -m immediate`) while the second of two packs trains, and stays down: the
    server answers with errors, the job's requests give up within the HTTP bound (tracking.http_*: 2 retries, ~3 s
    here), the sweep stops in one line and nothing FINISHED is lost. Started again, the same command trains only what
    did not finish."""
    url, database, _ = postgres_server
    client = MlflowClient(url)
    process, sweep = start_two_packs(tmp_path, client, url, "down", "training.seed=5")
    database.stop("immediate")
    try:
        started = time.monotonic()
        output, _ = process.communicate(timeout=300)
        took = time.monotonic() - started
    finally:
        database.start()
    assert process.returncode == 1, output[-3000:]
    assert took < 120  # a bound, not a benchmark: MLflow's own retries would take minutes
    assert f"The MLflow tracking server at tracking.uri={url} stopped answering" in output
    assert "Traceback" not in output
    runs = runs_by_epochs(client, "down")
    # The store could not record the job's end: its run stays RUNNING until a rerun finds it stale.
    assert {epochs: r.info.status for epochs, r in runs.items()} == {"2": "FINISHED", "200": "RUNNING"}
    assert logged_epochs(client, runs["2"]) == [0, 1]  # what was FINISHED is whole
    stale = runs["200"].info.run_id

    rerun = train(tmp_path, *sweep, "backend=jax", "training.verbose=0", *TINY, fresh_store=True)
    assert "1 run(s) of an earlier attempt in this sweep folder were run again" in rerun.stdout  # the 200's only
    runs = runs_by_epochs(client, "down")  # the rerun's: the 200-epoch job trained again, in a run of its own
    assert {epochs: r.info.status for epochs, r in runs.items()} == {"2": "FINISHED", "200": "FINISHED"}
    assert logged_epochs(client, runs["200"]) == list(range(200))
    assert client.get_run(stale).info.status == "KILLED"


@pytest.mark.timeout(900)
def test_a_postgres_restart_shorter_than_the_retries_is_ridden_through(tmp_path, postgres_server):
    """PostgreSQL crashes and is back 3 s later, inside what tracking.http_max_retries=6 waits (0 + 2 + 4 + 8 + ... s):
    the requests that failed meanwhile are retried, the sweep ends FINISHED, every epoch logged once."""
    url, database, _ = postgres_server
    client = MlflowClient(url)
    process, _ = start_two_packs(tmp_path, client, url, "blip", "training.seed=6", "tracking.http_max_retries=6")
    database.stop("immediate")
    time.sleep(3)
    database.start()
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]
    runs = runs_by_epochs(client, "blip")
    assert {epochs: r.info.status for epochs, r in runs.items()} == {"2": "FINISHED", "200": "FINISHED"}
    assert logged_epochs(client, runs["200"]) == list(range(200))
    for key in EPOCH_KEYS:
        assert len(client.get_metric_history(runs["200"].info.run_id, key)) == 200, key


@pytest.mark.timeout(600)
def test_a_password_in_the_tracking_uri_lands_nowhere_in_the_store_the_artifacts_or_the_output(
    tmp_path, postgres_server
):
    """`tracking.uri=http://user:password@host` reaches the server (a server without auth ignores the credentials),
    and the password is in no row of the database, no artifact, no output line and no log file: `***` stands in."""
    url, database, folder = postgres_server
    password = "hunter2-not-for-mlflow"
    with_password = url.replace("http://", f"http://alice:{password}@")
    result = train(tmp_path, "schedule=linear,constant", "training.seed=7", "training.epochs=1", "backend=jax",
                   "training.verbose=0", *TINY, f"tracking.uri={with_password}",
                   f"hydra.sweep.dir={tmp_path / 'secret'}", fresh_store=True)  # fmt: skip
    client = MlflowClient(url)
    runs = job_runs(client, client.get_experiment_by_name("lrsweep").experiment_id, "secret")
    assert len(runs) == 2 and {r.info.status for r in runs.values()} == {"FINISHED"}
    redacted = url.replace("http://", "http://alice:***@")
    for run in runs.values():  # the URI is recorded, without its password
        assert run.data.params.get("tracking.uri") in (None, redacted)
        overrides = json.loads(run.data.tags[tracking.TAG_OVERRIDES])  # as Hydra escapes it: http\://alice\:***@...
        assert overrides["tracking.uri"].replace("\\", "") == redacted
        config = Path(client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path / run.info.run_id)))
        assert f"uri: {redacted}" in config.read_text()
    dump = database.dump()
    assert runs.popitem()[1].info.run_id.replace("-", "") in dump  # the dump holds the runs
    assert password not in dump
    files = [p for p in (folder / "artifacts").rglob("*") if p.is_file()] + [
        p for p in (tmp_path / "secret").rglob("*") if p.is_file() and p.suffix in (".log", ".csv", ".html")
    ]
    assert any(p.name == "report.html" for p in files) and any(p.suffix == ".log" for p in files)
    assert [p for p in files if password in p.read_text(errors="replace")] == []
    assert password not in result.stdout + result.stderr
