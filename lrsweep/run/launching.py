"""What the packed launcher does between Hydra and training: check every job, reuse finished ones, plan packs,
train each pack (`lrsweep.run.pack`) or lone job (`lrsweep.run.experiment`).

Imports Keras: choose the backend (`lrsweep.core.backend.select`) before importing it.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from omegaconf import DictConfig

from lrsweep import tracking
from lrsweep.core import backend, errors, identity, interrupts
from lrsweep.core.halving import Halving
from lrsweep.ml import stacking
from lrsweep.ml.packing import ACROSS_MEMBERS, PACKABLE_OPTIMIZERS, NotPackable
from lrsweep.run import experiment, halving, pack, refill
from lrsweep.run.job import Checks, Job, checked, optimizer_settings

MLP_TARGET = "lrsweep.model.build_mlp"  # the tutorial's MLP: packs fused, however many members
log = logging.getLogger(__name__)

# What may differ between the members of one pack; anything else in the resolved config splits packs.
MEMBER_KEYS = ("schedule", "optimizer.learning_rate", "training.seed", "tracking.run_name", "tracking.tags")
# With one of these optimizers a job's whole optimizer is its member's own (a pack holds several side by side),
# apart from the settings that act across members.
PACKABLE_TARGETS = frozenset(f"keras.optimizers.{cls.__name__}" for cls in PACKABLE_OPTIMIZERS)
SHARED_OPTIMIZER_KEYS = frozenset(f"optimizer.{name}" for name in ACROSS_MEMBERS)
MAX_LISTED = 10  # a refused sweep lists this many of its bad jobs, then how many more there are


@dataclass
class SweepPlan:
    """A sweep's jobs after checking: the reused ones' results by job number, and the packs to train."""

    reused: dict[int, float] = field(default_factory=dict)
    packs: list[list[Job]] = field(default_factory=list)


def check_jobs(jobs: Sequence[tuple[DictConfig, identity.JobContext]]) -> list[Job]:
    """Checks every job's config of a sweep before any of them starts, once: its schema, then `job.checked`, each
    distinct part of the configs once (`job.Checks`).

    Args:
        jobs: (task config, `JobContext`) of each job.

    Raises:
        SystemExit: after printing one line per job that cannot run, before any store or run is touched.
    """
    prepared, errors_ = [], []
    checks = Checks()
    common = set.intersection(*(set(c.overrides) for _, c in jobs)) if len(jobs) > 1 else set()
    for cfg, context in jobs:
        try:
            backend.select(cfg.backend, cfg.threads)
            prepared.append(checked(cfg, context, checks, checks.schema(cfg)))  # the schema, then the rest
        except errors.ConfigError as e:
            if errors.keep_traceback():
                raise  # the traceback, as Hydra shows it
            swept = " ".join(o for o in context.overrides if o not in common)  # what tells it from the other jobs
            label = f"job #{context.job_num} ({swept or ' '.join(context.overrides) or 'no overrides'})"
            errors_.append((label, str(e)))
    if len(jobs) == 1 and errors_:
        raise SystemExit(f"lrsweep: {errors_[0][1]}")
    if errors_:
        raise SystemExit(
            f"lrsweep: {len(errors_)} of {len(jobs)} jobs of this sweep cannot run, so none was started:\n  "
            + errors.listed([f"{label}: {message}" for label, message in errors_], "\n  ", MAX_LISTED)
        )
    return prepared


def plan_sweep(
    prepared: Sequence[Job],
    max_members: int,
    max_seeds: int,
    max_unrolled: int | None = None,
    other_models: str = "auto",
) -> SweepPlan:
    """Reuses FINISHED configurations among a sweep's checked jobs (`check_jobs`) and plans packs for the rest.

    Each job to train is claimed first (`lrsweep.tracking.claims`): those another live process is training are
    planned last, so this sweep trains all it could claim before it waits for them.

    Args:
        prepared: every job of the sweep, checked.
        max_members: the most runs in one pack.
        max_seeds: the most distinct seeds in one pack.
        max_unrolled: the most runs in one pack whose model is unrolled (`unrolls`); None: max_members.
        other_models: `hydra.launcher.other_models`.
    """
    plan = SweepPlan()
    # Every claim first (microseconds), then the store (milliseconds a job): two sweeps started together rarely
    # split a pack between them.
    taken = [tracking.claims.take(experiment.claim(job)) for job in prepared]
    claimed, deferred = [], []
    for job, mine in zip(prepared, taken, strict=True):
        if not mine:
            deferred.append(job)  # another live process trains it: waited for last (`experiment.claimed`)
            continue
        client, experiment_id = tracking.connect_config(job.cfg.tracking)
        value = experiment.reuse(client, experiment_id, job)  # after the claim: none can finish it meanwhile
        if value is None:
            claimed.append(job)  # held until its pack is trained
        else:
            tracking.claims.release(experiment.claim(job))
            plan.reused[job.context.job_num] = value
    limits = (max_members, max_seeds, max_unrolled, other_models)
    plan.packs = plan_packs(claimed, *limits) + plan_packs(deferred, *limits)
    return plan


def pack_key(job: Job) -> str:
    """What a job's results depend on apart from `MEMBER_KEYS` (and a packable optimizer): jobs with the same key can
    share a pack."""
    flat = identity.flatten(job.resolved)
    member_keys = MEMBER_KEYS
    if job.resolved["optimizer"].get("_target_") in PACKABLE_TARGETS:
        member_keys = (*MEMBER_KEYS, "optimizer")
    shared = {
        k: v
        for k, v in flat.items()
        if k in SHARED_OPTIMIZER_KEYS or not any(k == m or k.startswith(m + ".") for m in member_keys)
    }
    return json.dumps(shared, sort_keys=True)


def fused(job: Job) -> bool:
    """Whether a job's model is the tutorial's MLP, which packs as one fused model however many members."""
    return job.resolved["model"].get("_target_") == MLP_TARGET


def unrolls(job: Job, other_models: str) -> bool:
    """Whether a job's pack would hold one copy of its model per member: a model other than the tutorial's MLP, on
    the path `lrsweep.ml.stacking.other_models_path` takes in this process (the jobs' backend). (A user's own MLP
    counts as unrolled here, so its packs are only kept smaller.)"""
    if fused(job):
        return False
    try:
        return stacking.other_models_path(other_models) == "unroll"
    except NotPackable:  # vmap on TensorFlow: its runs train alone
        return False


def plan_packs(
    jobs: Sequence[Job], max_members: int, max_seeds: int, max_unrolled: int | None = None, other_models: str = "auto"
) -> list[list[Job]]:
    """Groups jobs by `pack_key` and splits each group, ordered by seed (then optimizer: one block of variables per
    seed and optimizer, `lrsweep.ml.packing.MemberBlocks`), into near-equal packs within the limits (`max_unrolled`
    members for a model packed unrolled, whose compilation grows with its copies).

    A pack of one job is a job that trains alone.
    """
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        groups.setdefault(pack_key(job), []).append(job)
    packs = []
    for group in groups.values():
        group.sort(key=lambda job: (job.seed, optimizer_settings(job), job.context.job_num or 0))
        seeds = len({job.seed for job in group})
        limit = max_members
        if max_unrolled is not None and unrolls(group[0], other_models):
            limit = min(max_members, max_unrolled)
        count = max(math.ceil(len(group) / limit), math.ceil(seeds / max_seeds))
        size = math.ceil(len(group) / count)
        packs.extend(group[i : i + size] for i in range(0, len(group), size))
    return packs


def train_pack(jobs: Sequence[Job], name: str, other_models: str = "auto") -> list[float | Exception] | None:
    """Trains a pack while holding its configurations' claims; None if its model or optimizer cannot be packed (its
    jobs then train one at a time).

    Per job, its final val_accuracy or its error, or the result of the run another live process FINISHED while
    this one waited for its claim (`experiment.claimed`).
    """
    interrupts.check()  # stopped: start no new pack
    cfg = jobs[0].cfg
    client, experiment_id = tracking.connect_config(cfg.tracking)
    pack_id = f"{jobs[0].context.sweep_id}/{name}" if jobs[0].context.sweep_id else name
    try:
        with experiment.store_failures(cfg.tracking.uri), experiment.claimed(jobs, client, experiment_id) as reused:
            todo = [job for k, job in enumerate(jobs) if k not in reused]  # not FINISHED meanwhile by another
            trained = iter(pack.train_pack(todo, client, experiment_id, pack_id, other_models) if todo else [])
            return [reused[k] if k in reused else next(trained) for k in range(len(jobs))]
    except NotPackable as e:
        log.info("Pack %s: %s, so its %d runs train one at a time", pack_id, e, len(jobs))
        return None


def train_alone(job: Job) -> float:
    """Trains a checked job of a sweep (not reused: `plan_sweep`) alone, in this process: its own MLflow run, or
    the result of the run another live process FINISHED while this one waited for its claim."""
    interrupts.check()  # stopped between two jobs of a sweep: start no new one
    with experiment.store_failures(job.cfg.tracking.uri):
        client, experiment_id = tracking.connect_config(job.cfg.tracking)
        return experiment.train_claimed(job, client, experiment_id)


def check_halving(prepared: Sequence[Job], settings: Halving, other_models: str) -> None:
    """Raises SystemExit with one line when a sweep's jobs cannot train by successive halving (`halving.check`),
    before any store or run is touched."""
    try:
        halving.check(prepared, settings, other_models)
    except errors.ConfigError as e:
        raise SystemExit(f"lrsweep: {e}") from None


def train_halving(
    jobs: Sequence[Job], settings: Halving, limits: tuple, stretches: halving.TrainStretches | None = None
) -> list[float | Exception]:
    """Trains a sweep's jobs (those `plan_sweep` planned, checked by `check_halving`) by successive halving, packed
    afresh at every rung within the sweep's `limits` (max_members, max_seeds, max_unrolled, other_models); each
    rung's packs trained by `stretches` (on a cluster: `lrsweep.run.remote.stretches_on`), or here, one after
    another.

    Per job, its last val_accuracy or its error (`lrsweep.run.halving.train`)."""
    interrupts.check()
    sweep_name = jobs[0].context.sweep_id or "sweep"
    stretches = stretches or halving.train_stretches
    return halving.train(jobs, settings, lambda going: plan_packs(going, *limits), sweep_name, limits[-1], stretches)


def check_refill(prepared: Sequence[Job], other_models: str) -> None:
    """Raises SystemExit with one line when a search's first trials cannot pack, so their places cannot be refilled
    (`lrsweep.run.refill`), before any store or run is touched."""
    problem = halving.unpackable(prepared, other_models) if prepared else None
    if problem is not None:
        raise SystemExit(
            f"lrsweep: a search refills freed places in its packs, and {problem}. Set hydra.sweeper.refill=false "
            "(batches of n_jobs), or hydra.launcher.other_models=unroll (or vmap on JAX)."
        )


def refill_pays(prepared: Sequence[Job], other_models: str) -> str | None:
    """Why refilling a search's freed places would not pay for its jobs, or None: it does. Measured
    (scripts/bench_halving.py, README "Refilled places"): a pruned member of a fused MLP pack rides along, frozen,
    for less than the pack's rebuild and compilation cost; a model packed one copy per member costs a whole
    member's training for every epoch it rides along."""
    problem = halving.unpackable(prepared, other_models)
    if problem is not None:
        return problem
    if fused(prepared[0]):
        return "a pruned member of a fused MLP pack costs less than rebuilding the pack"
    return None


def train_refilled(first: Sequence[Job], search: refill.Search, places: int, limits: tuple) -> None:
    """Trains a search's jobs `places` at a time, each place a run frees refilled with the search's next job
    (`lrsweep.run.refill.train`), in packs planned within the sweep's `limits` (max_members, max_seeds,
    max_unrolled, other_models)."""
    interrupts.check()
    sweep_name = first[0].context.sweep_id or "sweep"
    refill.train(first, search, places, lambda going: plan_packs(going, *limits), sweep_name, limits[-1])
