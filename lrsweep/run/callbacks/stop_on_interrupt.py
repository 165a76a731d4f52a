"""A Ctrl-C or SIGTERM request turned into KeyboardInterrupt between training steps."""

from __future__ import annotations

import keras

from lrsweep.core import interrupts


class StopOnInterrupt(keras.callbacks.Callback):
    """Turns a Ctrl-C/SIGTERM request (`lrsweep.core.interrupts`) into KeyboardInterrupt between training steps.

    Raised only at batch ends, never inside an epoch's logging, so the epochs logged are the epochs completed.
    """

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        interrupts.check()

    def on_test_batch_end(self, batch: int, logs=None) -> None:
        interrupts.check()
