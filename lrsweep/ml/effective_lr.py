"""The learning rate adaptive optimizers really apply: per-parameter effective step sizes from their slot variables."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import keras
import numpy as np
from keras import ops

from lrsweep.ml.keras_adapter import optimizer_schedule, slot_variables


class EffectiveLR(NamedTuple):
    """Per-parameter effective step sizes, flattened and concatenated over all trainable variables.

    Attributes:
        values: the effective learning rate of every parameter (float64).
        has_gradient: False where the optimizer's gradient second moment still holds its initial value, i.e.
            no non-zero gradient has ever reached the parameter (e.g. a dead ReLU unit, an always-zero input).
    """

    values: np.ndarray
    has_gradient: np.ndarray


Select = Callable[[Sequence[keras.Variable]], np.ndarray]


def flatten(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """The values of an optimizer's slot variables (one per model variable), flattened into one float64 array."""
    return np.concatenate([np.ravel(a) for a in arrays]).astype(np.float64)


def _as_float32(value: float) -> float:
    """A hyperparameter as the float32 number Keras computes with (matters for 1 - beta**t at small t)."""
    return float(np.float32(value))


def adagrad(optimizer: keras.optimizers.Adagrad, lr: float, step: int, select: Select) -> EffectiveLR:
    """Adagrad: `lr / sqrt(acc + eps)`, so that the update is `-effective_lr * g`.

    `acc` already includes the last gradient's square (Keras adds g^2 before dividing), and `eps` sits inside
    the square root as in Keras' `update_step`. `acc` starts at `initial_accumulator_value`.
    """
    acc = select(slot_variables(optimizer, "_accumulators"))
    values = lr / np.sqrt(acc + optimizer.epsilon)
    return EffectiveLR(values, acc != _as_float32(optimizer.initial_accumulator_value))


def adadelta(optimizer: keras.optimizers.Adadelta, lr: float, step: int, select: Select) -> EffectiveLR:
    """Adadelta: `lr * sqrt(E[dx^2] + eps) / sqrt(E[g^2] + eps)`, so that the update is `-effective_lr * g`.

    Keras updates `E[g^2]` with the new gradient before the step and `E[dx^2]` with the step after it. Read after
    step t, the slots hold `E[g^2]_t` (the denominator step t used) and `E[dx^2]_t` (the numerator step t + 1 will
    use; step t used `E[dx^2]_{t-1}`, which is gone). The value is therefore the step size per unit gradient that
    step t + 1 would apply if its gradient left `E[g^2]` unchanged; it differs from step t's by the factor
    `sqrt((E[dx^2]_t + eps) / (E[dx^2]_{t-1} + eps))`, which lies in `[sqrt(rho), sqrt(2))`.
    """
    grad_sq = select(slot_variables(optimizer, "_accumulated_grads"))
    delta_sq = select(slot_variables(optimizer, "_accumulated_delta_vars"))
    values = lr * np.sqrt(delta_sq + optimizer.epsilon) / np.sqrt(grad_sq + optimizer.epsilon)
    return EffectiveLR(values, grad_sq != 0)


_NO_RECENT_GRADIENT = 1e-30  # |m| below this: Adam's first moment has decayed for hundreds of gradient-free steps


def adam(optimizer: keras.optimizers.Adam, lr: float, step: int, select: Select) -> EffectiveLR:
    """Adam: `lr * sqrt(1 - beta_2^t) / (1 - beta_1^t) / (sqrt(v) + eps)`, so that the update is `-effective_lr * m`.

    This is Keras' form: the bias corrections are folded into the LR and `eps` is added to `sqrt(v)` (not to
    `sqrt(v_hat)` as in the paper). `m` and `v` already include step t's gradient; `t` is 1-based (Keras'
    `local_step = iterations + 1` before the increment). With `amsgrad`, `v` is the running maximum `v_hat`.
    Where `v == 0` exactly the ratio is `alpha / eps` (10^5 x alpha at eps=1e-7) although `m == 0` makes the
    actual update 0. Parameters that stop getting gradients (dead ReLU units) show the same blow-up more slowly:
    `v` decays by beta_2 per step, so their ratio grows ~2.5x per epoch of 1875 steps while they are not trained
    at all. `has_gradient` marks False both `v == 0` and `|m| < 1e-30`: m decays by beta_1 = 0.9 per step without
    a gradient, from ~1e-3 to below 1e-30 in ~600 steps (float32 rounding then leaves it stuck near 1e-37 rather
    than at 0), so such a parameter has had no gradient for hundreds of steps and its update is ~0.
    """
    beta_1, beta_2 = _as_float32(optimizer.beta_1), _as_float32(optimizer.beta_2)
    alpha = lr * np.sqrt(1 - beta_2**step) / (1 - beta_1**step)
    v = select(slot_variables(optimizer, "_velocity_hats" if optimizer.amsgrad else "_velocities"))
    m = select(slot_variables(optimizer, "_momentums"))
    values = alpha / (np.sqrt(v) + optimizer.epsilon)
    return EffectiveLR(values, (v != 0) & (np.abs(m) >= _NO_RECENT_GRADIENT))


def rmsprop(optimizer: keras.optimizers.RMSprop, lr: float, step: int, select: Select) -> EffectiveLR:
    """RMSprop: `lr / sqrt(v + eps)`, so that the increment is `effective_lr * g`.

    `v` already includes the last gradient's square; `eps` sits inside the square root as in Keras. When
    `centered`, the denominator is `sqrt(v - mean(g)^2 + eps)`. With `momentum > 0` the variable moves by the
    momentum-accumulated increments, so the value is the step size per unit gradient before momentum.
    """
    v = select(slot_variables(optimizer, "_velocities"))
    denominator = v
    if optimizer.centered:
        denominator = v - select(slot_variables(optimizer, "_average_gradients")) ** 2
    values = lr / np.sqrt(denominator + optimizer.epsilon)
    return EffectiveLR(values, v != 0)


Formula = Callable[[keras.optimizers.Optimizer, float, int, Select], EffectiveLR]

FORMULAS: dict[type, Formula] = {
    keras.optimizers.Adagrad: adagrad,
    keras.optimizers.Adadelta: adadelta,
    keras.optimizers.Adam: adam,  # and its subclasses (AdamW: the adaptive part is Adam's)
    keras.optimizers.RMSprop: rmsprop,
}


def last_update_lr(optimizer: keras.optimizers.Optimizer) -> float:
    """The (scheduled) LR of the last applied update: a schedule evaluated at `iterations - 1`.

    `optimizer.learning_rate` evaluates the schedule at the current iteration count, which after an update
    already points at the next step.
    """
    schedule = optimizer_schedule(optimizer)
    if schedule is not None:
        return float(ops.convert_to_numpy(schedule(int(ops.convert_to_numpy(optimizer.iterations)) - 1)))
    return float(ops.convert_to_numpy(optimizer.learning_rate))


def effective_lr(
    optimizer: keras.optimizers.Optimizer,
    lr: float | None = None,
    select: Callable[[Sequence[np.ndarray]], np.ndarray] = flatten,
    values: Callable[[keras.Variable], np.ndarray] = ops.convert_to_numpy,
) -> EffectiveLR | None:
    """The per-parameter effective LR of the optimizer's last applied update, from its current slot variables.

    Uses that update's LR (the schedule at `iterations - 1`) and its bias-correction step `t = iterations`.
    See each formula (`adagrad`, `adadelta`, `adam`, `rmsprop`) for how Keras places `eps` and which step the
    slot values belong to.

    Args:
        optimizer: a built optimizer.
        lr: the last update's LR; None reads it from the optimizer's own schedule.
        select: flattens the values that belong to this run from the values of a list of slot variables (all of
            them for a solo model, one member's slices for a pack).
        values: a slot variable's values (a cache, so that a pack's members share one read of each).

    Returns:
        None before the first update, and for optimizers without a formula (SGD: its effective LR is the LR).
    """
    formula = next((FORMULAS[cls] for cls in type(optimizer).__mro__ if cls in FORMULAS), None)
    step = int(ops.convert_to_numpy(optimizer.iterations))
    if formula is None or step == 0:
        return None
    lr = last_update_lr(optimizer) if lr is None else lr
    return formula(optimizer, lr, step, lambda variables: select([values(v) for v in variables]))


def summarize(effective: EffectiveLR, quantiles: Sequence[float] = (10, 50, 90)) -> dict[str, float]:
    """Quantiles and mean over the parameters a gradient has reached, and the fraction it has not.

    Parameters whose gradient second moment still holds its initial value (`has_gradient` False) are left out
    of `p*` and `mean`: no update has touched them, and for Adam their ratio `alpha / eps` would dominate the
    upper quantiles and the mean. Their share is `excluded_fraction`; `mean` is sensitive to the remaining
    long tail (small but non-zero second moments), the quantiles are not.

    Returns:
        {"effective_lr/p10": ..., "effective_lr/mean": ..., "effective_lr/excluded_fraction": ...}; only the
        fraction when every parameter is excluded.
    """
    included = effective.values[effective.has_gradient]
    metrics = {"effective_lr/excluded_fraction": 1.0 - included.size / effective.values.size}
    if included.size:
        for q, value in zip(quantiles, np.percentile(included, quantiles), strict=True):
            metrics[f"effective_lr/p{q:g}"] = float(value)
        metrics["effective_lr/mean"] = float(included.mean())
    return metrics
