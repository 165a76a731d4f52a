"""Every private attribute of Keras that lrsweep relies on, in one place; tests/ml/test_keras_adapter.py pins each.

Keras 3 has no public API for these (checked against Keras 3.15: `Optimizer.learning_rate` evaluates the schedule
rather than returning it, `get_config()` only serializes it; `Optimizer.variables` holds the slot variables but
interleaved and named by convention, not by kind). When an upgrade changes one, that test fails by name instead of
a sweep.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import keras
import numpy as np

# The method of `keras.optimizers.Optimizer` that applies every variable's update in one call, with the LR already
# evaluated: `(grads, trainable_variables, learning_rate)`. The packed optimizer (`lrsweep.run.packing`) overrides it
# to apply each member's own LR.
UPDATE_STEP_METHOD = "_backend_update_step"

# Slot variables of the optimizers whose effective LR lrsweep computes (`lrsweep.ml.effective_lr`), by attribute.
# `_velocity_hats` exists only with `amsgrad=True`, `_average_gradients` is filled only with `centered=True`.
SLOTS = {
    keras.optimizers.Adagrad: ("_accumulators",),
    keras.optimizers.Adadelta: ("_accumulated_grads", "_accumulated_delta_vars"),
    keras.optimizers.Adam: ("_momentums", "_velocities", "_velocity_hats"),
    keras.optimizers.RMSprop: ("_velocities", "_average_gradients"),
}


# Every slot variable list that holds an optimizer's state between steps, by class: what a pack member's state is
# besides its weights and the step count (`lrsweep.ml.member_state`). Lists a setting leaves unused are empty.
STATE_SLOTS = {
    keras.optimizers.SGD: ("momentums",),
    keras.optimizers.Adagrad: ("_accumulators",),
    keras.optimizers.Adadelta: ("_accumulated_grads", "_accumulated_delta_vars"),
    keras.optimizers.Adam: ("_momentums", "_velocities", "_velocity_hats"),
    keras.optimizers.RMSprop: ("_velocities", "_momentums", "_average_gradients"),
}
OWN_VARIABLES = ("iteration", "learning_rate")  # an optimizer's variables that are no slots (its `variables` lead)


def state_slots(optimizer: keras.optimizers.Optimizer) -> dict[str, Sequence[keras.Variable]]:
    """The built optimizer's slot lists (`STATE_SLOTS`) that hold variables, each one per trainable variable it was
    built on, in their order.

    Raises:
        ValueError: the optimizer holds variables these lists miss (an optimizer or Keras version lrsweep does not
            know), so its state could not be carried whole.
    """
    names = next((slots for cls, slots in STATE_SLOTS.items() if type(optimizer) is cls), None)
    if names is None:
        raise ValueError(f"lrsweep does not know where {type(optimizer).__name__} keeps its state")
    slots = {name: list(getattr(optimizer, name, None) or []) for name in names}
    slots = {name: variables for name, variables in slots.items() if variables}
    held = {id(v) for variables in slots.values() for v in variables}
    missed = [v.path for v in optimizer.variables if id(v) not in held and v.path.split("/")[-1] not in OWN_VARIABLES]
    if missed:
        raise ValueError(f"{type(optimizer).__name__} holds state lrsweep does not know: {missed[:3]}")
    return slots


def set_global_seed(seed: int) -> None:
    """`keras.utils.set_random_seed` without importing TensorFlow when the backend is not TensorFlow.

    Keras' own function seeds Python, NumPy and Keras' global seed generator, and also TensorFlow whenever it is
    installed, which imports it (seconds of start-up, and hundreds of MB) on the JAX backend too. Initial weights
    depend only on Keras' seed, so both give the same weights (tests/ml/test_keras_adapter.py compares them).
    """
    if keras.backend.backend() == "tensorflow":
        keras.utils.set_random_seed(seed)
        return
    from keras.src.backend.common import global_state
    from keras.src.random import seed_generator
    from keras.src.utils import rng_utils

    if not isinstance(seed, int):
        raise ValueError(f"Expected `seed` argument to be an integer. Received: seed={seed} (of type {type(seed)})")
    global_state.set_global_attribute(rng_utils.GLOBAL_RANDOM_SEED, seed)
    global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, None)  # recreated from the seed
    random.seed(seed)
    np.random.seed(seed)
    if keras.backend.backend() == "torch":  # as Keras' own function does
        import torch

        torch.manual_seed(seed)


def optimizer_schedule(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.schedules.LearningRateSchedule | None:
    """The schedule the optimizer evaluates at its iteration count for its LR (the object it was given), or None.

    None for a fixed LR (Keras keeps it in a variable) and for a plain callable.
    """
    schedule = getattr(optimizer, "_learning_rate", None)
    return schedule if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule) else None


def slot_variables(optimizer: keras.optimizers.Optimizer, name: str) -> Sequence[keras.Variable]:
    """One kind of the optimizer's slot variables (`SLOTS`), one per trainable variable, in their order.

    Raises:
        ValueError: `name` is not a slot lrsweep knows for this optimizer's class.
    """
    known = next((slots for cls, slots in SLOTS.items() if isinstance(optimizer, cls)), ())
    if name not in known:
        raise ValueError(
            f"`name` must be one of the slots of {type(optimizer).__name__}: {list(known)}. Received: name={name!r}"
        )
    return getattr(optimizer, name)


def sublayers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every layer inside the model, nested ones included (inside other layers, e.g. a MultiHeadAttention's Dense
    layers), which `model.layers` does not list."""
    return list(model._flatten_layers(include_self=False))


def variable_index(optimizer: keras.optimizers.Optimizer, variable: keras.Variable) -> int:
    """The position of a trainable variable in the optimizer's own lists (its slots, its update order)."""
    return optimizer._get_variable_index(variable)
