"""A pack trained and recorded: jobs stacked into one model (`lrsweep.ml.packing`), each member its own MLflow run."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from mlflow.tracking import MlflowClient

from lrsweep import tracking
from lrsweep.ml import member_state
from lrsweep.ml.data import Dataset
from lrsweep.ml.member_state import MemberState
from lrsweep.ml.schedules import KerasSchedule
from lrsweep.ml.stacking import PackPlan, stack
from lrsweep.ml.training import Member, fit_epochs, fresh_session
from lrsweep.run import watching
from lrsweep.run.job import (
    Job,
    build_model,
    build_optimizer,
    build_schedule,
    compile_args,
    run_record,
    steps_per_epoch,
    trial_key,
)

log = logging.getLogger(__name__)


def build_pack(
    jobs: Sequence[Job], dataset: Dataset, other_models: str = "auto", states: Sequence[MemberState | None] = ()
) -> PackPlan:
    """The stacked model of jobs ordered by seed, member k from the model, schedule and optimizer its solo run
    builds (`lrsweep.run.job`), so that it starts from exactly the same weights and updates as it would; or, given
    member k's state where an earlier pack left it (`lrsweep.ml.member_state`), going on from there.

    Members may have trained different numbers of whole epochs (a search refills a freed place with a new run:
    `lrsweep.run.refill`); the pack's count is the fewest, and each member runs its own epochs ahead of it
    (`stack`'s `starts`), ordered by seed, then by epochs trained.

    Raises:
        NotPackable: when the model or optimizer cannot be packed (the jobs then train alone).
        ValueError: members whose step counts are not whole epochs apart.
    """
    schedules = [KerasSchedule(build_schedule(job.cfg, dataset)) for job in jobs]
    fresh_session()
    solo_models = [build_model(job.cfg) for job in jobs]  # each seeds its own initial weights
    states = list(states) or [None] * len(jobs)
    member_state.restore_variables(solo_models, states)
    optimizers = [build_optimizer(job.cfg, 0.01) for job in jobs]  # their settings; each LR comes from a schedule
    seeds = [job.seed for job in jobs]
    per_epoch = steps_per_epoch(jobs[0].cfg, dataset)
    starts = epochs_ahead([state.iterations if state is not None else 0 for state in states], per_epoch)
    args = (compile_args(jobs[0].cfg), other_models, starts, per_epoch)
    plan = stack(solo_models, seeds, schedules, optimizers, *args)
    if any(state is not None for state in states):
        plan.optimizer.build(plan.model.trainable_variables)  # its slots, to hold the members' state
        member_state.restore_optimizer(plan.model, plan.optimizer, states)
    return plan


def epochs_ahead(steps: Sequence[int], steps_per_epoch: int) -> list[int]:
    """Each member's epochs beyond the fewest any member of the pack has trained.

    Raises:
        ValueError: step counts that are not whole epochs apart (members cannot share one data order per epoch).
    """
    fewest = min(steps)
    if any((s - fewest) % steps_per_epoch for s in steps):
        raise ValueError(
            f"a pack's members must have trained whole epochs of {steps_per_epoch} steps apart. Received: {list(steps)}"
        )
    return [(s - fewest) // steps_per_epoch for s in steps]


def describe(plan: PackPlan, jobs: Sequence[Job], dataset: Dataset, pack_id: str) -> None:
    """Logs what a pack holds and how it trains, in one line."""
    model = plan.model
    log.info(
        "Pack %s: %d runs (%s) in one model, %d data group(s), %d optimizer(s) (%s), trained as %s; "
        "%d train / %d validation (%s) / %d test examples",
        pack_id, len(jobs), ", ".join(job.name for job in jobs), len(model.group_sizes), len(plan.optimizer.optimizers),
        ", ".join(type(o).__name__ for o in plan.optimizer.optimizers), plan.path,
        len(dataset.x_train), len(dataset.x_val), dataset.validation, len(dataset.x_test),
    )  # fmt: skip


def pack_member(plan: PackPlan, k: int, run_id: str, job: Job, starting_loss: float | None = None) -> Member:
    """Member k of a pack, job `job`, reporting to its run `run_id` (at its own epochs and steps)."""
    optimizer, variables = plan.optimizer.of_member(k)
    select = plan.model.member_selector(k, variables)
    return Member(
        run_id, plan.schedules[k], k, job.name, select=select, optimizer=optimizer, starting_loss=starting_loss,
        trial=trial_key(job.cfg), epoch_offset=plan.starts[plan.model.group_of(k)],
        step_offset=plan.optimizer.member_offsets[k],
    )  # fmt: skip


def pack_tags(pack_id: str, size: int, k: int) -> dict[str, str]:
    return {tracking.TAG_PACK: pack_id, tracking.TAG_PACK_SIZE: str(size), tracking.TAG_PACK_MEMBER: str(k)}


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
    describe(plan, jobs, dataset, pack_id)
    model = plan.model
    members: list[Member] = []
    try:
        for k, job in enumerate(jobs):
            record = run_record(client, experiment_id, job, pack_tags(pack_id, len(jobs), k))
            members.append(pack_member(plan, k, tracking.open_run(client, experiment_id, record), job))
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
        logs = history[member.stopped_epoch] if member.pruned else final  # a pruned member: where it stopped
        outcomes.append(member.error if member.error is not None else float(logs[member.key("val_accuracy")]))
    return outcomes
