"""One experiment: config -> data + model + optimizer + schedule -> fit -> one MLflow run.

The pieces here (checking a job, building its schedule, model and optimizer, recording its run, its callbacks)
serve both a run trained alone (`run`) and one trained in a pack with others (`lrsweep.packing.train_pack`).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import yaml
from hydra.errors import InstantiationException
from hydra.utils import instantiate as hydra_instantiate
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lrsweep import tracking
from lrsweep.config import schema
from lrsweep.core import errors, identity, interrupts
from lrsweep.core.checks import check_lr
from lrsweep.ml.data import Dataset
from lrsweep.ml.range_test import is_range_test
from lrsweep.ml.schedules import KerasSchedule, Schedule
from lrsweep.ml.training import EpochPrinter, Member, fit_epochs
from lrsweep.run.callbacks import (
    MlflowEpochLogger,
    MlflowStepLogger,
    StopOnDivergence,
    StopOnInterrupt,
    reference_examples,
)
from lrsweep.run.effective_lr import EffectiveLRLogger
from lrsweep.run.range_test import RangeTestRecorder

log = logging.getLogger(__name__)


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
    """A job's config, checked, with what identifies its run: the Hydra job, config hash and run name."""

    cfg: DictConfig
    context: identity.JobContext
    resolved: dict[str, Any]
    config_hash: str
    name: str

    @property
    def seed(self) -> int:
        return int(self.cfg.training.seed)


def prepare(cfg: DictConfig, context: identity.JobContext) -> Job:
    """Checks everything in a job's config that can fail, without training or touching MLflow.

    Raises:
        ValueError: naming the key, the value and the fix.
    """
    schema.check(cfg)  # every declared range (types were checked when Hydra composed the config)
    learning_rate = check_lr("optimizer.learning_rate", cfg.optimizer.learning_rate)  # also of schema-less options
    dataset = instantiate(cfg.data)  # missing or corrupt files, bad subset sizes
    build_schedule(cfg, dataset)  # the schedule's own arguments
    build_optimizer(cfg, learning_rate)  # the optimizer's own arguments
    resolved = OmegaConf.to_container(cfg, resolve=True)
    return Job(
        cfg=cfg,
        context=context,
        resolved=resolved,
        config_hash=identity.config_hash(resolved),
        name=cfg.tracking.run_name or identity.run_name(context, resolved),
    )


CONFIG_ERRORS = (ValueError, OmegaConfBaseException, InstantiationException)


def checked(cfg: DictConfig, context: identity.JobContext) -> Job:
    """`prepare`, with whatever it finds wrong raised as a `ConfigError` (a user error: one line, no traceback)."""
    try:
        return prepare(cfg, context)
    except errors.ConfigError:
        raise
    except CONFIG_ERRORS as e:
        raise errors.ConfigError(str(e)) from e


def steps_per_epoch(cfg: DictConfig, dataset: Dataset) -> int:
    return math.ceil(len(dataset.x_train) / cfg.training.batch_size)


def build_schedule(cfg: DictConfig, dataset: Dataset) -> Schedule:
    """The job's LR schedule, given the run-time quantities it needs."""
    per_epoch = steps_per_epoch(cfg, dataset)
    make_schedule = instantiate(cfg.schedule)  # a partial: run-time quantities are passed here
    return make_schedule(steps_per_epoch=per_epoch, total_steps=cfg.training.epochs * per_epoch)


def build_model(cfg: DictConfig) -> keras.Model:
    """The job's model with the initial weights its seed gives, the same whether it trains alone or packed."""
    keras.utils.set_random_seed(cfg.training.seed)  # same seed -> same initial weights for every strategy
    return instantiate(cfg.model)


def build_optimizer(cfg: DictConfig, learning_rate) -> keras.optimizers.Optimizer:
    return instantiate(cfg.optimizer, learning_rate=learning_rate)


def compile_args(cfg: DictConfig) -> dict[str, Any]:
    """Keras `compile` settings from `training`, the same for a solo model and a pack."""
    return {"steps_per_execution": cfg.training.steps_per_execution, "jit_compile": cfg.training.jit_compile}


def run_record(
    client: MlflowClient, experiment_id: str, job: Job, dataset: Dataset, extra_tags: dict[str, str] | None = None
) -> tracking.RunRecord:
    """The name, params, tags and config artifacts of a job's MLflow run, alone or in a pack.

    Params are what a person filters and compares on (`identity.job_params`); the whole resolved config,
    internal keys included, is the run's `config.yaml` artifact.
    """
    params = identity.job_params(job.resolved, job.context.choices)
    tags = {
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


def callbacks(
    client: MlflowClient, cfg: DictConfig, members: Sequence[Member], dataset: Dataset
) -> list[keras.callbacks.Callback]:
    """What watches and records training, for a solo model (one member) and a pack alike.

    A range test's loss rises on purpose and its recorder stops it by its own rule (smoothed loss above 4x its
    minimum), so there `StopOnDivergence` counts only a non-finite loss (which the recorder then takes back).
    """
    range_test = is_range_test(cfg)
    factor = None if range_test else cfg.training.get("divergence_factor")
    reference = reference_examples(dataset) if factor is not None else None
    watching: list[keras.callbacks.Callback] = [StopOnDivergence(members, factor, reference, client)]
    if range_test:  # after StopOnDivergence, whose verdict it overrules
        watching.append(range_test_recorder(client, cfg, members, len(dataset.x_train)))
    watching += [
        StopOnInterrupt(),
        MlflowEpochLogger(client, members),
        MlflowStepLogger(client, members, cfg.tracking.log_every_n_steps),
    ]
    if cfg.tracking.effective_lr:
        watching.append(EffectiveLRLogger(client, members))
    if cfg.training.verbose not in (0, "0"):
        watching.append(EpochPrinter(members, cfg.training.epochs))
    return watching


def range_test_recorder(
    client: MlflowClient, cfg: DictConfig, members: Sequence[Member], examples: int
) -> RangeTestRecorder:
    """The range test's recorder for a job training on `examples` examples per epoch."""
    batch_size = int(cfg.training.batch_size)
    planned = int(cfg.training.epochs) * math.ceil(examples / batch_size)
    if cfg.training.steps_per_execution != 1:
        log.warning(
            "Range test with training.steps_per_execution=%s: one loss per %s steps (their mean, logged at the "
            "last of them). Set training.steps_per_execution=1 (the lr_range preset does) for one per step.",
            cfg.training.steps_per_execution, cfg.training.steps_per_execution,
        )  # fmt: skip
    return RangeTestRecorder(client, members, batch_size, examples, planned)


def log_test_metrics(
    client: MlflowClient, model: keras.Model, dataset: Dataset, members: Sequence[Member], batch_size: int, epoch: int
) -> None:
    """Scores the test set once, after training, and logs `test_loss` and `test_accuracy` to each member's run.

    Only when validation was on held-out examples (otherwise val_* already is the test score), and only for
    members that trained to the end: a diverged member (`error` set) gets none, nor one a range test stopped
    (`stopped_step` set; in a pack its weights trained on, unlogged). A pack is evaluated once for all its members
    (its logs hold `loss_<k>`, `accuracy_<k>`).

    Args:
        epoch: the step to log at, the last epoch trained (0-based).
    """
    finished = [member for member in members if member.error is None and member.stopped_step is None]
    if dataset.validates_on_test or not finished:
        return
    logs = model.evaluate(dataset.x_test, dataset.y_test, batch_size=batch_size, verbose=0, return_dict=True)
    for member in finished:
        scores = member.metrics(logs)
        test = {f"test_{name}": scores[name] for name in ("loss", "accuracy")}
        tracking.log_metrics(client, member.run_id, test, step=epoch)
        log.info("%s: %s", member.name, ", ".join(f"{k}={v:.4f}" for k, v in test.items()))


def reuse(client: MlflowClient, experiment_id: str, job: Job) -> float | None:
    """The val_accuracy of a FINISHED run of the same configuration, noted on the sweep, or None (or resume=false)."""
    if not job.cfg.resume or (done := tracking.find_finished(client, experiment_id, job.config_hash)) is None:
        return None
    tracking.record_reuse(client, experiment_id, job.context, done)
    log.info(
        "Skipped: this configuration already FINISHED as run %s (%s), val_accuracy=%s. Pass resume=false to rerun.",
        done.info.run_name, done.info.run_id, done.data.metrics.get("val_accuracy"),
    )  # fmt: skip
    return float(done.data.metrics.get("val_accuracy", float("nan")))


def run(cfg: DictConfig, context: identity.JobContext | None = None) -> float:
    """Trains the configured model once and records it as one MLflow run.

    Everything that can be wrong with the config or the data fails here before the MLflow run is opened;
    once opened, the run always ends FINISHED, FAILED or KILLED.

    Args:
        cfg: the composed config (groups data, model, optimizer, schedule, training, tracking).
        context: the Hydra job this runs in; read from Hydra when omitted.

    Returns:
        The final epoch's validation accuracy, the objective a Hydra sweeper maximises.
    """
    context = context or identity.JobContext.from_hydra()
    interrupts.install(context.sweep_dir)  # Ctrl-C / SIGTERM: stop at the next step, the run ends KILLED
    interrupts.check()  # stopped between two jobs of a sweep: start no new one
    job = checked(cfg, context)
    with store_failures(cfg.tracking.uri):
        client, experiment_id = tracking.connect_config(cfg.tracking)
        if context.sweep_dir is None:
            tracking.mark_stale(client, experiment_id)  # a sweep does this once, before its jobs
        if (reused := reuse(client, experiment_id, job)) is not None:
            return reused
        return train_solo(job, client, experiment_id)


@contextlib.contextmanager
def store_failures(uri: str) -> Iterator[None]:
    """Raises the MLflow store failing (a server gone, a full disk) as a `StoreError` naming it and the fix."""
    try:
        yield
    except Exception as e:
        if (store_error := tracking.as_store_error(e, uri)) is None or store_error is e:
            raise
        raise store_error from e


def train_solo(job: Job, client: MlflowClient, experiment_id: str) -> float:
    """Trains one job alone: its own model and optimizer, one MLflow run."""
    cfg = job.cfg
    dataset = instantiate(cfg.data)
    schedule = build_schedule(cfg, dataset)
    keras.backend.clear_session()
    model = build_model(cfg)
    lr = KerasSchedule(schedule)
    model.compile(
        optimizer=build_optimizer(cfg, lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        **compile_args(cfg),
    )
    log.info(
        "%s: %d train / %d validation (%s) / %d test examples from %s, %d steps per epoch, schedule %s",
        job.name, len(dataset.x_train), len(dataset.x_val), dataset.validation, len(dataset.x_test), dataset.source,
        steps_per_epoch(cfg, dataset), schedule,
    )  # fmt: skip
    record = run_record(client, experiment_id, job, dataset)
    with tracking.job_run(client, experiment_id, record.name, record.params, record.tags, record.artifacts) as run_id:
        member = Member(run_id=run_id, schedule=lr, name=job.name)
        history = fit_epochs(
            model,
            dataset,
            job.seed,
            cfg.training.batch_size,
            cfg.training.epochs,
            callbacks(client, cfg, [member], dataset),
        )
        if member.error is not None:
            raise member.error
        log_test_metrics(client, model, dataset, [member], cfg.training.batch_size, len(history) - 1)
    final = history[-1]
    log.info("%s: " + ", ".join(f"{k}={final[k]:.4f}" for k in ("loss", "accuracy", "val_loss", "val_accuracy")),
             job.name)  # fmt: skip
    return float(final["val_accuracy"])
