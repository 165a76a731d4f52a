"""What lrsweep relies on of Keras' private attributes (`lrsweep.ml.keras_adapter`), one named test each.

Real Keras (JAX backend), tiny models. When a Keras upgrade breaks one of these, the failing test names the attribute.
"""

from __future__ import annotations

import inspect
import os
import random
import subprocess
import sys
from importlib.util import find_spec

import keras
import numpy as np
import pytest
from keras import ops

from lrsweep.ml import keras_adapter
from tests.conftest import ROOT

CONFIGS = {
    "adagrad": lambda: keras.optimizers.Adagrad(0.01, initial_accumulator_value=0.1),
    "adadelta": lambda: keras.optimizers.Adadelta(1.0, rho=0.95),
    "adam": lambda: keras.optimizers.Adam(0.01),
    "adam-amsgrad": lambda: keras.optimizers.Adam(0.01, amsgrad=True),
    "adamw": lambda: keras.optimizers.AdamW(0.01),  # a subclass: Adam's slots
    "rmsprop": lambda: keras.optimizers.RMSprop(0.01),
    "rmsprop-centered": lambda: keras.optimizers.RMSprop(0.01, centered=True),
}


def two_layers() -> keras.Model:
    """Dense(3) then Dense(2) on 4 inputs: four trainable variables of four shapes, so a mix-up shows."""
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(2)])


def gradients(variables) -> list[np.ndarray]:
    """Known gradients, one per variable, none zero."""
    rng = np.random.default_rng(1)
    return [(rng.uniform(0.5, 2.0, size=v.shape) * rng.choice([-1, 1], size=v.shape)).astype("float32")
            for v in variables]  # fmt: skip


def values(variables) -> list[np.ndarray]:
    return [ops.convert_to_numpy(v) for v in variables]


def slots_in_use(optimizer: keras.optimizers.Optimizer) -> list[str]:
    """The slots of `SLOTS` this optimizer's configuration fills."""
    (names,) = [slots for cls, slots in keras_adapter.SLOTS.items() if isinstance(optimizer, cls)]
    unused = {"_velocity_hats": not getattr(optimizer, "amsgrad", False),
              "_average_gradients": not getattr(optimizer, "centered", False)}  # fmt: skip
    return [name for name in names if not unused.get(name, False)]


# optimizer._learning_rate --------------------------------------------------------------------------------------


def test_learning_rate_attribute_is_the_schedule_object_passed():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
    for cls in (keras.optimizers.SGD, keras.optimizers.Adam, keras.optimizers.Adagrad):
        optimizer = cls(schedule)
        assert optimizer._learning_rate is schedule
        assert keras_adapter.optimizer_schedule(optimizer) is schedule
    # The public `learning_rate` is the schedule evaluated at the iteration count, not the schedule: why we read it.
    assert not isinstance(keras.optimizers.SGD(schedule).learning_rate, keras.optimizers.schedules.LearningRateSchedule)


def test_a_fixed_learning_rate_has_no_schedule():
    optimizer = keras.optimizers.Adam(0.01)
    assert keras_adapter.optimizer_schedule(optimizer) is None
    assert float(ops.convert_to_numpy(optimizer.learning_rate)) == pytest.approx(0.01)


# Slot variables ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONFIGS))
def test_each_slot_has_one_variable_per_trainable_variable_in_their_order(name):
    optimizer = CONFIGS[name]()
    model = two_layers()
    optimizer.build(model.trainable_variables)
    slots = slots_in_use(optimizer)
    assert slots, name
    for slot in slots:
        variables = keras_adapter.slot_variables(optimizer, slot)
        assert len(variables) == len(model.trainable_variables), slot
        assert [tuple(v.shape) for v in variables] == [tuple(v.shape) for v in model.trainable_variables], slot


def test_slot_variables_refuses_a_slot_the_optimizer_does_not_have():
    with pytest.raises(ValueError, match=r"`name` must be one of the slots of SGD: \[\]. Received: name='_momentums'"):
        keras_adapter.slot_variables(keras.optimizers.SGD(0.01), "_momentums")


def one_step(optimizer: keras.optimizers.Optimizer) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """One real update of a fresh model on known gradients: (gradients, variables' changes), one per variable."""
    model = two_layers()
    variables = model.trainable_variables
    before = values(variables)
    grads = gradients(variables)
    optimizer.apply(grads, variables)
    return grads, [after - start for after, start in zip(values(variables), before, strict=True)]


def slot_values(optimizer: keras.optimizers.Optimizer, slot: str) -> list[np.ndarray]:
    return values(keras_adapter.slot_variables(optimizer, slot))


def test_adam_slots_hold_the_moments_after_one_step():
    for amsgrad in (False, True):
        optimizer = keras.optimizers.Adam(0.01, beta_1=0.9, beta_2=0.999, amsgrad=amsgrad)
        grads, _ = one_step(optimizer)
        for g, m, v in zip(grads, slot_values(optimizer, "_momentums"), slot_values(optimizer, "_velocities"),
                           strict=True):  # fmt: skip
            np.testing.assert_allclose(m, (1 - 0.9) * g, rtol=1e-6)
            np.testing.assert_allclose(v, (1 - 0.999) * g**2, rtol=1e-5)
        if amsgrad:  # the running maximum of v, from 0
            for v_hat, v in zip(slot_values(optimizer, "_velocity_hats"), slot_values(optimizer, "_velocities"),
                                strict=True):  # fmt: skip
                np.testing.assert_array_equal(v_hat, v)


def test_adagrad_accumulators_hold_the_initial_value_plus_the_squared_gradient():
    optimizer = keras.optimizers.Adagrad(0.01, initial_accumulator_value=0.1)
    grads, _ = one_step(optimizer)
    for g, acc in zip(grads, slot_values(optimizer, "_accumulators"), strict=True):
        np.testing.assert_allclose(acc, 0.1 + g**2, rtol=1e-6)


def test_adadelta_slots_hold_the_running_squares_of_gradient_and_update():
    rho, eps, lr = 0.95, 1e-7, 1.0
    optimizer = keras.optimizers.Adadelta(lr, rho=rho, epsilon=eps)
    grads, changes = one_step(optimizer)
    grad_sq, delta_sq = slot_values(optimizer, "_accumulated_grads"), slot_values(optimizer, "_accumulated_delta_vars")
    for g, change, e_g2, e_dx2 in zip(grads, changes, grad_sq, delta_sq, strict=True):
        np.testing.assert_allclose(e_g2, (1 - rho) * g**2, rtol=1e-6)
        delta = -np.sqrt(0 + eps) * g / np.sqrt(e_g2 + eps)  # the update before the LR, from E[dx^2] = 0
        np.testing.assert_allclose(e_dx2, (1 - rho) * delta**2, rtol=1e-5)
        np.testing.assert_allclose(change, lr * delta, rtol=1e-3, atol=1e-9)  # float32 weights around 1


def test_rmsprop_slots_hold_the_running_square_and_mean_of_the_gradient():
    rho = 0.9
    optimizer = keras.optimizers.RMSprop(0.01, rho=rho, centered=True)
    grads, _ = one_step(optimizer)
    for g, v, mean in zip(grads, slot_values(optimizer, "_velocities"), slot_values(optimizer, "_average_gradients"),
                          strict=True):  # fmt: skip
        np.testing.assert_allclose(v, (1 - rho) * g**2, rtol=1e-6)
        np.testing.assert_allclose(mean, (1 - rho) * g, rtol=1e-6)


# optimizer._get_variable_index ---------------------------------------------------------------------------------


def test_variable_index_is_the_position_in_trainable_variables():
    model = two_layers()
    optimizer = keras.optimizers.Adam(0.01)
    optimizer.build(model.trainable_variables)
    assert [keras_adapter.variable_index(optimizer, v) for v in model.trainable_variables] == [0, 1, 2, 3]
    momentums = keras_adapter.slot_variables(optimizer, "_momentums")
    for variable in model.trainable_variables:  # the index finds the variable's own slot
        assert momentums[keras_adapter.variable_index(optimizer, variable)].shape == variable.shape


# Optimizer._backend_update_step --------------------------------------------------------------------------------


class Recording(keras.optimizers.SGD):
    """SGD that records each call of the collective update step, then updates with `lr_factor` x the LR."""

    def __init__(self, *args, lr_factor: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[list, list, float]] = []
        self.lr_factor = lr_factor

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        self.calls.append((list(grads), list(trainable_variables), learning_rate))
        super()._backend_update_step(grads, trainable_variables, learning_rate * self.lr_factor)


def test_the_update_step_method_has_the_signature_overridden():
    method = getattr(keras.optimizers.Optimizer, keras_adapter.UPDATE_STEP_METHOD)
    assert list(inspect.signature(method).parameters) == ["self", "grads", "trainable_variables", "learning_rate"]
    assert keras_adapter.UPDATE_STEP_METHOD in Recording.__dict__  # the name the test subclass overrides


def test_apply_calls_the_update_step_with_all_variables_and_the_evaluated_lr():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.5)
    optimizer = Recording(schedule)
    model = two_layers()
    variables = model.trainable_variables
    grads = gradients(variables)
    for _ in range(2):
        optimizer.apply(grads, variables)
    assert len(optimizer.calls) == 2
    for step, (passed_grads, passed_variables, learning_rate) in enumerate(optimizer.calls):
        assert [id(v) for v in passed_variables] == [id(v) for v in variables]
        for passed, g in zip(passed_grads, grads, strict=True):
            np.testing.assert_array_equal(ops.convert_to_numpy(passed), g)
        assert not isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule)
        assert float(ops.convert_to_numpy(learning_rate)) == pytest.approx(0.1 * 0.5**step)  # at the step it applies


def test_fit_updates_only_through_the_update_step():
    """Under `fit` (compiled on JAX) the override decides the update: an LR scaled by 0 leaves the weights unchanged."""
    model = two_layers()
    model.compile(optimizer=Recording(0.1, lr_factor=0.0), loss="mse")
    before = values(model.trainable_variables)
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    model.fit(x, np.ones((8, 2), "float32"), batch_size=4, epochs=1, verbose=0)
    assert int(ops.convert_to_numpy(model.optimizer.iterations)) == 2
    for after, start in zip(values(model.trainable_variables), before, strict=True):
        np.testing.assert_array_equal(after, start)
    assert model.optimizer.calls  # traced at least once


# set_global_seed -----------------------------------------------------------------------------------------------


def seeded_state(seed_with) -> tuple[list[np.ndarray], float, float]:
    """Initial weights of a fresh model, and Python's and NumPy's next random numbers, after seeding."""
    seed_with(123)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(2)])
    return values(model.weights), random.random(), float(np.random.random())


def test_set_global_seed_gives_the_weights_of_keras_set_random_seed():
    ours_weights, ours_python, ours_numpy = seeded_state(keras_adapter.set_global_seed)
    keras_weights, keras_python, keras_numpy = seeded_state(keras.utils.set_random_seed)
    for a, b in zip(ours_weights, keras_weights, strict=True):
        np.testing.assert_array_equal(a, b)
    assert (ours_python, ours_numpy) == (keras_python, keras_numpy)
    other, _, _ = seeded_state(lambda _: keras_adapter.set_global_seed(124))
    assert not np.array_equal(other[0], ours_weights[0])  # the seed matters
    with pytest.raises(ValueError, match="Expected `seed` argument to be an integer. Received: seed=1.5"):
        keras_adapter.set_global_seed(1.5)


TENSORFLOW_IMPORTED = """
import sys
import keras
from lrsweep.ml import keras_adapter
{seed}(0)
keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
print("tensorflow" in sys.modules)
"""


@pytest.mark.parametrize(
    ("seed", "imported"),
    [("keras_adapter.set_global_seed", False), ("keras.utils.set_random_seed", find_spec("tensorflow") is not None)],
)
def test_set_global_seed_does_not_import_tensorflow_on_jax(seed, imported):
    """Keras' own function imports TensorFlow whenever it is installed (the reason for ours)."""
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", TENSORFLOW_IMPORTED.format(seed=seed)], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(imported)


def test_sublayers_lists_nested_layers_that_model_layers_does_not():
    inputs = keras.Input((4, 8))
    outputs = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4, name="attention")(inputs, inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, kernel_regularizer="l2", name="out")(outputs))
    names = [layer.name for layer in keras_adapter.sublayers(model)]
    assert "attention" in names and "out" in names
    assert {"query", "key", "value", "attention_output"} <= set(names)  # inside the attention layer
    assert not {"query", "key"} & {layer.name for layer in model.layers}


# STATE_SLOTS: every slot list holding an optimizer's state (what a member moved between packs takes along) ------


@pytest.mark.parametrize(
    ("cls", "settings", "expected"),
    [
        (keras.optimizers.SGD, {"momentum": 0.9}, {"momentums"}),
        (keras.optimizers.SGD, {}, set()),
        (keras.optimizers.Adam, {}, {"_momentums", "_velocities"}),
        (keras.optimizers.Adam, {"amsgrad": True}, {"_momentums", "_velocities", "_velocity_hats"}),
        (keras.optimizers.Adagrad, {}, {"_accumulators"}),
        (keras.optimizers.Adadelta, {}, {"_accumulated_grads", "_accumulated_delta_vars"}),
        (
            keras.optimizers.RMSprop,
            {"momentum": 0.5, "centered": True},
            {"_velocities", "_momentums", "_average_gradients"},
        ),
    ],
)
def test_state_slots_hold_every_slot_variable_one_per_trainable_variable(cls, settings, expected):
    variables = [keras.Variable(np.ones((3, 2), "float32")), keras.Variable(np.zeros((2,), "float32"))]
    optimizer = cls(learning_rate=0.01, **settings)
    optimizer.build(variables)
    slots = keras_adapter.state_slots(optimizer)
    assert set(slots) == expected
    for slot_list in slots.values():
        assert [tuple(v.shape) for v in slot_list] == [(3, 2), (2,)]
    # Nothing else: the optimizer's own variables are its step count and LR.
    held = sum(len(v) for v in slots.values())
    assert len(optimizer.variables) == held + len(keras_adapter.OWN_VARIABLES)


def test_an_optimizer_whose_state_lrsweep_does_not_know_is_refused():
    optimizer = keras.optimizers.Nadam(0.01)
    optimizer.build([keras.Variable(np.ones((2,), "float32"))])
    with pytest.raises(ValueError, match="does not know where Nadam keeps its state"):
        keras_adapter.state_slots(optimizer)
