"""One experiment: config -> data + model + optimizer + schedule -> fit -> one MLflow run."""

from __future__ import annotations

import logging
import math

import keras
import yaml
from hydra.errors import InstantiationException
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig, OmegaConf

from lrsweep import interrupts, tracking
from lrsweep.callbacks import MlflowEpochLogger, MlflowStepLogger, StopOnDivergence, StopOnInterrupt
from lrsweep.effective_lr import EffectiveLRLogger
from lrsweep.schedules import KerasSchedule, check_count, check_lr

log = logging.getLogger(__name__)


def instantiate(node: DictConfig, **kwargs):
    """`hydra.utils.instantiate`, letting our own ValueErrors (which name the value and the fix) through unwrapped."""
    try:
        return hydra_instantiate(node, **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, ValueError):
            raise e.__cause__ from None
        raise


def check_training(training: DictConfig) -> None:
    """Rejects training settings that cannot run, before any work starts."""
    check_count("training.epochs", training.epochs, 1)
    check_count("training.batch_size", training.batch_size, 1)
    check_count("training.steps_per_execution", training.steps_per_execution, 1)
    check_count("training.seed", training.seed, 0)


def run(cfg: DictConfig, context: tracking.JobContext | None = None) -> float:
    """Trains the configured model once and records it as one MLflow run.

    Everything that can be wrong with the config or the data fails here before the MLflow run is opened;
    once opened, the run always ends FINISHED, FAILED or KILLED.

    Args:
        cfg: the composed config (groups data, model, optimizer, schedule, training, tracking).
        context: the Hydra job this runs in; read from Hydra when omitted.

    Returns:
        The final epoch's validation accuracy, the objective a Hydra sweeper maximises.
    """
    context = context or tracking.JobContext.from_hydra()
    interrupts.install(context.sweep_dir)  # Ctrl-C / SIGTERM: stop at the next step, the run ends KILLED
    interrupts.check()  # stopped between two jobs of a sweep: start no new one
    training = cfg.training
    check_training(training)
    check_lr("optimizer.learning_rate", cfg.optimizer.learning_rate)
    check_count("tracking.log_every_n_steps", cfg.tracking.log_every_n_steps, 0, " (0: off)")

    client, experiment_id = tracking.connect(cfg.tracking.uri, cfg.tracking.experiment_name)
    if context.sweep_dir is None:
        tracking.mark_stale(client, experiment_id)  # a sweep does this once, before its jobs
    resolved = OmegaConf.to_container(cfg, resolve=True)
    config_hash = tracking.config_hash(resolved)
    if cfg.resume and (done := tracking.find_finished(client, experiment_id, config_hash)) is not None:
        tracking.record_reuse(client, experiment_id, context, done)
        log.info(
            "Skipped: this configuration already FINISHED as run %s (%s), val_accuracy=%s. Pass resume=false to rerun.",
            done.info.run_name, done.info.run_id, done.data.metrics.get("val_accuracy"),
        )  # fmt: skip
        return float(done.data.metrics.get("val_accuracy", float("nan")))

    dataset = instantiate(cfg.data)
    steps_per_epoch = math.ceil(len(dataset.x_train) / training.batch_size)
    make_schedule = instantiate(cfg.schedule)  # a partial: run-time quantities are passed here
    schedule = make_schedule(steps_per_epoch=steps_per_epoch, total_steps=training.epochs * steps_per_epoch)

    keras.backend.clear_session()
    keras.utils.set_random_seed(training.seed)  # same seed -> same initial weights for every strategy
    optimizer = instantiate(cfg.optimizer, learning_rate=KerasSchedule(schedule))
    model = instantiate(cfg.model)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        steps_per_execution=training.steps_per_execution,
    )

    params = tracking.flatten(resolved)
    params.update({f"choice.{group}": option for group, option in context.choices.items()})
    name = cfg.tracking.run_name or tracking.run_name(context, resolved)
    tags = {
        **tracking.job_tags(client, experiment_id, context),
        tracking.TAG_CONFIG_HASH: config_hash,
        "lrsweep.backend": keras.backend.backend(),
        "lrsweep.data_source": dataset.source,
        "mlflow.source.name": "train.py",
    }
    artifacts = {
        "config.yaml": OmegaConf.to_yaml(cfg, resolve=True),
        "overrides.yaml": yaml.safe_dump(list(context.overrides), default_flow_style=False),
    }
    log.info(
        "%s: %d train / %d validation examples from %s, %d steps per epoch, schedule %s",
        name, len(dataset.x_train), len(dataset.x_test), dataset.source, steps_per_epoch, schedule,
    )  # fmt: skip
    divergence = StopOnDivergence()
    with tracking.job_run(client, experiment_id, name, params, tags, artifacts) as run_id:
        history = model.fit(
            dataset.x_train,
            dataset.y_train,
            batch_size=training.batch_size,
            epochs=training.epochs,
            validation_data=(dataset.x_test, dataset.y_test),
            callbacks=[
                divergence,
                StopOnInterrupt(),
                MlflowEpochLogger(client, run_id),
                MlflowStepLogger(client, run_id, cfg.tracking.log_every_n_steps),
                *([EffectiveLRLogger(client, run_id)] if cfg.tracking.effective_lr else []),
            ],
            verbose=training.verbose,
        )
        if divergence.error is not None:
            raise divergence.error
    final = {k: v[-1] for k, v in history.history.items()}
    log.info("%s: " + ", ".join(f"{k}={v:.4f}" for k, v in final.items()), name)
    return float(final["val_accuracy"])
