"""Public name of `lrsweep.ml.schedules`: the LR schedules configs name in `_target_` (conf/schedule/)."""

from lrsweep.ml.schedules import *  # noqa: F403
