"""Public name of `lrsweep.ml.models`: the models configs name in `_target_` (conf/model/)."""

from lrsweep.ml.models import *  # noqa: F403
