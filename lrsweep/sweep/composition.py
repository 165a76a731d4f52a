"""A multirun's jobs composed as Hydra's launchers compose them, before any starts: to count and check them."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig

from lrsweep.core import errors
from lrsweep.sweep import hydra_adapter


def planned_jobs(config: DictConfig) -> list[list[str]] | None:
    """The overrides of every job Hydra's basic sweeper will launch, in order; None for another sweeper (Optuna).

    The same expansion as `BasicSweeper.sweep`: its `params`, then the command line's overrides.
    """
    if config.hydra.sweeper.get("_target_") != hydra_adapter.BASIC_SWEEPER:
        return None
    params = [f"{key}={value}" for key, value in (config.hydra.sweeper.get("params") or {}).items()]
    return hydra_adapter.basic_sweeper_jobs([*params, *config.hydra.overrides.task])


def job_configs(loader: Any, config: DictConfig, jobs: Sequence[Sequence[str]], first_num: int = 0) -> list[DictConfig]:
    """Each job's sweep config, as a launcher composes it (Hydra's `load_sweep_config`), numbered from `first_num`."""
    from omegaconf import open_dict

    configs = []
    for num, overrides in enumerate(jobs, start=first_num):
        sweep_config = loader.load_sweep_config(config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = num
            sweep_config.hydra.job.num = num
        configs.append(sweep_config)
    return configs


def task_config(sweep_config: DictConfig) -> DictConfig:
    """A job's task config: its sweep config without the `hydra` node (as Hydra's run_job makes it)."""
    from omegaconf import open_dict, read_write

    task = pickle.loads(pickle.dumps(sweep_config))  # a deep copy, in 60% of `copy.deepcopy`'s time
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task


def check_planned_jobs(config: DictConfig, jobs: list[list[str]]) -> None:
    """Checks every job's config before the first starts, as the packed launcher does, for the other launchers.

    Imports Keras in this process (with the first job's backend), since checking builds each job's optimizer.

    Raises:
        SystemExit: naming every job that cannot run and why.
    """
    from hydra.core.global_hydra import GlobalHydra

    from lrsweep.core import backend

    sweep_configs = job_configs(GlobalHydra.instance().config_loader(), config, jobs)
    pairs = [(task_config(c), c.hydra) for c in sweep_configs]
    try:
        backend.select(pairs[0][0].backend, pairs[0][0].threads)
    except errors.ConfigError as e:
        raise SystemExit(f"lrsweep: job #0: {e}") from e
    from lrsweep.run import launching

    launching.check_jobs(pairs)
