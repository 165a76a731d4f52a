"""A multirun's jobs composed as Hydra's launchers compose them, before any starts: to count and check them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from omegaconf import DictConfig

from lrsweep.core import errors, identity
from lrsweep.sweep import hydra_adapter
from lrsweep.sweep.hydra_adapter import task_config

__all__ = ["check_planned_jobs", "job_config", "job_tasks", "planned_jobs", "task_config"]


def planned_jobs(config: DictConfig) -> list[list[str]] | None:
    """The overrides of every job Hydra's basic sweeper will launch, in order; None for another sweeper (Optuna).

    The same expansion as `BasicSweeper.sweep`: its `params`, then the command line's overrides.
    """
    if config.hydra.sweeper.get("_target_") != hydra_adapter.BASIC_SWEEPER:
        return None
    params = [f"{key}={value}" for key, value in (config.hydra.sweeper.get("params") or {}).items()]
    return hydra_adapter.basic_sweeper_jobs([*params, *config.hydra.overrides.task])


def job_config(
    compose: Callable[[DictConfig, list[str]], DictConfig], config: DictConfig, overrides: Sequence[str], num: int
) -> DictConfig:
    """Job `num`'s sweep config, as a launcher composes it (`compose`: a loader's `load_sweep_config`, or
    `SweepComposer.compose`): what Hydra's `run_job` takes."""
    from omegaconf import open_dict

    sweep_config = compose(config, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = num
        sweep_config.hydra.job.num = num
    return sweep_config


def job_tasks(
    compose_task: Callable[[DictConfig, list[str]], hydra_adapter.ComposedTask],
    config: DictConfig,
    jobs: Sequence[Sequence[str]],
    first_num: int = 0,
) -> list[tuple[DictConfig, identity.JobContext]]:
    """Each job's task config (what its task function gets) and its `JobContext`, numbered from `first_num`, without
    composing its whole sweep config (`SweepComposer.compose_task`): what checking a sweep's jobs needs."""
    contexts: dict[int, identity.JobContext] = {}  # one per shared `hydra` node (one per set of group choices)
    tasks = []
    for num, overrides in enumerate(jobs, start=first_num):
        composed = compose_task(config, list(overrides))
        if id(composed.hydra) not in contexts:
            contexts[id(composed.hydra)] = identity.JobContext.from_config(composed.hydra)
        context = contexts[id(composed.hydra)]
        context = dataclasses.replace(context, overrides=composed.overrides, job_num=num if context.sweep_dir else None)
        tasks.append((composed.task, context))
    return tasks


def check_planned_jobs(config: DictConfig, jobs: list[list[str]]) -> None:
    """Checks every job's config before the first starts, as the packed launcher does, for the other launchers.

    Imports Keras in this process (with the first job's backend), since checking builds each job's optimizer.

    Raises:
        SystemExit: naming every job that cannot run and why.
    """
    from hydra.core.global_hydra import GlobalHydra

    from lrsweep.core import backend

    composer = hydra_adapter.SweepComposer(GlobalHydra.instance().config_loader())
    tasks = job_tasks(composer.compose_task, config, jobs)
    try:
        backend.select(tasks[0][0].backend, tasks[0][0].threads)
    except errors.ConfigError as e:
        raise SystemExit(f"lrsweep: job #0: {e}") from e
    from lrsweep.run import launching

    launching.check_jobs(tasks)
