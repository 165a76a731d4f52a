"""The few Hydra internals lrsweep relies on, in one place; `tests/sweep/test_hydra_adapter.py` pins each of them.

Hydra 1.3 has no public way to do these: list the jobs the basic sweeper will launch before it launches them (its
expansion is `BasicSweeper.split_arguments`, in `hydra._internal`), or read the exception of a failed job without
`JobReturn.return_value` re-raising it and printing "Error executing job" on stderr.
"""

from __future__ import annotations

from collections.abc import Sequence

from hydra.core.utils import JobReturn
from hydra.errors import CompactHydraException

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
    failed = JobFailed(f"lrsweep: {error}")
    failed.__cause__ = error
    return failed


def job_error(job_return: JobReturn) -> BaseException | None:
    """The exception a failed job raised, read from the private field `_return_value` (`return_value` re-raises)."""
    error = job_return._return_value
    if isinstance(error, JobFailed):
        return error.__cause__
    return error if isinstance(error, BaseException) else None
