"""The effective-LR logger, now `lrsweep.run.callbacks.effective_lr_logger` (its maths: `lrsweep.ml.effective_lr`).

This name is kept for its importers.
"""

from lrsweep.run.callbacks.effective_lr_logger import EffectiveLRLogger

__all__ = ["EffectiveLRLogger"]
