"""The errors a user fixes rather than a bug: they print as one line naming the value and the fix, no traceback.

`ConfigError` is a job's config or data that cannot run, found before any work; `StoreError` is an MLflow store
that cannot be used, at any time. `train.py` prints either as `lrsweep: <message>` and exits 1
(`HYDRA_FULL_ERROR=1` shows the traceback instead).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections.abc import Iterator


class ConfigError(ValueError):
    """A job's config or data cannot run (found by `lrsweep.experiment.prepare`, before any work)."""


class StoreError(ConnectionError):
    """The MLflow store cannot be used: unreachable, unwritable, not a database, a schema of another MLflow, full.

    The message names the URI or path, what is wrong and what to do.
    """


USER_ERRORS = (ConfigError, StoreError)


@contextlib.contextmanager
def reported() -> Iterator[None]:
    """Turns a user error into `SystemExit("lrsweep: <message>")`: one line on stderr, exit status 1.

    Left as it is with HYDRA_FULL_ERROR=1 (the traceback), and in a launcher's worker process, where SystemExit
    would take the worker down instead of failing the job.
    """
    try:
        yield
    except USER_ERRORS as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or multiprocessing.parent_process() is not None:
            raise
        raise SystemExit(f"lrsweep: {e}") from e


# What MLflow's messages say when the store itself fails, rather than a request it refused.
STORE_FAILURES = ("API request to", "disk is full", "database is locked", "unable to open database", "disk I/O error")


def as_store_error(error: BaseException, uri: str) -> StoreError | None:
    """`error` as a StoreError naming the store, if it is the MLflow store failing (None for anything else).

    What MLflow raises when its store goes away mid-job: an MlflowException (a server that stopped answering,
    after the retries `tracking.http_max_retries` allows), a requests error, or SQLAlchemy's OperationalError
    for a SQLite file (a full disk, a lock held too long, a file removed).
    """
    import requests
    import sqlalchemy.exc
    from mlflow.exceptions import MlflowException

    if isinstance(error, StoreError):
        return error
    text = " ".join(str(error).split())
    if isinstance(error, MlflowException):
        store_failed = error.error_code == "TEMPORARILY_UNAVAILABLE" or any(s in text for s in STORE_FAILURES)
    else:
        store_failed = isinstance(error, (requests.RequestException, sqlalchemy.exc.OperationalError)) or (
            isinstance(error, OSError) and "No space left" in text
        )
    if not store_failed:
        return None
    if "disk is full" in text or "No space left" in text:
        what = "its disk is full. Free space there"
    elif "API request to" in text or isinstance(error, requests.RequestException):
        lowered = text.lower()
        reason = "connection refused" if "refused" in lowered else "timed out" if "timed out" in lowered else text[:200]
        what = f"the tracking server stopped answering ({reason}). Restart it"
    else:
        what = f"{type(error).__name__}: {text[:300]}. Check that it is up"
    return StoreError(
        f"The MLflow store at tracking.uri={uri} stopped working: {what}, then rerun the same command "
        "(FINISHED runs are reused; runs left RUNNING are marked stale and rerun)."
    )
