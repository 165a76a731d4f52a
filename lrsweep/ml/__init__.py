"""The machine learning, independent of MLflow and Hydra: data, models (and vit, the vision transformer), LR
schedules, the training loop, packs (several models stacked into one).

Importing this package imports nothing of Keras; its modules that need Keras import it, so choose the backend
(`lrsweep.core.backend.select`) before importing them.
"""

__all__ = [
    "data",
    "divergence",
    "effective_lr",
    "keras_adapter",
    "models",
    "packing",
    "range_test",
    "schedules",
    "training",
    "vit",
]
