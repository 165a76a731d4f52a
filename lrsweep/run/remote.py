"""Packs as the unit of work a cluster receives: each pack (or lone job) one submitit job, on SLURM or local processes.

Imports nothing of Keras at module level: a submitit worker unpickles `train_jobs` from here, and must choose its
Keras backend (`lrsweep.core.backend.select`) before Keras is imported.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

log = logging.getLogger(__name__)

CLUSTERS = ("local", "slurm")


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
) -> list[list[float | Exception]]:
    """Runs every pack as its own submitit job at once and waits for all: one list of outcomes per pack.

    A pack whose job dies (a crash, a timeout, an interrupt) gives that error for each of its jobs.

    Args:
        packs: the prepared jobs (`lrsweep.run.job.Job`) of each pack.
    """
    import submitit

    from lrsweep import tracking

    if cluster not in CLUSTERS:
        raise ValueError(f"`hydra.launcher.cluster` must be one of null, {', '.join(CLUSTERS)}. Received: {cluster!r}")
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    executor.update_parameters(**dict(parameters))
    work = [[job.__getstate__() for job in pack] for pack in packs]  # fields, not Jobs: see `train_jobs`
    tracking.claims.release_all()  # each submitit job takes its own jobs' claims: this process must not hold them
    submitted = [executor.submit(train_jobs, jobs, f"pack{k + 1}", other_models) for k, jobs in enumerate(work)]
    log.info("Submitted %d pack(s) to submitit (%s): %s", len(packs), cluster, ", ".join(j.job_id for j in submitted))
    results = []
    for job, pack in zip(submitted, packs, strict=True):
        try:
            results.append(job.result())
        except Exception as e:
            results.append([e] * len(pack))
    return results
