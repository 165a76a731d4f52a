"""A model a user writes: Keras' functional API, convolution and BatchNorm, plugged in as `model._target_`."""

from __future__ import annotations

import keras


def small_cnn(hidden_units: int = 4) -> keras.Model:
    """Conv(3x3, `hidden_units` filters) -> BatchNorm -> ReLU -> global average -> Dense(10) logits."""
    inputs = keras.Input((28, 28))
    h = keras.layers.Reshape((28, 28, 1))(inputs)
    h = keras.layers.Conv2D(hidden_units, 3, strides=2)(h)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(10)(h), name="small_cnn")
