"""Unusable MLflow stores are a clear error in seconds, a dead server ends the job in bounded time, and processes
racing to create a fresh store all succeed. Real processes, real SQLite files, a real `mlflow server`."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from lrsweep import tracking
from lrsweep.tracking import mlflow_adapter, store
from tests.conftest import ROOT, TINY, ForkedProcess, start_train_py
from tests.sweep.test_faults import free_port, start_server, wait_for

# What train.py does with a StoreError (one line, exit 1), around nothing but `tracking.connect`.
CONNECT = """
import sys, time
from lrsweep import tracking
from lrsweep.core.errors import StoreError
started = time.monotonic()
try:
    result = tracking.connect(sys.argv[1], "lrsweep", create=sys.argv[2] == "create")
except StoreError as e:
    print(f"lrsweep: {e}", file=sys.stderr)
    print(f"seconds={time.monotonic() - started:.2f}")
    sys.exit(1)
print("experiment", None if result is None else result[1])
print(f"seconds={time.monotonic() - started:.2f}")
"""
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def connect_in_process(uri: str, create: bool = True, prefix: tuple[str, ...] = (), cwd: Path | None = None):
    """Runs `tracking.connect(uri)` in a fresh Python process; returns it and its seconds inside connect."""
    result = subprocess.run(
        [*prefix, sys.executable, "-c", CONNECT, uri, "create" if create else "open"],
        capture_output=True, text=True, timeout=300, env=ENV, cwd=cwd,
    )  # fmt: skip
    seconds = float(result.stdout.rsplit("seconds=", 1)[1]) if "seconds=" in result.stdout else float("nan")
    return result, seconds


def assert_store_error(result: subprocess.CompletedProcess, seconds: float, *named: str) -> str:
    """Exit 1, one line `lrsweep: ...` naming each of `named`, no traceback, in seconds."""
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("lrsweep: ")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for name in named:
        assert name in lines[0]
    assert seconds < 10, seconds  # checked before MLflow: no retries (MLflow's took 209 s for an unwritable folder)
    return lines[0]


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def real_store(tmp_path_factory) -> Path:
    """A real, current MLflow store with experiment lrsweep, to copy and damage."""
    path = tmp_path_factory.mktemp("real") / "mlflow.db"
    tracking.connect(f"sqlite:///{path}", "lrsweep")
    return path


def test_a_fresh_store_is_created_and_opening_without_create_creates_nothing(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    result, _ = connect_in_process(uri, create=False)
    assert result.returncode == 0 and "experiment None" in result.stdout
    assert files_under(tmp_path) == []  # no folder, no database, no lock file

    (tmp_path / "mlruns").mkdir()
    (tmp_path / "mlruns" / "mlflow.db").touch()  # an empty file: a store to create, not an error
    result, _ = connect_in_process(uri, create=False)
    assert result.returncode == 0 and "experiment None" in result.stdout
    assert (tmp_path / "mlruns" / "mlflow.db").stat().st_size == 0

    result, _ = connect_in_process(uri)
    assert result.returncode == 0 and "experiment 1" in result.stdout, result.stderr
    assert files_under(tmp_path) == ["mlruns", "mlruns/mlflow.db"]
    result, _ = connect_in_process(uri, create=False)
    assert "experiment 1" in result.stdout


def test_an_unreachable_server_is_an_error_in_seconds(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    line = assert_store_error(*connect_in_process(uri), f"No MLflow tracking server answers at tracking.uri={uri}")
    assert "mlflow server" in line  # the fix


def test_a_folder_under_a_file_is_an_error_and_creates_nothing(tmp_path):
    (tmp_path / "data").write_text("not a folder")
    uri = f"sqlite:///{tmp_path / 'data' / 'mlruns' / 'mlflow.db'}"
    assert_store_error(*connect_in_process(uri), uri, f"{tmp_path / 'data'} is a file, not a folder")
    assert files_under(tmp_path) == ["data"]


def test_a_folder_as_the_database_is_an_error(tmp_path):
    (tmp_path / "mlruns").mkdir()
    uri = f"sqlite:///{tmp_path / 'mlruns'}"
    assert_store_error(*connect_in_process(uri), f"{tmp_path / 'mlruns'} is a folder", "mlruns/mlflow.db")
    assert files_under(tmp_path) == ["mlruns"]


# Kernel filesystems, where no file can be created whatever the permissions say (root's os.access says "writable").
CANNOT_EXIST = {
    "sqlite:////proc/nonexistent/mlflow.db": "/proc/nonexistent is not a folder lrsweep can create (/proc is",
    "sqlite:////proc/x.db": "no store can be in /proc (/proc is the kernel's proc filesystem",
    "sqlite:////proc/self/x.db": "(/proc is the kernel's proc filesystem",
    "sqlite:////proc/self/fd/x.db": "(/proc is the kernel's proc filesystem",
    "sqlite:////sys/x.db": "no store can be in /sys (/sys is the kernel's sysfs filesystem",
}
EACH = """
import sys, time
from lrsweep import tracking
from lrsweep.core.errors import StoreError
for uri in sys.argv[1:]:
    started = time.monotonic()
    try:
        tracking.connect(uri, "lrsweep")
        print(f"connected {uri}")
    except StoreError as e:
        print(f"{time.monotonic() - started:.3f} lrsweep: {e}")
"""


def test_a_store_path_that_cannot_exist_is_one_line_naming_the_value_and_the_fix():
    result = subprocess.run(
        [sys.executable, "-c", EACH, *CANNOT_EXIST], capture_output=True, text=True, timeout=120, env=ENV
    )
    lines = result.stdout.splitlines()
    print(result.stdout)
    assert len(lines) == len(CANNOT_EXIST) and result.stderr.count("\n") < 3, result.stdout + result.stderr
    assert "retried" not in result.stderr and "Traceback" not in result.stderr  # MLflow never tried to open it
    for line, (uri, why) in zip(lines, CANNOT_EXIST.items(), strict=True):
        seconds, message = line.split(" ", 1)
        assert message.startswith(f"lrsweep: `tracking.uri={uri}`: "), line  # the value as written, not /proc/1234
        assert why in message and message.endswith("Set `tracking.uri` to a writable path, e.g. "
                                                   "tracking.uri=sqlite:///mlruns/mlflow.db."), line  # fmt: skip
        assert "Restore" not in message and float(seconds) < 1  # no engine retries: the filesystem says it at once
    assert not Path("/proc/x.db").exists() and not Path("/proc/nonexistent").exists()


def unprivileged() -> tuple[str, ...]:
    """A command prefix that runs a process without root's right to write anywhere, or skips the test.

    First a real non-root user (nobody). Where nobody cannot run this Python (here it lives under /root, mode
    700), root without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH: it is still the owner of /root, but file
    permissions apply to it like to anyone else.
    """
    candidates = [
        ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"),
        ("runuser", "-u", "nobody", "--"),
        ("setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search,-fowner"),
    ]
    probe = tempfile.mkdtemp()
    try:
        os.chmod(probe, 0o555)
        code = f"import os; from lrsweep import tracking; os.mkdir({os.path.join(probe, 'x')!r})"
        reasons = []
        for prefix in candidates:
            if shutil.which(prefix[0]) is None:
                reasons.append(f"{prefix[0]} not installed")
                continue
            result = subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True, text=True, env=ENV)
            if "PermissionError" in result.stderr and f"{probe}/x" in result.stderr:
                return prefix  # runs our Python and is refused a write into a read-only folder
            reasons.append(f"{' '.join(prefix)}: {(result.stderr.strip().splitlines() or ['writes anyway'])[-1]}")
        pytest.skip("cannot drop the right to write anywhere: " + "; ".join(reasons))
    finally:
        os.chmod(probe, 0o755)
        shutil.rmtree(probe)


@pytest.fixture
def shared_tmp():
    """A folder the unprivileged process can enter (pytest's tmp_path is under a root-only folder)."""
    folder = Path(tempfile.mkdtemp(prefix="lrsweep-store-"))
    folder.chmod(0o755)
    yield folder
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    shutil.rmtree(folder)


def test_an_unwritable_store_folder_is_an_error_in_seconds_and_creates_nothing(shared_tmp, real_store):
    prefix = unprivileged()
    locked = shared_tmp / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    # The store's folder to be created inside a folder the user cannot write.
    uri = f"sqlite:///{locked / 'mlruns' / 'mlflow.db'}"
    line = assert_store_error(*connect_in_process(uri, prefix=prefix, cwd=shared_tmp), uri, str(locked), "chmod")
    assert "create the folder" in line
    # The store's folder exists and cannot be written (SQLite writes its journal there).
    uri = f"sqlite:///{locked / 'mlflow.db'}"
    assert_store_error(*connect_in_process(uri, prefix=prefix, cwd=shared_tmp), uri, str(locked), "chmod")
    assert files_under(locked) == []
    # A real store whose file cannot be written, in a folder that can.
    writable = shared_tmp / "store"
    writable.mkdir()
    writable.chmod(0o777)
    shutil.copy(real_store, writable / "mlflow.db")
    (writable / "mlflow.db").chmod(0o444)
    uri = f"sqlite:///{writable / 'mlflow.db'}"
    assert_store_error(*connect_in_process(uri, prefix=prefix, cwd=shared_tmp), uri, "is not writable")
    assert files_under(writable) == ["mlflow.db"]


@pytest.mark.parametrize("damage", ["garbage", "text", "truncated", "half-header"])
def test_a_file_that_is_not_an_intact_sqlite_database_is_an_error(tmp_path, real_store, damage):
    db = tmp_path / "mlflow.db"
    data = real_store.read_bytes()
    contents = {
        "garbage": os.urandom(4096),
        "text": b"experiment,run\n1,2\n",
        "truncated": data[: len(data) // 2],  # a copy cut short: a header that promises more pages
        "half-header": data[:10],
    }[damage]
    db.write_bytes(contents)
    uri = f"sqlite:///{db}"
    line = assert_store_error(*connect_in_process(uri), uri)
    expected = "is damaged: SQLite says 'database disk image is malformed'" if damage == "truncated" else (
        "is not a SQLite database"
    )  # fmt: skip
    assert expected in line
    assert db.read_bytes() == contents and files_under(tmp_path) == ["mlflow.db"]  # untouched


def set_revision(db: Path, revision: str) -> None:
    connection = sqlite3.connect(db)
    with connection:
        connection.execute("UPDATE alembic_version SET version_num = ?", (revision,))
    connection.close()


@pytest.mark.parametrize("which", ["newer", "older"])
def test_a_schema_of_another_mlflow_is_an_error_naming_the_fix(tmp_path, real_store, which):
    db = tmp_path / "mlflow.db"
    shutil.copy(real_store, db)
    head, known = mlflow_adapter.schema_revisions()
    revision = "0123456789ab" if which == "newer" else next(r for r in sorted(known) if r != head)
    set_revision(db, revision)
    uri = f"sqlite:///{db}"
    line = assert_store_error(*connect_in_process(uri), uri, f"schema revision {revision}")
    if which == "newer":
        assert "written by a newer MLflow" in line
    else:
        assert "older than MLflow" in line and f"`mlflow db upgrade {uri}`" in line
    assert files_under(tmp_path) == ["mlflow.db"]


def test_a_sqlite_database_of_another_program_is_an_error(tmp_path):
    db = tmp_path / "other.db"
    connection = sqlite3.connect(db)
    connection.execute("CREATE TABLE songs (title TEXT)")
    connection.close()
    assert_store_error(*connect_in_process(f"sqlite:///{db}"), "is a SQLite database but not an MLflow store", "songs")


# Imports first (slow), then all start connect at the same moment: the time in argv[2].
RACE = """
import sys, time
from lrsweep import tracking
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
client, experiment_id = tracking.connect(sys.argv[1], "lrsweep")
print("experiment", experiment_id)
"""


@pytest.mark.timeout(600)
def test_processes_racing_to_create_a_fresh_store_all_succeed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    start = time.time() + 15  # the imports of 4 processes on 2 busy cores
    processes = [
        subprocess.Popen([sys.executable, "-c", RACE, uri, str(start)], env=ENV, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(4)
    ]  # fmt: skip
    outputs = [p.communicate(timeout=300) for p in processes]
    for process, (out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err[-3000:]
        assert out.strip() == "experiment 1"
    client = MlflowClient(uri)
    assert sorted(e.name for e in client.search_experiments()) == ["Default", "lrsweep"]  # one lrsweep
    assert files_under(tmp_path) == ["mlruns", "mlruns/mlflow.db"]  # the lock was the folder: no lock file


def sweep(tmp_path: Path, name: str) -> subprocess.Popen | ForkedProcess:
    args = ["-m", f"tracking.uri=sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}", f"hydra.sweep.dir={tmp_path / name}",
            "backend=jax", "training.epochs=1", "training.verbose=0", "schedule=linear,constant", *TINY]  # fmt: skip
    return start_train_py(args, tmp_path, ENV)


@pytest.mark.timeout(1200)
def test_two_sweeps_started_together_on_a_fresh_store_both_complete_with_their_own_parent(tmp_path):
    processes = {name: sweep(tmp_path, name) for name in ("one", "two")}
    outputs = {name: p.communicate(timeout=900)[0] for name, p in processes.items()}
    client, experiment_id = tracking.connect(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}", "lrsweep")
    trained = []
    for name, process in processes.items():
        assert process.returncode == 0, outputs[name][-3000:]
        assert "already exists" not in outputs[name] and "duplicate column" not in outputs[name]
        assert f"Sweep {name}: 2 runs in 2 configurations" in outputs[name], outputs[name][-3000:]
        parent = tracking.find_sweep_run(client, experiment_id, name)
        assert parent is not None and parent.info.status == "FINISHED"
        trained += [r.info.status for r in tracking.sweep_runs(client, experiment_id, name)
                    if r.data.tags.get(tracking.TAG_ROLE) == "job"]  # fmt: skip
    assert trained == ["FINISHED"] * 2  # each configuration once, by one sweep or the other (claims), reused by both


def test_http_settings_are_checked_and_give_the_bound():
    assert store.http_call_bound(10, 2) == 33  # 3 tries of 10 s, waits 0 and 2 + 1 s jitter
    assert store.http_call_bound(10, 0) == 10
    assert store.http_call_bound(60, 5) == 6 * 60 + (2 + 4 + 8 + 16) + 4
    with pytest.raises(ValueError, match=r"`tracking.http_timeout` .* Received: tracking.http_timeout=0"):
        store.http_settings(0, 2)
    with pytest.raises(ValueError, match=r"Received: tracking.http_max_retries=11"):
        store.http_settings(10, 11)


# A "server" that accepts connections and never answers (a hung process, SIGSTOPped): every request times out.
HUNG = """
import socket, sys, time
from mlflow.tracking import MlflowClient
from lrsweep.tracking import mlflow_adapter, store
listener = socket.create_server(("127.0.0.1", 0))
uri = f"http://127.0.0.1:{listener.getsockname()[1]}"
store.http_settings(timeout=2, max_retries=1)
client = MlflowClient(uri)
for label, block in (("call", store.contextlib.nullcontext()), ("one_try", store.one_try(timeout=1))):
    started = time.monotonic()
    try:
        with block:
            client.get_experiment_by_name("lrsweep")
    except Exception as e:
        error = store.as_store_error(e, uri)
        print(label, round(time.monotonic() - started, 2), uri in str(error), type(error).__name__)
"""


def test_a_hung_server_fails_a_call_within_the_bound_and_is_a_store_error():
    result = subprocess.run([sys.executable, "-c", HUNG], capture_output=True, text=True, timeout=300, env=ENV)
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()}
    assert set(rows) == {"call", "one_try"}, result.stdout + result.stderr[-3000:]
    call, one = float(rows["call"][0]), float(rows["one_try"][0])
    assert rows["call"][1:] == rows["one_try"][1:] == ["True", "StoreError"]  # names the URI
    # 2 tries of 2 s (timeouts cannot fire early), no wait before the first retry; one_try: 1 try of 1 s.
    assert store.http_call_bound(2, 1) * 0.9 <= call < 3 * store.http_call_bound(2, 1)
    assert 0.9 <= one < 10


def stop(server: subprocess.Popen, signum: int = signal.SIGTERM) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signum)
        server.wait(timeout=60)


def single_run(tmp_path: Path, uri: str, epochs: int) -> subprocess.Popen | ForkedProcess:
    args = [f"tracking.uri={uri}", f"hydra.run.dir={tmp_path / 'outputs'}", "backend=jax", f"training.epochs={epochs}",
            "training.verbose=0", *TINY]  # fmt: skip
    return start_train_py(args, tmp_path, ENV)


@pytest.mark.timeout(1200)
def test_a_server_killed_mid_job_ends_the_job_in_bounded_time_and_a_rerun_leaves_nothing_running(tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_server(tmp_path, port)
    try:
        job = single_run(tmp_path, uri, epochs=2000)
        client = MlflowClient(uri)

        def training():
            experiment = client.get_experiment_by_name("lrsweep")
            runs = client.search_runs([experiment.experiment_id]) if experiment else []
            return runs[0] if runs and "loss" in runs[0].data.metrics else None

        running = wait_for(training, timeout=300, what="the job logging epochs")
        stop(server, signal.SIGKILL)  # dies: no shutdown
        killed = time.monotonic()
        output, _ = job.communicate(timeout=600)
        seconds = time.monotonic() - killed
        print(f"job exited {job.returncode} {seconds:.1f} s after the server died")
        assert job.returncode == 1
        assert f"lrsweep: The MLflow tracking server at tracking.uri={uri} stopped answering" in output
        assert "Traceback" not in output, output[-3000:]
        # Designed: a refused call gives up after 0 + 3 s of waits, the job makes at most a few more (closing its
        # run). MLflow's defaults took 13+ minutes. A bound, not a benchmark.
        assert seconds < 3 * store.http_call_bound(), output[-3000:]

        # The job's run could not be closed while the server was down: RUNNING until the next run marks it stale.
        server = start_server(tmp_path, port)
        assert client.get_run(running.info.run_id).info.status == "RUNNING"
        rerun = single_run(tmp_path, uri, epochs=1)
        output, _ = rerun.communicate(timeout=600)
        assert rerun.returncode == 0, output[-3000:]
        stale = client.get_run(running.info.run_id)
        assert stale.info.status == "KILLED" and stale.data.tags[tracking.TAG_STALE] == "true"
        experiment_id = client.get_experiment_by_name("lrsweep").experiment_id
        assert "RUNNING" not in {r.info.status for r in client.search_runs([experiment_id])}
    finally:
        stop(server)
