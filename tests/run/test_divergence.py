"""Divergence, one rule everywhere: a loss NaN/inf or above `training.divergence_factor` x its start fails the run.

The same exploding configuration fails with the same message on TensorFlow (where its loss stays finite, 1e32)
and JAX (where it becomes NaN); in a pack it fails alone, the others train as if alone; healthy runs never stop.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml
from hydra import compose, initialize_config_dir

from lrsweep import tracking
from tests.conftest import CONF_DIR, TINY, TUTORIAL_STRATEGIES, job_runs, store, train

EXPLODING = ["optimizer=sgd", "optimizer.learning_rate=1e9", "training.epochs=1", "training.verbose=0", *TINY]
DEFAULT_FACTOR = yaml.safe_load((CONF_DIR / "training" / "default.yaml").read_text())["divergence_factor"]
# TINY: 512 examples in batches of 64 are 8 steps per epoch, checked once (steps_per_execution 64 > 8), at step 8.
MESSAGE = (
    f"DivergedError: training diverged in epoch 0 (by batch 8): the loss was not finite or above {DEFAULT_FACTOR:g}x "
    f"its value before training (training.divergence_factor={DEFAULT_FACTOR:g}). Lower the learning rate (or the "
    "warm-up's peak) for this configuration."
)


def values(client, run_id: str, key: str) -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def test_the_default_factor_is_in_the_training_config():
    assert isinstance(DEFAULT_FACTOR, (int, float)) and DEFAULT_FACTOR > 1


# The rule, in process ------------------------------------------------------------------------------------------


def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=[*TINY, "training.verbose=0", *overrides])


@pytest.fixture
def pack():
    """A real pack of two SGD members (JAX), built as a sweep builds it, and its data."""
    from lrsweep.core import identity
    from lrsweep.run import experiment
    from lrsweep.run.pack import build_pack

    jobs = []
    for k, lr in enumerate(("0.01", "0.02")):
        cfg = compose_cfg("optimizer=sgd", f"optimizer.learning_rate={lr}", f"tracking.run_name=m{k}")
        jobs.append(experiment.prepare(cfg, identity.JobContext()))
    dataset = experiment.instantiate(jobs[0].cfg.data)
    return build_pack(jobs, dataset), dataset


def watch(plan, dataset, factor):
    from lrsweep.ml.training import Member
    from lrsweep.run.callbacks import StopOnDivergence, reference_examples

    members = [Member(run_id="", schedule=s, index=k, name=f"m{k}") for k, s in enumerate(plan.schedules)]
    callback = StopOnDivergence(members, factor, reference_examples(dataset))
    plan.model.optimizer.build(plan.model.trainable_variables)  # as by the first step of `fit`
    callback.set_model(plan.model)
    callback.set_params({"steps": 8, "epochs": 1})
    callback.on_train_begin()
    callback.on_epoch_begin(0)
    return callback, members


def test_the_starting_loss_is_each_members_loss_before_training(pack):
    """Measured on the first 256 training examples, member by member, as its solo model would score them."""
    import keras

    from lrsweep.ml.divergence import REFERENCE_EXAMPLES, member_losses
    from lrsweep.ml.training import Member
    from lrsweep.run import experiment

    plan, dataset = pack
    callback, _ = watch(plan, dataset, 10.0)
    assert all(2.0 < start < 2.7 for start in callback.starting_losses)  # ~ln 10: an untrained 10-class model
    x, y = dataset.x_train[:REFERENCE_EXAMPLES], dataset.y_train[:REFERENCE_EXAMPLES]
    keras.backend.clear_session()
    solo = experiment.build_model(compose_cfg("optimizer=sgd"))  # member 0's seed, so its initial weights
    expected = float(keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, solo(x)))
    (alone,) = member_losses(solo, x, y, [Member(run_id="", schedule=None)])
    assert alone == pytest.approx(expected, rel=1e-6)
    assert callback.starting_losses[0] == pytest.approx(expected, rel=1e-5)


def test_a_finite_loss_above_the_factor_stops_and_freezes_only_that_member(pack):
    from keras import ops

    from lrsweep.ml.divergence import DivergedError, divergence_message

    plan, dataset = pack
    model = plan.model
    callback, members = watch(plan, dataset, 10.0)
    start = callback.starting_losses
    before = [model.member_weights(k) for k in range(2)]
    # Exactly at the limit is not above it; member 1 just above it is.
    callback.on_train_batch_end(7, {"loss_0": 10.0 * start[0], "loss_1": 10.0 * start[1] * 1.001})
    assert members[0].error is None and members[0].stopped_step is None
    assert isinstance(members[1].error, DivergedError)
    assert (
        str(members[1].error)
        == divergence_message(0, 8, 10.0)
        == (
            "training diverged in epoch 0 (by batch 8): the loss was not finite or above 10x its value before training "
            "(training.divergence_factor=10). Lower the learning rate (or the warm-up's peak) for this configuration."
        )
    )
    assert (members[1].stopped_epoch, members[1].stopped_step) == (0, 8)
    assert not model.stop_training  # member 0 trains on
    np.testing.assert_array_equal(ops.convert_to_numpy(model.optimizer.alive), [1.0, 0.0])
    x, y = dataset.x_train[:64], dataset.y_train[:64]
    model.train_on_batch(np.stack([x], axis=1), y[:, None])  # one data group: (batch, groups, 28, 28)
    after = [model.member_weights(k) for k in range(2)]
    assert any(not np.array_equal(a, b) for a, b in zip(before[0], after[0], strict=True))  # member 0 learns
    for a, b in zip(before[1], after[1], strict=True):  # member 1 is frozen
        np.testing.assert_array_equal(a, b)
    callback.on_train_batch_end(7, {"loss_0": math.nan, "loss_1": 1.0})
    assert isinstance(members[0].error, DivergedError) and model.stop_training  # all stopped: training stops


def test_without_a_factor_only_a_non_finite_loss_counts(pack):
    plan, dataset = pack
    callback, members = watch(plan, dataset, None)
    assert callback.starting_losses == [None, None]  # nothing measured
    callback.on_train_batch_end(7, {"loss_0": 1e30, "loss_1": math.inf})
    assert members[0].error is None
    assert str(members[1].error).startswith("training diverged in epoch 0 (by batch 8): the loss was not finite "
                                            "(training.divergence_factor=null).")  # fmt: skip


def test_a_range_test_keeps_its_own_stop_rule():
    """Its loss rises on purpose: only NaN/inf is flagged (and taken back by the range test's recorder)."""
    from lrsweep.run import job, watching
    from lrsweep.run.callbacks import StopOnDivergence

    def factor(*overrides: str) -> float | None:
        cfg = compose_cfg(*overrides)
        (watch,) = [c for c in watching.callbacks(None, cfg, [], job.instantiate(cfg.data))
                    if isinstance(c, StopOnDivergence)]  # fmt: skip
        return watch.factor

    assert factor("+experiment=lr_range") is None
    assert factor() == DEFAULT_FACTOR
    assert factor("training.divergence_factor=null") is None


# Real runs, through train.py -----------------------------------------------------------------------------------


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    ("overrides", "nan_on"),
    [
        # The case: on the full data TensorFlow's loss stayed finite (7.5e32); on these 512 examples it and
        # JAX's become NaN.
        (EXPLODING, {"tensorflow", "jax"}),
        # Adam at LR 10: finite on both backends (thousands of times its start): the factor stops it.
        (["optimizer.learning_rate=10", "training.epochs=1", "training.verbose=0", *TINY], set()),
    ],
    ids=["sgd-1e9", "adam-10"],
)
def test_the_same_exploding_config_fails_with_the_same_message_on_tensorflow_and_jax(tmp_path, overrides, nan_on):
    tags = {}
    for name in ("tensorflow", "jax"):
        folder = tmp_path / name
        folder.mkdir()
        result = train(folder, *overrides, f"backend={name}", multirun=False, check=False)
        assert result.returncode == 1, result.stderr[-3000:]
        # One line, the run's own message, no traceback (a `CompactHydraException`, as Hydra prints those).
        assert "Traceback" not in result.stderr and "lrsweep: " + MESSAGE.removeprefix("DivergedError: ") in (
            result.stderr
        ), result.stderr[-3000:]
        client, experiment_id = store(folder)
        (run,) = job_runs(client, experiment_id).values()
        assert run.info.status == "FAILED"
        assert run.data.tags["lrsweep.backend"] == name
        tags[name] = run.data.tags
        assert values(client, run.info.run_id, "loss") != []  # the epoch it stopped in is logged
        assert "test_loss" not in run.data.metrics  # a diverged run is not scored on the test set
    assert tags["tensorflow"][tracking.TAG_ERROR] == tags["jax"][tracking.TAG_ERROR] == MESSAGE
    # What tripped the rule is kept in tags.
    for name, tag in tags.items():
        loss, start = float(tag["lrsweep.diverged.loss"]), float(tag["lrsweep.diverged.starting_loss"])
        assert 2.0 < start < 2.7
        assert math.isnan(loss) if name in nan_on else loss > DEFAULT_FACTOR * start


@pytest.mark.timeout(600)
def test_in_a_pack_the_exploding_member_fails_alone_and_the_healthy_one_trains_as_if_alone(tmp_path):
    """Adam at LR 10 next to LR 0.01: its loss stays finite, so the factor stops it and the callback freezes it."""
    sweep = ["training.epochs=2", "training.verbose=0", "backend=tensorflow", *TINY]
    result = train(tmp_path, *sweep, "optimizer.learning_rate=0.01,10", check=False)
    assert result.returncode == 1
    client, experiment_id = store(tmp_path)
    runs = job_runs(client, experiment_id, "multirun")
    exploding, healthy = "s0 · learning_rate=10 · adam-constant", "s0 · learning_rate=0.01 · adam-constant"
    assert {n: r.info.status for n, r in runs.items()} == {exploding: "FAILED", healthy: "FINISHED"}
    assert {r.data.tags[tracking.TAG_PACK_SIZE] for r in runs.values()} == {"2"}
    assert runs[exploding].data.tags[tracking.TAG_ERROR] == MESSAGE
    assert math.isfinite(float(runs[exploding].data.tags["lrsweep.diverged.loss"]))  # the factor, not NaN
    assert [m.step for m in client.get_metric_history(runs[exploding].info.run_id, "loss")] == [0]

    train(tmp_path, *sweep, "optimizer.learning_rate=0.01", "hydra/launcher=basic", "resume=false",
          f"hydra.sweep.dir={tmp_path / 'solo'}")  # fmt: skip
    (alone,) = job_runs(client, experiment_id, "solo").values()
    ours = runs[healthy].info.run_id
    for key in ("loss", "val_loss", "test_loss"):  # tolerances as tests/run/test_packing.py's
        np.testing.assert_allclose(values(client, ours, key), values(client, alone.info.run_id, key), rtol=1e-5)
    for key in ("accuracy", "val_accuracy", "test_accuracy"):
        np.testing.assert_allclose(
            values(client, ours, key), values(client, alone.info.run_id, key), atol=1 / 64 + 1e-9
        )  # one example of 64


def test_the_tutorials_four_strategies_are_never_flagged(tutorial_sweep):
    tmp_path, _ = tutorial_sweep  # conftest's: the four strategies (as +experiment=tutorial sweeps them) x 2 seeds
    client, experiment_id = store(tmp_path)
    runs = job_runs(client, experiment_id)
    assert {r.data.params["choice.strategy"] for r in runs.values()} == set(TUTORIAL_STRATEGIES)
    assert len(runs) == 8 and {r.info.status for r in runs.values()} == {"FINISHED"}
    assert not any("lrsweep.diverged.loss" in r.data.tags for r in runs.values())
