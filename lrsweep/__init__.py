"""lrsweep: Hydra-configured learning-rate warm-up sweeps on Keras, tracked in MLflow.

Importing this package does not import Keras: the backend (`KERAS_BACKEND`) is chosen from the composed
config first, by `lrsweep.backend.select`, and only then are the Keras modules imported. It does register the
config's schema (`lrsweep.schema`) in Hydra's ConfigStore, so that it is there whenever Hydra composes.
"""

__version__ = "0.1.0"

from lrsweep import identity as _identity
from lrsweep import schema as _schema  # noqa: F401  (registers the config schema)

_identity.register_resolvers()  # `${lrsweep.claim:...}` in conf/config.yaml, for train.py and the compose API alike
