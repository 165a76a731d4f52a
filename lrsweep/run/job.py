"""One job, checked and turned into values once: its config's schedule, model, optimizer, data and MLflow record.

Solo training (`lrsweep.run.experiment`) and packs (`lrsweep.run.pack`) build from here, so a run trains from the
same pieces either way.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

import keras
import yaml
from hydra.errors import InstantiationException
from hydra.utils import instantiate as hydra_instantiate
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lrsweep import tracking
from lrsweep.config import schema
from lrsweep.core import errors, identity, trials
from lrsweep.core.checks import MAX_STEPS, check_lr
from lrsweep.ml import keras_adapter
from lrsweep.ml.data import Dataset
from lrsweep.ml.schedules import Schedule

CONFIG_ERRORS = (ValueError, OmegaConfBaseException, InstantiationException)
T = TypeVar("T")


def instantiate(node: DictConfig, **kwargs):
    """`hydra.utils.instantiate`, letting our own ValueErrors (which name the value and the fix) through unwrapped."""
    try:
        return hydra_instantiate(node, **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, ValueError):
            raise e.__cause__ from None
        raise


@dataclass
class Job:
    """A job's config, checked, with what identifies its run (the Hydra job, config hash, run name) and its data.

    The dataset is not pickled with the job (a worker process loads its own: `data.load` caches it per process).
    """

    cfg: DictConfig
    context: identity.JobContext
    resolved: dict[str, Any]
    config_hash: str
    name: str
    dataset: Dataset | None = field(default=None, repr=False, compare=False)

    @property
    def seed(self) -> int:
        return int(self.cfg.training.seed)

    def data(self) -> Dataset:
        """The job's dataset, loaded once."""
        if self.dataset is None:
            self.dataset = instantiate(self.cfg.data)
        return self.dataset

    def __getstate__(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "dataset"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, dataset=None)


class Checks:
    """The outcome of each distinct check a sweep's jobs ask for, so each is done once: a sweep of 100 LRs x 10
    seeds builds 100 optimizers, one schedule and one dataset, not 1,000 of each. A check is keyed by the resolved
    values it reads, so equal keys give equal outcomes; a failure is kept and raised again for every job that
    shares it."""

    def __init__(self) -> None:
        self.outcomes: dict[Any, tuple[bool, Any]] = {}

    def once(self, key: Any, check: Callable[[], T]) -> T:
        if key not in self.outcomes:
            try:
                self.outcomes[key] = (True, check())
            except (errors.ConfigError, *CONFIG_ERRORS) as e:
                self.outcomes[key] = (False, e)
        passed, value = self.outcomes[key]
        if not passed:
            raise value
        return value

    def schema(self, cfg: DictConfig) -> dict[str, Any]:
        """`schema.check` of a job's config, skipping the sections (`data`, `optimizer`, ...) that passed before
        with the same values and schema (the first error is still the one a whole check raises first); returns the
        config resolved."""
        try:
            resolved = OmegaConf.to_container(cfg, resolve=True)
        except OmegaConfBaseException as e:
            errors.as_config_error(schema.check, cfg)  # the error a whole check meets first, else this one
            raise errors.ConfigError(str(e)) from e
        keys = {
            name: (name, OmegaConf.get_type(cfg, name), _key(value))
            for name, value in resolved.items()
            if isinstance(value, dict)
        }
        passed = [name for name, key in keys.items() if self.outcomes.get(key) == (True, None)]
        errors.as_config_error(schema.check, cfg, "", passed)
        self.outcomes.update({key: (True, None) for key in keys.values()})
        return resolved


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=repr)


def prepare(
    cfg: DictConfig, context: identity.JobContext, checks: Checks | None = None, resolved: dict[str, Any] | None = None
) -> Job:
    """Turns a job's config into values, checking on the way what its schema cannot (it was checked: `schema.check`).

    Loads the job's data and builds its schedule, optimizer and model, without training or touching MLflow; with
    `checks`, each of them once per distinct value among the jobs that share `checks`. `resolved`: the config
    resolved, if the caller has it.

    Raises:
        ValueError: naming the key, the value and the fix.
    """
    checks = checks or Checks()
    learning_rate = check_lr("optimizer.learning_rate", cfg.optimizer.learning_rate)  # also of schema-less options
    resolved = resolved if resolved is not None else OmegaConf.to_container(cfg, resolve=True)
    sections = {name: _key(resolved.get(name)) for name in ("data", "schedule", "optimizer", "model")}
    dataset = checks.once(("data", sections["data"]), lambda: instantiate(cfg.data))  # missing files, bad sizes
    training = (cfg.training.epochs, cfg.training.batch_size, len(dataset.x_train))
    checks.once(("schedule", sections["schedule"], training), lambda: build_schedule(cfg, dataset))  # its arguments
    checks.once(("optimizer", sections["optimizer"]), lambda: build_optimizer(cfg, learning_rate))  # its arguments
    checks.once(("model", sections["model"]), lambda: check_model(cfg))  # its arguments (a ViT's width and heads)
    return Job(
        cfg=cfg,
        context=context,
        resolved=resolved,
        config_hash=identity.config_hash(resolved),
        name=cfg.tracking.run_name or identity.run_name(context, resolved),
        dataset=dataset,
    )


def checked(
    cfg: DictConfig, context: identity.JobContext, checks: Checks | None = None, resolved: dict[str, Any] | None = None
) -> Job:
    """`prepare`, with whatever it finds wrong raised as a `ConfigError` (a user error: one line, no traceback)."""
    try:
        return prepare(cfg, context, checks, resolved)
    except errors.ConfigError:
        raise
    except CONFIG_ERRORS as e:
        raise errors.ConfigError(str(e)) from e


def steps_per_epoch(cfg: DictConfig, dataset: Dataset) -> int:
    return math.ceil(len(dataset.x_train) / cfg.training.batch_size)


def build_schedule(cfg: DictConfig, dataset: Dataset) -> Schedule:
    """The job's LR schedule, given the run-time quantities it needs."""
    per_epoch = steps_per_epoch(cfg, dataset)
    total_steps = cfg.training.epochs * per_epoch
    if total_steps > MAX_STEPS:
        raise ValueError(
            f"`training.epochs` x {per_epoch} steps per epoch is {total_steps} steps, more than an optimizer's step "
            f"counter holds ({MAX_STEPS}): train fewer epochs. Received: training.epochs={cfg.training.epochs}"
        )
    make_schedule = instantiate(cfg.schedule)  # a partial: run-time quantities are passed here
    return make_schedule(steps_per_epoch=per_epoch, total_steps=total_steps)


def build_model(cfg: DictConfig) -> keras.Model:
    """The job's model with the initial weights its seed gives, the same whether it trains alone or packed."""
    keras_adapter.set_global_seed(int(cfg.training.seed))  # same seed -> same initial weights for every strategy
    return instantiate(cfg.model)


def check_model(cfg: DictConfig) -> None:
    """Builds the job's model and drops it, so that its builder's own checks (a ViT's `width` and `heads`), a
    `_target_` that cannot be called, or one that returns no Keras model fail before any run, not once training
    starts. Training builds it again, seeded (`build_model`)."""
    model = instantiate(cfg.model)
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"`model._target_` must return a keras.Model (uncompiled, outputting logits). "
            f"Received: model._target_={cfg.model.get('_target_')} returned a {type(model).__name__}"
        )


def build_optimizer(cfg: DictConfig, learning_rate) -> keras.optimizers.Optimizer:
    return instantiate(cfg.optimizer, learning_rate=learning_rate)


def compile_args(cfg: DictConfig) -> dict[str, Any]:
    """Keras `compile` settings from `training`, the same for a solo model and a pack."""
    return {"steps_per_execution": cfg.training.steps_per_execution, "jit_compile": cfg.training.jit_compile}


def run_record(
    client: MlflowClient, experiment_id: str, job: Job, extra_tags: dict[str, str] | None = None
) -> tracking.RunRecord:
    """The name, params, tags and config artifacts of a job's MLflow run, alone or in a pack.

    Params are what a person filters and compares on (`identity.job_params`); the whole resolved config,
    internal keys included, is the run's `config.yaml` artifact.
    """
    dataset = job.data()
    params = identity.job_params(job.resolved, job.context.choices)
    tags = {
        # `tracking.tags` (the user's, a sweeper's) first: lrsweep's own tags, which resume and reports read, win
        **identity.flatten(job.resolved["tracking"].get("tags") or {}),
        **tracking.job_tags(client, experiment_id, job.context),
        tracking.TAG_CONFIG_HASH: job.config_hash,
        tracking.TAG_OPTIMIZER: str(job.resolved["optimizer"]["_target_"]),
        tracking.TAG_SCHEDULE: str(job.resolved["schedule"]["_target_"]),
        "lrsweep.threads": str(job.resolved.get("threads")),
        "lrsweep.backend": keras.backend.backend(),
        "lrsweep.data_source": dataset.source,
        tracking.TAG_VALIDATION: dataset.validation,
        "mlflow.source.name": "train.py",
        **(extra_tags or {}),
    }
    artifacts = {
        "config.yaml": OmegaConf.to_yaml(job.cfg, resolve=True),
        "overrides.yaml": yaml.safe_dump(list(job.context.overrides), default_flow_style=False),
    }
    return tracking.RunRecord(job.name, params, tags, artifacts)


def optimizer_settings(job: Job) -> str:
    """A job's optimizer class and settings, its LR aside: a pack's members with equal ones share an optimizer."""
    settings = {k: v for k, v in job.resolved["optimizer"].items() if k != "learning_rate"}
    return json.dumps(settings, sort_keys=True, default=str)


def trial_key(cfg: DictConfig) -> str | None:
    """The search trial a job is (`lrsweep.core.trials.key`), from the tags its sweeper gave it, or None."""
    tags = identity.flatten(cfg.tracking.get("tags") or {})
    study, trial = tags.get(tracking.TAG_OPTUNA_STUDY), tags.get(tracking.TAG_OPTUNA_TRIAL)
    return trials.key(study, trial) if study is not None and trial is not None else None
