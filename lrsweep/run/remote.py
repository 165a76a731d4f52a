"""Packs as the unit of work a cluster receives: each pack (or lone job) one submitit job (on SLURM or local
processes) or one Ray task (on a running Ray cluster).

Imports nothing of Keras at module level: a submitit or Ray worker unpickles `train_jobs` from here, and must choose
its Keras backend (`lrsweep.core.backend.select`) before Keras is imported.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from lrsweep.core.errors import PackLost, first_line

log = logging.getLogger(__name__)
T = TypeVar("T")

CLUSTERS = ("local", "slurm", "ray")
RAY_CONNECT_TIMEOUT = 5.0  # seconds to wait for the Ray cluster's port before saying it does not answer
# Seconds between the last task's end and `ray.shutdown`: Ray drops the lines its log monitor has not yet sent.
RAY_LOG_GRACE = 1.0
RAY_SETTINGS = {"address": "auto", "num_cpus": None}  # hydra.launcher.ray: its keys and defaults


class ClusterUnreachable(ValueError):
    """The cluster cannot take the sweep's packs (no Ray cluster at the address, Ray not installed); says what to do."""


def train_jobs(
    jobs: Sequence[Mapping[str, Any]], name: str, other_models: str = "auto", judges: Mapping[str, Any] | None = None
) -> list[float | Exception]:
    """Trains a pack (or one job alone) in this process; what a submitit worker runs.

    Args:
        jobs: each job as the launcher prepared it (`lrsweep.run.job.Job`'s fields, without its data), ordered by
            seed. Fields, not `Job`s: unpickling a `Job` would import Keras before the backend is chosen.
        name: the pack's name within its sweep.
        other_models: `hydra.launcher.other_models`.
        judges: makers of the judges of the jobs' search trials (`lrsweep.core.trials.portable`): their pruner
            stops them here as it would in the sweeper's process.

    Returns:
        Per job, its final val_accuracy or the error it ended with.
    """
    _start_worker(jobs[0]["cfg"])
    from lrsweep.core import interrupts, trials
    from lrsweep.run import launching
    from lrsweep.run.job import Job

    prepared = [Job(**fields) for fields in jobs]  # checked by the launcher; the data is loaded here, once
    trials.register_all(judges or {})
    interrupts.install(prepared[0].context.sweep_dir)  # the sweep's stop file: Ctrl-C in the main process stops this
    if len(prepared) > 1 and (outcomes := launching.train_pack(prepared, name, other_models)) is not None:
        return outcomes
    results: list[float | Exception] = []
    for job in prepared:
        try:
            results.append(launching.train_alone(job))
        except Exception as e:  # this job's own failure (e.g. divergence); the others still train
            results.append(e)
    return results


def _start_worker(cfg: Any) -> None:
    """What a cluster worker does first: the Keras backend and threads of its jobs' config, before Keras is imported,
    and, in a Ray worker (no logging set up), log lines in Hydra's format, which Ray streams to the sweep's console."""
    from lrsweep.core import backend

    backend.select(cfg.backend, cfg.threads)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")


@dataclass(frozen=True)
class ClusterSettings:
    """Where cluster work goes: `hydra.launcher.cluster` and its settings."""

    cluster: str  # "local", "slurm" (submitit) or "ray"
    folder: str = ""  # submitit's folder (its job scripts and logs)
    parameters: Mapping[str, Any] = field(default_factory=dict)  # submitit's `update_parameters`
    ray: Mapping[str, Any] = field(default_factory=dict)  # `hydra.launcher.ray` (`RAY_SETTINGS`)

    def __post_init__(self) -> None:
        if self.cluster not in CLUSTERS:
            raise ValueError(
                f"`hydra.launcher.cluster` must be one of null, {', '.join(CLUSTERS)}. Received: {self.cluster!r}"
            )


def run_tasks(
    settings: ClusterSettings,
    function: Callable[..., T],
    calls: Sequence[tuple[str, tuple]],
    cpus: int | None = None,
    release_claims: bool = True,
) -> list[T | Exception]:
    """Runs `function(*args)` for each (name, args) of `calls` as its own submitit job or Ray task, all at once,
    and waits for all: per call its result, or `PackLost` when its job or task ended without one (its worker or node
    died, a timeout, an interrupt, or `function` raised: its log has the traceback).

    `function` must import nothing of Keras before it chooses the backend (a fresh process runs it).

    Args:
        cpus: CPUs a Ray task reserves when `settings.ray` leaves `num_cpus` null (the jobs' `threads`); else 1.
    """
    from lrsweep import tracking

    if release_claims:
        tracking.claims.release_all()
    if settings.cluster == "ray":
        return _run_on_ray({**RAY_SETTINGS, **settings.ray}, function, calls, cpus)
    import submitit

    executor = submitit.AutoExecutor(folder=settings.folder, cluster=settings.cluster)
    executor.update_parameters(**dict(settings.parameters))
    submitted = [executor.submit(function, *args) for _, args in calls]
    log.info("Submitted %d pack(s) to submitit (%s): %s", len(calls), settings.cluster,
             ", ".join(job.job_id for job in submitted))  # fmt: skip
    results: list[T | Exception] = []
    for job, (name, _) in zip(submitted, calls, strict=True):
        try:
            results.append(job.result())
        except Exception as e:  # the job died (killed, timed out) or `function` raised: its traceback is in its log
            lost = PackLost(
                f"{name}'s submitit job {job.job_id} ended without a result ({type(e).__name__}: "
                f"{first_sentence(e)}; its log: {job.paths.stderr}); its runs did not finish, and the same command "
                "again trains them"
            )
            log.error("%s", lost)
            results.append(lost)
    return results


def submit(
    packs: Sequence[Sequence[Any]], settings: ClusterSettings, other_models: str = "auto"
) -> list[list[float | Exception]]:
    """Runs every pack (or lone job) as its own submitit job or Ray task at once and waits for all: one list of
    outcomes per pack. A pack whose job or task ends without results gives that error (`PackLost`) for each of its
    jobs.

    Args:
        packs: the prepared jobs (`lrsweep.run.job.Job`) of each pack.
    """
    from lrsweep.core import trials
    from lrsweep.run.job import trial_key

    calls = [
        (f"pack{k + 1}", ([job.__getstate__() for job in pack], f"pack{k + 1}", other_models,  # fields: `train_jobs`
                          trials.portable(trial_key(job.cfg) for job in pack)))
        for k, pack in enumerate(packs)
    ]  # fmt: skip
    results = run_tasks(settings, train_jobs, calls, packs[0][0].cfg.threads if packs else None)
    return [[r] * len(pack) if isinstance(r, Exception) else r for r, pack in zip(results, packs, strict=True)]


def stretches_on(settings: ClusterSettings) -> Callable[..., None]:
    """`lrsweep.run.halving.TrainStretches` on a cluster: a rung's packs (`Stretch`es) as submitit jobs or Ray
    tasks at once, each trained from its members' states (`train_stretch`), their new states and scores kept. The
    runs stay this process's (it holds their claims, opens and closes them); a stretch that ends without a result
    fails its seats (`PackLost`)."""

    def train_stretches(stretches: Sequence[Any], client: Any, other_models: str) -> None:
        if not stretches:
            return
        calls = [
            (stretch.pack_id, ([seat_fields(seat) for seat in stretch.seats], stretch.end, stretch.last,
                               stretch.pack_id, other_models))
            for stretch in stretches
        ]  # fmt: skip
        threads = stretches[0].seats[0].job.cfg.threads
        results = run_tasks(settings, train_stretch, calls, threads, release_claims=False)
        for stretch, result in zip(stretches, results, strict=True):
            for k, seat in enumerate(stretch.seats):
                if isinstance(result, Exception):
                    seat.error = result
                else:
                    take_back(seat, result[k])

    return train_stretches


def seat_fields(seat: Any) -> dict[str, Any]:
    """A halving seat as plain values (`train_stretch`'s input): its job's fields, its member state's arrays."""
    state = seat.state
    return {
        "job": seat.job.__getstate__(), "run_id": seat.run_id, "epoch": seat.epoch, "scores": dict(seat.scores),
        "starting_loss": seat.starting_loss, "packed": seat.packed,
        "state": None if state is None else (state.variables, state.slots, state.iterations),
    }  # fmt: skip


def take_back(seat: Any, fields: Mapping[str, Any]) -> None:
    """What a seat's stretch on the cluster gave back (`train_stretch`): epoch, scores, error, state."""
    from lrsweep.ml.member_state import MemberState

    seat.epoch, seat.scores, seat.error = fields["epoch"], fields["scores"], fields["error"]
    seat.starting_loss, seat.packed = fields["starting_loss"], fields["packed"]
    seat.state = None if fields["state"] is None else MemberState(*fields["state"])


def train_stretch(
    seats: Sequence[Mapping[str, Any]], end: int, last: bool, pack_id: str, other_models: str
) -> list[dict[str, Any]]:
    """In a cluster worker: a halving stretch (`lrsweep.run.halving.train_stretch`) from the seats' fields
    (`seat_fields`, all at one epoch) to epoch `end`; returns each seat's fields after it."""
    cfg = seats[0]["job"]["cfg"]
    _start_worker(cfg)
    from lrsweep import tracking
    from lrsweep.core import interrupts
    from lrsweep.ml.member_state import MemberState
    from lrsweep.run import halving
    from lrsweep.run.job import Job

    built = [
        halving.Seat(Job(**f["job"]), f["run_id"], f["epoch"], None if f["state"] is None else MemberState(*f["state"]),
                     f["starting_loss"], dict(f["scores"]), packed=f["packed"])
        for f in seats
    ]  # fmt: skip
    interrupts.install(built[0].job.context.sweep_dir)
    client, _ = tracking.connect_config(cfg.tracking)
    halving.train_stretch(built, end, last, client, pack_id, other_models)
    return [{**seat_fields(seat), "error": seat.error} for seat in built]


def on_ray(function: Callable[..., T], name: str, *args: Any) -> T:
    """`function(*args)` in a Ray worker, after one line naming the node it runs on."""
    import ray

    context = ray.get_runtime_context()
    print(f"lrsweep: {name} on Ray node {context.get_node_id()} (pid {os.getpid()})", flush=True)
    return function(*args)


def connect_ray(address: str) -> Any:
    """Joins the running Ray cluster at `address` ("auto": the one started on this machine with `ray start`), and
    returns the `ray` module.

    Raises:
        ClusterUnreachable: Ray is not installed, or no cluster answers at `address`.
    """
    # Each worker's lines as they come: Ray's default folds lines it finds alike across workers into one.
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    try:
        import ray
    except ImportError:
        raise ClusterUnreachable("hydra.launcher.cluster=ray needs Ray: pip install -e .[ray]") from None
    if ray.is_initialized():
        return ray
    # ray.init waits without end for a cluster that does not answer: ask its port first, briefly.
    where = _ray_bootstrap_address(address)
    host, _, port = where.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=RAY_CONNECT_TIMEOUT).close()
        # Workers' output comes back to this console, each line prefixed with its task and worker.
        ray.init(address=where, log_to_driver=True, configure_logging=False)
    except (OSError, RuntimeError, ValueError) as e:
        raise ClusterUnreachable(
            f"no Ray cluster answered at hydra.launcher.ray.address={address} ({where}: {first_line(e)}). Start one "
            "(`ray start --head` on one machine, `ray start --address=HEAD:6379` on the others) or set the address "
            "of yours."
        ) from None
    return ray


def _run_on_ray(
    settings: Mapping[str, Any], function: Callable[..., T], calls: Sequence[tuple[str, tuple]], cpus: int | None
) -> list[T | Exception]:
    """`run_tasks` on Ray: each call one task, in a fresh worker process (it chooses its Keras backend and threads),
    reserving `num_cpus` CPUs; never retried (a retry would train runs whose first attempt is still in the store)."""
    ray = connect_ray(settings["address"])
    cpus = settings["num_cpus"] or cpus or 1
    # Unbuffered: a worker's lines reach this console as they are printed, not when the task ends.
    task = ray.remote(max_calls=1, max_retries=0, num_cpus=cpus, runtime_env={"env_vars": {"PYTHONUNBUFFERED": "1"}})(
        on_ray
    )
    refs = [task.options(name=f"lrsweep {name}").remote(function, name, *args) for name, args in calls]
    log.info("Submitted %d pack(s) to Ray at %s, %s CPU(s) each", len(calls), settings["address"], cpus)
    results: list[T | Exception] = []
    try:
        for ref, (name, _) in zip(refs, calls, strict=True):
            try:
                # A copy: Ray hands NumPy arrays back as views of its object store, which `ray.shutdown` unmaps.
                results.append(pickle.loads(pickle.dumps(ray.get(ref))))
            except ray.exceptions.RayError as e:  # its worker or node died, the task was cancelled, or it raised
                cause = e.cause if isinstance(e, ray.exceptions.RayTaskError) else e
                lost = PackLost(
                    f"{name}'s Ray task ended without a result ({type(cause).__name__}: {first_sentence(cause)}); "
                    "its runs did not finish, and the same command again trains them"
                )
                log.error("%s", lost)
                results.append(lost)
    finally:
        time.sleep(RAY_LOG_GRACE)  # the workers' last lines reach this console (ray-project/ray#31931)
        ray.shutdown()
    return results


def _ray_bootstrap_address(address: str) -> str:
    """HOST:PORT of the cluster `address` names: "auto" is the latest `ray start` on this machine (or RAY_ADDRESS)."""
    from ray._private import services

    try:
        found = services.canonicalize_bootstrap_address(address)
    except (ConnectionError, ValueError) as e:
        raise ClusterUnreachable(
            f"no Ray cluster found for hydra.launcher.ray.address={address} ({first_line(e)}). Start one (`ray start "
            "--head`) or give its address: hydra.launcher.ray.address=HOST:6379"
        ) from None
    if not found or ":" not in found:
        raise ClusterUnreachable(
            f"hydra.launcher.ray.address={address} is not HOST:PORT or auto. Give the address `ray start --head` "
            "printed, e.g. hydra.launcher.ray.address=10.0.0.1:6379"
        )
    return found


def first_sentence(error: BaseException) -> str:
    """The first sentence of an error's first line (`first_line`): Ray's messages run on for lines."""
    return first_line(error).split(". ")[0].rstrip(".")
