"""What MLflow's UI shows of a sweep: the parent run's params and summary metrics, the jobs' params (the values a
person set, no internal keys), LRs without float32 noise and run names that read in a narrow column.

Real sweeps, tiny but real training, a real SQLite store in tmp_path."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from lrsweep import tracking
from lrsweep.core import identity
from tests.conftest import TINY, job_runs, store, train

SETTINGS = ("training.epochs=2", "training.verbose=0", "backend=jax")
# The tutorial's strategies: the optimizer each selects, and what its runs are named after.
OPTIMIZERS = {"adam_constant": "Adam", "adam_linear": "Adam", "adagrad": "Adagrad", "adadelta": "Adadelta"}
NAMES = {"adam_constant": "adam-constant", "adam_linear": "adam-linear", "adagrad": "adagrad-constant",
         "adadelta": "adadelta-constant"}  # fmt: skip


@pytest.fixture(scope="module")
def tutorial(tutorial_sweep):
    """The tutorial's sweep, its four strategies x two seeds: 8 runs, 4 configurations (conftest's, shared)."""
    tmp_path, _ = tutorial_sweep
    client, experiment_id = store(tmp_path)
    (parent,) = client.search_runs([experiment_id], f"tags.`{tracking.TAG_ROLE}` = 'sweep'")
    return client, parent, job_runs(client, experiment_id, "multirun")


def test_run_names_put_what_differs_first_then_the_seed(tutorial):
    _, _, runs = tutorial
    assert sorted(runs) == sorted(f"s{k} · {s}" for s in NAMES.values() for k in (0, 1))
    assert identity.without_seed("s1 · adam-linear") == "adam-linear"
    assert identity.without_seed("s0 · initial_lr=0.001 · adam-linear") == "initial_lr=0.001 · adam-linear"


def test_the_sweep_run_carries_what_was_swept_and_its_summary(tutorial):
    client, parent, runs = tutorial
    assert parent.info.status == "FINISHED"
    params, metrics = parent.data.params, parent.data.metrics
    # The swept values, named as the jobs carry them, under `sweep.` (grouping the runs by choice.strategy makes
    # one group per strategy, the parent apart), in job order.
    assert params["sweep.choice.strategy"] == "adam_constant,adam_linear,adagrad,adadelta"
    assert params["sweep.training.seed"] == "0,1"
    assert not {k for k in params if not k.startswith("sweep.")}
    # The summary, recomputed from the job runs.
    by_strategy: dict[str, list[float]] = {}
    for run in runs.values():
        by_strategy.setdefault(run.data.params["choice.strategy"], []).append(run.data.metrics["val_accuracy"])
    best = max(by_strategy, key=lambda s: statistics.fmean(by_strategy[s]))
    assert params["sweep.best_configuration"] == f"strategy={best}"
    assert metrics["sweep/best_val_accuracy_mean"] == pytest.approx(statistics.fmean(by_strategy[best]), abs=1e-12)
    assert metrics["sweep/best_val_accuracy_std"] == pytest.approx(statistics.stdev(by_strategy[best]), abs=1e-12)
    # On this tiny data Adagrad and Adadelta at LR 0.001 may end no better than chance (final loss >= ln 10): the
    # report counts those as diverged.
    diverged = sum(not run.data.metrics["loss"] < math.log(10) for run in runs.values())
    assert {k: v for k, v in metrics.items() if not k.startswith("sweep/best_val")} == {
        "sweep/runs": 8.0, "sweep/configurations": 4.0, "sweep/failed": 0.0, "sweep/diverged": float(diverged),
        "sweep/reused": 0.0, "sweep/best_n": 2.0,
    }  # fmt: skip
    # Its description is the report's table.
    assert parent.data.tags[tracking.TAG_NOTE].startswith("| rank | strategy | val_accuracy (mean ± std) |")


def test_job_params_are_the_values_set_without_internal_keys(tutorial):
    client, _, runs = tutorial
    for name, run in runs.items():
        params = run.data.params
        internal = [
            k for k in params
            if "_target_" in k or "_partial_" in k or k.startswith(("tracking.", "choice.tracking", "data.dir"))
            or k in ("resume", "threads", "training.verbose")
        ]  # fmt: skip
        assert not internal, (name, internal)
        optimizer = OPTIMIZERS[params["choice.strategy"]]
        if optimizer == "Adam":
            assert params["optimizer.learning_rate"] == "0.01" and params["optimizer.epsilon"] == "1e-07"
        assert params["training.epochs"] == "2" and params["training.batch_size"] == "64"
        assert params["data.train_size"] == "512" and params["data.validation_size"] == "64"
        assert params["model.hidden_units"] == "128" and params["backend"] == "jax"
        assert params["choice.optimizer"] == optimizer.lower()
        # What is no param is a tag, or in the config.yaml artifact.
        assert run.data.tags[tracking.TAG_OPTIMIZER] == f"keras.optimizers.{optimizer}"
        config = client.download_artifacts(run.info.run_id, "config.yaml")
        assert f"_target_: keras.optimizers.{optimizer}" in open(config).read()
    linear = runs["s0 · adam-linear"].data.params
    assert (linear["schedule.initial_lr"], linear["schedule.final_lr"], linear["schedule.warmup_epochs"]) == (
        "0.005", "0.01", "5",
    )  # fmt: skip
    assert runs["s0 · adam-linear"].data.tags[tracking.TAG_SCHEDULE] == "lrsweep.schedules.linear_warmup"


def test_lr_and_float32_metrics_are_logged_as_their_shortest_decimal(tutorial):
    client, _, runs = tutorial

    def history(run, key):
        return [m.value for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]

    assert history(runs["s0 · adam-constant"], "lr") == [0.01, 0.01]  # exactly, not 0.009999999776482582
    # The float32 the model used, which for the warm-up's second epoch is one float32 step below 0.00625.
    assert history(runs["s0 · adam-linear"], "lr") == [0.005, 0.0062499996]
    assert set(history(runs["s0 · adam-constant"], "lr_step")) == {0.01}
    for run in runs.values():
        # effective_lr/* are float64 values computed from the slots, logged as they are (test_effective_lr
        # compares them with its own computation to 1e-12), so they are not in this list.
        for key in ("lr", "lr_step", "loss", "val_accuracy"):
            for value in history(run, key):
                assert value == float(np.format_float_positional(np.float32(value), unique=True)), (key, value)


def test_failures_divergence_and_names_a_sweep_would_repeat(tmp_path):
    """SGD at 0.01 and 1e9 (diverges: FAILED) x two training sizes, a key run names do not show."""
    result = train(
        tmp_path, "optimizer=sgd", "optimizer.learning_rate=0.01,1e9", "data.train_size=256,512",
        *SETTINGS, *(o for o in TINY if not o.startswith("data.train_size")), check=False,
    )  # fmt: skip
    assert result.returncode == 1
    client, experiment_id = store(tmp_path)
    runs = job_runs(client, experiment_id, "multirun")
    # Names stay unique: the swept value they lack goes in front.
    assert sorted(runs) == sorted(
        f"s0 · train_size={n} · learning_rate={lr} · sgd-constant"
        for n in (256, 512)
        for lr in ("0.01", "1000000000.0")
    ), sorted(runs)
    failed = [r for r in runs.values() if r.info.status == "FAILED"]
    assert len(failed) == 2 and all(r.data.params["optimizer.learning_rate"] == "1000000000.0" for r in failed)
    (parent,) = client.search_runs([experiment_id], f"tags.`{tracking.TAG_ROLE}` = 'sweep'")
    assert parent.info.status == "FAILED"
    assert parent.data.params["sweep.optimizer.learning_rate"] == "0.01,1000000000.0"
    assert parent.data.params["sweep.data.train_size"] == "256,512"
    assert "sweep.training.seed" not in parent.data.params  # one seed: nothing swept
    metrics = parent.data.metrics
    assert (metrics["sweep/runs"], metrics["sweep/configurations"]) == (4.0, 4.0)
    assert (metrics["sweep/failed"], metrics["sweep/diverged"], metrics["sweep/best_n"]) == (2.0, 2.0, 1.0)
    assert "sweep/best_val_accuracy_std" not in metrics  # one seed
    finished = [r for r in runs.values() if r.info.status == "FINISHED"]
    best = max(finished, key=lambda r: r.data.metrics["val_accuracy"])
    assert metrics["sweep/best_val_accuracy_mean"] == best.data.metrics["val_accuracy"]
    assert parent.data.params["sweep.best_configuration"] == (
        f"learning_rate=0.01, train_size={best.data.params['data.train_size']}"
    )
