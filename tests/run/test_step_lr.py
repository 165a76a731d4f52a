"""Per-step LR in MLflow: `lr_step` at the right global steps with the LR the optimizer applied there."""

from __future__ import annotations

import functools

import keras
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from keras import ops
from mlflow.tracking import MlflowClient

from lrsweep import tracking
from lrsweep.config import schema
from lrsweep.core import backend
from lrsweep.ml import schedules
from lrsweep.ml.schedules import KerasSchedule
from lrsweep.run import experiment
from lrsweep.run.callbacks import LR_STEP, MlflowStepLogger
from tests.conftest import CONF_DIR, TINY, job_runs, store, train


class CountingClient(MlflowClient):
    """A real MLflow client that also counts its `log_batch` requests."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches: list[int] = []

    def log_batch(self, run_id, metrics=(), params=(), tags=(), synchronous=None):
        self.batches.append(len(metrics))
        return super().log_batch(run_id, metrics, params, tags, synchronous)


def history(client: MlflowClient, run_id: str, key: str = LR_STEP) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def cosine_warmup() -> schedules.Schedule:
    return schedules.warmup_then_decay(
        0.01,
        {"shape": "cosine", "initial_lr": 0.001, "length": 5, "length_unit": "step"},
        functools.partial(schedules.cosine_decay, min_lr=0.0),
        steps_per_epoch=7,
        total_steps=21,
    )


def tiny_model(schedule: schedules.Schedule, steps_per_execution: int = 1) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(
        optimizer=keras.optimizers.Adam(KerasSchedule(schedule)), loss="mse", steps_per_execution=steps_per_execution
    )
    return model


XY = (np.random.default_rng(0).normal(size=(14, 4)), np.zeros((14, 2)))  # 7 steps of batch 2 per epoch


def read_back(schedule: schedules.Schedule, steps: int) -> dict[int, float]:
    """The LR the optimizer reports before each of its first `steps` updates, one real update at a time."""
    model = tiny_model(schedule)
    x, y = XY
    lrs = {}
    for k in range(steps):
        assert int(model.optimizer.iterations) == k
        lrs[k] = float(ops.convert_to_numpy(model.optimizer.learning_rate))
        model.train_on_batch(x[:2], y[:2])  # the LR depends on the step alone
    return lrs


@pytest.mark.parametrize("dispatch", ["in_order", "threads"])
def test_step_logger_logs_every_multiple_with_the_lr_the_optimizer_applied(store_uri, dispatch):
    """Callbacks fire once per 5 steps (steps_per_execution=5, and a short last chunk of 2 each epoch).

    With only async-safe callbacks, Keras on JAX calls `on_train_batch_end` from worker threads, possibly out of
    order; any other batch callback (train.py's StopOnDivergence, here a LambdaCallback) makes it call in order.
    """
    every = (1, 1, 3, 4, 50)
    flush_seconds = (0, 10, 10, 0, 10)  # 0: a request at every callback call that passed a multiple
    clients = [CountingClient(tracking.normalize_uri(store_uri)) for _ in every]
    experiment_id = clients[0].create_experiment("steps")
    run_ids = [clients[0].create_run(experiment_id).info.run_id for _ in every]
    callbacks = [MlflowStepLogger(*args) for args in zip(clients, run_ids, every, flush_seconds, strict=True)]
    if dispatch == "in_order":
        callbacks.append(keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: None))
    model = tiny_model(cosine_warmup(), steps_per_execution=5)
    model.fit(*XY, batch_size=2, epochs=3, shuffle=False, verbose=0, callbacks=callbacks)
    assert int(model.optimizer.iterations) == 21

    expected = read_back(cosine_warmup(), 21)
    for client, run_id, every_n_steps in zip(clients, run_ids, every, strict=True):
        logged = history(client, run_id)
        assert [k for k, _ in logged] == list(range(0, 21, every_n_steps)), every_n_steps
        np.testing.assert_allclose([lr for _, lr in logged], [expected[k] for k, _ in logged], rtol=1e-6)
        # Batched: at most one request per callback call (2 per epoch here), by default one per epoch.
        assert len(client.batches) <= 6 and sum(client.batches) == len(logged)
    assert clients[1].batches == [7, 7, 7]
    if dispatch == "in_order":
        assert clients[0].batches == [5, 2] * 3
        assert clients[3].batches == [
            2,
            1,
            1,
            1,
            1,
        ]  # chunks 0-4: 0 4, 5-6: none, 7-11: 8, 12-13: 12, 14-18: 16, 19-20: 20


def test_step_logger_off_and_a_resumed_fit(store_uri):
    client = MlflowClient(tracking.normalize_uri(store_uri))
    experiment_id = client.create_experiment("steps")
    off, resumed = (client.create_run(experiment_id).info.run_id for _ in range(2))
    model = tiny_model(cosine_warmup(), steps_per_execution=5)
    model.fit(*XY, batch_size=2, epochs=1, verbose=0, callbacks=[MlflowStepLogger(client, off, 0)])
    assert history(client, off) == []
    # A second fit continues the optimizer's count: steps 7.. are logged at their global step.
    model.fit(*XY, batch_size=2, epochs=2, verbose=0, callbacks=[MlflowStepLogger(client, resumed, 4)])
    assert [k for k, _ in history(client, resumed)] == [8, 12, 16, 20]


def test_bad_log_every_n_steps_fails_before_any_run(store_uri):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[f"tracking.uri={store_uri}", "backend=jax", *TINY, "tracking.log_every_n_steps=-1"],
        )
    backend.select(cfg.backend)
    with pytest.raises(ValueError, match=r"`tracking.log_every_n_steps` must be an integer >= 0 \(0: off\)\. Rec"):
        schema.check(cfg)  # as train.py, the single run's only schema check
        experiment.run(cfg)
    client, experiment_id = tracking.connect(store_uri, "lrsweep")
    assert client.search_runs([experiment_id]) == []


def test_sweep_over_warmup_shapes_logs_lr_step_at_global_steps(tmp_path):
    """3 jobs, 16 steps each (8 per epoch); callbacks every 3 steps, lr_step every 5, warm-up 0.5 epoch = 4 steps."""
    result = train(
        tmp_path,
        "schedule=warmup",
        "schedule.warmup.shape=linear,exponential,cosine",
        "schedule.warmup.length=0.5",
        "schedule/decay=cosine",
        "tracking.log_every_n_steps=5",
        "training.steps_per_execution=3",
        "training.epochs=2",
        "training.verbose=0",
        "backend=jax",
        *TINY,
    )
    client, experiment_id = store(tmp_path)
    runs = list(job_runs(client, experiment_id).values())
    shapes = {r.data.params["schedule.warmup.shape"]: r for r in runs}
    assert sorted(shapes) == ["cosine", "exponential", "linear"]
    ramps = {
        "linear": lambda x: x,
        "exponential": lambda x: 1 - np.exp(-5 * x),
        "cosine": lambda x: (1 - np.cos(np.pi * x)) / 2,
    }
    steps = np.array([0, 5, 10, 15])
    cosine = 0.01 * (1 + np.cos(np.pi * np.minimum(steps - 4, 12) / 12)) / 2  # the 12 steps after the warm-up
    for shape, run in shapes.items():
        assert run.info.status == "FINISHED" and run.data.params["choice.schedule/decay"] == "cosine"
        logged = history(client, run.info.run_id)
        assert [k for k, _ in logged] == steps.tolist(), shape
        expected = np.where(steps < 4, 0.01 * ramps[shape](steps / 4), cosine)
        np.testing.assert_allclose([lr for _, lr in logged], expected, rtol=1e-6, atol=1e-9)
        # The per-epoch `lr` is still there, at step = epoch: the LR of each epoch's first step (0 and 8).
        epoch_lr = history(client, run.info.run_id, "lr")
        assert [k for k, _ in epoch_lr] == [0, 1]
        assert epoch_lr[1][1] == pytest.approx(0.01 * (1 + np.cos(np.pi * 4 / 12)) / 2, rel=1e-6)
    assert "val_accuracy" in result.stdout


def test_batched_writer_sends_one_request_per_run_with_points_and_waits_for_them(store_uri):
    """Shared by the step logger and the range test's recorder: the timer, one `log_batch` per run, `wait`."""
    from lrsweep.run.callbacks import BatchedWriter

    client = CountingClient(tracking.normalize_uri(store_uri))
    experiment_id = client.create_experiment("writer")
    first, second = (client.create_run(experiment_id).info.run_id for _ in range(2))
    writer = BatchedWriter(client, flush_seconds=3600)
    writer.start()
    assert not writer.due()
    writer.write([(first, [("a", 0.5, 0), ("b", 1.5, 0), ("a", 0.25, 7)]), (second, [])])
    assert client.batches == [3]  # nothing sent for a run without points
    writer.wait()
    assert history(client, first, "a") == [(0, 0.5), (7, 0.25)] and history(client, first, "b") == [(0, 1.5)]
    assert history(client, second, "a") == []
    writer.flush_seconds = 0
    assert writer.due()


def test_batched_writer_hands_mlflow_more_than_its_batch_limit(store_uri):
    """Above MLflow's 1000 metrics per request MLflow splits the batch itself (the recorder writes 3 per step)."""
    from lrsweep.run.callbacks import BatchedWriter

    client = MlflowClient(tracking.normalize_uri(store_uri))
    run_id = client.create_run(client.create_experiment("writer")).info.run_id
    writer = BatchedWriter(client)
    writer.write([(run_id, [("a", float(k), k) for k in range(1500)])])
    writer.wait()
    assert history(client, run_id, "a") == [(k, float(k)) for k in range(1500)]


def test_a_fixed_learning_rate_is_logged_at_every_step_too(store_uri):
    """An optimizer given a float LR has no schedule (`keras_adapter.optimizer_schedule` None): its LR is constant."""
    client = MlflowClient(tracking.normalize_uri(store_uri))
    run_id = client.create_run(client.create_experiment("steps")).info.run_id
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    model.fit(*XY, batch_size=2, epochs=1, verbose=0, callbacks=[MlflowStepLogger(client, run_id, 3)])
    assert history(client, run_id) == [(0, 0.01), (3, 0.01), (6, 0.01)]  # float32 0.01, logged as 0.01
