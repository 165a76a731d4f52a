"""lrsweep: Hydra-configured learning-rate warm-up sweeps on Keras, tracked in MLflow.

Importing this package does not import Keras: the backend (`KERAS_BACKEND`) is chosen from the composed
config first, by `lrsweep.backend.select`, and only then are the Keras modules imported.
"""

__version__ = "0.1.0"

from lrsweep import identity as _identity

_identity.register_resolvers()  # `${lrsweep.claim:...}` in conf/config.yaml, for train.py and the compose API alike
