"""A search's trials trained in packs whose freed places are refilled with its next trials (asynchronous, as ASHA).

When a trial's pruner stops its run (or the run diverges, or trains to its end), its pack stops at that epoch's
end. The search is told the run's outcome and asked for as many new trials as places are free, and a new pack
holds the runs that go on, each from its state (`lrsweep.ml.member_state`) at its own epoch, beside the new ones at
epoch 0 (`lrsweep.run.pack.build_pack`: members at different epochs each keep their own schedule step, optimizer
step count and order of examples). A run trains exactly as it would have alone, whichever packs it passed through
(tests/run/test_refill.py compares them); a pruned run costs nothing after the epoch it was pruned in.

Each run holds its configuration's claim from when it is asked for to when it ends; one that already FINISHED is
reused, its value told at once.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import keras
from mlflow.tracking import MlflowClient

from lrsweep import tracking
from lrsweep.core import interrupts
from lrsweep.ml import member_state
from lrsweep.ml.training import Member, fit_epochs
from lrsweep.run import experiment, watching
from lrsweep.run.halving import Seat, keep, seated_pack
from lrsweep.run.job import Job, optimizer_settings, run_record

log = logging.getLogger(__name__)


@dataclass
class Search:
    """What refilled training asks of the search that drives it.

    Attributes:
        more: up to n new jobs (its next trials, checked), fewer or none when it has no more to propose.
        ended: a job's run ended: its last val_accuracy (a pruned run's where it stopped), or its error.
        more_to_come: whether `more` could give another job: if not, a freed place is not worth a new pack.
    """

    more: Callable[[int], list[Job]]
    ended: Callable[[Job, float | Exception], None]
    more_to_come: Callable[[], bool]


class FreedPlace(keras.callbacks.Callback):
    """Stops a pack at the end of an epoch in which one of its members stopped (pruned or diverged) while others go
    on, so that its place is refilled. After `PruneTrials` and `StopOnDivergence`, which stop members."""

    def __init__(self, members: Sequence[Member]) -> None:
        super().__init__()
        self.members = list(members)

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if any(member.stopped_epoch == epoch for member in self.members):
            self.model.stop_training = True


def train(
    first: Sequence[Job],
    search: Search,
    places: int,
    plan_packs: Callable[[Sequence[Job]], list[list[Job]]],
    sweep_name: str,
    other_models: str = "auto",
) -> None:
    """Trains the search's jobs, `places` at a time, refilling each freed place with its next job.

    Args:
        first: the first jobs (checked, and packable: `lrsweep.run.halving.unpackable`).
        search: where further jobs come from and outcomes go.
        places: the most runs training at once.
        plan_packs: packs of the runs training (`launching.plan_packs` with the sweep's limits): runs that cannot
            share a pack (another model, ...) train in packs of their own, one after another.
        sweep_name: the sweep's id, for the packs' names.
        other_models: `hydra.launcher.other_models`.
    """
    client, experiment_id = tracking.connect_config(first[0].cfg.tracking)
    seats: list[Seat] = []
    claims: dict[int, contextlib.ExitStack] = {}  # id(seat) -> its held claim
    waiting, packs = list(first), 0

    def end(seat: Seat) -> None:
        seats.remove(seat)
        claims.pop(id(seat)).close()
        search.ended(seat.job, seat.error if seat.error is not None else seat.score)

    try:
        with experiment.store_failures(first[0].cfg.tracking.uri):
            while True:
                interrupts.check()
                while len(seats) < places and (jobs := waiting or search.more(places - len(seats))):
                    waiting = []
                    for job in jobs:
                        held = contextlib.ExitStack()
                        reused = held.enter_context(experiment.claimed([job], client, experiment_id))
                        if reused:
                            held.close()
                            search.ended(job, reused[0])
                            continue
                        seat = Seat(
                            job, tracking.open_run(client, experiment_id, run_record(client, experiment_id, job))
                        )
                        seats.append(seat)
                        claims[id(seat)] = held
                if not seats:
                    return
                for jobs in plan_packs([seat.job for seat in seats]):
                    packs += 1
                    in_pack = [seat for seat in seats if any(seat.job is job for job in jobs)]
                    train_stretch(in_pack, client, f"{sweep_name}/refill{packs}", other_models, search.more_to_come())
                for seat in [seat for seat in seats if not seat.going or seat.epoch == seat_epochs(seat)]:
                    tracking.close_run(client, seat.run_id, seat.job.name, seat.error)
                    end(seat)
    except BaseException as e:
        for seat in seats:
            tracking.close_run_after(client, seat.run_id, seat.job.name, e)
        for held in claims.values():
            held.close()
        raise


def seat_epochs(seat: Seat) -> int:
    return int(seat.job.cfg.training.epochs)


def train_stretch(seats: Sequence[Seat], client: MlflowClient, pack_id: str, other_models: str, refill: bool) -> None:
    """Trains a pack of seats, each from its own epoch and state, until one of them ends: it trains to its last
    epoch, or (`refill`: a new run could take its place) its pruner stops it or it diverges. Keeps each seat's new
    epoch, score and state; logs the test scores of those that trained to their end."""
    seats = sorted(seats, key=lambda seat: (seat.job.seed, seat.epoch, optimizer_settings(seat.job)))
    plan, members, dataset = seated_pack(seats, client, pack_id, other_models)
    cfg = seats[0].job.cfg
    base = min(seat.epoch for seat in seats)  # the pack's epoch count: its youngest member's
    end = base + min(seat_epochs(seat) - seat.epoch for seat in seats)
    callbacks = watching.callbacks(client, cfg, members, dataset) + ([FreedPlace(members)] if refill else [])
    batch_size = int(cfg.training.batch_size)
    history = fit_epochs(plan.model, dataset, plan.seeds, batch_size, end, callbacks, base, plan.starts)
    trained = len(history)
    done = [k for k, (seat, m) in enumerate(zip(seats, members, strict=True)) if is_done(seat, m, trained)]
    watching.log_test_metrics(client, plan.model, dataset, [members[k] for k in done], batch_size, base + trained - 1)
    going = [k for k, member in enumerate(members) if k not in done and member.error is None and not member.pruned]
    states = dict(zip(going, member_state.capture(plan.model, plan.optimizer, going), strict=True))
    for k, (seat, member) in enumerate(zip(seats, members, strict=True)):
        if member.pruned:  # its scores where it stopped
            keep(seat, member, history[member.stopped_epoch - base], member.own_epoch(member.stopped_epoch) + 1, None)
            seat.stopped = True
        else:
            keep(seat, member, history[-1], seat.epoch + trained, states.get(k))


def is_done(seat: Seat, member: Member, trained: int) -> bool:
    """Whether a member trained to its last epoch in this stretch (and so gets its test scores)."""
    return member.error is None and not member.pruned and seat.epoch + trained == seat_epochs(seat)
