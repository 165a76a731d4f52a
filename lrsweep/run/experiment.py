"""One experiment trained alone: config -> data + model + optimizer + schedule -> fit -> one MLflow run.

`run` is what `train.py` calls for a single run (its config already checked against the schema); `train_claimed`
trains a prepared job while it holds its configuration's claim (`claimed`: no other live process trains it at the
same time), for `run` and for a sweep's job that trains alone (`lrsweep.run.launching.train_alone`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence

import keras
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from lrsweep import tracking
from lrsweep.core import identity, interrupts
from lrsweep.ml.schedules import KerasSchedule
from lrsweep.ml.training import Member, fit_epochs, fresh_session
from lrsweep.run import watching
from lrsweep.run.job import (
    Job,
    build_model,
    build_optimizer,
    build_schedule,
    checked,
    compile_args,
    instantiate,
    prepare,
    run_record,
    steps_per_epoch,
    trial_key,
)

# `instantiate` and `prepare` too: scripts and tests written against this module name them here.
__all__ = [
    "Job", "claim", "claimed", "instantiate", "prepare", "reuse", "run", "store_failures", "train_claimed",
    "train_solo",
]  # fmt: skip

log = logging.getLogger(__name__)


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


def claim(job: Job) -> tracking.Claim:
    """The claim on a job's configuration in its store and experiment (`lrsweep.tracking.claims`)."""
    return tracking.Claim(job.cfg.tracking.uri, job.cfg.tracking.experiment_name, job.config_hash)


def claimed(
    jobs: Sequence[Job], client: MlflowClient, experiment_id: str
) -> contextlib.AbstractContextManager[dict[int, float]]:
    """Holds the claims of the jobs' configurations while the block trains them (`tracking.claims.held`), waiting
    for those another live process trains; yields, by index, the results of the ones it FINISHED meanwhile (reused:
    not to train). One whose holder ended without finishing it (it died, or its run failed) is trained here."""
    marked = []

    def finished(k: int, waited: bool) -> float | None:
        value = reuse(client, experiment_id, jobs[k])
        if value is None and waited and not marked:  # a holder that died left its runs RUNNING: end them now
            marked.append(tracking.mark_stale(client, experiment_id))
        return value

    then = "then reusing the results" if jobs[0].cfg.resume else "then training again (resume=false)"
    return tracking.claims.held([claim(job) for job in jobs], finished, then)


def train_claimed(job: Job, client: MlflowClient, experiment_id: str) -> float:
    """Trains a job alone (`train_solo`) while holding its configuration's claim, unless another live process held
    it and FINISHED it meanwhile: then its result (`claimed`)."""
    with claimed([job], client, experiment_id) as reused:
        return reused[0] if reused else train_solo(job, client, experiment_id)


def run(cfg: DictConfig, context: identity.JobContext | None = None) -> float:
    """Trains the configured model once and records it as one MLflow run.

    Everything that can be wrong with the config or the data fails here before the MLflow run is opened;
    once opened, the run always ends FINISHED, FAILED or KILLED.

    Args:
        cfg: the composed config (groups data, model, optimizer, schedule, training, tracking), already checked
            against its schema (`lrsweep.config.schema.check`), as `train.py` does before Keras starts.
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
        return train_claimed(job, client, experiment_id)  # or the result of a FINISHED run of its configuration


@contextlib.contextmanager
def store_failures(uri: str) -> Iterator[None]:
    """Raises the MLflow store failing (a server gone, a full disk) as a `StoreError` naming it and the fix.

    Whoever stops on it prints it (`errors.reported`, the packed launcher); a full disk is noted as said
    (`tracking.note_full_disk_said`), so that the sweep, closing, does not say it a second time.
    """
    try:
        yield
    except Exception as e:
        if (store_error := tracking.as_store_error(e, uri)) is None:
            raise
        if tracking.store_full(e, uri):
            tracking.note_full_disk_said(uri)
        if store_error is e:
            raise
        raise store_error from e


def train_solo(job: Job, client: MlflowClient, experiment_id: str) -> float:
    """Trains one job alone: its own model and optimizer, one MLflow run."""
    cfg = job.cfg
    dataset = job.data()
    schedule = build_schedule(cfg, dataset)
    fresh_session()
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
    record = run_record(client, experiment_id, job)
    with tracking.job_run(client, experiment_id, record.name, record.params, record.tags, record.artifacts) as run_id:
        member = Member(run_id=run_id, schedule=lr, name=job.name, trial=trial_key(cfg))
        history = fit_epochs(
            model,
            dataset,
            job.seed,
            cfg.training.batch_size,
            cfg.training.epochs,
            watching.callbacks(client, cfg, [member], dataset),
        )
        if member.error is not None:
            raise member.error
        watching.log_test_metrics(client, model, dataset, [member], cfg.training.batch_size, len(history) - 1)
    final = history[-1]
    log.info("%s: " + ", ".join(f"{k}={final[k]:.4f}" for k in ("loss", "accuracy", "val_loss", "val_accuracy")),
             job.name)  # fmt: skip
    return float(final["val_accuracy"])
