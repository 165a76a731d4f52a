"""The errors a user fixes rather than a bug: they print as one line naming the value and the fix, no traceback.

`ConfigError` is a job's config or data that cannot run, found before any work; `StoreError` is an MLflow store
that cannot be used, at any time. `train.py` prints either as `lrsweep: <message>` and exits 1
(`HYDRA_FULL_ERROR=1` shows the traceback instead).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from lrsweep.core import interrupts, secrets

T = TypeVar("T")


class Redacted:
    """An error whose message never shows a password (`lrsweep.core.secrets.redact`): its messages name store URIs."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*(secrets.redact(a) if isinstance(a, str) else a for a in args))


class ConfigError(Redacted, ValueError):
    """A job's config or data cannot run (found by `lrsweep.run.job.prepare`, before any work)."""


class StoreError(Redacted, ConnectionError):
    """The MLflow store cannot be used: unreachable, unwritable, not a database, a schema of another MLflow, full.

    The message names the URI or path, what is wrong and what to do.
    """


class TrainingFailed(Redacted, RuntimeError):
    """A run failed in training for a reason its message says whole (e.g. divergence): the run ends FAILED with it,
    and it is shown as that one line, never as a traceback."""


class PackLost(TrainingFailed):
    """A pack's cluster job or task ended without results (its worker process or node died): its runs were not
    finished, and a rerun of the same command trains them. Shown as its one line."""


USER_ERRORS = (ConfigError, StoreError)


def error_chain(error: BaseException | None) -> list[BaseException]:
    """`error` and what caused it (`__cause__`, else `__context__`), outermost first, each once."""
    chain: list[BaseException] = []
    while error is not None and all(error is not seen for seen in chain):
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of an error's message (its type's name if it has none), cut to `limit` characters.

    For messages that quote another library's error in one line: SQLAlchemy's and MLflow's run on for pages.
    """
    lines = str(error).strip().splitlines()
    line = lines[0] if lines else type(error).__name__
    return line if len(line) <= limit else line[:limit] + "..."


def listed(items: Sequence[str], separator: str, limit: int = 10) -> str:
    """The first `limit` items joined by `separator`, then "and N more" if there are more: a message stays short."""
    shown = separator.join(items[:limit])
    return shown + (f"{separator}and {len(items) - limit} more" if len(items) > limit else "")


def as_config_error(check: Callable[..., T], *args: Any) -> T:
    """`check(*args)`, raising the ValueError it finds as a ConfigError."""
    try:
        return check(*args)
    except ValueError as e:
        raise e if isinstance(e, ConfigError) else ConfigError(str(e)) from e


def keep_traceback() -> bool:
    """Whether an error must propagate as it is rather than print as one line: HYDRA_FULL_ERROR=1 asks for its
    traceback, and in a launcher's worker process SystemExit would take the worker down instead of failing the job."""
    return full_error() or in_worker()


def full_error() -> bool:
    """Whether the user asked for tracebacks (HYDRA_FULL_ERROR=1)."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def in_worker() -> bool:
    """Whether this is a launcher's worker process (joblib, submitit): its job's error goes back to the sweep."""
    return multiprocessing.parent_process() is not None


@contextlib.contextmanager
def reported() -> Iterator[None]:
    """Turns a user error into `SystemExit("lrsweep: <message>")`: one line on stderr, exit status 1.

    A Ctrl-C or SIGTERM that stopped the job (KeyboardInterrupt) likewise: `lrsweep: stopped: ...`, exit status
    128 + the signal's number, as a shell reports a process the signal ended (130 for SIGINT, 143 for SIGTERM).
    Left as they are with HYDRA_FULL_ERROR=1 (the traceback), and in a launcher's worker process, where SystemExit
    would take the worker down instead of failing the job.
    """
    try:
        yield
    except USER_ERRORS as e:
        if keep_traceback():
            raise
        raise SystemExit(f"lrsweep: {e}") from e  # a user error's message is redacted already (`Redacted`)
    except KeyboardInterrupt as e:  # Ctrl-C / SIGTERM, honoured (the run is closed KILLED where it could be)
        if keep_traceback():
            raise
        print(f"lrsweep: stopped: {e}", file=sys.stderr)
        raise SystemExit(interrupts.exit_status()) from e
