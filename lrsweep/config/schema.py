"""The config's schema: each option's keys with their types (checked by OmegaConf when Hydra composes) and ranges.

Types refuse garbage before anything runs: `resume=maybe` or `training.epochs=abc` is a composition error, and an
int where a float is wanted becomes a float (`optimizer=sgd optimizer.momentum=0` gives Keras the 0.0 it needs).
Ranges (`lrsweep.config.ranges`) are declared next to the types, as field metadata, and checked by `check` once the
config is composed: "`optimizer.beta_1` must be a number in [0, 1). Received: optimizer.beta_1=1.5". The model
options' schemas live in `lrsweep.config.models`.

Each dataclass is stored in Hydra's ConfigStore under `schema/<group>/<option>` and named first in its option's
defaults list (`- /schema/optimizer/adam@_here_`, then `_self_`), Hydra's "config schema" pattern; a separate
`schema/` group keeps the schemas out of the options a user chooses from (`optimizer=...`, `glob(*)`). The values
themselves stay in the YAML files (`MISSING` here). Importing `lrsweep` registers the schemas (`register`), so
they are there whenever Hydra composes.

Only what each option file holds is declared, plus the keys given a default here (`training.divergence_factor`,
`tracking.http_timeout`, `tracking.http_max_retries`, `tracking.tags`): a field its YAML file lacks adds a key to every
run's resolved config, and outside `core.identity.NON_RESULT_KEYS` that changes the run's config hash, so runs made
before would no longer be recognised as done. Relations between values (`max_lr > min_lr`, `min_lr <= peak_lr`, a
ViT's `width` a multiple of its `heads`) stay in the schedules' and models' own checks.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Container
from dataclasses import dataclass, field
from typing import Any, Union

from omegaconf import MISSING, DictConfig, OmegaConf

from lrsweep.config.models import Cnn, Mlp, Vit
from lrsweep.config.ranges import RANGE, Choice, Count, LearningRate, Number, Range, spec
from lrsweep.core.backend import BACKENDS

SCHEMA_GROUP = "schema"  # ConfigStore group prefix: schema/optimizer/adam, schema/schedule/decay/cosine, ...

LR = LearningRate()
EPSILON = Number(0.0, low_open=True)
BETA = Number(0.0, 1.0, high_open=True)
MOMENTUM = Number(0.0, 1.0)
RHO = Number(0.0, 1.0, low_open=True, high_open=True)
DECAY_FACTOR = Number(0.0, 1.0, low_open=True)  # a multiplier of the LR in (0, 1]
SIZE = Count(1)
UNITS = Choice(("step", "epoch"))

# Top level and the plain groups -----------------------------------------------------------------------------------


@dataclass
class Config:
    """The top level (conf/config.yaml); each group's own option file brings its schema."""

    data: Any = MISSING
    model: Any = MISSING
    optimizer: Any = MISSING
    schedule: Any = MISSING
    training: Any = MISSING
    tracking: Any = MISSING
    backend: str = spec(allowed=Choice(BACKENDS))
    threads: int | None = spec(
        allowed=Count(1, " (compute threads per job), or null for the backend's default (all cores)")
    )
    resume: bool = spec()


@dataclass
class Data:
    """conf/data/fashion_mnist.yaml; `lrsweep.data.load` checks the sizes against the data (upper bounds)."""

    _target_: str = spec()
    dir: str | None = spec()
    train_size: int | None = spec(allowed=SIZE)
    test_size: int | None = spec(allowed=SIZE)
    validation_size: int | None = spec(allowed=SIZE)


@dataclass
class Training:
    """conf/training/default.yaml."""

    epochs: int = spec(allowed=Count(1))
    batch_size: int = spec(allowed=Count(1))
    seed: int = spec(allowed=Count(0))
    steps_per_execution: int = spec(allowed=Count(1))
    jit_compile: Any = spec(allowed=Choice((True, False, "auto")))  # Keras' own three values
    verbose: Any = spec()  # 0, 1, 2 or auto; anything but 0 prints each epoch
    # A loss above this multiple of its starting value is divergence; null: only a non-finite loss is.
    divergence_factor: float | None = spec(20.0, Number(1.0, low_open=True))


@dataclass
class Tracking:
    """conf/tracking/mlflow.yaml."""

    uri: str = spec()
    experiment_name: str = spec()
    run_name: str | None = spec()
    log_every_n_steps: int = spec(allowed=Count(0, " (0: off)"))
    effective_lr: bool = spec()
    http_timeout: int = spec(10, Count(1, " (seconds per HTTP request to a tracking server)"))
    http_max_retries: int = spec(2, Number(0, 10))  # an int (the type); at most 10: minutes of retries already
    # More tags on each job run, `+tracking.tags.team=vision`; nested keys are dotted (`lrsweep.optuna.trial`).
    tags: dict[str, Any] = field(default_factory=dict)


# Optimizers: the Keras constructor's arguments that the option files set -----------------------------------------
# `learning_rate` is Any: training replaces it with the schedule (`instantiate(cfg.optimizer, learning_rate=...)`
# merges a `KerasSchedule` into the node), as Keras takes a float or a schedule there. Its range is still checked,
# and `lrsweep.run.job.prepare` hands Keras a float.


@dataclass
class Adam:
    _target_: str = spec()
    learning_rate: Any = spec(allowed=LR)
    beta_1: float = spec(allowed=BETA)
    beta_2: float = spec(allowed=BETA)
    epsilon: float = spec(allowed=EPSILON)


@dataclass
class Adagrad:
    _target_: str = spec()
    learning_rate: Any = spec(allowed=LR)
    initial_accumulator_value: float = spec(allowed=Number(0.0))
    epsilon: float = spec(allowed=EPSILON)


@dataclass
class Adadelta:
    _target_: str = spec()
    learning_rate: Any = spec(allowed=LR)
    rho: float = spec(allowed=RHO)
    epsilon: float = spec(allowed=EPSILON)


@dataclass
class RMSprop:
    _target_: str = spec()
    learning_rate: Any = spec(allowed=LR)
    rho: float = spec(allowed=RHO)
    momentum: float = spec(allowed=MOMENTUM)
    epsilon: float = spec(allowed=EPSILON)


@dataclass
class SGD:
    _target_: str = spec()
    learning_rate: Any = spec(allowed=LR)
    momentum: float = spec(allowed=MOMENTUM)
    nesterov: bool = spec()


# Schedules (lrsweep.schedules): `_partial_`, since steps_per_epoch and total_steps are passed at run time ----------


@dataclass
class Constant:
    _target_: str = spec()
    _partial_: bool = spec()
    value: float = spec(allowed=LR)


@dataclass
class LinearWarmup:
    _target_: str = spec()
    _partial_: bool = spec()
    initial_lr: float = spec(allowed=LR)
    final_lr: float = spec(allowed=LR)
    warmup_epochs: int = spec(allowed=Count(2, " for a linear warm-up"))


@dataclass
class LrRange:
    _target_: str = spec()
    _partial_: bool = spec()
    min_lr: float = spec(allowed=LR)
    max_lr: float = spec(allowed=LR)


@dataclass
class Warmup:
    """`schedule.warmup` of schedule=warmup."""

    shape: str = spec(allowed=Choice(("linear", "exponential", "cosine")))
    initial_lr: float | None = spec(allowed=LearningRate(zero_ok=True))  # null: the schedule's default
    # Steps, epochs or a fraction: an int or a float, kept as given (1 stays 1: config hashes of past runs hold).
    length: Any = spec(allowed=Number(0.0))
    length_unit: str = spec(allowed=Choice(("step", "epoch", "fraction")))


@dataclass
class WarmupThenDecay:
    _target_: str = spec()
    _partial_: bool = spec()
    peak_lr: float = spec(allowed=LR)
    unit: str = spec(allowed=UNITS)
    warmup: Warmup = field(default_factory=Warmup)
    decay: Any = MISSING  # the schedule/decay option


@dataclass
class UntunedWarmup:
    _target_: str = spec()
    _partial_: bool = spec()
    beta_2: float | None = spec(allowed=Number(0.0, 1.0, low_open=True, high_open=True))  # null: no Adam
    peak_lr: float = spec(allowed=LR)
    rule: str = spec(allowed=Choice(("linear", "exponential")))
    unit: str = spec(allowed=UNITS)
    decay: Any = MISSING


# What follows a warm-up (conf/schedule/decay): peak_lr and the step counts are passed at run time.


@dataclass
class Hold:
    _target_: str = spec()
    _partial_: bool = spec()


@dataclass
class ToMinLr:
    """cosine and linear: down to `min_lr` (<= peak_lr, checked by the schedule)."""

    _target_: str = spec()
    _partial_: bool = spec()
    min_lr: float = spec(allowed=LearningRate(zero_ok=True))


@dataclass
class ExponentialDecay:
    _target_: str = spec()
    _partial_: bool = spec()
    decay_rate: float = spec(allowed=DECAY_FACTOR)


@dataclass
class InverseSqrtDecay:
    _target_: str = spec()
    _partial_: bool = spec()
    timescale_epochs: float | None = spec(allowed=Number(0.0, low_open=True))  # null: the warm-up's length


@dataclass
class StepDecay:
    _target_: str = spec()
    _partial_: bool = spec()
    gamma: float = spec(allowed=DECAY_FACTOR)
    every_epochs: float = spec(allowed=Number(0.0, low_open=True))


@dataclass
class StableDecay:
    _target_: str = spec()
    _partial_: bool = spec()
    min_lr: float = spec(allowed=LearningRate(zero_ok=True))
    decay_fraction: float = spec(allowed=DECAY_FACTOR)


# The schema of each option file, by its path under conf/ (without .yaml).
SCHEMAS: dict[str, type] = {
    "config": Config,
    "data/fashion_mnist": Data,
    "model/mlp": Mlp,
    "model/cnn": Cnn,
    "model/vit": Vit,
    "training/default": Training,
    "tracking/mlflow": Tracking,
    "optimizer/adam": Adam,
    "optimizer/adagrad": Adagrad,
    "optimizer/adadelta": Adadelta,
    "optimizer/rmsprop": RMSprop,
    "optimizer/sgd": SGD,
    "schedule/constant": Constant,
    "schedule/linear": LinearWarmup,
    "schedule/lr_range": LrRange,
    "schedule/warmup": WarmupThenDecay,
    "schedule/untuned": UntunedWarmup,
    "schedule/decay/constant": Hold,
    "schedule/decay/cosine": ToMinLr,
    "schedule/decay/linear": ToMinLr,
    "schedule/decay/exponential": ExponentialDecay,
    "schedule/decay/inverse_sqrt": InverseSqrtDecay,
    "schedule/decay/step": StepDecay,
    "schedule/decay/wsd": StableDecay,
}


def register() -> None:
    """Stores every schema in Hydra's ConfigStore as `schema/<option path>` (e.g. `schema/optimizer/adam`).

    Idempotent: storing again replaces the entry. Option files name theirs first in their defaults list.
    """
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for path, node in SCHEMAS.items():
        group, _, name = f"{SCHEMA_GROUP}/{path}".rpartition("/")
        store.store(group=group, name=name, node=node)


# Checking the ranges ----------------------------------------------------------------------------------------------


def _optional(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (Union, types.UnionType) and type(None) in typing.get_args(annotation)


@functools.cache
def _ranges(schema: type) -> dict[str, tuple[Range, bool]]:
    """{field: (its range, whether null is allowed)} of a schema dataclass."""
    hints = typing.get_type_hints(schema)
    return {
        f.name: (f.metadata[RANGE], _optional(hints[f.name])) for f in dataclasses.fields(schema) if RANGE in f.metadata
    }


def check(cfg: DictConfig, prefix: str = "", skip: Container[str] = ()) -> None:
    """Checks every value of a composed config that has a declared range, first error first.

    Values are read resolved (`${optimizer.learning_rate}` as the number it points to). Nodes without a schema
    (an option file that names none) are walked but not checked, and keys in `skip` (checked before) neither.

    Raises:
        ValueError: one line naming the key, the allowed values and the value received, e.g.
            "`optimizer.momentum` must be a number in [0, 1]. Received: optimizer.momentum=1.5".
    """
    schema = OmegaConf.get_type(cfg)
    ranges = _ranges(schema) if dataclasses.is_dataclass(schema) else {}
    for key in (k for k in cfg if k not in skip):
        name = f"{prefix}{key}"
        if OmegaConf.is_missing(cfg, key):
            raise ValueError(f"`{name}` must be set. Received: {name}=???")
        node = cfg[key]
        if isinstance(node, DictConfig):
            check(node, f"{name}.")
        elif key in ranges:
            allowed, optional = ranges[key]
            if node is None and optional:
                continue
            allowed(name, node)


register()
