"""Schedules: values against a NumPy reference of the formula, properties, errors, Keras round trip."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

from lrsweep import schedules
from lrsweep.schedules import KerasSchedule


def evaluate(schedule, steps) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(schedule(np.asarray(steps))), dtype=np.float64)


def tutorial_lr(epoch: np.ndarray, initial_lr: float, final_lr: float, warmup_epochs: int) -> np.ndarray:
    """The tutorial's scheduler, held at final_lr after the warm-up."""
    delta = (final_lr - initial_lr) / (warmup_epochs - 1)
    return initial_lr + np.minimum(epoch, warmup_epochs - 1) * delta


@pytest.mark.parametrize(
    ("initial_lr", "final_lr", "warmup_epochs"), [(0.005, 0.01, 5), (0.001, 0.02, 3), (0.01, 0.002, 2)]
)
def test_linear_warmup_matches_formula_per_epoch(initial_lr, final_lr, warmup_epochs):
    steps_per_epoch = 7
    schedule = schedules.linear_warmup(initial_lr, final_lr, warmup_epochs, steps_per_epoch=steps_per_epoch)
    steps = np.arange(0, (warmup_epochs + 3) * steps_per_epoch)
    expected = tutorial_lr(steps // steps_per_epoch, initial_lr, final_lr, warmup_epochs)
    np.testing.assert_allclose(evaluate(schedule, steps), expected, rtol=1e-6)


def test_linear_warmup_tutorial_values_at_epoch_boundaries():
    schedule = schedules.linear_warmup(0.005, 0.01, 5, steps_per_epoch=1875)
    first_steps = np.arange(7) * 1875
    last_steps = first_steps + 1874
    expected = [0.005, 0.00625, 0.0075, 0.00875, 0.01, 0.01, 0.01]  # held after epoch 4
    np.testing.assert_allclose(evaluate(schedule, first_steps), expected, rtol=1e-6)
    np.testing.assert_allclose(evaluate(schedule, last_steps), expected, rtol=1e-6)


def test_linear_warmup_is_monotonic_and_stepwise():
    lrs = evaluate(schedules.linear_warmup(0.001, 0.01, 4, steps_per_epoch=10), np.arange(80))
    assert np.all(np.diff(lrs) >= 0)
    assert len(np.unique(lrs)) == 4  # one value per warm-up epoch, then held


def test_constant_is_constant_in_float32():
    lrs = evaluate(schedules.constant(0.01, steps_per_epoch=5), np.arange(100))
    np.testing.assert_array_equal(lrs, np.float32(0.01))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"warmup_epochs": 1},
            "`warmup_epochs` must be an integer >= 2 for a linear warm-up. Received: warmup_epochs=1",
        ),
        ({"warmup_epochs": 2.5}, "Received: warmup_epochs=2.5"),
        ({"initial_lr": 0.0}, "`initial_lr` must be a finite learning rate > 0. Received: initial_lr=0.0"),
        ({"initial_lr": -0.1}, "Received: initial_lr=-0.1"),
        ({"final_lr": None}, "`final_lr` must be set to a learning rate > 0. Received: final_lr=None"),
        ({"final_lr": "0.01"}, "Received: final_lr='0.01'"),
        ({"final_lr": float("inf")}, "Received: final_lr=inf"),
        ({"steps_per_epoch": 0}, "`steps_per_epoch` must be an integer >= 1"),
    ],
)
def test_linear_warmup_rejects_bad_arguments(kwargs, message):
    args = {"initial_lr": 0.005, "final_lr": 0.01, "warmup_epochs": 5, "steps_per_epoch": 10, **kwargs}
    with pytest.raises(ValueError) as excinfo:
        schedules.linear_warmup(**args)
    assert message in str(excinfo.value)


def test_int_learning_rate_is_accepted_as_float():
    # YAML `lr: 1` arrives as an int; Keras 3 optimizers would reject it, the schedule casts it.
    assert evaluate(schedules.constant(1, steps_per_epoch=1), [0])[0] == 1.0
    with pytest.raises(ValueError, match="Received: value=True"):
        schedules.constant(True)


def test_keras_schedule_get_config_round_trip():
    original = KerasSchedule(schedules.linear_warmup(0.002, 0.02, 3, steps_per_epoch=4))
    config = original.get_config()
    assert config["schedule"] == {
        "_target_": "lrsweep.schedules.linear_warmup",
        "initial_lr": 0.002,
        "final_lr": 0.02,
        "warmup_epochs": 3,
        "steps_per_epoch": 4,
        "total_steps": None,
    }
    restored = KerasSchedule.from_config(config)
    steps = np.arange(20)
    np.testing.assert_array_equal(evaluate(restored, steps), evaluate(original, steps))
    # Also through Keras' own serialization of an optimizer that holds the schedule.
    optimizer = keras.optimizers.Adam(learning_rate=original)
    rebuilt = keras.optimizers.Adam.from_config(keras.optimizers.serialize(optimizer)["config"])
    assert isinstance(rebuilt._learning_rate, KerasSchedule)
    np.testing.assert_array_equal(evaluate(rebuilt._learning_rate, steps), evaluate(original, steps))


def test_optimizer_applies_the_schedule_step_by_step():
    """After k real training steps, the optimizer's LR equals schedule(k) (float32 tolerance)."""
    schedule = schedules.linear_warmup(0.001, 0.004, 4, steps_per_epoch=3)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(KerasSchedule(schedule)), loss="mse")
    x, y = np.random.default_rng(0).normal(size=(6, 4)), np.zeros((6, 2))
    seen = []
    for _ in range(5):  # 5 epochs x 3 steps
        seen.append((int(model.optimizer.iterations), float(ops.convert_to_numpy(model.optimizer.learning_rate))))
        model.fit(x, y, batch_size=2, epochs=1, verbose=0, shuffle=False)
    steps = [k for k, _ in seen]
    assert steps == [0, 3, 6, 9, 12]
    np.testing.assert_allclose([lr for _, lr in seen], evaluate(schedule, steps), rtol=1e-6)
    np.testing.assert_allclose([lr for _, lr in seen], [0.001, 0.002, 0.003, 0.004, 0.004], rtol=1e-6)
