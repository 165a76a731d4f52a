"""A multirun as one MLflow parent run, and the Hydra callback that opens and closes it."""

from lrsweep.sweep.multirun import *  # noqa: F403
