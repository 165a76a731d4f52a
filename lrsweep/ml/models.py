"""The models configs choose from (conf/model/): each builder returns a fresh, uncompiled Keras model whose input is
a batch of 28x28 images in [0, 1] and whose output is 10 logits (no softmax: the loss takes logits).

Call `keras.utils.set_random_seed` (or `keras_adapter.set_global_seed`) first for reproducible weights. Only a plain
MLP can join a pack (`lrsweep.ml.packing`); the others train alone.
"""

from __future__ import annotations

import keras

from lrsweep.core.checks import check_count
from lrsweep.ml.data import CLASS_NAMES, IMAGE_SHAPE
from lrsweep.ml.vit import build_vit

__all__ = ["build_cnn", "build_mlp", "build_vit"]


def build_mlp(hidden_units: int = 128, num_classes: int = len(CLASS_NAMES)) -> keras.Sequential:
    """The tutorial's classifier: Flatten -> Dense(`hidden_units`, relu) -> Dense(10) logits."""
    return keras.Sequential(
        [
            keras.Input(shape=IMAGE_SHAPE),
            keras.layers.Flatten(),
            keras.layers.Dense(hidden_units, activation="relu"),
            keras.layers.Dense(num_classes),
        ],
        name="mlp",
    )


def build_cnn(channels: int = 16, blocks: int = 3, num_classes: int = len(CLASS_NAMES)) -> keras.Sequential:
    """A small convolutional net with BatchNorm.

    `blocks` x (Conv 3x3 -> BatchNorm -> ReLU -> MaxPool 2x2), the first block with `channels` filters and each
    next one with twice as many, then global average pooling -> Dense(10) logits. With the defaults: 28x28x1 ->
    14x14x16 -> 7x7x32 -> 4x4x64 -> 64 -> 10.

    Raises:
        ValueError: `channels` or `blocks` below 1.
    """
    check_count("channels", channels, 1)
    check_count("blocks", blocks, 1)
    layers = [keras.Input(shape=IMAGE_SHAPE), keras.layers.Reshape((*IMAGE_SHAPE, 1))]
    for block in range(blocks):
        layers += [
            # No bias: BatchNorm's own shift (beta) follows.
            keras.layers.Conv2D(channels * 2**block, 3, padding="same", use_bias=False),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.MaxPooling2D(2, padding="same"),  # "same": 7 -> 4 -> 2 -> 1, never an empty map
        ]
    layers += [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(num_classes)]
    return keras.Sequential(layers, name="cnn")
