"""The parent run of a sweep tells the truth: jobs left RUNNING by a dead worker, jobs that never started and a full
disk make it FAILED, say so, and the same command run again completes the sweep."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from mlflow.entities import Metric

from lrsweep import tracking
from lrsweep.sweep import Sweep, settle_running, store_failure_message
from tests.conftest import ROOT, job_runs, store
from tests.sweep.test_faults import running_run_with_epochs, start_train, wait_for


def dead_process_token() -> str:
    """The `lrsweep.process` token of a process that has exited (started, then SIGKILLed and reaped)."""
    process = subprocess.Popen(["sleep", "60"])
    token = tracking.process_token(process.pid)
    process.kill()
    process.wait()
    return token


def make_sweep(tmp_path: Path) -> Sweep:
    """A sweep's parent run in a real SQLite store in tmp_path, as `Sweep.open` makes it, without a Hydra config."""
    client, experiment_id = tracking.connect(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}", "lrsweep")
    sweep_dir = str(tmp_path / "multirun")
    tags = {**tracking.sweep_tags(sweep_dir), **tracking.owner_tags(), tracking.TAG_ROLE: "sweep"}
    parent = client.create_run(experiment_id, run_name="sweep-multirun", tags=tags)
    return Sweep(client, experiment_id, sweep_dir, parent.info.run_id)


def add_job_run(sweep: Sweep, num: int, status: str, process: str) -> str:
    """A job run of the sweep with a final val_accuracy, left in `status`, owned by `process` on this host."""
    tags = {
        **tracking.sweep_tags(str(sweep.sweep_dir)),
        tracking.TAG_ROLE: "job",
        tracking.TAG_JOB_NUM: str(num),
        tracking.TAG_OVERRIDES: json.dumps({"training.seed": str(num)}),
        tracking.TAG_PARENT: sweep.run_id,
        tracking.TAG_HOST: socket.gethostname(),
        tracking.TAG_PROCESS: process,
    }
    run_id = sweep.client.create_run(sweep.experiment_id, run_name=f"s{num} · adam-constant", tags=tags).info.run_id
    sweep.client.log_batch(run_id, metrics=[Metric("val_accuracy", 0.5 + num / 100, 0, 0)])
    if status != "RUNNING":
        sweep.client.set_terminated(run_id, status)
    return run_id


def test_close_marks_a_dead_process_run_stale_and_names_the_jobs_that_never_started(tmp_path, capsys):
    sweep = make_sweep(tmp_path)
    finished = add_job_run(sweep, 0, "FINISHED", dead_process_token())
    orphan = add_job_run(sweep, 1, "RUNNING", dead_process_token())
    sweep.expected_jobs = 4  # jobs #2 and #3 never opened a run
    sweep.close()

    client = sweep.client
    parent = client.get_run(sweep.run_id)
    assert parent.info.status == "FAILED"
    assert parent.data.tags[tracking.TAG_NEVER_STARTED] == "2,3"
    expected = (
        "not finished: job #1 (s1 · adam-constant) left RUNNING by a process that died: marked stale, rerun it "
        "with the same command; jobs #2, #3 never started"
    )
    assert parent.data.tags[tracking.TAG_ERROR] == expected
    assert expected in capsys.readouterr().out
    stale = client.get_run(orphan)
    assert stale.info.status == "KILLED" and stale.data.tags[tracking.TAG_STALE] == "true"
    untouched = client.get_run(finished)
    assert untouched.info.status == "FINISHED" and tracking.TAG_STALE not in untouched.data.tags
    assert parent.data.metrics["sweep/failed"] == 3  # the stale run and the two jobs that never started


def test_close_counts_reused_and_failed_before_run_jobs_as_started(tmp_path, capsys):
    sweep = make_sweep(tmp_path)
    add_job_run(sweep, 0, "FINISHED", tracking.owner_tags()[tracking.TAG_PROCESS])
    sweep.client.set_tag(sweep.run_id, f"{tracking.TAG_REUSED_PREFIX}1", json.dumps({"run_id": "x", "overrides": {}}))
    sweep.expected_jobs = 2
    sweep.close()
    assert sweep.client.get_run(sweep.run_id).info.status == "FINISHED"
    assert "not finished" not in capsys.readouterr().out

    again = make_sweep(tmp_path / "b")
    add_job_run(again, 0, "FINISHED", tracking.owner_tags()[tracking.TAG_PROCESS])
    again.client.set_tag(again.run_id, f"{tracking.TAG_FAILED_JOB_PREFIX}1", "ValueError: bad")
    again.expected_jobs = 2
    again.close()
    parent = again.client.get_run(again.run_id)
    assert parent.info.status == "FAILED" and tracking.TAG_NEVER_STARTED not in parent.data.tags
    assert "not finished: job #1 before opening a run (ValueError: bad)" in capsys.readouterr().out


def test_a_run_whose_process_is_still_alive_is_not_marked_stale_but_fails_the_sweep(tmp_path):
    sweep = make_sweep(tmp_path)
    alive = subprocess.Popen(["sleep", "60"])
    try:
        run_id = add_job_run(sweep, 0, "RUNNING", tracking.process_token(alive.pid))
        started = time.monotonic()
        settled = settle_running(sweep.client, tracking.sweep_runs(sweep.client, sweep.experiment_id, "multirun"), 1.0)
        assert 1.0 <= time.monotonic() - started < 30  # waited its grace, then gave up on it
        assert settled.running == {run_id: f"by process {alive.pid}, still alive 1 s after the sweep's jobs ended"}
        assert settled.stale == {}
        assert sweep.client.get_run(run_id).info.status == "RUNNING"
    finally:
        alive.kill()
        alive.wait()


def test_store_failure_message_names_the_path_only_for_a_full_disk():
    full = OSError(28, "No space left on device", "/data/mlruns/lrsweep/abc/artifacts/config.yaml")
    message = store_failure_message(full, "sqlite:////data/mlruns/mlflow.db")
    assert message.startswith("The disk is full at /data/mlruns/lrsweep/abc/artifacts/config.yaml")
    assert "tracking.uri=sqlite:////data/mlruns/mlflow.db" in message and "rerun the same command" in message
    report = OSError(28, "No space left on device", "/home/me/multirun/report/runs.csv")
    message = store_failure_message(report, "sqlite:////data/mlruns/mlflow.db")
    assert message.startswith("The disk is full at /home/me/multirun/report/runs.csv")
    assert "KiB free: the sweep cannot write its files there" in message
    copy = OSError(28, "No space left on device", "/home/me/multirun/report/runs.csv")
    copy.filename2 = "/data/mlruns/lrsweep/abc/artifacts/report/runs.csv"  # what shutil.copyfile raises
    message = store_failure_message(copy, "sqlite:////data/mlruns/mlflow.db")
    assert message.startswith("The disk is full at /data/mlruns/lrsweep/abc/artifacts/report/runs.csv, ")
    assert "KiB free: the MLflow store tracking.uri=sqlite:////data/mlruns/mlflow.db cannot record" in message
    assert store_failure_message(ValueError("loss became nan"), "sqlite:////data/mlflow.db") is None
    assert store_failure_message(OSError(13, "Permission denied"), "sqlite:////data/mlflow.db") is None


HELD = """
import logging, sys
from lrsweep import sweep, tracking
from lrsweep.tracking.disk_full import ENGINE_RETRY, MLFLOW_ASYNC_LOGGER, MLFLOW_DB_LOGGER
from lrsweep.core.held_back import HeldBack
loggers = [logging.getLogger(name) for name in (MLFLOW_DB_LOGGER, MLFLOW_ASYNC_LOGGER)]
print(sum(len(logger.filters) for logger in loggers))
for _ in range(2):
    tracking.connect(sys.argv[1], "lrsweep")
print(*(sum(isinstance(f, HeldBack) for f in logger.filters) for logger in loggers))
logging.getLogger().addHandler(logging.FileHandler(sys.argv[2]))  # as Hydra's job log
db, background = loggers
def record(logger, level, message, error=None):
    made = logging.LogRecord(logger.name, level, "", 0, message, None, None)
    if error is not None:
        try:
            raise error
        except OSError:
            made.exc_info = sys.exc_info()
    return made
print(db.filter(record(db, logging.ERROR, "held: full", OSError(28, "No space left on device"))),
      db.filter(record(db, logging.WARNING, ENGINE_RETRY + ". held: retry")),
      background.filter(record(background, logging.ERROR, "Run Id x: held: database or disk is full")),
      db.filter(record(db, logging.ERROR, "shown")), background.filter(record(background, logging.ERROR, "shown")))
"""


def test_mlflows_disk_full_and_retry_logs_go_to_the_log_file_once_connected(store_uri, tmp_path):
    log_file = tmp_path / "train.log"
    result = subprocess.run(
        [sys.executable, "-c", HELD, store_uri, str(log_file)], capture_output=True, text=True, timeout=120,
        check=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    # None on import; one per logger, however often connected; the held records are dropped from the console...
    assert result.stdout.split() == ["0", "1", "1", "False", "False", "False", "True", "True"]
    assert "held" not in result.stderr
    # ... and kept in the log file, the others left to MLflow's handlers
    assert log_file.read_text().count("held: ") == 3 and "shown" not in log_file.read_text()


@pytest.fixture
def started():
    """Collects the sweeps a test starts, and kills any still running when it ends (a failed assertion)."""
    processes: list[subprocess.Popen] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


# Long enough to be caught running (an epoch of the tiny data takes a fraction of a second), short enough to rerun.
LONG = 60
SEEDS = ("hydra/launcher=parallel", "threads=1", f"training.epochs={LONG}", "training.seed=0,1,2,3")


@pytest.mark.timeout(1200)
def test_a_sigkilled_parallel_worker_fails_the_sweep_and_the_same_command_completes_it(tmp_path, started):
    process = start_train(tmp_path, *SEEDS)
    started.append(process)
    running = wait_for(lambda: running_run_with_epochs(tmp_path, LONG), what="a running job")
    killed_at = time.monotonic()
    os.kill(int(running.data.tags[tracking.TAG_PROCESS].partition(":")[0]), signal.SIGKILL)  # the joblib worker
    output, _ = process.communicate(timeout=300)
    print(f"exit {process.returncode} {time.monotonic() - killed_at:.1f} s after the SIGKILL\n{output[-3000:]}")
    assert process.returncode != 0
    client, experiment_id = store(tmp_path)
    parent = tracking.find_sweep_run(client, experiment_id, "multirun")
    assert parent.info.status == "FAILED"
    runs = job_runs(client, experiment_id, "multirun")
    assert "RUNNING" not in {run.info.status for run in runs.values()}
    killed = client.get_run(running.info.run_id)
    assert killed.info.status == "KILLED" and killed.data.tags[tracking.TAG_STALE] == "true"
    num = killed.data.tags[tracking.TAG_JOB_NUM]
    job = re.escape(f"#{num} ({killed.info.run_name})")  # with the others of the same reason, if any: said once
    said = rf"jobs? [^;]*{job}[^;]* left RUNNING by a process that died: marked stale, rerun (it|them) with the same"
    assert re.search(said, output)
    never = [n for n in range(4) if str(n) not in {r.data.tags[tracking.TAG_JOB_NUM] for r in runs.values()}]
    assert never  # two workers: at most two of the four jobs had started
    assert parent.data.tags[tracking.TAG_NEVER_STARTED] == ",".join(map(str, never))
    assert f"{', '.join(f'#{n}' for n in never)} never started" in output
    assert parent.data.tags[tracking.TAG_ERROR] in output

    again = start_train(tmp_path, *SEEDS, f"hydra.sweep.dir={tmp_path / 'again'}")  # a new run of the same command
    started.append(again)
    output, _ = again.communicate(timeout=600)
    assert again.returncode == 0, output[-3000:]
    assert tracking.find_sweep_run(client, experiment_id, "again").info.status == "FINISHED"
    jobs = client.search_runs([experiment_id], f"tags.`{tracking.TAG_ROLE}` = 'job'")
    assert "RUNNING" not in {run.info.status for run in jobs}
    finished = Counter(run.data.params["training.seed"] for run in jobs if run.info.status == "FINISHED")
    assert finished == {"0": 1, "1": 1, "2": 1, "3": 1}


@pytest.fixture
def small_disk(tmp_path):
    """A 32 MiB tmpfs mounted at tmp_path/mlruns, where `start_train` puts the SQLite store and its artifacts."""
    folder = tmp_path / "mlruns"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here to fill ({mounted.stderr.decode().strip()})")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=True)


# Packs of two seeds: jobs #0, #1 finish; #2, #3 are training when the disk fills; #4, #5 never start.
EPOCHS = (f"training.epochs=2,{LONG},3", "training.seed=0,1")
MLFLOW_LINE = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d (ERROR|WARNING) mlflow", re.M)  # MLflow's own format


@pytest.mark.timeout(1200)
def test_a_full_disk_stops_the_sweep_with_one_message_writes_the_report_and_the_rerun_resumes(
    tmp_path, small_disk, started
):
    db = small_disk / "mlflow.db"
    process = start_train(tmp_path, *EPOCHS)
    started.append(process)
    running = wait_for(lambda: running_run_with_epochs(tmp_path, LONG), what="the long pack running")
    filler = small_disk / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M"], capture_output=True)  # until no space is left
    filled_at = time.monotonic()
    output, _ = process.communicate(timeout=300)
    print(f"exit {process.returncode} {time.monotonic() - filled_at:.1f} s after the disk filled\n{output}")
    assert process.returncode == 1
    # One message, once, with the path and the free space; nothing of MLflow's, no line per run, no traceback.
    assert output.count("The disk is full") == 1 and output.count("lrsweep: ") == 1, output
    assert re.search(
        rf"^lrsweep: The disk is full at {re.escape(str(db))}, \d+ KiB free: the MLflow store ", output, re.M
    )
    assert "The sweep stopped; jobs not finished: #2, #3, #4, #5." in output
    assert not MLFLOW_LINE.search(output) and "database or disk is full" not in output
    assert "Could not mark run" not in output and "Traceback" not in output
    assert "Launching" not in output.split("is full")[1]  # no job after the failed pack
    # The report of what did finish, in the sweep folder (another disk); MLflow's lines kept in the sweep's log.
    report = tmp_path / "multirun" / "report"
    assert f"Report: {report} (" in output and "not attached to MLflow parent run" in output
    rows = (report / "runs.csv").read_text()
    assert rows.count("FINISHED") == 2 and "epochs" in rows.splitlines()[0]
    assert "database or disk is full" in (tmp_path / "multirun" / "sweep.log").read_text()

    filler.unlink()  # the user frees space
    client, experiment_id = store(tmp_path)
    jobs = client.search_runs([experiment_id], f"tags.`{tracking.TAG_ROLE}` = 'job'")  # two may share a name
    runs = {run.data.tags[tracking.TAG_JOB_NUM]: run for run in jobs}
    assert len(jobs) == 4 and set(runs) == {"0", "1", "2", "3"}  # jobs #4, #5 never started
    for num in ("0", "1"):
        assert runs[num].info.status == "FINISHED" and tracking.TAG_STALE not in runs[num].data.tags
    assert running.info.run_id in {runs["2"].info.run_id, runs["3"].info.run_id}
    # Whether SQLite can still write a run's end depends on which pages the failed write left free.
    for num in ("2", "3"):
        stopped = runs[num]
        # The summary names it as the report does: its name shared with job #0 or #1, so with the epochs it lacks
        # ("s0 · epochs=60 · adam-constant"), whether or not the full store could take the new name.
        name = re.escape(stopped.info.run_name).replace(re.escape(" · "), r" · (?:epochs=\d+ · )?", 1)
        job = rf"#{num} \({name}\)"
        if stopped.info.status == "FAILED":
            assert "database or disk is full" in stopped.data.tags[tracking.TAG_ERROR]
            assert re.search(rf"{name} \(FAILED\)", output)
        elif stopped.info.status == "KILLED":  # the pack could not record its end, the sweep's close could: stale
            assert stopped.data.tags[tracking.TAG_STALE] == "true"
            assert re.search(rf"jobs? [^;]*{job}[^;]* left RUNNING by this process", output)
        else:
            assert stopped.info.status == "RUNNING"
            assert re.search(rf"jobs? [^;]*{job}[^;]* left RUNNING \(the store could not record", output)
    assert "; jobs #4, #5 never started" in output
    parent = tracking.find_sweep_run(client, experiment_id, "multirun")
    if parent.info.status == "RUNNING":  # said in the sweep's log only: the message's "rerun" is all there is to do
        assert "stays RUNNING instead of FAILED" in (tmp_path / "multirun" / "sweep.log").read_text()
    else:
        assert parent.info.status == "FAILED"
        assert parent.data.tags[tracking.TAG_NEVER_STARTED] == "4,5"
    left = [run for run in (runs["2"], runs["3"], parent) if run.info.status == "RUNNING"]

    again = start_train(tmp_path, *EPOCHS, f"hydra.sweep.dir={tmp_path / 'again'}")
    started.append(again)
    output, _ = again.communicate(timeout=600)
    assert again.returncode == 0, output[-3000:]
    if left:  # what the full disk left RUNNING: marked stale now (its process is gone) and rerun
        assert f"Marked {len(left)} stale run(s) KILLED" in output
    assert "2 already finished before, reused" in output
    assert tracking.find_sweep_run(client, experiment_id, "again").info.status == "FINISHED"
    jobs = client.search_runs([experiment_id], f"tags.`{tracking.TAG_ROLE}` = 'job'")
    assert "RUNNING" not in {run.info.status for run in client.search_runs([experiment_id])}
    finished = Counter(run.data.params["training.epochs"] for run in jobs if run.info.status == "FINISHED")
    assert finished == {"2": 2, str(LONG): 2, "3": 2}
    for num in ("0", "1"):
        assert client.get_run(runs[num].info.run_id).info.status == "FINISHED"  # untouched by all of it
