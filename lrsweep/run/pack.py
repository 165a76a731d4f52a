"""A pack trained and recorded: jobs stacked into one model (`lrsweep.ml.packing`), each member its own MLflow run."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import keras
from mlflow.tracking import MlflowClient

from lrsweep import tracking
from lrsweep.ml.data import Dataset
from lrsweep.ml.schedules import KerasSchedule
from lrsweep.ml.stacking import PackPlan, stack
from lrsweep.ml.training import Member, fit_epochs
from lrsweep.run import watching
from lrsweep.run.job import Job, build_model, build_optimizer, build_schedule, compile_args, run_record

log = logging.getLogger(__name__)


def build_pack(jobs: Sequence[Job], dataset: Dataset, other_models: str = "auto") -> PackPlan:
    """The stacked model of jobs ordered by seed, member k from the model, schedule and optimizer its solo run
    builds (`lrsweep.run.job`), so that it starts from exactly the same weights and updates as it would.

    Raises:
        NotPackable: when the model or optimizer cannot be packed (the jobs then train alone).
    """
    schedules = [KerasSchedule(build_schedule(job.cfg, dataset)) for job in jobs]
    keras.backend.clear_session()
    solo_models = [build_model(job.cfg) for job in jobs]  # each seeds its own initial weights
    optimizers = [build_optimizer(job.cfg, 0.01) for job in jobs]  # their settings; each LR comes from a schedule
    seeds = [job.seed for job in jobs]
    return stack(solo_models, seeds, schedules, optimizers, compile_args(jobs[0].cfg), other_models)


def train_pack(
    jobs: Sequence[Job], client: MlflowClient, experiment_id: str, pack_id: str, other_models: str = "auto"
) -> list[float | Exception]:
    """Trains jobs (ordered by seed) as one pack; each ends as its own MLflow run, as if it had trained alone.

    Returns:
        Per job, its final val_accuracy, or the error it ended with (divergence). An interrupt or an error of
        the whole pack closes every run (KILLED or FAILED) and is raised.
    """
    cfg = jobs[0].cfg
    dataset = jobs[0].data()  # what every member trains on: the pack key holds `data`
    plan = build_pack(jobs, dataset, other_models)
    model = plan.model
    log.info(
        "Pack %s: %d runs (%s) in one model, %d data group(s), %d optimizer(s) (%s), trained as %s; "
        "%d train / %d validation (%s) / %d test examples",
        pack_id, len(jobs), ", ".join(job.name for job in jobs), len(model.group_sizes), len(plan.optimizer.optimizers),
        ", ".join(type(o).__name__ for o in plan.optimizer.optimizers), plan.path,
        len(dataset.x_train), len(dataset.x_val), dataset.validation, len(dataset.x_test),
    )  # fmt: skip
    members: list[Member] = []
    try:
        for k, job in enumerate(jobs):
            pack_tags = {
                tracking.TAG_PACK: pack_id,
                tracking.TAG_PACK_SIZE: str(len(jobs)),
                tracking.TAG_PACK_MEMBER: str(k),
            }
            record = run_record(client, experiment_id, job, pack_tags)
            run_id = tracking.open_run(client, experiment_id, record)
            optimizer, variables = plan.optimizer.of_member(k)
            select = model.member_selector(k, variables)
            members.append(Member(run_id, plan.schedules[k], k, job.name, select=select, optimizer=optimizer))
        history = fit_epochs(
            model, dataset, plan.seeds, cfg.training.batch_size, cfg.training.epochs,
            watching.callbacks(client, cfg, members, dataset),
        )  # fmt: skip
        # The test set once, for every member that trained to the end (after training: diverged members are known).
        watching.log_test_metrics(client, model, dataset, members, cfg.training.batch_size, len(history) - 1)
    except BaseException as e:
        for member in members:
            tracking.close_run_after(client, member.run_id, member.name, e)
        raise
    outcomes: list[float | Exception] = []
    final = history[-1]
    for member in members:
        tracking.close_run(client, member.run_id, member.name, member.error)
        outcomes.append(member.error if member.error is not None else float(final[member.key("val_accuracy")]))
    return outcomes
