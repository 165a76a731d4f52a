"""Schedules: values against a NumPy reference of the formula, properties, errors, Keras round trip."""

from __future__ import annotations

import functools
import json

import keras
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from keras import ops

from lrsweep.ml import schedules
from lrsweep.ml.schedules import KerasSchedule
from tests.conftest import CONF_DIR, TINY, store, train


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


# Per-step warm-ups, what follows them, and the untuned rules: NumPy references of the docstrings' formulas.

SHAPES = {
    "linear": lambda x: x,
    "exponential": lambda x: 1 - np.exp(-5 * x),
    "cosine": lambda x: (1 - np.cos(np.pi * x)) / 2,
}
# (factory, its config arguments, reference lr(t) on the local step t; D = decay_steps, W = warm-up steps)
DECAYS = {
    "hold": (schedules.hold, {}, lambda t, peak, D, W, spe: np.full_like(t, peak)),
    "cosine": (
        schedules.cosine_decay,
        {"min_lr": 0.001},
        lambda t, peak, D, W, spe: 0.001 + (peak - 0.001) * (1 + np.cos(np.pi * np.minimum(t, D) / D)) / 2,
    ),
    "linear": (
        schedules.linear_decay,
        {"min_lr": 0.0},
        lambda t, peak, D, W, spe: peak * (1 - np.minimum(t, D) / D),
    ),
    "step": (
        schedules.step_decay,
        {"gamma": 0.5, "every_epochs": 1.5},
        lambda t, peak, D, W, spe: peak * 0.5 ** np.floor(t / (1.5 * spe)),
    ),
    "exponential": (
        schedules.exponential_decay,
        {"decay_rate": 0.25},
        lambda t, peak, D, W, spe: peak * 0.25 ** (t / spe),
    ),
    "inverse_sqrt": (
        schedules.inverse_sqrt_decay,
        {"timescale_epochs": None},
        lambda t, peak, D, W, spe: peak * np.sqrt(W / (W + t)),
    ),
    "wsd": (
        schedules.stable_decay,
        {"min_lr": 0.002, "decay_fraction": 0.25},
        lambda t, peak, D, W, spe: np.where(
            t < D - round(0.25 * D),
            peak,
            peak + (0.002 - peak) * np.minimum(t - (D - round(0.25 * D)), 0.25 * D) / (0.25 * D),
        ),
    ),
}


def warmup_reference(steps, peak, shape, initial_lr, warmup_steps, decay, total_steps, spe) -> np.ndarray:
    steps = np.asarray(steps, dtype=np.float64)
    ramp = initial_lr + (peak - initial_lr) * SHAPES[shape](steps / max(warmup_steps, 1))
    local = np.maximum(steps - warmup_steps, 0)
    after = DECAYS[decay][2](local, peak, total_steps - warmup_steps, warmup_steps, spe)
    return np.where(steps < warmup_steps, ramp, after)


def warmup_schedule(shape="linear", initial_lr=0.0, length=2, length_unit="epoch", decay="hold", **kwargs):
    factory, decay_args, _ = DECAYS[decay]
    args = {
        "peak_lr": 0.01,
        "warmup": {"shape": shape, "initial_lr": initial_lr, "length": length, "length_unit": length_unit},
        "decay": functools.partial(factory, **decay_args),
        "steps_per_epoch": 10,
        "total_steps": 100,
        **kwargs,
    }
    return schedules.warmup_then_decay(**args)


@pytest.mark.parametrize("decay", sorted(DECAYS))
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_warmup_then_decay_matches_reference(shape, decay):
    schedule = warmup_schedule(shape, initial_lr=0.001, decay=decay)  # W = 2 epochs of 10 steps
    steps = np.arange(130)  # past the end of training too
    expected = warmup_reference(steps, 0.01, shape, 0.001, 20, decay, 100, 10)
    np.testing.assert_allclose(evaluate(schedule, steps), expected, rtol=2e-6, atol=1e-9)
    # The boundary steps and the seam, spelled out.
    lr = evaluate(schedule, [0, 19, 20, 21, 99])
    assert lr[0] == pytest.approx(0.001, rel=1e-6)
    assert lr[1] == pytest.approx(0.001 + 0.009 * SHAPES[shape](19 / 20), rel=1e-6)
    assert lr[2] == pytest.approx(0.01, rel=1e-6)  # what follows starts at the peak on its local step 0
    assert lr[3] == pytest.approx(DECAYS[decay][2](np.array(1.0), 0.01, 80, 20, 10), rel=1e-6)


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_warmup_rises_to_the_peak_and_decays_fall(shape):
    for decay in DECAYS:
        lrs = evaluate(warmup_schedule(shape, decay=decay), np.arange(100))
        assert np.all(np.diff(lrs[:21]) > 0), decay  # strictly rising through the warm-up into the peak
        assert np.all(np.diff(lrs[20:]) <= 1e-9), decay  # never rising after it
        assert lrs.max() == pytest.approx(0.01, rel=1e-6) and np.all(lrs >= 0)


@pytest.mark.parametrize(
    ("length", "length_unit", "warmup_steps"),
    [(25, "step", 25), (2.5, "epoch", 25), (0.25, "fraction", 25), (0.34, "epoch", 3), (0.001, "fraction", 1)],
)
def test_warmup_length_in_steps_epochs_or_fraction(length, length_unit, warmup_steps):
    lrs = evaluate(warmup_schedule(length=length, length_unit=length_unit), np.arange(40))
    expected = warmup_reference(np.arange(40), 0.01, "linear", 0.0, warmup_steps, "hold", 100, 10)
    np.testing.assert_allclose(lrs, expected, rtol=1e-6, atol=1e-9)
    assert lrs[warmup_steps - 1] < 0.01 and lrs[warmup_steps] == pytest.approx(0.01, rel=1e-6)


def test_zero_length_warmup_is_what_follows_alone():
    lrs = evaluate(warmup_schedule(length=0, decay="cosine"), np.arange(100))
    np.testing.assert_allclose(lrs, DECAYS["cosine"][2](np.arange(100.0), 0.01, 100, 0, 10), rtol=2e-6)


def test_warmup_from_zero_starts_at_zero():
    assert evaluate(warmup_schedule(initial_lr=0), [0])[0] == 0.0
    assert evaluate(warmup_schedule(initial_lr=0), [1])[0] == pytest.approx(0.0005, rel=1e-6)


def test_both_warmups_ramp_down_when_they_start_above_where_they_end():
    """`linear` and `warmup` agree: an initial LR above the one reached is allowed (the LR range test's grid sweeps
    such schedules) and followed down along the same formula as a rise."""
    linear = evaluate(schedules.linear_warmup(0.02, 0.01, 3, steps_per_epoch=10), [0, 9, 10, 19, 20, 99])
    np.testing.assert_allclose(linear, [0.02, 0.02, 0.015, 0.015, 0.01, 0.01], rtol=1e-6)
    steps = np.arange(100)
    for shape in SHAPES:
        lrs = evaluate(warmup_schedule(shape, initial_lr=0.02), steps)  # to peak_lr 0.01 over 2 epochs of 10 steps
        np.testing.assert_allclose(lrs, warmup_reference(steps, 0.01, shape, 0.02, 20, "hold", 100, 10), rtol=2e-6)
        assert lrs[0] == pytest.approx(0.02, rel=1e-6) and np.all(np.diff(lrs[:21]) < 0), shape
        assert np.all(lrs[20:] == lrs[20]) and lrs[20] == pytest.approx(0.01, rel=1e-6), shape
    # Per epoch, the tutorial's warm-up reversed is the same line in both.
    tutorial = schedules.linear_warmup(0.02, 0.01, 5, steps_per_epoch=10)
    per_epoch = warmup_schedule(initial_lr=0.02, length=4, unit="epoch", total_steps=70)
    np.testing.assert_allclose(evaluate(per_epoch, np.arange(70)), evaluate(tutorial, np.arange(70)), rtol=1e-6)


def test_per_epoch_unit_reproduces_the_tutorial_warmup_exactly():
    """unit=epoch with a 4-epoch linear warm-up from 0.005 is the tutorial's 0.005 -> 0.01 over 5 epochs."""
    tutorial = schedules.linear_warmup(0.005, 0.01, 5, steps_per_epoch=1875)
    per_epoch = warmup_schedule(initial_lr=0.005, length=4, unit="epoch", steps_per_epoch=1875, total_steps=7 * 1875)
    steps = np.concatenate([np.arange(7) * 1875, np.arange(7) * 1875 + 1874, [937, 5000]])
    np.testing.assert_allclose(evaluate(per_epoch, steps), evaluate(tutorial, steps), rtol=1e-6)
    assert len(np.unique(evaluate(per_epoch, np.arange(0, 7 * 1875, 25)))) == 5


def test_per_epoch_unit_holds_any_schedule_through_the_epoch():
    per_step = warmup_schedule("cosine", initial_lr=0.001, decay="cosine")
    per_epoch = warmup_schedule("cosine", initial_lr=0.001, decay="cosine", unit="epoch")
    steps = np.arange(100)
    np.testing.assert_allclose(evaluate(per_epoch, steps), evaluate(per_step, steps // 10 * 10), rtol=1e-6)


def test_a_per_epoch_warmup_never_trains_an_epoch_at_lr_zero():
    # initial_lr null (the config default): per epoch, peak / (n + 1) over n = 2 warm-up epochs of 10 steps.
    lrs = evaluate(warmup_schedule(initial_lr=None, length=2, unit="epoch"), np.arange(30))
    np.testing.assert_allclose(lrs[[0, 10, 20]], [0.01 / 3, 0.02 / 3, 0.01], rtol=1e-6)
    assert lrs.min() > 0
    assert evaluate(warmup_schedule(initial_lr=None, length=2), [0])[0] == 0.0  # per step: from 0, as before
    with pytest.raises(ValueError) as excinfo:
        warmup_schedule(initial_lr=0.0, length=2, unit="epoch")
    assert str(excinfo.value).startswith(
        "`warmup.initial_lr` must be > 0 with unit=epoch: the LR is held through each epoch, so the whole first "
        "epoch would train at LR 0. Set schedule.warmup.initial_lr=null (default: peak_lr / 3 = 0.00333333 here)"
    )


def test_per_epoch_warmup_defaults_train_from_the_first_epoch_in_a_real_run(tmp_path):
    train(
        tmp_path, "schedule=warmup", "schedule.unit=epoch", "training.epochs=2", "backend=jax", "training.verbose=0",
        "tracking.effective_lr=false", *TINY, multirun=False,
    )  # fmt: skip
    client, experiment_id = store(tmp_path)
    (run,) = client.search_runs([experiment_id])
    lrs = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "lr"), key=lambda m: m.step)]
    assert lrs == pytest.approx([0.005, 0.01], rel=1e-6)  # warm-up of 1 epoch: peak / 2, then the peak
    refused = train(tmp_path, "schedule=warmup", "schedule.unit=epoch", "schedule.warmup.initial_lr=0",
                    "backend=jax", *TINY, multirun=False, check=False)  # fmt: skip
    assert refused.returncode != 0 and "the whole first epoch would train at LR 0" in refused.stderr + refused.stdout
    assert len(client.search_runs([experiment_id])) == 1  # the refused job opened no run


@pytest.mark.parametrize(("beta_2", "warmup_steps"), [(0.999, 2000), (0.99, 200), (0.98, 100)])
def test_untuned_linear_warmup_is_ma_and_yarats_rule(beta_2, warmup_steps):
    schedule = schedules.untuned_warmup(beta_2, 0.01, "linear", steps_per_epoch=100, total_steps=10_000)
    steps = np.array([0, 1, warmup_steps // 2, warmup_steps - 2, warmup_steps - 1, warmup_steps, 9_999])
    # The paper counts updates from t = 1: omega_t = min(1, t (1 - beta_2) / 2), t = step + 1.
    expected = 0.01 * np.minimum(1, (steps + 1) * (1 - beta_2) / 2)
    np.testing.assert_allclose(evaluate(schedule, steps), expected, rtol=1e-5)
    assert evaluate(schedule, [warmup_steps - 2])[0] < evaluate(schedule, [warmup_steps - 1])[0] == pytest.approx(0.01)


def test_untuned_exponential_warmup_is_ma_and_yarats_rule():
    schedule = schedules.untuned_warmup(0.999, 0.01, "exponential", steps_per_epoch=100, total_steps=10_000)
    steps = np.array([0, 1, 999, 2000, 4998, 4999, 5000, 9999])
    tau = 1000.0
    expected = np.where(steps < 4999, 0.01 * (1 - np.exp(-(steps + 1) / tau)), 0.01)  # 5 tau, then the peak
    np.testing.assert_allclose(evaluate(schedule, steps), expected, rtol=1e-5)
    lrs = evaluate(schedule, np.arange(10_000))
    assert np.all(np.diff(lrs) >= 0)


def test_untuned_warmup_hands_over_to_what_follows():
    cosine = functools.partial(schedules.cosine_decay, min_lr=0.0)
    schedule = schedules.untuned_warmup(0.99, 0.01, "linear", cosine, steps_per_epoch=10, total_steps=1000)
    lrs = evaluate(schedule, np.arange(1000))
    t = np.arange(801.0)  # the warm-up takes steps 0..198; the cosine spans the other 801
    np.testing.assert_allclose(lrs[199:], 0.01 * (1 + np.cos(np.pi * t / 801)) / 2, rtol=2e-5, atol=1e-9)
    assert lrs[198] == pytest.approx(0.01 * 199 / 200, rel=1e-6) and lrs[199] == pytest.approx(0.01, rel=1e-6)


BAD_WARMUPS = [
    ({"peak_lr": 0}, "`peak_lr` must be a finite learning rate > 0. Received: peak_lr=0"),
    ({"unit": "batch"}, "`unit` must be one of step, epoch. Received: unit='batch'"),
    ({"total_steps": None}, "`total_steps` must be an integer >= 1. Received: total_steps=None"),
    ({"warmup": {"shape": "linear"}}, "`warmup` must have the keys shape, initial_lr, length, length_unit."),
    (
        {"warmup.shape": "quadratic"},
        "`warmup.shape` must be one of linear, exponential, cosine. Received: warmup.shape='quadratic'",
    ),
    ({"warmup.initial_lr": -0.001}, "`warmup.initial_lr` must be a finite learning rate >= 0."),
    ({"warmup.length": -1}, "`warmup.length` must be a number in [0, inf). Received: warmup.length=-1"),
    ({"warmup.length": "1"}, "Received: warmup.length='1'"),
    (
        {"warmup.length": 1.5, "warmup.length_unit": "fraction"},
        "`warmup.length` must be a number in [0, 1]. Received: warmup.length=1.5",
    ),
    (
        {"warmup.length_unit": "epochs"},
        "`warmup.length_unit` must be one of step, epoch, fraction. Received: warmup.length_unit='epochs'",
    ),
    ({"decay": "cosine"}, "`decay` must be a schedule factory"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_WARMUPS)
def test_warmup_rejects_bad_arguments(overrides, message):
    args = {
        "peak_lr": 0.01,
        "warmup": {"shape": "linear", "initial_lr": 0.0, "length": 1, "length_unit": "epoch"},
        "steps_per_epoch": 10,
        "total_steps": 100,
    }
    for key, value in overrides.items():
        if key.startswith("warmup."):
            args["warmup"][key.split(".")[1]] = value
        else:
            args[key] = value
    with pytest.raises(ValueError) as excinfo:
        schedules.warmup_then_decay(**args)
    assert message in str(excinfo.value)


@pytest.mark.parametrize(
    ("factory", "kwargs", "message"),
    [
        (schedules.untuned_warmup, {"beta_2": None}, "`beta_2` must be read from an Adam-type optimizer"),
        (schedules.untuned_warmup, {"beta_2": 1.0}, "`beta_2` must be a number in (0, 1). Received: beta_2=1.0"),
        (schedules.untuned_warmup, {"rule": "cosine"}, "`rule` must be one of linear, exponential. Received: rule="),
        (schedules.cosine_decay, {"min_lr": 0.02}, "`min_lr` must be a number in [0, 0.01]. Received: min_lr=0.02"),
        (schedules.linear_decay, {"min_lr": -1e-3}, "`min_lr` must be a number in [0, 0.01]. Received: min_lr=-0.001"),
        (schedules.linear_decay, {"decay_steps": 0}, "`decay_steps` must be an integer >= 1. Received: decay_steps=0"),
        (schedules.step_decay, {"gamma": 0}, "`gamma` must be a number in (0, 1]. Received: gamma=0"),
        (schedules.step_decay, {"every_epochs": 0}, "`every_epochs` must be a number in (0, inf). Received: every"),
        (schedules.exponential_decay, {"decay_rate": 2}, "`decay_rate` must be a number in (0, 1]. Received: decay_"),
        (schedules.inverse_sqrt_decay, {"warmup_steps": 0}, "`timescale_epochs` must be set (> 0) for an inverse"),
        (schedules.inverse_sqrt_decay, {"timescale_epochs": -2}, "Received: timescale_epochs=-2"),
        (schedules.stable_decay, {"decay_fraction": 0}, "`decay_fraction` must be a number in (0, 1]. Received: deca"),
        (schedules.hold, {"peak_lr": None}, "`peak_lr` must be set to a learning rate > 0. Received: peak_lr=None"),
    ],
)
def test_untuned_and_decays_reject_bad_arguments(factory, kwargs, message):
    if factory is schedules.untuned_warmup:
        args = {"beta_2": 0.999, "peak_lr": 0.01, "steps_per_epoch": 10, "total_steps": 100}
    else:
        args = {"peak_lr": 0.01, "decay_steps": 80, "warmup_steps": 20, "steps_per_epoch": 10}
    with pytest.raises(ValueError) as excinfo:
        factory(**{**args, **kwargs})
    assert message in str(excinfo.value)


def test_join_runs_each_piece_on_its_local_step():
    schedule = schedules.join([lambda t: t, lambda t: 100 + t, lambda t: 200 + t], [3, 3])  # the middle is skipped
    np.testing.assert_array_equal(evaluate(schedule, [0, 2, 3, 4, 10]), [0, 2, 200, 201, 207])
    schedule = schedules.join([lambda t: t, lambda t: -t], [5])
    np.testing.assert_array_equal(evaluate(schedule, [4, 5, 6]), [4, 0, -1])
    with pytest.raises(
        ValueError, match="`boundaries` must be non-decreasing steps >= 0. Received: boundaries=\\[5, 2\\]"
    ):
        schedules.join([lambda t: t] * 3, [5, 2])


def test_warmup_get_config_round_trip_with_a_nested_decay():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=["schedule=warmup", "schedule/decay=wsd", "schedule.warmup.shape=cosine", "schedule.unit=step"],
        )
    original = KerasSchedule(instantiate(cfg.schedule)(steps_per_epoch=7, total_steps=70))
    config = original.get_config()
    assert config["schedule"] == {
        "_target_": "lrsweep.schedules.warmup_then_decay",
        "peak_lr": 0.01,
        "warmup": {"shape": "cosine", "initial_lr": None, "length": 1, "length_unit": "epoch"},
        "decay": {
            "_target_": "lrsweep.schedules.stable_decay",
            "_partial_": True,
            "min_lr": 0.0,
            "decay_fraction": 0.2,
        },
        "unit": "step",
        "steps_per_epoch": 7,
        "total_steps": 70,
    }
    assert json.loads(json.dumps(config)) == config  # plain data, no DictConfig or partials
    # From Python, a factory passed as is records the same node.
    in_python = schedules.warmup_then_decay(
        0.01, dict(cfg.schedule.warmup), schedules.hold, "step", steps_per_epoch=7, total_steps=70
    )
    assert in_python.config["decay"] == {"_target_": "lrsweep.schedules.hold", "_partial_": True}
    steps = np.arange(80)
    np.testing.assert_array_equal(evaluate(KerasSchedule.from_config(config), steps), evaluate(original, steps))
    optimizer = keras.optimizers.Adam(learning_rate=original)
    rebuilt = keras.optimizers.Adam.from_config(keras.optimizers.serialize(optimizer)["config"])
    np.testing.assert_array_equal(evaluate(rebuilt._learning_rate, steps), evaluate(original, steps))


@pytest.mark.parametrize(
    "schedule",
    [
        schedules.warmup_then_decay(
            0.004,
            {"shape": "exponential", "initial_lr": 0.0, "length": 5, "length_unit": "step"},
            functools.partial(schedules.cosine_decay, min_lr=0.0005),
            steps_per_epoch=3,
            total_steps=15,
        ),
        schedules.untuned_warmup(
            0.8, 0.004, "linear", functools.partial(schedules.step_decay), steps_per_epoch=3, total_steps=15
        ),
    ],
    ids=["warmup_cosine", "untuned"],
)
def test_optimizer_applies_per_step_schedules(schedule):
    """After k real training steps, the optimizer's LR equals schedule(k) (float32 tolerance), step by step."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.Adam(KerasSchedule(schedule)), loss="mse")
    x, y = np.random.default_rng(0).normal(size=(2, 4)), np.zeros((2, 2))
    seen = []
    for _ in range(15):
        seen.append((int(model.optimizer.iterations), float(ops.convert_to_numpy(model.optimizer.learning_rate))))
        model.train_on_batch(x, y)
    steps = [k for k, _ in seen]
    assert steps == list(range(15))
    np.testing.assert_allclose([lr for _, lr in seen], evaluate(schedule, steps), rtol=1e-6)
    assert len({lr for _, lr in seen}) > 5  # it really changes step by step
