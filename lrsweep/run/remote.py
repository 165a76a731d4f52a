"""Packs as the unit of work a cluster receives: each pack (or lone job) one submitit job, on SLURM or local processes.

Imports nothing of Keras at module level: a submitit worker unpickles `train_jobs` from here, and must choose its
Keras backend (`lrsweep.backend.select`) before Keras is imported.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig

log = logging.getLogger(__name__)

CLUSTERS = ("local", "slurm")


def train_jobs(jobs: Sequence[tuple[DictConfig, Any]], name: str) -> list[float | Exception]:
    """Trains a pack (or one job alone) in this process; what a submitit worker runs.

    Args:
        jobs: (task config, `lrsweep.identity.JobContext`) per job, ordered by seed.
        name: the pack's name within its sweep.

    Returns:
        Per job, its final val_accuracy or the error it ended with.
    """
    from lrsweep.core import backend

    cfg = jobs[0][0]
    backend.select(cfg.backend, cfg.threads)
    from lrsweep import tracking
    from lrsweep.core import interrupts
    from lrsweep.run import experiment, launching

    interrupts.install(jobs[0][1].sweep_dir)  # the sweep's stop file: Ctrl-C in the main process stops this too
    prepared = [experiment.prepare(task, context) for task, context in jobs]
    if len(prepared) > 1 and (outcomes := launching.train_pack(prepared, name)) is not None:
        return outcomes
    results: list[float | Exception] = []
    for job in prepared:
        client, experiment_id = tracking.connect_config(job.cfg.tracking)
        try:
            results.append(experiment.train_solo(job, client, experiment_id))
        except Exception as e:  # this job's own failure (e.g. divergence); the others still train
            results.append(e)
    return results


def submit(
    packs: Sequence[Sequence[tuple[DictConfig, Any]]], cluster: str, folder: str, parameters: Mapping[str, Any]
) -> list[list[float | Exception]]:
    """Runs every pack as its own submitit job at once and waits for all: one list of outcomes per pack.

    A pack whose job dies (a crash, a timeout, an interrupt) gives that error for each of its jobs.
    """
    import submitit

    if cluster not in CLUSTERS:
        raise ValueError(f"`hydra.launcher.cluster` must be one of null, {', '.join(CLUSTERS)}. Received: {cluster!r}")
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    executor.update_parameters(**dict(parameters))
    submitted = [executor.submit(train_jobs, list(pack), f"pack{k + 1}") for k, pack in enumerate(packs)]
    log.info("Submitted %d pack(s) to submitit (%s): %s", len(packs), cluster, ", ".join(j.job_id for j in submitted))
    results = []
    for job, pack in zip(submitted, packs, strict=True):
        try:
            results.append(job.result())
        except Exception as e:
            results.append([e] * len(pack))
    return results
