"""Where training is and the LR it applies there, as the callbacks read it: the optimizer's step, steps done."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from lrsweep.ml import keras_adapter
from lrsweep.ml.training import Member

LR_BLOCK = 64  # steps evaluated per call of a schedule: one input shape, one JAX compilation


def optimizer_steps(optimizer: keras.optimizers.Optimizer) -> int:
    """The optimizer's iteration count: the global step its next update applies."""
    return int(ops.convert_to_numpy(optimizer.iterations))


def steps_done(params: dict | None, batch: int) -> int:
    """Steps done in the epoch after Keras' batch `batch`: the chunk's last index, capped at the epoch's steps."""
    steps_in_epoch = params.get("steps") if params else None
    return batch + 1 if not steps_in_epoch else min(batch + 1, steps_in_epoch)


def current_lr(optimizer: keras.optimizers.Optimizer) -> float:
    """The LR the optimizer applies at its next step (a schedule is evaluated at its iteration count)."""
    return float(ops.convert_to_numpy(optimizer.learning_rate))


def optimizer_schedule(optimizer: keras.optimizers.Optimizer) -> Callable[[Any], Any]:
    """The function of the step that the optimizer evaluates for its LR (a constant if it has no schedule)."""
    schedule = keras_adapter.optimizer_schedule(optimizer)
    if schedule is not None:
        return schedule
    value = current_lr(optimizer)
    return lambda steps: np.full(np.shape(steps), value, dtype=np.float32)


def resolve_schedules(members: Sequence[Member], optimizer: keras.optimizers.Optimizer) -> None:
    """Gives each member without a schedule of its own (a solo run given by its run id) the optimizer's."""
    for member in members:
        if member.schedule is None:
            member.schedule = optimizer_schedule(optimizer)


def lr_at_steps(schedule: Callable[[Any], Any]) -> Callable[[np.ndarray], np.ndarray]:
    """The LR a schedule gives at many steps at once, as float64 values of its float32 results."""

    def lr_at(steps: np.ndarray) -> np.ndarray:
        # Evaluated in blocks of one length: JAX compiles every op anew for each new input shape (~0.4 s).
        padded = np.pad(steps, (0, -len(steps) % LR_BLOCK), mode="edge")
        return np.asarray(ops.convert_to_numpy(schedule(padded)), dtype=np.float64)[: len(steps)]

    return lr_at


def freeze_members(model: keras.Model, indices: Sequence[int]) -> None:
    """Freezes members of a pack (their entries of its optimizer's `alive` mask set to 0 before the next step): a
    member stopped by a callback would otherwise train on, unlogged. No-op for a solo model or no indices.

    Accessing `model` on JAX syncs the training state into the variables, and the next step reads it back from
    them, the new mask included."""
    alive = getattr(model.optimizer, "alive", None)
    if alive is None or not indices:
        return
    mask = np.array(ops.convert_to_numpy(alive))
    mask[list(indices)] = 0
    alive.assign(mask)
