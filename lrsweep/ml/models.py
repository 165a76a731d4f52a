"""The tutorial's classifier: Flatten -> Dense(128, relu) -> Dense(10) logits."""

from __future__ import annotations

import keras

from lrsweep.ml.data import CLASS_NAMES, IMAGE_SHAPE


def build_mlp(hidden_units: int = 128, num_classes: int = len(CLASS_NAMES)) -> keras.Sequential:
    """A fresh, uncompiled MLP; call `keras.utils.set_random_seed` first for reproducible weights."""
    return keras.Sequential(
        [
            keras.Input(shape=IMAGE_SHAPE),
            keras.layers.Flatten(),
            keras.layers.Dense(hidden_units, activation="relu"),
            keras.layers.Dense(num_classes),
        ],
        name="mlp",
    )
