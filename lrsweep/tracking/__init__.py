"""Everything MLflow: the store (checked before MLflow touches it), runs and their tags, reading sweeps back."""

from lrsweep.tracking import store as store
from lrsweep.tracking.runs import *  # noqa: F403
