"""The range test's recorder, now `lrsweep.run.callbacks.range_test_recorder`: this name is kept for its importers."""

from lrsweep.run.callbacks.range_test_recorder import RangeTestRecorder

__all__ = ["RangeTestRecorder"]
