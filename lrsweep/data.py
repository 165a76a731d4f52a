"""Public name of `lrsweep.ml.data`: the data loader configs name in `_target_` (conf/data/)."""

from lrsweep.ml.data import *  # noqa: F403
