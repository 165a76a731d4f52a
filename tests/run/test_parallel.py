"""Parallel and cluster launchers: their configs compose, threads per job hold, a joblib sweep lands whole in MLflow."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_class

from lrsweep import tracking
from lrsweep.core import backend
from tests.conftest import CONF_DIR, ROOT, TINY, job_runs, store, train

EPOCH_METRICS = ["accuracy", "loss", "lr", "val_accuracy", "val_loss"]
# The plugin each launcher option builds on; CI installs them all (`.[test]`). Ray is the packed launcher's
# hydra.launcher.cluster=ray (tests/run/test_ray.py).
LAUNCHER_PLUGINS = {
    "packed": "lrsweep_launcher",  # lrsweep's own, the default for -m (tests/run/test_packing.py)
    "parallel": "hydra_joblib_launcher",
    "slurm": "hydra_submitit_launcher",
}


def launcher_config(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"hydra/launcher={name}", *overrides], return_hydra_config=True)
    return cfg.hydra.launcher


def test_every_launcher_option_is_covered():
    assert sorted(p.stem for p in (CONF_DIR / "hydra" / "launcher").glob("*.yaml")) == sorted(LAUNCHER_PLUGINS)


@pytest.mark.parametrize("name", sorted(LAUNCHER_PLUGINS))
def test_launcher_config_composes_and_builds_its_launcher(name):
    if importlib.util.find_spec(f"hydra_plugins.{LAUNCHER_PLUGINS[name]}") is None:
        pytest.skip(f"{LAUNCHER_PLUGINS[name]} is not installed")
    launcher = launcher_config(name, "threads=1")
    # Building the launcher from its config checks every field against the plugin's own constructor.
    params = {k: v for k, v in launcher.items() if k != "_target_"}
    get_class(launcher._target_)(**params)
    if name == "packed":
        assert (launcher.max_members, launcher.max_seeds) == (16, 8)
        assert launcher.ray == {"address": "auto", "num_cpus": None}
    elif name == "parallel":
        assert launcher.n_jobs == 2
    else:
        assert (launcher.partition, launcher.cpus_per_task, launcher.timeout_min) == (None, 2, 60)
        assert launcher.submitit_folder.endswith("/.submitit/%j")


@pytest.mark.parametrize("threads", [0, -2, 1.5, True, "2"])
def test_bad_threads_are_rejected_with_what_was_expected(threads):
    with pytest.raises(ValueError, match=r"`threads` must be an integer >= 1 .* Received: threads="):
        backend.select("jax", threads)


def test_thread_env_names_each_runtime():
    assert backend.thread_env(3) == {
        "TF_NUM_INTRAOP_THREADS": "3",
        "TF_NUM_INTEROP_THREADS": "3",
        "PJRT_NPROC": "3",
        "OMP_NUM_THREADS": "3",
    }


def test_a_process_keeps_the_threads_of_its_first_job():
    """A joblib worker runs several jobs: the same `threads` passes, another one is refused, not ignored."""
    script = (
        "from lrsweep.core import backend\n"
        "backend.select('jax', 1)\n"
        "import keras\n"
        "backend.select('jax', 1)\n"
        "backend.select('jax', None)\n"
        "backend.select('jax', 2)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("KERAS_BACKEND", None)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "with other thread limits" in result.stderr and "threads=2 cannot apply" in result.stderr


# Runs matrix products on the chosen backend in a fresh process, then prints each thread's share of the CPU
# time they took (from /proc), busiest first. Compute spread over a pool shows up as several shares.
PROBE = """
import json, os, sys
from lrsweep.core import backend
backend.select(sys.argv[1], None if sys.argv[2] == "null" else int(sys.argv[2]))
import keras
from keras import ops

def cpu_ticks():
    ticks = {}
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks[tid] = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks

x = keras.random.normal((1200, 1200), seed=0)
ops.convert_to_numpy(ops.matmul(x, x))  # warm up: runtime start-up and compilation stay out of the count
before = cpu_ticks()
for _ in range(40):
    ops.convert_to_numpy(ops.matmul(x, x))
used = sorted((t - before.get(tid, 0) for tid, t in cpu_ticks().items()), reverse=True)
print(json.dumps([t / sum(used) for t in used if t]))
"""


def thread_shares(backend_name: str, threads: str) -> list[float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("KERAS_BACKEND", None)
    result = subprocess.run(
        [sys.executable, "-c", PROBE, backend_name, threads], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(600)
@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="reads per-thread CPU time from Linux /proc")
@pytest.mark.parametrize("backend_name", ["jax", "tensorflow"])
def test_one_thread_per_job_does_the_compute_on_one_thread(backend_name):
    shares = thread_shares(backend_name, "1")
    assert shares[0] >= 0.9, shares
    if len(os.sched_getaffinity(0)) >= 2:  # the probe does see a pool at work when threads are not limited
        assert thread_shares(backend_name, "null")[0] < 0.9


@pytest.mark.timeout(600)
def test_a_sweep_of_two_parallel_jobs_lands_whole_in_a_fresh_store(tmp_path):
    assert not (tmp_path / "mlruns").exists()
    result = train(
        tmp_path, "hydra/launcher=parallel", "threads=1", "backend=jax", "training.epochs=2", "training.verbose=0",
        "training.seed=0,1,2", "schedule=constant,linear", *TINY, fresh_store=True,
    )  # fmt: skip
    assert "Joblib.Parallel(n_jobs=2," in result.stdout + result.stderr  # the jobs ran in 2 worker processes

    client, experiment_id = store(tmp_path)
    jobs = list(job_runs(client, experiment_id).values())
    (parent,) = client.search_runs([experiment_id], f"tags.`{tracking.TAG_ROLE}` = 'sweep'")
    assert len(jobs) == 6 and {run.info.status for run in jobs} == {"FINISHED"}
    assert sorted(run.data.tags[tracking.TAG_JOB_NUM] for run in jobs) == [str(n) for n in range(6)]
    for run in jobs:
        assert run.data.tags[tracking.TAG_PARENT] == parent.info.run_id
        assert run.data.tags["lrsweep.backend"] == "jax" and run.data.tags["lrsweep.threads"] == "1"
        for key in EPOCH_METRICS:
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [0, 1], (run.info.run_name, key)

    parent = client.get_run(parent.info.run_id)  # ended after the jobs, by the main process
    assert parent.info.status == "FINISHED"
    assert "summary.csv" in {a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(parent.info.run_id, "report")}
    assert "Sweep multirun: 6 runs in 2 configurations" in result.stdout
