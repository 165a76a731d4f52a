"""Sweeps that survive: real faults (divergence, SIGINT/SIGTERM/SIGKILL, a dead server) and resume."""

from __future__ import annotations

import concurrent.futures
import csv
import os
import re
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from lrsweep import tracking
from scripts import tracking_server
from scripts.tracking_server import free_port
from tests.conftest import TINY, ForkedProcess, job_runs, seed_store, start_train_py, store, train

EPOCH_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "lr")


def logged_epochs(client: MlflowClient, run) -> list[int]:
    """The epochs a run logged, checking that every per-epoch metric has exactly those steps."""
    steps = {key: sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) for key in EPOCH_KEYS}
    assert len({tuple(s) for s in steps.values()}) == 1, steps
    return steps["loss"]


DIVERGE = ["optimizer=sgd", "optimizer.learning_rate=0.01,1e9,0.02", "training.epochs=2", "backend=jax", *TINY]


@pytest.mark.timeout(600)
def test_a_diverging_job_fails_alone_and_the_rerun_skips_finished_work(tmp_path):
    result = train(tmp_path, *DIVERGE, check=False)
    assert result.returncode == 1  # the exit status says something failed
    assert "Traceback" not in result.stdout + result.stderr  # one line from lrsweep, no frames from Hydra
    assert "lrsweep: training diverged in epoch 0" in result.stderr, result.stderr[-2000:]
    client, experiment_id = store(tmp_path)
    runs = job_runs(client, experiment_id)
    statuses = {name: run.info.status for name, run in runs.items()}
    diverged = "s0 · learning_rate=1000000000.0 · sgd-constant"
    assert statuses == {
        "s0 · learning_rate=0.01 · sgd-constant": "FINISHED",
        diverged: "FAILED",
        "s0 · learning_rate=0.02 · sgd-constant": "FINISHED",
    }
    error = runs[diverged].data.tags[tracking.TAG_ERROR]
    assert error.startswith("DivergedError: training diverged in epoch 0 (by batch ")
    assert logged_epochs(client, runs[diverged]) == [0]  # stopped at once, its metrics up to that point kept
    for name in statuses.keys() - {diverged}:
        assert logged_epochs(client, runs[name]) == [0, 1]
    assert f"not finished: {diverged} (FAILED)" in result.stdout
    parent = tracking.find_sweep_run(client, experiment_id, "multirun")
    assert parent.info.status == "FAILED"

    # Same command again (a new sweep folder, as a new run of it would get): only the failed job trains again.
    again = train(tmp_path, *DIVERGE, "hydra.sweep.dir=" + str(tmp_path / "again"), check=False)
    assert again.returncode == 1
    assert (again.stdout + again.stderr).count("Skipped: this configuration already FINISHED") == 2
    assert "2 already finished before, reused" in again.stdout
    rerun = job_runs(client, experiment_id, "again")
    assert list(rerun) == [diverged] and rerun[diverged].info.status == "FAILED"
    with open(tmp_path / "again" / "report" / "runs.csv") as f:
        assert sum(row["reused"] == "True" for row in csv.DictReader(f)) == 2  # the report includes the reused runs
    with open(tmp_path / "again" / "report" / "summary.csv") as f:
        rows = {row["learning_rate"]: row for row in csv.DictReader(f)}  # reused runs under this sweep's overrides
    assert {k: (v["n"], v["failed"], v["reused"]) for k, v in rows.items()} == {
        "0.01": ("1", "0", "1"), "0.02": ("1", "0", "1"), "1000000000.0": ("0", "1", "0"),
    }  # fmt: skip

    # resume=false forces a full rerun.
    train(tmp_path, *DIVERGE, "resume=false", "hydra.sweep.dir=" + str(tmp_path / "forced"), check=False)
    assert len(job_runs(client, experiment_id, "forced")) == 3


@pytest.mark.timeout(600)
def test_a_job_trained_alone_in_a_packed_sweep_that_diverges_is_one_line_too(tmp_path):
    """Different batch sizes never share a pack: each job trains alone, inside its Hydra job, and fails as one line."""
    result = train(tmp_path, "optimizer=sgd", "optimizer.learning_rate=1e9", "training.epochs=1",
                   "training.verbose=0", "backend=jax", *TINY, "training.batch_size=32,64", check=False)  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr, result.stderr[-3000:]
    assert "lrsweep: training diverged in epoch 0" in result.stderr, result.stderr[-3000:]
    client, experiment_id = store(tmp_path)
    runs = job_runs(client, experiment_id)
    assert len(runs) == 2 and {r.info.status for r in runs.values()} == {"FAILED"}
    assert not any(tracking.TAG_PACK in r.data.tags for r in runs.values())  # trained alone


def wait_for(predicate, timeout: float = 120.0, what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def start_train(tmp_path: Path, *overrides: str, multirun: bool = True) -> subprocess.Popen | ForkedProcess:
    """`python train.py [-m] ...` started, its output read as it comes; in a process group of its own, so that a
    signal to the group (what a terminal's Ctrl-C does) spares pytest. Forked from a fork server (`start_train_py`)."""
    if not any(o.startswith("tracking.uri=") for o in overrides):
        seed_store(tmp_path / "mlruns" / "mlflow.db")  # made from a template, as by `train`
    args = ["-m"] if multirun else []
    args += [f"tracking.uri=sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}", f"hydra.sweep.dir={tmp_path / 'multirun'}",
             f"hydra.run.dir={tmp_path / 'outputs'}", "backend=jax", "training.verbose=0", *TINY,
             *overrides]  # fmt: skip
    return start_train_py(args, tmp_path)


def running_run_with_epochs(tmp_path: Path, epochs: int = 400):
    """A RUNNING job run of `training.epochs=epochs` that has logged at least one epoch.

    Read with plain read-only SQL: opening the store with MLflow while the sweep is still creating its tables
    would race on that creation.
    """
    db = tmp_path / "mlruns" / "mlflow.db"
    if not db.exists():
        return None
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = connection.execute(
            "SELECT r.run_uuid FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
            f"AND t.key = '{tracking.TAG_ROLE}' AND t.value = 'job' WHERE r.status = 'RUNNING' "
            "AND EXISTS (SELECT 1 FROM metrics m WHERE m.run_uuid = r.run_uuid AND m.key = 'loss') "
            "AND EXISTS (SELECT 1 FROM params p WHERE p.run_uuid = r.run_uuid AND p.key = 'training.epochs' "
            f"AND p.value = '{epochs}')"
        ).fetchone()
    except sqlite3.OperationalError:  # tables not created yet
        return None
    finally:
        connection.close()
    return store(tmp_path)[0].get_run(row[0]) if row else None


@pytest.mark.timeout(600)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_kills_the_running_job_keeps_finished_ones_and_stops_the_sweep(tmp_path, signum):
    # Job 0 is short and finishes; job 1 is long and gets the signal; job 2 must never start.
    process = start_train(tmp_path, "training.epochs=2,400,3")
    wait_for(lambda: running_run_with_epochs(tmp_path), what="the long job running")
    process.send_signal(signum)
    output, _ = process.communicate(timeout=120)
    assert process.returncode != 0
    client, experiment_id = store(tmp_path)
    all_runs = client.search_runs([experiment_id])
    assert "RUNNING" not in {r.info.status for r in all_runs}
    jobs = {r.data.params["training.epochs"]: r for r in all_runs if r.data.tags[tracking.TAG_ROLE] == "job"}
    assert set(jobs) == {"2", "400"}  # the third job never started
    assert jobs["2"].info.status == "FINISHED" and logged_epochs(client, jobs["2"]) == [0, 1]
    killed = jobs["400"]
    assert killed.info.status == "KILLED"
    epochs = logged_epochs(client, killed)
    assert epochs == list(range(len(epochs))) and 1 <= len(epochs) < 400  # only completed epochs, none twice
    parent = tracking.find_sweep_run(client, experiment_id, "multirun")
    assert parent.info.status == "KILLED"
    assert "interrupted" in output


@pytest.mark.timeout(600)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_stops_a_pack_in_one_line_with_the_signals_exit_status(tmp_path, signum):
    """The default launcher trains both jobs as one pack: the signal ends both runs KILLED, and the sweep says so in
    one line with the status a shell gives a process that signal ended (130, 143), as a single run does."""
    process = start_train(tmp_path, "training.epochs=400", "optimizer.learning_rate=0.001,0.002")
    wait_for(lambda: running_run_with_epochs(tmp_path), what="the pack running")
    process.send_signal(signum)
    output, _ = process.communicate(timeout=120)
    name = signal.Signals(signum).name
    assert process.returncode == 128 + signum, output[-3000:]
    assert "Traceback" not in output and f"lrsweep: stopped: received {name}" in output, output[-3000:]
    client, experiment_id = store(tmp_path)
    runs = [r for r in client.search_runs([experiment_id]) if r.data.tags[tracking.TAG_ROLE] == "job"]
    assert len(runs) == 2 and {r.data.tags[tracking.TAG_PACK] for r in runs} == {"multirun/pack1"}
    for run in runs:
        assert run.info.status == "KILLED"
        epochs = logged_epochs(client, run)
        assert epochs == list(range(len(epochs))) and 1 <= len(epochs) < 400
    assert tracking.find_sweep_run(client, experiment_id, "multirun").info.status == "KILLED"


@pytest.mark.timeout(600)
def test_a_rerun_after_a_crash_reports_the_rerun_not_the_crash(tmp_path):
    """SIGKILL while the second pack trains, then the same command in the same sweep folder: the rerun reuses the
    finished pack, trains the other again, and its parent run, summary and runs.csv tell of that, FINISHED."""
    overrides = ["training.epochs=2,150", "optimizer.learning_rate=0.001,0.002"]
    process = start_train(tmp_path, *overrides)
    killed = wait_for(lambda: running_run_with_epochs(tmp_path, epochs=150), what="the second pack running")
    process.kill()
    process.wait(timeout=30)
    client, experiment_id = store(tmp_path)
    first_parent = tracking.find_sweep_run(client, experiment_id, "multirun")

    rerun = train(tmp_path, "backend=jax", "training.verbose=0", *TINY, *overrides,
                  "hydra.sweep.dir=" + str(tmp_path / "multirun"), check=False)  # fmt: skip
    output = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, output[-3000:]
    assert "2 run(s) of an earlier attempt in this sweep folder were run again" in output, output[-3000:]
    parent = tracking.find_sweep_run(client, experiment_id, "multirun")
    assert parent.info.run_id != first_parent.info.run_id and parent.info.status == "FINISHED"
    assert client.get_run(killed.info.run_id).info.status == "KILLED"  # kept in MLflow, marked stale
    with open(tmp_path / "multirun" / "report" / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {(row["n"], row["failed"]) for row in rows} == {("1", "0")}
    with open(tmp_path / "multirun" / "report" / "runs.csv") as f:
        listed = list(csv.DictReader(f))
    assert len(listed) == 4 and killed.info.run_id not in {row.get("run_id") for row in listed}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("to_group", [True, False], ids=["ctrl-c-to-all-processes", "sigterm-to-main-only"])
def test_parallel_jobs_stop_cleanly_on_an_interrupt(tmp_path, to_group):
    """With hydra/launcher=parallel, jobs run in worker processes: they stop at their next step too."""
    process = start_train(
        tmp_path, "hydra/launcher=parallel", "threads=1", "training.epochs=400", "training.seed=0,1,2,3"
    )
    wait_for(lambda: running_run_with_epochs(tmp_path), what="a running job")
    if to_group:
        os.killpg(process.pid, signal.SIGINT)
    else:
        process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=180)
    assert process.returncode != 0, output[-2000:]
    client, experiment_id = store(tmp_path)
    runs = client.search_runs([experiment_id])
    statuses = [r.info.status for r in runs if r.data.tags[tracking.TAG_ROLE] == "job"]
    assert "RUNNING" not in statuses and "KILLED" in statuses, statuses
    assert len(statuses) <= 2  # the jobs still queued never started
    for run in runs:
        if run.data.tags[tracking.TAG_ROLE] == "job":
            epochs = logged_epochs(client, run)
            assert epochs == list(range(len(epochs)))
    assert tracking.find_sweep_run(client, experiment_id, "multirun").info.status == "KILLED"


@pytest.mark.timeout(600)
def test_a_sigkilled_job_is_recognised_as_stale_and_rerun(tmp_path):
    process = start_train(tmp_path, "training.epochs=400")
    running = wait_for(lambda: running_run_with_epochs(tmp_path), what="a running job")
    process.kill()  # SIGKILL: no handler, no cleanup
    process.wait(timeout=30)
    client, experiment_id = store(tmp_path)
    assert client.get_run(running.info.run_id).info.status == "RUNNING"  # left behind, as SIGKILL does

    result = train(tmp_path, "backend=jax", "training.epochs=400", "training.verbose=0", *TINY,
                   "hydra.sweep.dir=" + str(tmp_path / "next"), "training.epochs=2")  # fmt: skip
    assert "Marked 2 stale run(s) KILLED" in result.stdout  # the job's run and the dead sweep's parent
    stale = client.get_run(running.info.run_id)
    assert stale.info.status == "KILLED" and stale.data.tags[tracking.TAG_STALE] == "true"
    assert "RUNNING" not in {r.info.status for r in client.search_runs([experiment_id])}


def start_server(tmp_path: Path, port: int) -> subprocess.Popen:
    """A real `mlflow server` on 127.0.0.1:`port` over the store tmp_path/server.db (the same store when started
    again), in its own session (`scripts/tracking_server.py`); returns once it answers. The store is made from a
    template (`seed_store`): the server's own migrations of a new database would take seconds."""
    seed_store(tmp_path / "server.db")
    server = tracking_server.mlflow_server(
        f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "art", port=port, workers=1, cwd=tmp_path,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    tracking_server.wait_healthy(f"http://127.0.0.1:{port}", server)
    return server


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on 127.0.0.1, with its own SQLite store and artifact folder."""
    port = free_port()
    server = start_server(tmp_path, port)
    yield f"http://127.0.0.1:{port}", server
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


@pytest.mark.timeout(900)
def test_a_sweep_logs_to_a_real_tracking_server_and_a_stopped_one_is_a_clear_error(tmp_path, mlflow_server):
    uri, server = mlflow_server
    result = train(tmp_path, "schedule=linear,constant", "training.epochs=2", "backend=jax", *TINY,
                   f"tracking.uri={uri}")  # fmt: skip
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name("lrsweep").experiment_id
    runs = job_runs(client, experiment_id, "multirun")
    assert set(runs) == {"s0 · adam-linear", "s0 · adam-constant"}
    assert {r.info.status for r in runs.values()} == {"FINISHED"}
    for run in runs.values():
        assert logged_epochs(client, run) == [0, 1]
    parent = tracking.find_sweep_run(client, experiment_id, "multirun")
    assert parent.info.status == "FINISHED"
    assert "report/summary.csv" in {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert "Sweep multirun: 2 runs in 2 configurations" in result.stdout  # read back over REST in bulk

    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)
    started = time.monotonic()
    failed = train(tmp_path, "training.epochs=1", "backend=jax", *TINY, f"tracking.uri={uri}",
                   "hydra.sweep.dir=" + str(tmp_path / "down"), check=False)  # fmt: skip
    assert failed.returncode == 1
    assert f"No MLflow tracking server answers at tracking.uri={uri}" in failed.stderr
    assert "Launching" not in failed.stdout + failed.stderr  # the sweep stops before any job starts
    assert "Epoch 1/1" not in failed.stdout + failed.stderr  # nothing trained
    assert time.monotonic() - started < 120  # not MLflow's minutes of retries (a bound, not a benchmark)


@pytest.mark.timeout(1200)
def test_a_server_that_dies_mid_sweep_stops_it_and_the_rerun_completes(tmp_path, mlflow_server):
    uri, server = mlflow_server
    # Two packs (data.test_size splits them), long enough to be caught training.
    sweep = ["training.epochs=60", "training.seed=0,1", "data.test_size=256,200", f"tracking.uri={uri}"]
    process = start_train(tmp_path, *sweep)
    client = MlflowClient(uri)

    def training_run():
        experiment = client.get_experiment_by_name("lrsweep")
        if experiment is None:
            return None
        runs = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING' and metrics.loss > 0")
        return runs[0] if runs else None

    running = wait_for(training_run, timeout=180, what="a job training")
    os.killpg(server.pid, signal.SIGKILL)
    server.wait(timeout=30)
    killed = time.monotonic()
    output, _ = process.communicate(timeout=300)
    took = time.monotonic() - killed
    print(f"the sweep ended {took:.1f} s after the server was killed")
    assert process.returncode == 1, output[-3000:]
    assert f"The MLflow tracking server at tracking.uri={uri} stopped answering" in output, output[-3000:]
    assert "The sweep stopped; jobs not finished: #" in output
    assert "Traceback" not in output, output[-3000:]
    assert took < 120  # MLflow's own retries would take minutes (tracking.http_timeout / http_max_retries)

    restarted = start_server(tmp_path, int(uri.rsplit(":", 1)[1]))
    try:
        assert client.get_run(running.info.run_id).info.status == "RUNNING"  # nobody could close it
        rerun = start_train(tmp_path, *sweep)
        output, _ = rerun.communicate(timeout=600)
        assert rerun.returncode == 0, output[-3000:]
        experiment_id = client.get_experiment_by_name("lrsweep").experiment_id
        runs = client.search_runs([experiment_id], f"tags.`{tracking.TAG_ROLE}` = 'job'")
        statuses = sorted(r.info.status for r in runs)
        assert "RUNNING" not in {r.info.status for r in client.search_runs([experiment_id])}
        assert statuses.count("FINISHED") == 4, statuses  # every configuration once
        assert client.get_run(running.info.run_id).data.tags[tracking.TAG_STALE] == "true"
    finally:
        os.killpg(restarted.pid, signal.SIGTERM)
        restarted.wait(timeout=30)


@pytest.mark.timeout(600)
def test_two_sweeps_claiming_the_same_folder_get_one_each(tmp_path):
    """The default sweep folder is per second (`${lrsweep.claim:multirun/<time>}`): two sweeps started in the same
    second must not share it, its sweep id, report and stop file. Here both name the same folder outright."""
    tracking.connect(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}", "lrsweep")  # the store exists (no race here)
    args = ["-m", f"tracking.uri=sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}",
            "hydra.sweep.dir=${lrsweep.claim:" + str(tmp_path / "multirun" / "same") + "}", "backend=jax",
            "training.epochs=1", "training.verbose=0", *TINY]  # fmt: skip
    sweeps = [start_train_py([*args, f"training.seed={seed}"], tmp_path) for seed in (0, 1)]
    outputs = [sweep.communicate(timeout=300)[0] for sweep in sweeps]
    assert [sweep.returncode for sweep in sweeps] == [0, 0], outputs
    assert sorted(p.name for p in (tmp_path / "multirun").iterdir()) == ["same", "same_2"]
    client, experiment_id = store(tmp_path)
    seeds = {}
    for sweep_id in ("same", "same_2"):
        assert (tmp_path / "multirun" / sweep_id / "report" / "summary.csv").exists()
        assert tracking.find_sweep_run(client, experiment_id, sweep_id).info.status == "FINISHED"
        (run,) = job_runs(client, experiment_id, sweep_id).values()
        seeds[sweep_id] = run.data.params["training.seed"]
    assert sorted(seeds.values()) == ["0", "1"]  # each sweep's report holds its own job only


WAITING = re.compile(r"(\d+) configurations? (?:is|are) being trained by another live process \(pid (\d+)\)")


def summary_row(sweep_dir: Path) -> dict[str, str]:
    with open(sweep_dir / "report" / "summary.csv") as f:
        (row,) = csv.DictReader(f)
    return row


def all_job_runs(client: MlflowClient, experiment_id: str) -> list:
    """Every job run of every sweep (`job_runs` keys them by name, which two sweeps of the same jobs share)."""
    return client.search_runs([experiment_id], f"tags.`{tracking.TAG_ROLE}` = 'job'")


@pytest.mark.timeout(600)
def test_two_identical_sweeps_at_once_train_each_configuration_once(tmp_path):
    """Started at the same instant on one fresh store: each configuration is trained by one of them while the other
    waits for it (one line naming the pid training it) and reuses its run; both end with the whole sweep."""
    args = ["backend=jax", "training.epochs=1", "training.verbose=0", *TINY, "training.seed=0,1"]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        started = [pool.submit(train, tmp_path, *args, f"hydra.sweep.dir={tmp_path / name}", check=False,
                               fresh_store=True) for name in ("a", "b")]  # fmt: skip
        results = [future.result() for future in started]
    outputs = [result.stdout + result.stderr for result in results]
    assert [result.returncode for result in results] == [0, 0], [output[-3000:] for output in outputs]
    client, experiment_id = store(tmp_path)
    runs = all_job_runs(client, experiment_id)
    seeds = sorted((r.data.params["training.seed"], r.info.status) for r in runs)
    assert seeds == [("0", "FINISHED"), ("1", "FINISHED")]
    assert len({r.data.tags[tracking.TAG_CONFIG_HASH] for r in runs}) == 2
    waits = [match for output in outputs for match in WAITING.findall(output)]
    assert sum(int(count) for count, _ in waits) == 2, outputs  # each configuration waited for by the other sweep
    trainers = {r.data.tags[tracking.TAG_PROCESS].partition(":")[0] for r in runs}
    assert {pid for _, pid in waits} <= trainers
    for name, output in zip(("a", "b"), outputs, strict=True):
        assert f"Sweep {name}: 2 runs in 1 configurations" in output, output[-3000:]
        assert tracking.find_sweep_run(client, experiment_id, name).info.status == "FINISHED"
        with open(tmp_path / name / "report" / "runs.csv") as f:
            assert {row["run_id"] for row in csv.DictReader(f)} == {r.info.run_id for r in runs}
    rows = [summary_row(tmp_path / name) for name in ("a", "b")]
    assert [(row["n"], row["failed"]) for row in rows] == [("2", "0"), ("2", "0")]
    assert sum(int(row["reused"]) for row in rows) == 2  # each run trained by one sweep, reused by the other


@pytest.mark.timeout(600)
def test_a_configuration_whose_trainer_is_sigkilled_is_trained_by_the_sweep_waiting_for_it(tmp_path):
    """Two identical sweeps at once; the one training is SIGKILLed while the other waits for it: the kernel drops
    its claims, and the waiting sweep ends its runs KILLED (stale), trains both configurations itself, exit 0."""
    overrides = ["training.epochs=30", "training.seed=0,1"]
    sweeps = {name: start_train(tmp_path, *overrides, f"hydra.sweep.dir={tmp_path / name}") for name in ("a", "b")}
    lines: dict[str, list[str]] = {name: [] for name in sweeps}
    readers = [threading.Thread(target=lambda n=name: lines[n].extend(sweeps[n].stdout)) for name in sweeps]
    for reader in readers:
        reader.start()

    def waiting() -> tuple[str, int] | None:
        for name, got in lines.items():
            for line in list(got):
                if match := WAITING.search(line):
                    return name, int(match.group(2))
        return None

    waiter, pid = wait_for(waiting, what="a sweep waiting for the other")
    (holder,) = set(sweeps) - {waiter}
    assert pid == sweeps[holder].pid
    wait_for(lambda: running_run_with_epochs(tmp_path, epochs=30), what="the other sweep training")
    sweeps[holder].kill()  # SIGKILL: its runs stay RUNNING, the kernel drops its claims
    assert sweeps[holder].wait(timeout=30) == -signal.SIGKILL
    assert sweeps[waiter].wait(timeout=300) == 0
    for reader in readers:
        reader.join(timeout=30)
    output = "".join(lines[waiter])
    client, experiment_id = store(tmp_path)
    runs = all_job_runs(client, experiment_id)
    assert sorted((r.data.tags[tracking.TAG_SWEEP_ID], r.data.params["training.seed"], r.info.status) for r in runs) \
        == sorted([(holder, "0", "KILLED"), (holder, "1", "KILLED"), (waiter, "0", "FINISHED"),
                   (waiter, "1", "FINISHED")]), output[-3000:]  # fmt: skip
    for run in runs:
        if run.info.status == "KILLED":
            assert run.data.tags[tracking.TAG_STALE] == "true"
        else:
            assert logged_epochs(client, run) == list(range(30))
    assert output.count("was left RUNNING by a process that is gone: marked KILLED (stale)") == 3  # 2 jobs, parent
    assert tracking.find_sweep_run(client, experiment_id, holder).info.status == "KILLED"
    assert tracking.find_sweep_run(client, experiment_id, waiter).info.status == "FINISHED"
    row = summary_row(tmp_path / waiter)
    assert (row["n"], row["failed"], row["reused"]) == ("2", "0", "0")
