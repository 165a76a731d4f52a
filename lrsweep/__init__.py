"""lrsweep: Hydra-configured learning-rate warm-up sweeps on Keras, tracked in MLflow.

The package is layered; imports point down only (the contracts in pyproject.toml, checked by the tests):

    sweep                       a multirun as one MLflow parent run; the Hydra callback
    run | analysis              one job or pack trained and recorded | what a sweep found (never imports Keras)
    ml | tracking | config      data, models, schedules, training | MLflow | the config's schema
    core                        errors, checks, identity, interrupts, backend choice, statistics

`lrsweep.schedules`, `lrsweep.data` and `lrsweep.model` are the names configs' `_target_`s use, and
`python -m lrsweep.report` / `python -m lrsweep.range_test` the command lines: stable public names for modules
of the layers, so configs, config hashes and commands written for earlier versions keep working.

Importing this package does not import Keras: the backend (`KERAS_BACKEND`) is chosen from the composed config
first, by `lrsweep.core.backend.select`, and only then are the Keras modules imported. It does register the
config's schema (`lrsweep.config.schema`) in Hydra's ConfigStore, so that it is there whenever Hydra composes.
"""

__version__ = "0.1.0"

from lrsweep.config import schema as _schema  # noqa: F401  (registers the config schema)
from lrsweep.core import identity as _identity

_identity.register_resolvers()  # `${lrsweep.claim:...}` in conf/config.yaml, for train.py and the compose API alike
