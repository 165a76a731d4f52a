"""Only who belongs gets in: `mlflow server` behind MLflow's basic-auth app (scripts/tracking_server.py --auth), its
admin named by the client credentials where it starts, and lrsweep's one-line error for a client left out."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
from mlflow.tracking import MlflowClient

from lrsweep import tracking
from scripts import tracking_server
from tests.conftest import TINY, run_train_py, seed_store
from tests.sweep.test_faults import free_port

ADMIN, PASSWORD = "alice", "correct-horse-battery"
CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
AS_ADMIN = dict(zip(CREDENTIALS, (ADMIN, PASSWORD), strict=True))  # the admin's MLflow credentials, as variables


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """A real `mlflow server --app-name basic-auth` on 127.0.0.1, over a SQLite store of its own."""
    folder = tmp_path_factory.mktemp("auth")
    with pytest.MonkeyPatch.context() as patch:  # as the admin sets them to start it
        for name, value in AS_ADMIN.items():
            patch.setenv(name, value)
        auth = tracking_server.basic_auth(folder / "data")
    assert oct((folder / "data" / "basic_auth.ini").stat().st_mode & 0o777) == "0o600"
    assert PASSWORD not in (folder / "data" / "basic_auth.ini").read_text()  # handed over in the environment only
    port = free_port()
    seed_store(folder / "server.db")
    server = tracking_server.mlflow_server(f"sqlite:///{folder / 'server.db'}", folder / "art", port=port, workers=1,
                                           auth=auth, cwd=folder, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        tracking_server.wait_healthy(url, server)
        yield url, folder
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)


def run(folder, url: str, *overrides: str, multirun: bool = False, **credentials: str) -> subprocess.CompletedProcess:
    """`python train.py [-m] <overrides>` against the server, with only the MLflow credentials given."""
    env = {k: v for k, v in os.environ.items() if k not in CREDENTIALS} | credentials
    args = ["-m"] if multirun else []
    args += [f"tracking.uri={url}", f"hydra.run.dir={folder / 'outputs'}", f"hydra.sweep.dir={folder / 'multirun'}",
             "backend=jax", "training.epochs=1", "training.verbose=0", *TINY, *overrides]  # fmt: skip
    return run_train_py(args, folder, env, timeout=300)


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    "credentials",
    [{}, {"MLFLOW_TRACKING_USERNAME": ADMIN, "MLFLOW_TRACKING_PASSWORD": "wrong"}],
    ids=["none", "wrong password"],
)
def test_a_client_without_the_credentials_gets_one_line_naming_them(tmp_path, auth_server, credentials):
    url, _ = auth_server
    result = run(tmp_path, url, **credentials)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("lrsweep:")]
    assert line.startswith(f"lrsweep: The MLflow tracking server at tracking.uri={url} refused lrsweep's credentials")
    assert "MLFLOW_TRACKING_USERNAME" in line and "MLFLOW_TRACKING_PASSWORD" in line
    assert "wrong" not in line


@pytest.mark.timeout(600)
def test_the_admins_credentials_from_the_environment_let_a_sweep_in_whole(tmp_path, auth_server, monkeypatch):
    """Its runs, its report (read back through the UI's bulk route, asked with the same credentials) and the parent
    run that holds the report."""
    url, _ = auth_server
    result = run(tmp_path, url, "schedule=linear,constant", multirun=True, **AS_ADMIN)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "lrsweep:" not in result.stderr, result.stderr[-3000:]
    for name, value in AS_ADMIN.items():
        monkeypatch.setenv(name, value)
    client = MlflowClient(url)
    runs = client.search_runs([client.get_experiment_by_name("lrsweep").experiment_id])
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}
    by_role = {r.data.tags[tracking.TAG_ROLE]: r for r in runs}
    assert set(by_role) == {"job", "sweep"}
    assert "report/report.html" in {a.path for a in client.list_artifacts(by_role["sweep"].info.run_id, "report")}


def test_a_server_other_machines_reach_needs_auth(tmp_path, capsys):
    assert tracking_server.main(["--host", "0.0.0.0", "--data", str(tmp_path / "data")]) == 1
    refused = "error: --host 0.0.0.0 lets other machines in: add --auth (MLflow's basic-auth app)\n"
    assert capsys.readouterr().err == refused
    assert not (tmp_path / "data").exists()  # refused before anything was made


def test_auth_without_credentials_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    for name in CREDENTIALS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.mlflow/credentials
    assert tracking_server.main(["--auth", "--data", str(tmp_path / "data")]) == 1
    refused = "error: --auth needs the admin's credentials: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
    assert capsys.readouterr().err.startswith(refused)
