"""When training has diverged, apart from Keras callbacks and MLflow: the starting loss, each member's loss, why."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import ops

from lrsweep.core import errors
from lrsweep.ml.data import Dataset
from lrsweep.ml.training import Member

# The starting loss is measured on these first training examples (file order, the same for every seed and member).
REFERENCE_EXAMPLES = 256


class DivergedError(errors.TrainingFailed):
    """Training diverged: the loss became NaN or infinite, or rose above `training.divergence_factor` x its start."""


def reference_examples(dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """The fixed examples a run's starting loss is measured on: the first `REFERENCE_EXAMPLES` training examples."""
    return dataset.x_train[:REFERENCE_EXAMPLES], dataset.y_train[:REFERENCE_EXAMPLES]


def member_losses(model: keras.Model, x: np.ndarray, y: np.ndarray, members: Sequence[Member]) -> list[float]:
    """Each member's mean cross-entropy on `(x, y)` with the model's current weights, from one forward pass.

    The loss both a solo model and a pack are trained with (sparse categorical cross-entropy of logits): a solo
    model's output is (examples, classes), a pack's (examples, members, classes) for shared inputs. The model is
    called eagerly (no compiled function is added) and the cross-entropy is taken in float64 NumPy, so the value is
    the same on every backend up to float32 rounding of the logits.
    """
    logits = np.asarray(ops.convert_to_numpy(model(x, training=False)), dtype=np.float64)
    labels = np.asarray(y, dtype=np.int64)
    losses = []
    for member in members:
        z = logits if member.index is None else logits[:, member.index]
        top = z.max(axis=-1, keepdims=True)
        log_norm = top[:, 0] + np.log(np.exp(z - top).sum(axis=-1))
        losses.append(float(np.mean(log_norm - z[np.arange(len(labels)), labels])))
    return losses


def divergence_message(epoch: int, steps: int, factor: float | None) -> str:
    """Why a run stopped: the same text on every backend (not the loss, whose value differs between them)."""
    rule = "not finite" if factor is None else f"not finite or above {factor:g}x its value before training"
    return (
        f"training diverged in epoch {epoch} (by batch {steps}): the loss was {rule} "
        f"(training.divergence_factor={'null' if factor is None else f'{factor:g}'}). "
        "Lower the learning rate (or the warm-up's peak) for this configuration."
    )
