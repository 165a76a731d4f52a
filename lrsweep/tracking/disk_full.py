"""A full disk under the MLflow store or the sweep's files, told in one line instead of a page of tracebacks."""

from __future__ import annotations

import errno
import logging
import shutil
from pathlib import Path

from lrsweep.core.errors import error_chain
from lrsweep.tracking.store import SQLITE_FULL, sqlite_path

FULL_TEXTS = (SQLITE_FULL, "no space left on device", "disk quota exceeded")  # the store's, the OS's
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def disk_full(error: BaseException | None) -> list[BaseException]:
    """The errors in `error`'s chain (causes and contexts) that say a disk is full."""
    return [
        e
        for e in error_chain(error)
        if (isinstance(e, OSError) and e.errno in FULL_ERRNOS) or any(text in str(e).lower() for text in FULL_TEXTS)
    ]


def store_failure_message(error: BaseException | None, uri: str) -> str | None:
    """One line for an error that means the disk under the MLflow store (or a file being written) is full, else None.

    SQLite says "database or disk is full" inside an MlflowException (from SQLAlchemy's OperationalError), a
    tracking server passes the same text on, and files (artifacts, the report) raise OSError ENOSPC.
    """
    full = disk_full(error)
    if not full:
        return None
    fix = "then rerun the same command: it reruns what did not finish and reuses what did."
    if uri.startswith(("http://", "https://")) and not any(isinstance(e, OSError) for e in full):
        return f"The MLflow tracking server at tracking.uri={uri} says its disk is full. Free space on its host, {fix}"
    # A copy that runs out of space names its source as `filename` and the file it was writing as `filename2`.
    written = next((e.filename2 or e.filename for e in full if isinstance(e, OSError) and e.filename), None)
    db = sqlite_path(uri)
    path = Path(written) if written else db or Path(uri)
    folder = next((p for p in (path, *path.parents) if p.is_dir()), None)
    free = f", {shutil.disk_usage(folder).free // 1024} KiB free" if folder else ""
    if db is not None and not path.is_relative_to(db.parent):  # the sweep's folder (its report), not the store
        return f"The disk is full at {path}{free}: the sweep cannot write its files there. Free space, {fix}"
    return (
        f"The disk is full at {path}{free}: the MLflow store tracking.uri={uri} cannot record the runs. "
        f"Free space there (or set `tracking.uri` to a store on another disk), {fix}"
    )


class QuietDiskFull(logging.Filter):
    """Drops MLflow's own ERROR log, with its traceback, of a write that a full disk refused: the error is raised to
    lrsweep all the same, which says it in one line (`store_failure_message`) instead of a page per failed call."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and disk_full(record.exc_info[1]))


MLFLOW_DB_LOGGER = "mlflow.store.db.utils"  # where MLflow logs a failed SQL session, traceback included


def quiet_mlflow_disk_full() -> None:
    """Installs `QuietDiskFull` on MLflow's SQL store logger, once per process (`tracking.connect` calls it)."""
    logger = logging.getLogger(MLFLOW_DB_LOGGER)
    if not any(isinstance(f, QuietDiskFull) for f in logger.filters):
        logger.addFilter(QuietDiskFull())
