"""A packed sweep trained by successive halving: every configuration trains to the first rung, the best go on to
the next, and so on (`lrsweep.core.halving` decides); the others stop there.

At each rung the runs that go on are packed afresh (`launching.plan_packs`): each member's state (weights, optimizer
slots, step count: `lrsweep.ml.member_state`) moves into the new, smaller packs, so a stopped run costs nothing more
and a run that goes on trains exactly as it would have without halving (tests/run/test_halving.py compares them).
Every run stays open (RUNNING) from its first epoch to its end: a stopped run ends FINISHED with tags saying where
it stopped (`tracking.TAG_STOPPED_RUNG`, `TAG_STOPPED_EPOCH`), a diverged one FAILED, the others FINISHED after the last
epoch with their test scores.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import keras
from mlflow.tracking import MlflowClient

from lrsweep import tracking
from lrsweep.core import errors, identity, interrupts
from lrsweep.core.halving import Halving, going_on, rungs
from lrsweep.ml import member_state, stacking
from lrsweep.ml.member_state import MemberState
from lrsweep.ml.packed_mlp import mlp_spec
from lrsweep.ml.packing import NotPackable, check_optimizer
from lrsweep.ml.range_test import is_range_test
from lrsweep.ml.training import Member, fit_epochs
from lrsweep.run import experiment, pack, watching
from lrsweep.run.job import Job, build_model, build_optimizer, run_record

log = logging.getLogger(__name__)


@dataclass
class Seat:
    """One job's run through the rungs: where its member's state is between packs, and how it ended."""

    job: Job
    run_id: str
    state: MemberState | None = None
    starting_loss: float | None = None
    score: float = math.nan  # val_accuracy at the last epoch it trained
    error: Exception | None = None  # diverged
    stopped: bool = False

    @property
    def going(self) -> bool:
        return self.error is None and not self.stopped


def configuration(job: Job) -> str:
    """What tells a job's configuration apart from the others (its seed and what changes no result aside)."""
    flat = identity.flatten(job.resolved)
    kept = {k: v for k, v in flat.items() if k != identity.SEED_KEY and not identity.under(k, identity.NON_RESULT_KEYS)}
    return json.dumps(kept, sort_keys=True)


def check(jobs: Sequence[Job], halving: Halving, other_models: str) -> None:
    """Raises ConfigError naming what halving cannot train, before any run opens: jobs of unequal length, a range
    test, a model or optimizer that does not pack (halving moves runs between packs)."""
    epochs = {int(job.cfg.training.epochs) for job in jobs}
    if len(epochs) > 1:
        raise errors.ConfigError(
            f"halving ranks all of a sweep's runs at the same epochs, but training.epochs differs: {sorted(epochs)}. "
            "Sweep one training.epochs per halving sweep."
        )
    if any(is_range_test(job.cfg) for job in jobs):
        raise errors.ConfigError("an LR range test has nothing to rank by rungs: drop hydra.launcher.halving.eta")
    seen = set()
    for job in jobs:
        key = (job.resolved["model"].get("_target_"), json.dumps(job.resolved["optimizer"], default=str))
        if key in seen:
            continue
        seen.add(key)
        keras.backend.clear_session()
        model = build_model(job.cfg)
        try:
            check_optimizer(build_optimizer(job.cfg, 0.01))
            try:
                mlp_spec(model)
            except NotPackable as e:
                if stacking.other_models_path(other_models) is None:
                    raise NotPackable(f"{e}, and hydra.launcher.other_models={other_models} trains it alone") from None
        except NotPackable as e:
            raise errors.ConfigError(
                f"halving moves runs between packs, and {job.name} cannot pack: {e}. Set hydra.launcher.other_models="
                "unroll (or vmap on JAX), or drop hydra.launcher.halving.eta."
            ) from None


def train(
    jobs: Sequence[Job],
    halving: Halving,
    plan_packs: Callable[[Sequence[Job]], list[list[Job]]],
    sweep_name: str,
    other_models: str = "auto",
) -> list[float | Exception]:
    """Trains a sweep's jobs by successive halving, holding their configurations' claims.

    Args:
        jobs: the jobs to train (checked: `check`).
        halving: the settings.
        plan_packs: packs of the jobs that go on (`launching.plan_packs` with the sweep's limits).
        sweep_name: the sweep's id, for the packs' names.
        other_models: `hydra.launcher.other_models`.

    Returns:
        Per job: its last val_accuracy (a stopped run's at its rung), or its error (divergence).
    """
    cfg = jobs[0].cfg
    client, experiment_id = tracking.connect_config(cfg.tracking)
    with experiment.store_failures(cfg.tracking.uri), experiment.claimed(jobs, client, experiment_id) as reused:
        todo = [job for k, job in enumerate(jobs) if k not in reused]
        seats = open_seats(todo, client, experiment_id, halving)
        try:
            train_rungs(seats, halving, plan_packs, sweep_name, client, other_models)
        except BaseException as e:
            for seat in seats:
                if seat.going:
                    tracking.close_run_after(client, seat.run_id, seat.job.name, e)
            raise
        for seat in seats:
            if seat.going:
                tracking.close_run(client, seat.run_id, seat.job.name)
    results = iter(seat.error if seat.error is not None else seat.score for seat in seats)
    return [reused[k] if k in reused else next(results) for k in range(len(jobs))]


def open_seats(jobs: Sequence[Job], client: MlflowClient, experiment_id: str, halving: Halving) -> list[Seat]:
    seats = []
    for job in jobs:
        record = run_record(client, experiment_id, job, {tracking.TAG_HALVING: halving.describe()})
        seats.append(Seat(job, tracking.open_run(client, experiment_id, record)))
    return seats


def train_rungs(
    seats: Sequence[Seat],
    halving: Halving,
    plan_packs: Callable[[Sequence[Job]], list[list[Job]]],
    sweep_name: str,
    client: MlflowClient,
    other_models: str,
) -> None:
    """Every rung: the seats that go on, packed afresh and trained to the rung's epoch, then ranked."""
    epochs = int(seats[0].job.cfg.training.epochs)
    points = rungs(epochs, halving.min_epochs, halving.eta)
    log.info("Successive halving (%s): ranked after epochs %s", halving.describe(), points[:-1])
    start = 0
    for rung, end in enumerate(points, start=1):
        interrupts.check()
        going = [seat for seat in seats if seat.going]
        by_job = {id(seat.job): seat for seat in going}
        for k, jobs in enumerate(plan_packs([seat.job for seat in going]), start=1):
            pack_id = f"{sweep_name}/rung{rung}-pack{k}"
            train_stretch([by_job[id(job)] for job in jobs], start, end, end == epochs, client, pack_id, other_models)
        for seat in going:
            if seat.error is not None:
                tracking.close_run(client, seat.run_id, seat.job.name, seat.error)
        if end < epochs:
            stop_behind([seat for seat in going if seat.going or seat.error], halving, rung, end, client)
        start = end


def train_stretch(
    seats: Sequence[Seat], start: int, end: int, last: bool, client: MlflowClient, pack_id: str, other_models: str
) -> None:
    """Trains a pack of seats from epoch `start` to `end` (exclusive), each from its state; keeps their new states."""
    jobs = [seat.job for seat in seats]
    cfg, dataset = jobs[0].cfg, jobs[0].data()
    plan = pack.build_pack(jobs, dataset, other_models, [seat.state for seat in seats])
    pack.describe(plan, jobs, dataset, pack_id)
    members = [pack.pack_member(plan, k, seat.run_id, seat.job, seat.starting_loss) for k, seat in enumerate(seats)]
    if start == 0:
        for k, seat in enumerate(seats):
            tracking.set_tags(client, seat.run_id, pack.pack_tags(pack_id, len(seats), k))
    batch_size = int(cfg.training.batch_size)
    callbacks = watching.callbacks(client, cfg, members, dataset)
    history = fit_epochs(plan.model, dataset, plan.seeds, batch_size, end, callbacks, initial_epoch=start)
    if last:
        watching.log_test_metrics(client, plan.model, dataset, members, batch_size, end - 1)
    for seat, member in zip(seats, members, strict=True):
        state = None if last else member_state.capture(plan.model, plan.optimizer, member.index)
        keep(seat, member, history[-1], state)


def keep(seat: Seat, member: Member, logs: dict, state: MemberState | None) -> None:
    seat.starting_loss = member.starting_loss
    seat.error = member.error
    seat.score = float(logs[member.key("val_accuracy")]) if member.error is None else math.nan
    seat.state = state


def stop_behind(seats: Sequence[Seat], halving: Halving, rung: int, epoch: int, client: MlflowClient) -> None:
    """Ranks the configurations at a rung (their seeds' scores; a diverged seed counts as `DIVERGED_SCORE`) and
    ends the runs of those that do not go on, FINISHED, tagged with the rung and epoch."""
    scores: dict[str, dict[int, float]] = {}
    for seat in seats:
        scores.setdefault(configuration(seat.job), {})[seat.job.seed] = seat.score
    kept = set(going_on(scores, halving.eta, halving.rule))
    stopped = [seat for seat in seats if seat.going and configuration(seat.job) not in kept]
    for seat in stopped:
        seat.stopped = True
        seat.state = None
        tags = {tracking.TAG_STOPPED_RUNG: str(rung), tracking.TAG_STOPPED_EPOCH: str(epoch)}
        tracking.set_tags(client, seat.run_id, tags)
        tracking.close_run(client, seat.run_id, seat.job.name)
    log.info(
        "Rung %d (epoch %d): %d of %d configurations go on, %d runs stopped (%s)",
        rung, epoch, len(kept), len(scores), len(stopped), halving.describe(),
    )  # fmt: skip
