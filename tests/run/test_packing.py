"""Packed sweeps: a pack gives each member its solo run's numbers, faults stay per member, sweeps pack by default."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from lrsweep import tracking
from lrsweep.core import identity
from tests import equivalence
from tests.conftest import TINY, job_runs, store, train


def values(client, run_id: str, key: str) -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("optimizer", equivalence.CASES)
def test_a_pack_matches_its_members_solo_runs_on_jax(tmp_path, optimizer):
    equivalence.check(equivalence.compare(optimizer, str(tmp_path)), optimizer)


@pytest.mark.timeout(600)
def test_an_unrolled_pack_matches_its_members_solo_runs_on_jax(tmp_path):
    # other_models=unroll on JAX: one copy of a user's BatchNorm CNN per member, with the three mixed optimizers.
    equivalence.check(equivalence.compare("functional", str(tmp_path), "unroll"), "functional")


@pytest.mark.timeout(600)
def test_a_sweep_packs_by_default_and_its_runs_read_like_solo_runs(tmp_path):
    overrides = ["schedule=linear", "schedule.initial_lr=0.001,0.005", "training.seed=0,1", "backend=jax",
                 "training.epochs=2", "training.verbose=0", *TINY]  # fmt: skip
    result = train(tmp_path, *overrides)
    client, experiment_id = store(tmp_path)
    packed = job_runs(client, experiment_id, "multirun")
    assert len(packed) == 4 and {r.info.status for r in packed.values()} == {"FINISHED"}
    assert {r.data.tags[tracking.TAG_PACK] for r in packed.values()} == {"multirun/pack1"}
    assert {r.data.tags[tracking.TAG_PACK_SIZE] for r in packed.values()} == {"4"}
    assert sorted(r.data.tags[tracking.TAG_PACK_MEMBER] for r in packed.values()) == ["0", "1", "2", "3"]
    assert "Pack multirun/pack1: 4 runs" in result.stdout + result.stderr

    # The same sweep one job at a time (resume=false: it would reuse the packed runs otherwise).
    train(tmp_path, *overrides, "hydra/launcher=basic", "resume=false", f"hydra.sweep.dir={tmp_path / 'basic'}")
    solo = job_runs(client, experiment_id, "basic")
    assert sorted(solo) == sorted(packed)
    pack_tags = {tracking.TAG_PACK, tracking.TAG_PACK_SIZE, tracking.TAG_PACK_MEMBER}
    volatile = {tracking.TAG_PARENT, tracking.TAG_SWEEP_ID, tracking.TAG_SWEEP_DIR, tracking.TAG_PROCESS,
                tracking.TAG_JOB_NUM, tracking.TAG_OVERRIDES, "mlflow.runName", "mlflow.user"}  # fmt: skip
    for name, run in packed.items():
        other = solo[name]
        assert run.data.params == other.data.params  # `resume`, the only value the two commands differ in, is no param
        assert set(run.data.tags) - pack_tags == set(other.data.tags)
        assert {k: v for k, v in run.data.tags.items() if k not in pack_tags | volatile} == {
            k: v for k, v in other.data.tags.items() if k not in volatile
        }
        assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == ["config.yaml", "overrides.yaml"]
        assert set(run.data.metrics) == set(other.data.metrics)
        for key in ("lr", "loss", "val_loss", "val_accuracy", "lr_step", "effective_lr/p50"):
            ours, theirs = values(client, run.info.run_id, key), values(client, other.info.run_id, key)
            np.testing.assert_allclose(ours, theirs, rtol=1e-4, err_msg=f"{name} {key}")
    assert (tmp_path / "multirun" / "report" / "summary.csv").exists()

    # Run again: everything FINISHED already, nothing trains.
    again = train(tmp_path, *overrides, f"hydra.sweep.dir={tmp_path / 'again'}")
    assert "4 already finished before, reused" in again.stdout
    assert job_runs(client, experiment_id, "again") == {}


@pytest.mark.timeout(600)
def test_a_diverging_member_fails_alone_and_the_others_match_their_solo_runs(tmp_path):
    overrides = ["optimizer=sgd", "optimizer.momentum=0.9", "optimizer.learning_rate=0.01,1e30,0.03",
                 "backend=jax", "training.epochs=2", "training.verbose=0", *TINY]  # fmt: skip
    result = train(tmp_path, *overrides, check=False)
    assert result.returncode == 1
    client, experiment_id = store(tmp_path)
    runs = job_runs(client, experiment_id, "multirun")
    diverged = "s0 · momentum=0.9 learning_rate=1e+30 · sgd-constant"
    assert {n: r.info.status for n, r in runs.items()} == {
        "s0 · momentum=0.9 learning_rate=0.01 · sgd-constant": "FINISHED", diverged: "FAILED",
        "s0 · momentum=0.9 learning_rate=0.03 · sgd-constant": "FINISHED",
    }  # fmt: skip
    assert {r.data.tags[tracking.TAG_PACK_SIZE] for r in runs.values()} == {"3"}
    error = runs[diverged].data.tags[tracking.TAG_ERROR]
    assert error.startswith("DivergedError: training diverged in epoch 0 (by batch ")
    assert [m.step for m in client.get_metric_history(runs[diverged].info.run_id, "loss")] == [0]

    # The others trained undisturbed: the same numbers as the same two configs trained alone.
    train(tmp_path, "optimizer=sgd", "optimizer.momentum=0.9", "optimizer.learning_rate=0.01,0.03", "backend=jax",
          "training.epochs=2", "training.verbose=0", *TINY, "hydra/launcher=basic", "resume=false",
          f"hydra.sweep.dir={tmp_path / 'solo'}")  # fmt: skip
    solo = job_runs(client, experiment_id, "solo")
    for name, run in solo.items():
        for key in ("loss", "val_loss"):
            theirs, ours = values(client, run.info.run_id, key), values(client, runs[name].info.run_id, key)
            np.testing.assert_allclose(ours, theirs, rtol=1e-5, err_msg=f"{name} {key}")


def test_a_bad_value_anywhere_stops_the_sweep_before_anything_trains(tmp_path):
    result = train(tmp_path, "schedule=linear", "schedule.initial_lr=0.001,-1,0.01", "backend=jax", *TINY, check=False)
    assert result.returncode == 1
    assert "1 of 3 jobs of this sweep cannot run, so none was started" in result.stderr
    assert "job #1 (schedule.initial_lr=-1): `schedule.initial_lr` must be a finite learning rate > 0." in result.stderr
    assert "Received: schedule.initial_lr=-1.0" in result.stderr
    assert "Traceback" not in result.stderr
    db = tmp_path / "mlruns" / "mlflow.db"
    if db.exists():  # no run at all, not even the sweep's parent
        client, experiment_id = store(tmp_path)
        assert client.search_runs([experiment_id]) == []


def test_plan_groups_by_everything_but_schedule_optimizer_and_seed():
    from hydra import compose, initialize_config_dir

    from lrsweep.core import backend
    from lrsweep.run import experiment, launching
    from tests.conftest import CONF_DIR

    backend.select("jax")
    variants = [
        ["optimizer.learning_rate=0.01", "training.seed=1"],
        ["optimizer.learning_rate=0.02", "training.seed=0", "schedule=linear"],
        ["optimizer=adagrad"],  # another optimizer class: the same pack
        ["training.batch_size=32"],  # another batch size: its own pack
        ["schedule=warmup", "schedule.warmup.length=0.5", "training.seed=2"],
        ["optimizer.beta_1=0.8"],  # another optimizer hyperparameter: the same pack
        ["+optimizer.weight_decay=0.01"],  # acts across members: its own pack (where it trains alone)
        ["optimizer._target_=keras.optimizers.Nadam"],  # not packable: its own pack (where it trains alone)
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        jobs = [
            experiment.prepare(
                compose(config_name="config", overrides=[*TINY, *v]),
                identity.JobContext(overrides=tuple(v), job_num=i),
            )
            for i, v in enumerate(variants)
        ]
    packs = launching.plan_packs(jobs, max_members=16, max_seeds=8)
    assert sorted([job.context.job_num for job in pack] for pack in packs) == [[2, 5, 1, 0, 4], [3], [6], [7]]
    assert [job.seed for job in packs[0]] == [0, 0, 0, 1, 2]  # ordered by seed, then optimizer settings
    split = launching.plan_packs([jobs[0], jobs[1], jobs[4]], max_members=2, max_seeds=8)
    assert [len(pack) for pack in split] == [2, 1]
    assert [len(p) for p in launching.plan_packs([jobs[0], jobs[1], jobs[4]], max_members=16, max_seeds=1)] == [1] * 3


@pytest.mark.timeout(900)
def test_ctrl_c_kills_a_running_pack_whole_and_a_rerun_trains_only_the_unfinished_runs(tmp_path):
    from tests.sweep.test_faults import logged_epochs, running_run_with_epochs, start_train, wait_for

    sweep = ["training.epochs=2,400", "training.seed=0,1"]  # two packs: the short one finishes first
    for attempt in ("multirun", "again"):
        process = start_train(tmp_path, *sweep, f"hydra.sweep.dir={tmp_path / attempt}")
        wait_for(lambda: running_run_with_epochs(tmp_path), what="the long pack running")
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        output, _ = process.communicate(timeout=120)
        assert process.returncode != 0, output[-3000:]
        client, experiment_id = store(tmp_path)
        assert "RUNNING" not in {r.info.status for r in client.search_runs([experiment_id])}
        query = f"tags.`{tracking.TAG_ROLE}` = 'job' and tags.`{tracking.TAG_SWEEP_ID}` = '{attempt}'"
        by_epochs = {}  # (run names leave training.epochs out, so two runs here share each name)
        for run in client.search_runs([experiment_id], query):
            by_epochs.setdefault(run.data.params["training.epochs"], []).append(run)
        killed = by_epochs.pop("400")
        assert len(killed) == 2 and {r.info.status for r in killed} == {"KILLED"}
        assert len({r.data.tags[tracking.TAG_PACK] for r in killed}) == 1
        for run in killed:
            epochs = logged_epochs(client, run)
            assert epochs == list(range(len(epochs))) and len(epochs) < 400  # only completed epochs
        assert tracking.find_sweep_run(client, experiment_id, attempt).info.status == "KILLED"
        if attempt == "multirun":
            finished = by_epochs.pop("2")
            assert {r.info.status for r in finished} == {"FINISHED"} and len(finished) == 2
            first_pack = killed[0].data.tags[tracking.TAG_PACK]
        else:  # the rerun reused the two FINISHED runs and packed only the killed configurations, anew
            assert by_epochs == {}
            assert "2 already finished before, reused" in output
            assert killed[0].data.tags[tracking.TAG_PACK] != first_pack


@pytest.mark.timeout(900)
def test_packs_go_to_submitit_as_one_job_each(tmp_path):
    """hydra.launcher.cluster=local: each pack (and lone job) is a submitit job, a process of its own here."""
    sweep = ["schedule=linear,constant", "training.seed=0,1", "optimizer=adam,adagrad"]
    result = train(tmp_path, "hydra.launcher.cluster=local", "hydra.launcher.max_members=4", *sweep, "backend=jax",
                   "training.epochs=1", "training.verbose=0", *TINY)  # fmt: skip
    client, experiment_id = store(tmp_path)
    runs = job_runs(client, experiment_id, "multirun")
    assert len(runs) == 8 and {r.info.status for r in runs.values()} == {"FINISHED"}
    packs = {}
    for run in runs.values():
        packs.setdefault(run.data.tags[tracking.TAG_PACK], set()).add(run.data.tags["mlflow.parentRunId"])
    assert len(packs) == 2  # 8 runs, at most 4 per pack: one pack per seed (Adam and Adagrad), one submitit job each
    parent = tracking.find_sweep_run(client, experiment_id, "multirun")
    assert all(parents == {parent.info.run_id} for parents in packs.values())
    assert parent.info.status == "FINISHED"
    assert "Submitted 2 pack(s) to submitit (local)" in result.stdout + result.stderr
    assert len([p for p in (tmp_path / "multirun" / ".submitit").iterdir() if p.name.isdigit()]) == 2  # job ids
