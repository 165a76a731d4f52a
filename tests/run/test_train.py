"""End to end: `python train.py` as a subprocess into tmp_path, then what MLflow holds afterwards."""

from __future__ import annotations

import re

import numpy as np
import pytest
import yaml
from hydra import compose, initialize_config_dir
from mlflow.entities import RunStatus

from lrsweep import tracking
from lrsweep.config import schema
from lrsweep.core import backend, identity
from lrsweep.run import experiment
from tests.conftest import CONF_DIR, TINY, job_runs, store, train

EPOCH_METRICS = ["accuracy", "loss", "lr", "val_accuracy", "val_loss"]


def finished_runs(tmp_path, expected: int):
    client, experiment_id = store(tmp_path)
    runs = list(job_runs(client, experiment_id).values())
    assert len(runs) == expected, [r.info.run_name for r in runs]
    assert {r.info.status for r in runs} == {"FINISHED"}
    return client, {r.info.run_name: r for r in runs}


def lr_history(client, run) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, "lr"), key=lambda m: m.step)]


def test_multirun_over_schedules_logs_one_run_per_job(tmp_path):
    result = train(tmp_path, "schedule=linear,constant", "backend=jax", "training.epochs=2", *TINY)
    client, runs = finished_runs(tmp_path, 2)
    assert set(runs) == {"s0 · adam-linear", "s0 · adam-constant"}

    linear, constant = runs["s0 · adam-linear"], runs["s0 · adam-constant"]
    assert [lr for _, lr in lr_history(client, linear)] == pytest.approx([0.005, 0.00625], rel=1e-6)
    assert [lr for _, lr in lr_history(client, constant)] == pytest.approx([0.01, 0.01], rel=1e-6)
    for run in runs.values():
        assert set(EPOCH_METRICS) <= set(run.data.metrics)
        for key in EPOCH_METRICS:
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [0, 1], key
        params = run.data.params
        assert run.data.tags[tracking.TAG_OPTIMIZER] == "keras.optimizers.Adam"  # a tag: no param
        assert params["training.epochs"] == "2" and params["training.seed"] == "0" and params["backend"] == "jax"
        assert params["data.train_size"] == "512"
        assert run.data.tags["lrsweep.backend"] == "jax"
        artifacts = sorted(a.path for a in client.list_artifacts(run.info.run_id))
        assert artifacts == ["config.yaml", "overrides.yaml"]
        config = yaml.safe_load(open(client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))))
        assert config["training"]["epochs"] == 2
    assert linear.data.params["schedule.initial_lr"] == "0.005" and linear.data.params["choice.schedule"] == "linear"
    assert "schedule.initial_lr" not in constant.data.params
    overrides = yaml.safe_load(open(client.download_artifacts(linear.info.run_id, "overrides.yaml", str(tmp_path))))
    assert "schedule=linear" in overrides
    # One sweep identifier on both runs, and the summary table printed at the end.
    assert len({r.data.tags[tracking.TAG_SWEEP_ID] for r in runs.values()}) == 1
    assert linear.data.tags[tracking.TAG_SWEEP_DIR] == str(tmp_path / "multirun")
    assert "Sweep multirun: 2 runs in 2 configurations" in result.stdout
    assert re.search(r"^rank\s+schedule\s+val_accuracy \(mean ± std\)", result.stdout, re.M)
    assert re.search(r"^[12]\s+linear\s+0\.\d{4}", result.stdout, re.M)
    assert re.search(r"^[12]\s+constant\s+0\.\d{4}", result.stdout, re.M)


def test_grid_over_initial_and_final_lr_follows_the_formula(grid_sweep):
    tmp_path, _ = grid_sweep  # conftest's: this grid x 2 seeds, 5 epochs
    client, runs = finished_runs(tmp_path, 8)
    for initial_lr in (0.001, 0.005):
        for final_lr in (0.01, 0.02):
            for seed in (0, 1):
                run = runs[f"s{seed} · initial_lr={initial_lr} final_lr={final_lr} · adam-linear"]
                expected = initial_lr + np.arange(5) * (final_lr - initial_lr) / 4
                history = lr_history(client, run)
                assert [step for step, _ in history] == [0, 1, 2, 3, 4]
                np.testing.assert_allclose([lr for _, lr in history], expected, rtol=1e-6)


def test_tensorflow_backend_single_run(tmp_path):
    result = train(tmp_path, "backend=tensorflow", "schedule=linear", "training.epochs=2", *TINY, multirun=False)
    client, runs = finished_runs(tmp_path, 1)
    (run,) = runs.values()
    assert run.data.tags["lrsweep.backend"] == "tensorflow"
    assert tracking.TAG_SWEEP_ID not in run.data.tags  # a single run belongs to no sweep
    assert [lr for _, lr in lr_history(client, run)] == pytest.approx([0.005, 0.00625], rel=1e-6)
    assert 0.3 < run.data.metrics["val_accuracy"] <= 1.0
    assert "val_accuracy=" in result.stdout + result.stderr  # the job's closing log line


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["schedule=linear", "schedule.warmup_epochs=1"],
            "`schedule.warmup_epochs` must be an integer >= 2 for a linear warm-up. Received: schedule.warmup_epochs=1",
        ),
        (
            ["schedule=linear", "schedule.final_lr=-1"],
            "`schedule.final_lr` must be a finite learning rate > 0. Received: schedule.final_lr=-1.0",
        ),
        (
            ["optimizer.learning_rate=0"],
            "`optimizer.learning_rate` must be a finite learning rate > 0. Received: optimizer.learning_rate=0",
        ),
        (["schedule=linear", "schedule.initial_lr=-0.01"], "Received: schedule.initial_lr=-0.01"),
        (["training.epochs=0"], "`training.epochs` must be an integer >= 1. Received: training.epochs=0"),
        (
            ["training.batch_size=0"],
            "`training.batch_size` must be an integer >= 1. Received: training.batch_size=0",
        ),
        (["data.dir=/nonexistent/fashion"], "data.dir=/nonexistent/fashion is missing"),
        (["backend=torch"], "`backend` must be one of tensorflow, jax. Received: backend='torch'"),
    ],
)
def test_bad_input_fails_before_any_run(tmp_path, store_uri, overrides, message):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"tracking.uri={store_uri}", "backend=jax", *TINY, *overrides])
    with pytest.raises(ValueError) as excinfo:
        schema.check(cfg)  # what train.py does first, before Keras starts: its only schema check
        backend.select(cfg.backend)
        experiment.run(cfg)
    assert message in str(excinfo.value)
    client, experiment_id = tracking.connect(store_uri, "lrsweep")
    assert client.search_runs([experiment_id]) == []


def test_bad_input_from_the_command_line_exits_nonzero_with_the_message(tmp_path):
    result = train(
        tmp_path,
        "schedule=linear",
        "schedule.warmup_epochs=1,3",
        "backend=jax",
        "training.epochs=3",
        *TINY,
        check=False,
    )
    assert result.returncode == 1
    assert "job #0 (schedule.warmup_epochs=1): `schedule.warmup_epochs` must be an integer >= 2" in result.stderr
    # Every job is checked before any trains: the good one did not start either, and no run was opened.
    if (tmp_path / "mlruns" / "mlflow.db").exists():
        client, experiment_id = store(tmp_path)
        assert client.search_runs([experiment_id]) == []


def test_unknown_group_option_lists_the_choices(tmp_path):
    result = train(tmp_path, "optimizer=adamw", multirun=False, check=False)
    assert result.returncode == 1
    assert "Could not find 'optimizer/adamw'" in result.stderr and "adagrad" in result.stderr


@pytest.mark.parametrize(("error", "status"), [(RuntimeError("diverged"), "FAILED"), (KeyboardInterrupt(), "KILLED")])
def test_a_job_that_dies_mid_run_is_closed_not_left_running(store_uri, error, status):
    client, experiment_id = tracking.connect(store_uri, "lrsweep")
    with pytest.raises(type(error)):
        with tracking.job_run(client, experiment_id, "dies", {"a": "1"}, {}, {}) as run_id:
            tracking.log_metrics(client, run_id, {"loss": 1.0}, step=0)
            raise error
    run = client.get_run(run_id)
    assert run.info.status == status and RunStatus.is_terminated(RunStatus.from_string(status))
    assert run.data.metrics == {"loss": 1.0}
    if status == "FAILED":
        assert run.data.tags[tracking.TAG_ERROR] == "RuntimeError: diverged"


@pytest.mark.timeout(900)
@pytest.mark.slow
def test_full_data_one_epoch_reaches_80_percent(tmp_path):
    train(tmp_path, "backend=jax", "training.epochs=1", "training.verbose=0", multirun=False)
    _, runs = finished_runs(tmp_path, 1)
    (run,) = runs.values()
    assert run.data.params["data.train_size"] == "None"
    assert run.data.metrics["val_accuracy"] > 0.80


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ((), "s3 · adam-warmup"),
        (("schedule.warmup.shape=cosine", "schedule/decay=cosine"), "s3 · shape=cosine decay=cosine · adam-warmup"),
        (
            ("+strategy=adagrad", "training.epochs=2", "optimizer.learning_rate=0.1"),
            "s3 · learning_rate=0.1 · adam-warmup",
        ),
        (("model=vit", "model.norm=pre"), "s3 · norm=pre · vit-adam-warmup"),
    ],
)
def test_run_names_show_the_strategy_and_its_overridden_values(overrides, expected):
    model = dict(identity.overrides_dict(overrides)).get("model", "mlp")
    choices = {"optimizer": "adam", "schedule": "warmup", "model": model}
    context = identity.JobContext(choices=choices, overrides=overrides)
    assert identity.run_name(context, {"training": {"seed": 3}}) == expected
