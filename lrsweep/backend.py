"""Chooses the Keras backend from config before Keras is imported (Keras reads KERAS_BACKEND once)."""

from __future__ import annotations

import os
import sys

BACKENDS = ("tensorflow", "jax")


def select(backend: str) -> None:
    """Sets KERAS_BACKEND for this process; call it before anything imports Keras.

    Raises:
        ValueError: for an unknown backend, or when Keras was already imported with another one
            (a process holds one backend: run other backends in separate processes).
    """
    if backend not in BACKENDS:
        raise ValueError(f"`backend` must be one of {', '.join(BACKENDS)}. Received: backend={backend!r}")
    if "keras" in sys.modules:
        import keras

        current = keras.backend.backend()
        if current != backend:
            raise ValueError(
                f"Keras already runs on {current!r} in this process, so backend={backend!r} cannot apply. "
                "Sweep over backends in separate commands, or with a launcher that starts a process per job "
                "(hydra/launcher=joblib)."
            )
        return
    os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
