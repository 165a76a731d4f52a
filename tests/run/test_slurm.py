"""SLURM for real: a single-node cluster of this machine (`scripts/slurm_cluster.py`: munged, slurmctld, slurmd as
local processes), packs submitted to it by `hydra.launcher.cluster=slurm`, and `hydra/launcher=slurm`'s job array."""

from __future__ import annotations

import re

import pytest

from lrsweep import tracking
from scripts.slurm_cluster import SetupError, SlurmCluster, missing_binaries
from tests.conftest import TINY, job_runs, store, train
from tests.sweep.test_faults import wait_for


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """The cluster, started once for this module; skipped, with the reason, where SLURM cannot run."""
    if missing := missing_binaries():
        pytest.skip(f"SLURM is not installed here (missing {', '.join(missing)}): apt-get install slurm-wlm munge")
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except SetupError as e:
        cluster.stop()
        pytest.skip(f"SLURM cannot run here: {e}")
    yield cluster
    cluster.stop()


def completed_jobs(cluster: SlurmCluster) -> dict[str, str]:
    """Job id -> final state, from the cluster's job-completion log."""
    log = cluster.data / "log" / "jobcomp.txt"
    text = log.read_text() if log.exists() else ""
    return dict(re.findall(r"JobId=(\d+) .*?JobState=(\w+)", text))


def ended_jobs(cluster: SlurmCluster, count: int, before: set[str] = frozenset()) -> dict[str, str]:
    """The `count` jobs (not in `before`) the job-completion log lists, once it does: slurmctld writes it after the
    job's result file, which is what the sweep waits for."""
    return wait_for(lambda: len(new := {k: v for k, v in completed_jobs(cluster).items() if k not in before}) >= count
                    and new, timeout=60, what=f"{count} jobs in {cluster.data}/log/jobcomp.txt")  # fmt: skip


@pytest.mark.timeout(600)
def test_each_pack_is_one_slurm_job(tmp_path, slurm, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", str(slurm.conf))
    before = set(completed_jobs(slurm))
    result = train(tmp_path, "hydra.launcher.cluster=slurm", "hydra.launcher.submitit.cpus_per_task=1",
                   "hydra.launcher.submitit.mem_gb=1", "hydra.launcher.max_members=4", "schedule=linear,constant",
                   "training.seed=0,1", "optimizer=adam,adagrad", "backend=jax", "training.epochs=2",
                   "training.verbose=0", *TINY)  # fmt: skip
    output = result.stdout + result.stderr
    submitted = re.search(r"Submitted 2 pack\(s\) to submitit \(slurm\): (\d+), (\d+)", output)
    assert submitted, output[-3000:]
    jobs = ended_jobs(slurm, 2, before)
    assert {jobs.get(job_id) for job_id in submitted.groups()} == {"COMPLETED"}, jobs
    client, experiment_id = store(tmp_path)
    runs = job_runs(client, experiment_id, "multirun")
    assert len(runs) == 8 and {r.info.status for r in runs.values()} == {"FINISHED"}
    assert len({run.data.tags[tracking.TAG_PACK] for run in runs.values()}) == 2
    for run in runs.values():
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [0, 1]
    assert tracking.find_sweep_run(client, experiment_id, "multirun").info.status == "FINISHED"


@pytest.mark.timeout(600)
def test_the_slurm_launcher_runs_each_job_as_a_task_of_a_job_array(tmp_path, slurm, monkeypatch):
    """hydra/launcher=slurm (hydra-submitit-launcher): one job per array task, unpacked, each its own MLflow run."""
    monkeypatch.setenv("SLURM_CONF", str(slurm.conf))
    before = set(completed_jobs(slurm))
    train(tmp_path, "hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
          "training.seed=0,1", "backend=jax", "training.epochs=1", "training.verbose=0", *TINY)  # fmt: skip
    client, experiment_id = store(tmp_path)
    runs = job_runs(client, experiment_id, "multirun")
    assert len(runs) == 2 and {r.info.status for r in runs.values()} == {"FINISHED"}
    parent = tracking.find_sweep_run(client, experiment_id, "multirun")
    assert {r.data.tags["mlflow.parentRunId"] for r in runs.values()} == {parent.info.run_id}
    new = ended_jobs(slurm, 2, before)
    assert list(new.values()) == ["COMPLETED", "COMPLETED"], new  # the array's two tasks
