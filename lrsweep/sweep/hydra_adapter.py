"""The few Hydra internals lrsweep relies on, in one place; `tests/sweep/test_hydra_adapter.py` pins each of them.

Hydra 1.3 has no public way to do these: list the jobs the basic sweeper will launch before it launches them (its
expansion is `BasicSweeper.split_arguments`, in `hydra._internal`), or read the exception of a failed job without
`JobReturn.return_value` re-raising it and printing "Error executing job" on stderr.
"""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

from hydra.core.utils import JobReturn
from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf, open_dict

from lrsweep.core.errors import StoreError, TrainingFailed, full_error, in_worker

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"  # `hydra.sweeper._target_` by default


def basic_sweeper_jobs(overrides: Sequence[str]) -> list[list[str]]:
    """The overrides of every job the basic sweeper launches for these overrides, in its order (one batch).

    Parsed as Hydra parses the command line, then expanded by `BasicSweeper.split_arguments` (private).
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    return BasicSweeper.split_arguments(parser.parse_overrides(list(overrides)), None)[0]


class JobFailed(CompactHydraException):
    """A job's error that lrsweep says in one line (divergence): Hydra prints a `CompactHydraException` as its
    message alone where it would print a traceback for any other error, when the sweeper re-raises it."""


def job_failed(error: Exception) -> JobFailed:
    """`error` as a `JobFailed` Hydra prints in one line (`lrsweep: <message>`); `job_error` gives `error` back."""
    failed = JobFailed(f"lrsweep: {error}")  # TrainingFailed and StoreError redact their messages (`Redacted`)
    failed.__cause__ = error
    return failed


@contextlib.contextmanager
def failures_in_one_line() -> Iterator[None]:
    """Around a job's training: a `TrainingFailed` (its run already ended FAILED with it) leaves as `job_failed`, and
    so does a `StoreError` in a launcher's worker process, whose error Hydra shows in the sweep's process (in that
    process, `errors.reported` says it in one line and stops the sweep)."""
    try:
        yield
    except TrainingFailed as e:
        raise job_failed(e) from e
    except StoreError as e:
        if in_worker() and not full_error():
            raise job_failed(e) from e
        raise


def job_error(job_return: JobReturn) -> BaseException | None:
    """The exception a failed job raised, read from the private field `_return_value` (`return_value` re-raises)."""
    error = job_return._return_value
    if isinstance(error, JobFailed):
        return error.__cause__
    return error if isinstance(error, BaseException) else None


class ComposedTask(NamedTuple):
    """A job's task config, the `hydra` node it was composed with (possibly shared: read only), its task overrides."""

    task: DictConfig
    hydra: DictConfig
    overrides: tuple[str, ...]


class SweepComposer:
    """Composes a sweep's jobs as Hydra's config loader does (`load_sweep_config`), but the defaults tree once per
    distinct set of config-group choices instead of once per job: Hydra composes all of it again for each job
    (0.26 s a job here: 52 s of a 200-job sweep). A job's value overrides (`optimizer.learning_rate=0.1`) are then
    applied to a copy of its group's composition with Hydra's own `_apply_overrides_to_config` (private), and its
    `hydra.overrides.task` and `hydra.job.override_dirname` set as Hydra sets them. Jobs with overrides of another
    kind (of `hydra.*`, deletions, packages) are composed by Hydra itself. `tests/sweep/test_hydra_adapter.py`
    compares the two compositions.
    """

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.bases: dict[tuple[int, tuple[str, ...]], DictConfig] = {}
        self.task_bases: dict[tuple[int, tuple[str, ...]], DictConfig] = {}  # the bases without their `hydra` node
        self.parsed: dict[str, Any] = {}  # each distinct override line parsed once (Hydra's parser: ~5 ms a line)
        self.groups: dict[str, bool] = {}  # whether a key is a config group, asked of the repository once per key

    def compose(self, master_config: DictConfig, sweep_overrides: Sequence[str]) -> DictConfig:
        """The job's sweep config, equal to `loader.load_sweep_config(master_config, sweep_overrides)`."""
        from hydra._internal.config_loader_impl import get_overrides_dirname

        split = self._split(sweep_overrides)
        if split is None:
            return self.loader.load_sweep_config(master_config, list(sweep_overrides))
        groups, values = split
        config = self._with_values(self._base(master_config, groups), values)
        parsed = [self.parsed[line] for line in sweep_overrides]
        naming = config.hydra.job.config.override_dirname
        with open_dict(config.hydra):
            config.hydra.overrides.task = [o.input_line for o in parsed]
            config.hydra.job.override_dirname = get_overrides_dirname(
                overrides=parsed, kv_sep=naming.kv_sep, item_sep=naming.item_sep, exclude_keys=naming.exclude_keys
            )
        OmegaConf.copy_cache(from_config=master_config, to_config=config)
        return config

    def compose_task(self, master_config: DictConfig, sweep_overrides: Sequence[str]) -> ComposedTask:
        """The job's task config (its sweep config without `hydra`, as Hydra's `run_job` hands it to the task
        function), without composing the whole sweep config.

        The `hydra` node returned is shared by the jobs of one set of group choices (read it, do not change it): its
        `overrides.task` and `job.num` are not this job's. A task config is a tenth of a sweep config (its copy
        takes 0.3 ms, the sweep config's 3 ms), so a 1,000-job sweep is composed in a few seconds.
        """
        split = self._split(sweep_overrides)
        if split is None:
            config = self.loader.load_sweep_config(master_config, list(sweep_overrides))
            return ComposedTask(task_config(config), config.hydra, tuple(config.hydra.overrides.task))
        groups, values = split
        base = self._base(master_config, groups)
        key = (id(master_config), groups)
        if key not in self.task_bases:
            self.task_bases[key] = task_config(base)
        task = self._with_values(self.task_bases[key], values)
        OmegaConf.copy_cache(from_config=master_config, to_config=task)
        return ComposedTask(task, base.hydra, tuple(sweep_overrides))

    def _split(self, sweep_overrides: Sequence[str]) -> tuple[tuple[str, ...], list[Any]] | None:
        """(the config-group choices, the parsed value overrides) of a job, or None if Hydra must compose it."""
        from hydra.core.override_parser.overrides_parser import OverridesParser

        repository = getattr(self.loader, "repository", None)
        new = [line for line in dict.fromkeys(sweep_overrides) if line not in self.parsed]
        if new:
            self.parsed.update(zip(new, OverridesParser.create().parse_overrides(new), strict=True))
        parsed = [self.parsed[line] for line in sweep_overrides]
        if repository is None or any(o.is_hydra_override() or o.is_delete() or o.package is not None for o in parsed):
            return None
        groups, values = [], []
        for override in parsed:  # a config-group choice shapes the defaults tree; a value is set on it afterwards
            key = override.key_or_group
            if key not in self.groups:
                self.groups[key] = repository.group_exists(key)
            (groups if self.groups[key] else values).append(override)
        return tuple(o.input_line for o in groups), values

    def _base(self, master_config: DictConfig, groups: tuple[str, ...]) -> DictConfig:
        key = (id(master_config), groups)
        if key not in self.bases:
            self.bases[key] = self.loader.load_sweep_config(master_config, list(groups))
        return self.bases[key]

    @staticmethod
    def _with_values(base: DictConfig, values: list[Any]) -> DictConfig:
        from hydra._internal.config_loader_impl import ConfigLoaderImpl

        config = deep_copy(base)
        ConfigLoaderImpl._apply_overrides_to_config(values, config)
        return config


def task_config(sweep_config: DictConfig) -> DictConfig:
    """A job's task config: its sweep config without the `hydra` node (as Hydra's run_job makes it)."""
    from omegaconf import read_write

    task = deep_copy(sweep_config)
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task


def deep_copy(config: DictConfig) -> DictConfig:
    """A deep copy of a config, in 60% of `copy.deepcopy`'s time."""
    return pickle.loads(pickle.dumps(config))
