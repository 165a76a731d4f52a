"""Packs as the unit of work a cluster receives: each pack (or lone job) one submitit job (on SLURM or local
processes) or one Ray task (on a running Ray cluster).

Imports nothing of Keras at module level: a submitit or Ray worker unpickles `train_jobs` from here, and must choose
its Keras backend (`lrsweep.core.backend.select`) before Keras is imported.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping, Sequence
from typing import Any

log = logging.getLogger(__name__)

CLUSTERS = ("local", "slurm", "ray")
RAY_CONNECT_TIMEOUT = 5.0  # seconds to wait for the Ray cluster's port before saying it does not answer
RAY_SETTINGS = {"address": "auto", "num_cpus": None}  # hydra.launcher.ray: its keys and defaults


class ClusterUnreachable(ValueError):
    """The cluster cannot take the sweep's packs (no Ray cluster at the address, Ray not installed); says what to do."""


def train_jobs(jobs: Sequence[Mapping[str, Any]], name: str, other_models: str = "auto") -> list[float | Exception]:
    """Trains a pack (or one job alone) in this process; what a submitit worker runs.

    Args:
        jobs: each job as the launcher prepared it (`lrsweep.run.job.Job`'s fields, without its data), ordered by
            seed. Fields, not `Job`s: unpickling a `Job` would import Keras before the backend is chosen.
        name: the pack's name within its sweep.
        other_models: `hydra.launcher.other_models`.

    Returns:
        Per job, its final val_accuracy or the error it ended with.
    """
    from lrsweep.core import backend

    cfg = jobs[0]["cfg"]
    backend.select(cfg.backend, cfg.threads)
    from lrsweep.core import interrupts
    from lrsweep.run import launching
    from lrsweep.run.job import Job

    if not logging.getLogger().handlers:  # a Ray worker: its lines reach the sweep's console (Ray streams them)
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    prepared = [Job(**fields) for fields in jobs]  # checked by the launcher; the data is loaded here, once
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


def submit(
    packs: Sequence[Sequence[Any]],
    cluster: str,
    folder: str,
    parameters: Mapping[str, Any],
    other_models: str = "auto",
    ray: Mapping[str, Any] | None = None,
) -> list[list[float | Exception]]:
    """Runs every pack as its own submitit job or Ray task at once and waits for all: one list of outcomes per pack.

    A pack whose job dies (a crash, a timeout, an interrupt, its Ray worker or node killed) gives that error for
    each of its jobs.

    Args:
        packs: the prepared jobs (`lrsweep.run.job.Job`) of each pack.
        cluster: "local", "slurm" (submitit) or "ray".
        folder, parameters: submitit's folder and `update_parameters`.
        ray: `hydra.launcher.ray` (`RAY_SETTINGS`), for cluster="ray".
    """
    from lrsweep import tracking
    from lrsweep.core.errors import PackLost

    if cluster not in CLUSTERS:
        raise ValueError(f"`hydra.launcher.cluster` must be one of null, {', '.join(CLUSTERS)}. Received: {cluster!r}")
    if cluster == "ray":
        return submit_to_ray(packs, {**RAY_SETTINGS, **(ray or {})}, other_models)
    import submitit

    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    executor.update_parameters(**dict(parameters))
    work = [[job.__getstate__() for job in pack] for pack in packs]  # fields, not Jobs: see `train_jobs`
    tracking.claims.release_all()  # each submitit job takes its own jobs' claims: this process must not hold them
    submitted = [executor.submit(train_jobs, jobs, f"pack{k + 1}", other_models) for k, jobs in enumerate(work)]
    log.info("Submitted %d pack(s) to submitit (%s): %s", len(packs), cluster, ", ".join(j.job_id for j in submitted))
    results = []
    for k, (job, pack) in enumerate(zip(submitted, packs, strict=True)):
        try:
            results.append(job.result())
        except Exception as e:  # the job died (killed, timed out) or train_jobs raised: its traceback is in its log
            lost = PackLost(
                f"pack{k + 1}'s submitit job {job.job_id} ended without a result ({type(e).__name__}: "
                f"{first_sentence(e)}; its log: {job.paths.stderr}); its runs did not finish, and the same command "
                "again trains them"
            )
            log.error("%s", lost)
            results.append([lost] * len(pack))
    return results


def train_on_ray(jobs: Sequence[Mapping[str, Any]], name: str, other_models: str) -> list[float | Exception]:
    """`train_jobs` in a Ray worker, after one line naming the node it runs on."""
    import ray

    context = ray.get_runtime_context()
    print(f"lrsweep: {name} on Ray node {context.get_node_id()} (pid {os.getpid()})", flush=True)
    return train_jobs(jobs, name, other_models)


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


def submit_to_ray(
    packs: Sequence[Sequence[Any]], settings: Mapping[str, Any], other_models: str
) -> list[list[float | Exception]]:
    """Each pack (or lone job) one Ray task, in a fresh worker process (it chooses its Keras backend and threads),
    reserving `num_cpus` CPUs (null: the job's `threads`, else 1); never retried: a pack whose worker or node dies
    gives that error for each of its jobs, their runs end stale (KILLED when the sweep closes) and a rerun trains
    them."""
    from lrsweep import tracking
    from lrsweep.core.errors import PackLost

    ray = connect_ray(settings["address"])
    work = [[job.__getstate__() for job in pack] for pack in packs]  # fields, not Jobs: see `train_jobs`
    threads = packs[0][0].cfg.threads
    cpus = settings["num_cpus"] or threads or 1
    task = ray.remote(max_calls=1, max_retries=0, num_cpus=cpus)(train_on_ray)
    tracking.claims.release_all()  # each task takes its own jobs' claims: this process must not hold them
    names = [f"pack{k + 1}" for k in range(len(packs))]
    refs = [
        task.options(name=f"lrsweep {name}").remote(jobs, name, other_models)
        for name, jobs in zip(names, work, strict=True)
    ]
    log.info("Submitted %d pack(s) to Ray at %s, %s CPU(s) each", len(packs), settings["address"], cpus)
    results: list[list[float | Exception]] = []
    try:
        for ref, pack, name in zip(refs, packs, names, strict=True):
            try:
                results.append(ray.get(ref))
            except ray.exceptions.RayTaskError as e:  # an error inside train_jobs itself: as raised there
                results.append([e.cause if isinstance(e.cause, Exception) else e] * len(pack))
            except ray.exceptions.RayError as e:  # its worker process or node died, or the task was cancelled
                lost = PackLost(
                    f"{name}'s Ray task ended without a result ({type(e).__name__}: {first_sentence(e)}); its runs did "
                    "not finish, and the same command again trains them"
                )
                log.error("%s", lost)
                results.append([lost] * len(pack))
    finally:
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


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def first_sentence(error: BaseException) -> str:
    return first_line(error).split(". ")[0].rstrip(".")
