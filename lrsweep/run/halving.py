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
from dataclasses import dataclass, field

from mlflow.tracking import MlflowClient

from lrsweep import tracking
from lrsweep.core import errors, identity, interrupts
from lrsweep.core.halving import Halving, going_on, rungs
from lrsweep.ml import member_state, stacking
from lrsweep.ml.data import Dataset
from lrsweep.ml.member_state import MemberState
from lrsweep.ml.packed_mlp import mlp_spec
from lrsweep.ml.packing import NotPackable, check_optimizer
from lrsweep.ml.range_test import is_range_test
from lrsweep.ml.training import Member, fit_epochs, fresh_session
from lrsweep.run import experiment, pack, rung_checkpoints, watching
from lrsweep.run.job import Job, build_model, build_optimizer, run_record
from lrsweep.run.rung_checkpoints import Checkpoint

log = logging.getLogger(__name__)


@dataclass
class Seat:
    """One job's run through the rungs: where its member's state is between packs, and how it ended."""

    job: Job
    run_id: str
    epoch: int = 0  # epochs trained
    state: MemberState | None = None
    starting_loss: float | None = None
    scores: dict[int, float] = field(default_factory=dict)  # val_accuracy by epoch (0-based), at the rungs at least
    error: Exception | None = None  # diverged
    stopped: bool = False
    earlier: bool = False  # stopped by an earlier run of this sweep (its run reused as it is)
    packed: bool = False  # its run has its first pack's tags

    @property
    def going(self) -> bool:
        return self.error is None and not self.stopped

    @property
    def score(self) -> float:
        """Its last val_accuracy (NaN when it diverged)."""
        return self.score_at(self.epoch) if self.error is None else math.nan

    def score_at(self, epoch: int) -> float:
        """Its val_accuracy after `epoch` epochs (NaN if not known: it diverged before)."""
        return self.scores.get(epoch - 1, math.nan)


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
    problem = unpackable(jobs, other_models)
    if problem is not None:
        raise errors.ConfigError(
            f"halving moves runs between packs, and {problem}. Set hydra.launcher.other_models=unroll (or vmap on "
            "JAX), or drop hydra.launcher.halving.eta."
        )


def unpackable(jobs: Sequence[Job], other_models: str) -> str | None:
    """Why the first job that cannot pack cannot ("<job> cannot pack: <reason>"), or None: every job's model and
    optimizer can (each distinct pair built once)."""
    seen = set()
    for job in jobs:
        key = (job.resolved["model"].get("_target_"), json.dumps(job.resolved["optimizer"], default=str))
        if key in seen:
            continue
        seen.add(key)
        fresh_session()
        model = build_model(job.cfg)
        try:
            check_optimizer(build_optimizer(job.cfg, 0.01))
            try:
                mlp_spec(model)
            except NotPackable as e:
                if stacking.other_models_path(other_models) is None:
                    raise NotPackable(f"{e}, and hydra.launcher.other_models={other_models} trains it alone") from None
        except NotPackable as e:
            return f"{job.name} cannot pack: {e}"
    return None


@dataclass
class Stretch:
    """A pack of seats, all at one epoch, to train to epoch `end` (`last`: the sweep's last epoch)."""

    seats: list[Seat]
    end: int
    last: bool
    pack_id: str


# Trains a rung's stretches: `train_stretches` here, one after another, or on a cluster (`lrsweep.run.remote`).
TrainStretches = Callable[[Sequence[Stretch], MlflowClient, str], None]


def train_stretches(stretches: Sequence[Stretch], client: MlflowClient, other_models: str) -> None:
    """A rung's stretches in this process, one after another."""
    for stretch in stretches:
        train_stretch(stretch.seats, stretch.end, stretch.last, client, stretch.pack_id, other_models)


def train(
    jobs: Sequence[Job],
    halving: Halving,
    plan_packs: Callable[[Sequence[Job]], list[list[Job]]],
    sweep_name: str,
    other_models: str = "auto",
    stretches: TrainStretches = train_stretches,
) -> list[float | Exception]:
    """Trains a sweep's jobs by successive halving, holding their configurations' claims; an interrupted run of the
    same sweep goes on from its last completed rung (`lrsweep.run.rung_checkpoints`).

    Args:
        jobs: the jobs to train (checked: `check`).
        halving: the settings.
        plan_packs: packs of the jobs that go on (`launching.plan_packs` with the sweep's limits).
        sweep_name: the sweep's id, for the packs' names.
        other_models: `hydra.launcher.other_models`.
        stretches: how a rung's packs train (`train_stretches`: here, one after another).

    Returns:
        Per job: its last val_accuracy (a stopped run's at its rung), or its error (divergence).
    """
    cfg = jobs[0].cfg
    client, experiment_id = tracking.connect_config(cfg.tracking)
    with experiment.store_failures(cfg.tracking.uri), experiment.claimed(jobs, client, experiment_id) as reused:
        todo = [job for k, job in enumerate(jobs) if k not in reused]
        seats = [seat_of(job, client, experiment_id, halving) for job in todo]
        try:
            train_rungs(seats, halving, plan_packs, sweep_name, client, other_models, stretches)
        except BaseException as e:
            for seat in seats:
                if seat.going:
                    tracking.close_run_after(client, seat.run_id, seat.job.name, e)
            raise
        for seat in seats:
            if seat.going:
                tracking.close_run(client, seat.run_id, seat.job.name)
                rung_checkpoints.drop(seat.job, halving.describe())
    results = iter(seat.error if seat.error is not None else seat.score for seat in seats)
    return [reused[k] if k in reused else next(results) for k in range(len(jobs))]


def seat_of(job: Job, client: MlflowClient, experiment_id: str, halving: Halving) -> Seat:
    """A job's seat: stopped, if an earlier run of this halving sweep stopped its configuration (that run is
    reused); going on from the checkpoint an interrupted run left (in a new run holding its metrics so far); or
    from the start, in a new run."""
    settings = halving.describe()
    if not job.cfg.resume:  # resume=false: from the start, whatever an earlier run left
        rung_checkpoints.drop(job, settings)
    stopped = tracking.find_stopped(client, experiment_id, job.config_hash, settings) if job.cfg.resume else None
    if stopped is not None:
        tracking.record_reuse(client, experiment_id, job.context, stopped)
        epoch = int(stopped.data.tags[tracking.TAG_STOPPED_EPOCH])
        scores = {m.step: m.value for m in client.get_metric_history(stopped.info.run_id, "val_accuracy")}
        log.info("%s: stopped at epoch %d by an earlier run of this sweep (%s)", job.name, epoch, stopped.info.run_id)
        return Seat(job, stopped.info.run_id, epoch, scores=scores, stopped=True, earlier=True)
    record = run_record(client, experiment_id, job, {tracking.TAG_HALVING: settings})
    run_id = tracking.open_run(client, experiment_id, record)
    checkpoint = rung_checkpoints.load(job, settings)
    if checkpoint is None:
        return Seat(job, run_id)
    rung_checkpoints.take_over(client, checkpoint, run_id)
    log.info("%s: goes on from epoch %d, where run %s stopped", job.name, checkpoint.epoch, checkpoint.run_id)
    return Seat(
        job, run_id, checkpoint.epoch, checkpoint.state, checkpoint.starting_loss, dict(checkpoint.scores)
    )  # fmt: skip


def train_rungs(
    seats: Sequence[Seat],
    halving: Halving,
    plan_packs: Callable[[Sequence[Job]], list[list[Job]]],
    sweep_name: str,
    client: MlflowClient,
    other_models: str,
    stretches: TrainStretches = train_stretches,
) -> None:
    """Every rung: the seats that go on and are not there yet, packed afresh (by the epoch each starts from) and
    trained to the rung's epoch (the rung's packs by `stretches`), then ranked with those an earlier run of the
    sweep stopped there."""
    epochs = int(seats[0].job.cfg.training.epochs)
    points = rungs(epochs, halving.min_epochs, halving.eta)
    log.info("Successive halving (%s): ranked after epochs %s", halving.describe(), points[:-1])
    for rung, end in enumerate(points, start=1):
        interrupts.check()
        going = [seat for seat in seats if seat.going]
        behind = [seat for seat in going if seat.epoch < end]
        todo = []
        for start in sorted({seat.epoch for seat in behind}):
            group = [seat for seat in behind if seat.epoch == start]
            by_job = {id(seat.job): seat for seat in group}
            for k, jobs in enumerate(plan_packs([seat.job for seat in group]), start=1):
                pack_id = f"{sweep_name}/rung{rung}-pack{k}" + (f"-from{start}" if start else "")
                todo.append(Stretch([by_job[id(job)] for job in jobs], end, end == epochs, pack_id))
        stretches(todo, client, other_models)
        for seat in behind:
            if seat.error is not None:
                tracking.close_run(client, seat.run_id, seat.job.name, seat.error)
                rung_checkpoints.drop(seat.job, halving.describe())
        if end < epochs:
            ranked = [*going, *(seat for seat in seats if seat.earlier and seat.epoch >= end)]  # as first ranked
            stop_behind(ranked, halving, rung, end, client)
            for seat in going:  # what a rerun goes on from, should this one be interrupted
                if seat.going and seat.epoch == end and seat.state is not None:
                    checkpoint = Checkpoint(seat.state, end, seat.run_id, seat.scores, seat.starting_loss)
                    rung_checkpoints.save(seat.job, halving.describe(), checkpoint)


def train_stretch(
    seats: Sequence[Seat], end: int, last: bool, client: MlflowClient, pack_id: str, other_models: str
) -> None:
    """Trains a pack of seats (all at one epoch) to epoch `end`, each from its state; keeps their new states."""
    start = seats[0].epoch
    plan, members, dataset = seated_pack(seats, client, pack_id, other_models)
    cfg = seats[0].job.cfg
    batch_size = int(cfg.training.batch_size)
    callbacks = watching.callbacks(client, cfg, members, dataset)
    history = fit_epochs(plan.model, dataset, plan.seeds, batch_size, end, callbacks, start, plan.starts)
    if last:
        watching.log_test_metrics(client, plan.model, dataset, members, batch_size, end - 1)
    states = [None] * len(seats) if last else member_state.capture(plan.model, plan.optimizer, range(len(seats)))
    for seat, member, state in zip(seats, members, states, strict=True):
        keep(seat, member, history[-1], end, state)


def seated_pack(
    seats: Sequence[Seat], client: MlflowClient, pack_id: str, other_models: str
) -> tuple[stacking.PackPlan, list[Member], Dataset]:
    """The pack of seats (in pack order: by seed, then epochs trained), each member from its seat's state, its
    members, and the data they train on; a seat's run gets the tags of the first pack it trains in."""
    jobs = [seat.job for seat in seats]
    dataset = jobs[0].data()
    plan = pack.build_pack(jobs, dataset, other_models, [seat.state for seat in seats])
    pack.describe(plan, jobs, dataset, pack_id)
    members = [pack.pack_member(plan, k, seat.run_id, seat.job, seat.starting_loss) for k, seat in enumerate(seats)]
    for k, seat in enumerate(seats):
        if not seat.packed:  # its first pack
            tracking.set_tags(client, seat.run_id, pack.pack_tags(pack_id, len(seats), k))
            seat.packed = True
    return plan, members, dataset


def keep(seat: Seat, member: Member, logs: dict, epoch: int, state: MemberState | None) -> None:
    """What a seat takes from its stretch ending at `epoch`: its score there, its error, its state."""
    seat.starting_loss = member.starting_loss
    seat.error = member.error
    seat.epoch = epoch
    if member.error is None:
        seat.scores[epoch - 1] = float(logs[member.key("val_accuracy")])
    seat.state = state


def stop_behind(seats: Sequence[Seat], halving: Halving, rung: int, epoch: int, client: MlflowClient) -> None:
    """Ranks the configurations at a rung (their seeds' scores; a diverged seed counts as `DIVERGED_SCORE`) and
    ends the runs of those that do not go on, FINISHED, tagged with the rung and epoch."""
    configurations = [configuration(seat.job) for seat in seats]
    scores: dict[str, dict[int, float]] = {}
    for seat, key in zip(seats, configurations, strict=True):
        scores.setdefault(key, {})[seat.job.seed] = seat.score_at(epoch)
    kept = set(going_on(scores, halving.eta, halving.rule))
    stopped = [seat for seat, key in zip(seats, configurations, strict=True) if seat.going and key not in kept]
    for seat in stopped:
        seat.stopped = True
        seat.state, seat.epoch = None, epoch
        rung_checkpoints.drop(seat.job, halving.describe())
        tags = {tracking.TAG_STOPPED_RUNG: str(rung), tracking.TAG_STOPPED_EPOCH: str(epoch)}
        tracking.set_tags(client, seat.run_id, tags)
        tracking.close_run(client, seat.run_id, seat.job.name)
    log.info(
        "Rung %d (epoch %d): %d of %d configurations go on, %d runs stopped (%s)",
        rung, epoch, len(kept), len(scores), len(stopped), halving.describe(),
    )  # fmt: skip
