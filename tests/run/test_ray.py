"""hydra.launcher.cluster=ray on a real Ray cluster of two nodes on this machine (`ray start --head`, then a second
node joining it): each pack one Ray task, placed by Ray; a worker killed mid-pack; a cluster that is not there."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from lrsweep import tracking
from scripts.tracking_server import free_port
from tests.conftest import ROOT, TINY, job_runs, store, train
from tests.sweep.test_faults import logged_epochs, running_run_with_epochs, start_server, start_train, wait_for

ray = pytest.importorskip("ray", reason="hydra.launcher.cluster=ray needs Ray: pip install -e .[ray]")

RAY = [sys.executable, "-c", "import sys; from ray.scripts.scripts import main; sys.exit(main())"]
NODE = re.compile(r"lrsweep: (pack\d+) on Ray node (\w+) \(pid (\d+)\)")


def ray_cli(*args: str, env: dict[str, str]) -> str:
    result = subprocess.run([*RAY, *args], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout + result.stderr


@dataclass
class Cluster:
    address: str  # the head's HOST:PORT
    env: dict[str, str]  # what its nodes were started with


@pytest.fixture(scope="module")
def ray_cluster():
    """A Ray cluster on this machine: a head (`ray start --head`, no CPUs for tasks: it keeps the cluster's
    state) and two nodes of one CPU each joining it at the head's address, as other machines would. Yields the
    head's address; `ray stop` at the end.

    Both nodes write their logs into the head's session folder, so the sweep sees each worker's line twice (each
    node's log monitor sends it); on machines of their own, once."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    temp = tempfile.mkdtemp(prefix="lrsray-", dir="/tmp")  # short: Ray's socket paths live under it
    address = f"127.0.0.1:{port}"
    try:
        ray_cli("start", "--head", f"--port={port}", "--num-cpus=0", "--include-dashboard=false",
                f"--temp-dir={temp}", "--disable-usage-stats", env=env)  # fmt: skip
        for _ in range(2):
            add_node(address, env)
        wait_for(lambda: alive_nodes(address, env) == 3, timeout=60, what="three Ray nodes")
        yield Cluster(address, env)
    finally:
        subprocess.run([*RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def add_node(address: str, env: dict[str, str]) -> None:
    ray_cli("start", f"--address={address}", "--num-cpus=1", env=env)


def alive_nodes(address: str, env: dict[str, str]) -> int:
    out = subprocess.run([*RAY, "status", f"--address={address}"], env=env, capture_output=True, text=True,
                         timeout=60).stdout  # fmt: skip
    active = out.split("Active:", 1)[-1].split("Pending:", 1)[0]
    return len(re.findall(r"\bnode_\w+", active))


def on_ray(address: str) -> list[str]:
    return ["hydra.launcher.cluster=ray", f"hydra.launcher.ray.address={address}", "hydra.launcher.ray.num_cpus=1"]


@pytest.mark.timeout(600)
def test_each_pack_is_a_ray_task_and_ray_spreads_them_over_both_nodes(tmp_path, ray_cluster):
    result = train(tmp_path, *on_ray(ray_cluster.address), "hydra.launcher.max_members=4", "schedule=linear,constant",
                   "training.seed=0,1", "optimizer=adam,adagrad", "backend=jax", "training.epochs=2",
                   *TINY)  # fmt: skip
    output = result.stdout + result.stderr
    client, experiment_id = store(tmp_path)
    runs = job_runs(client, experiment_id, "multirun")
    assert len(runs) == 8 and {r.info.status for r in runs.values()} == {"FINISHED"}
    for run in runs.values():
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [0, 1]
    packs = {run.data.tags[tracking.TAG_PACK] for run in runs.values()}
    assert len(packs) == 2  # one per seed, each with Adam and Adagrad members
    assert "Submitted 2 pack(s) to Ray at" in output
    nodes = {pack: node for pack, node, _ in NODE.findall(output)}
    assert set(nodes) == {"pack1", "pack2"} and len(set(nodes.values())) == 2, output[-3000:]  # one CPU per node
    # Each worker's lines reached the sweep's console, each epoch's, prefixed with its task.
    for pack, seed in (("pack1", 0), ("pack2", 1)):
        for epoch in (1, 2):
            line = rf"\(lrsweep {pack} pid=\d+[^)]*\)\S* s{seed} · adam-linear: Epoch {epoch}/2"
            assert re.search(line, output), output[-3000:]
    assert tracking.find_sweep_run(client, experiment_id, "multirun").info.status == "FINISHED"
    assert (tmp_path / "multirun" / "report" / "summary.csv").exists()


def lose_a_pack(tmp_path, address: str, kill: Callable[[int], None], errors: tuple[str, ...]) -> list[str]:
    """A sweep of two packs on Ray, a short one (2 epochs) and a long one (150), with `kill(pid of the long pack's
    Ray worker)` once it trains: the sweep ends non-zero with one line naming the lost pack and one of `errors`, the
    short pack's runs FINISHED, the long one's KILLED (stale: their process is gone). Returns the sweep's overrides."""
    overrides = [*on_ray(address), "training.epochs=2,150", "training.seed=0,1"]
    process = start_train(tmp_path, *overrides)
    try:
        running = wait_for(lambda: running_run_with_epochs(tmp_path, epochs=150), what="the long pack training")
        kill(int(running.data.tags[tracking.TAG_PROCESS].split(":")[0]))  # `stale.process_token`: pid:start
        output, _ = process.communicate(timeout=180)
    finally:
        process.kill()
    assert process.returncode != 0, output[-3000:]
    lost = re.search(r"^lrsweep: (pack\d)'s Ray task ended without a result \((\w+)", output, re.MULTILINE)
    assert lost and lost.group(2) in errors, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    client, experiment_id = store(tmp_path)
    runs = job_runs(client, experiment_id, "multirun")
    by_epochs: dict[str, set[str]] = {}
    for run in runs.values():
        by_epochs.setdefault(run.data.params["training.epochs"], set()).add(run.info.status)
    assert by_epochs == {"2": {"FINISHED"}, "150": {"KILLED"}} and len(runs) == 4, by_epochs
    return overrides


@pytest.mark.timeout(600)
def test_a_ray_worker_killed_mid_pack_fails_its_jobs_in_one_line_and_the_rerun_trains_only_them(tmp_path, ray_cluster):
    """SIGKILL to the Ray worker process training one pack: the other pack finishes on the other node, the sweep
    names the lost pack; the same command again reuses the finished pack and trains the lost one."""
    overrides = lose_a_pack(tmp_path, ray_cluster.address, lambda pid: os.kill(pid, signal.SIGKILL),
                            ("WorkerCrashedError", "RaySystemError"))  # fmt: skip

    start = time.monotonic()
    rerun = train(tmp_path, "backend=jax", "training.verbose=0", *TINY, *overrides,
                  "hydra.sweep.dir=" + str(tmp_path / "multirun"), check=False)  # fmt: skip
    output = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, output[-3000:]
    assert output.count("Skipped: this configuration already FINISHED") == 2, output[-3000:]
    assert "2 run(s) of an earlier attempt in this sweep folder were run again" in output, output[-3000:]
    assert "Submitted 1 pack(s) to Ray" in output  # only the lost configurations
    client, experiment_id = store(tmp_path)
    finished = [r for r in job_runs(client, experiment_id, "multirun").values() if r.info.status == "FINISHED"]
    assert sorted(r.data.params["training.epochs"] for r in finished) == ["150", "150", "2", "2"]
    assert time.monotonic() - start < 300


def test_a_cluster_that_is_not_there_is_one_line_before_any_run(tmp_path):
    port = free_port()  # nothing listens there
    result = train(tmp_path, *on_ray(f"127.0.0.1:{port}"), "training.seed=0,1", "backend=jax", *TINY,
                   check=False, fresh_store=True)  # fmt: skip
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("lrsweep:")]
    assert len(lines) == 1 and f"hydra.launcher.ray.address=127.0.0.1:{port}" in lines[0], result.stderr[-2000:]
    assert "ray start --head" in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "mlruns").exists()  # no store made, no run


@pytest.mark.timeout(600)
def test_a_ray_node_killed_mid_pack_fails_its_jobs_and_the_other_node_finishes(tmp_path, ray_cluster):
    """The node training one pack dies (its raylet, the parent of the worker, SIGKILLed: what a machine lost looks
    like to Ray): the sweep names the lost pack, its runs end KILLED, the other pack FINISHED."""

    def kill_its_node(worker: int) -> None:
        raylet = int(Path(f"/proc/{worker}/stat").read_text().rsplit(")", 1)[1].split()[1])  # its parent
        assert "raylet" in Path(f"/proc/{raylet}/cmdline").read_text()
        os.kill(raylet, signal.SIGKILL)

    try:
        lose_a_pack(tmp_path, ray_cluster.address, kill_its_node, ("NodeDiedError", "WorkerCrashedError"))
    finally:
        add_node(ray_cluster.address, ray_cluster.env)  # the cluster as the other tests found it
        wait_for(lambda: alive_nodes(ray_cluster.address, ray_cluster.env) == 3, timeout=60, what="a third node")


@pytest.mark.timeout(600)
def test_a_tracking_server_restarted_mid_sweep_is_ridden_through_by_the_ray_packs(tmp_path, ray_cluster):
    """The packs log to an `mlflow server`, which is SIGKILLed while one trains and back 3 s later on the same
    port and store: within what tracking.http_max_retries=6 waits (0 + 2 + 4 + 8 + ... s), the workers' failed
    requests are retried, both packs end FINISHED and the long one has every epoch logged once."""
    port = free_port()
    server = start_server(tmp_path, port)
    uri = f"http://127.0.0.1:{port}"
    client = MlflowClient(uri)
    sweep = [*on_ray(ray_cluster.address), f"tracking.uri={uri}", "training.epochs=2,150", "training.seed=0",
             "tracking.http_max_retries=6", "data.test_size=256"]  # fmt: skip

    def the_long_one_training():
        experiment = client.get_experiment_by_name("lrsweep")
        runs = experiment and client.search_runs(
            [experiment.experiment_id], "attributes.status = 'RUNNING' and params.`training.epochs` = '150'"
        )
        return runs and client.get_metric_history(runs[0].info.run_id, "loss") and runs[0]

    process = start_train(tmp_path, *sweep)
    try:
        long = wait_for(the_long_one_training, timeout=180, what="the long pack training")
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
        time.sleep(3)
        server = start_server(tmp_path, port)
        output, _ = process.communicate(timeout=400)
        assert process.returncode == 0, output[-3000:]
        experiment_id = client.get_experiment_by_name("lrsweep").experiment_id
        runs = job_runs(client, experiment_id, "multirun")
        assert {r.data.params["training.epochs"]: r.info.status for r in runs.values()} == {
            "2": "FINISHED", "150": "FINISHED"
        }  # fmt: skip
        assert logged_epochs(client, client.get_run(long.info.run_id)) == list(range(150))
    finally:
        process.kill()
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


@pytest.mark.timeout(600)
def test_halving_on_ray_sends_each_rungs_packs_at_once_and_gives_the_numbers_of_halving_here(tmp_path, ray_cluster):
    """Successive halving with hydra.launcher.cluster=ray: each rung's packs go to Ray together, each trained from
    its members' states; every run's per-epoch metrics equal those of the same halving sweep in one process."""
    sweep = ["hydra.launcher.halving.eta=2", "training.epochs=4", "optimizer.learning_rate=0.001,0.003,1e-4,1e-5",
             "training.seed=0,1", "hydra.launcher.max_members=4", "backend=jax", "training.verbose=0",
             *TINY]  # fmt: skip
    histories = {}
    for where, extra in (("here", []), ("ray", on_ray(ray_cluster.address))):
        result = train(tmp_path / where, *sweep, *extra)
        client, experiment_id = store(tmp_path / where)
        runs = job_runs(client, experiment_id, "multirun")
        assert len(runs) == 8 and {r.info.status for r in runs.values()} == {"FINISHED"}
        histories[where] = {
            (r.data.params["optimizer.learning_rate"], r.data.params["training.seed"]): [
                (m.step, m.value) for m in client.get_metric_history(r.info.run_id, "val_loss")
            ]
            for r in runs.values()
        }
        if where == "ray":
            output = result.stdout + result.stderr
            assert re.search(r"Submitted 2 pack\(s\) to Ray", output), output[-3000:]  # rung 1: 8 runs, 2 packs
            assert "Rung 1 (epoch 1): 2 of 4 configurations go on" in output
    assert histories["ray"] == histories["here"]
    lengths = sorted(len(h) for h in histories["ray"].values())
    assert lengths == [1, 1, 1, 1, 2, 2, 4, 4]  # stopped at epochs 1 and 2; the best to the end


@pytest.mark.timeout(600)
def test_a_search_on_ray_is_pruned_inside_the_workers_packs(tmp_path, ray_cluster):
    """hydra/sweeper=optuna with a pruner, its packs on Ray: each worker judges its trials against the study in the
    SQLite storage beside the store. ThresholdPruner(lower=0.99) prunes every trial at its first report."""
    result = train(tmp_path, "+experiment=warmup_grid_search", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=4",
                   "hydra.launcher.max_members=2", "hydra.sweeper.pruner=null",
                   "hydra.sweeper.pruner={_target_: optuna.pruners.ThresholdPruner, lower: 0.99, n_warmup_steps: 0}",
                   *on_ray(ray_cluster.address), "backend=jax", "training.epochs=3", "training.verbose=0",
                   *TINY)  # fmt: skip
    output = result.stdout + result.stderr
    assert re.search(r"Submitted \d pack\(s\) to Ray", output), output[-3000:]
    client, experiment_id = store(tmp_path)
    runs = job_runs(client, experiment_id).values()
    study = optuna.load_study(study_name="warmup_grid_search", storage=f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}")
    assert [trial.state for trial in study.trials] == [TrialState.PRUNED] * 4
    trained = [trial for trial in study.trials if "lrsweep.same_as_trial" not in trial.user_attrs]  # not repeats
    assert {trial.user_attrs["lrsweep.pruned_after_epoch"] for trial in trained} == {1}
    assert len(runs) == len(trained)
    assert runs and all(run.info.status == "FINISHED" for run in runs)
    for run in runs:
        assert run.data.tags[tracking.TAG_OPTUNA_PRUNED] == "true" and run.data.tags[tracking.TAG_STOPPED_EPOCH] == "1"
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        trial = study.trials[int(run.data.tags[tracking.TAG_OPTUNA_TRIAL])]
        assert len(history) == 1 and trial.intermediate_values == {0: history[0].value}
