"""A full disk under the MLflow store or the sweep's files, told in one line instead of a page of tracebacks.

One wording wherever it is met (`store_failure_message`: the path, the free space, the fix), said once per process
(`note_full_disk_said`, `full_disk_said`), and MLflow's own log of it held back from the console
(`hold_back_mlflow_noise`).
"""

from __future__ import annotations

import errno
import logging
import shutil
from pathlib import Path

from lrsweep.core import held_back
from lrsweep.core.errors import error_chain
from lrsweep.tracking.location import sqlite_path

SQLITE_FULL = "database or disk is full"  # SQLite's words, passed on by SQLAlchemy, MLflow and a tracking server
FULL_TEXTS = (SQLITE_FULL, "no space left on device", "disk quota exceeded")  # the store's, the OS's
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def disk_full(error: BaseException | None) -> list[BaseException]:
    """The errors in `error`'s chain (causes and contexts) that say a disk is full."""
    return [
        e
        for e in error_chain(error)
        if (isinstance(e, OSError) and e.errno in FULL_ERRNOS) or any(text in str(e).lower() for text in FULL_TEXTS)
    ]


def _refused(error: BaseException | None, uri: str) -> tuple[Path | None, bool] | None:
    """Where a full disk refused a write, and whether that is the MLflow store's disk (else the sweep's files'):
    None when `error` does not mean a full disk; (None, True) for a tracking server's disk."""
    full = disk_full(error)
    if not full:
        return None
    if uri.startswith(("http://", "https://")) and not any(isinstance(e, OSError) for e in full):
        return None, True
    # A copy that runs out of space names its source as `filename` and the file it was writing as `filename2`.
    written = next((e.filename2 or e.filename for e in full if isinstance(e, OSError) and e.filename), None)
    db = sqlite_path(uri)
    path = Path(written) if written else db or Path(uri)
    return path, db is None or path.is_relative_to(db.parent)  # beside the database: its artifacts


def store_full(error: BaseException | None, uri: str) -> bool:
    """Whether `error` means the disk under the MLflow store is full (not the disk of the sweep's own files)."""
    refused = _refused(error, uri)
    return refused is not None and refused[1]


def free_space(path: Path) -> str:
    """`, 20 KiB free` on the disk of `path` (or of its nearest existing folder), or "" if none exists."""
    folder = next((p for p in (path, *path.parents) if p.is_dir()), None)
    return f", {shutil.disk_usage(folder).free // 1024} KiB free" if folder else ""


def store_failure_message(error: BaseException | None, uri: str) -> str | None:
    """One line for an error that means the disk under the MLflow store (or a file being written) is full, else None.

    SQLite says "database or disk is full" inside an MlflowException (from SQLAlchemy's OperationalError), a
    tracking server passes the same text on, and files (artifacts, the report) raise OSError ENOSPC.
    """
    refused = _refused(error, uri)
    if refused is None:
        return None
    path, of_store = refused
    fix = "then rerun the same command: it reruns what did not finish and reuses what did."
    if path is None:
        return f"The MLflow tracking server at tracking.uri={uri} says its disk is full. Free space on its host, {fix}"
    if not of_store:
        return (
            f"The disk is full at {path}{free_space(path)}: the sweep cannot write its files there. Free space, {fix}"
        )
    return (
        f"The disk is full at {path}{free_space(path)}: the MLflow store tracking.uri={uri} cannot record the runs. "
        f"Free space there, {fix} (A store on another disk, `tracking.uri=...`, starts the sweep afresh.)"
    )


_said: set[str] = set()  # stores whose full disk this process has raised to the user as a StoreError


def _key(uri: str) -> str:
    """The store a URI names, however it is written (relative, through a symlink)."""
    path = sqlite_path(uri)
    return str(path.resolve()) if path is not None else uri


def note_full_disk_said(uri: str) -> None:
    """Notes that this process raised the store's full disk to the user (`lrsweep.run.experiment.store_failures`):
    whoever stops on it prints it (`errors.reported`, the packed launcher), so closing the sweep need not again."""
    _said.add(_key(uri))


def full_disk_said(uri: str) -> bool:
    """Whether this process raised the store's full disk to the user already (`note_full_disk_said`)."""
    return _key(uri) in _said


MLFLOW_DB_LOGGER = "mlflow.store.db.utils"  # a failed SQL session (traceback included), the engine's retries
MLFLOW_ASYNC_LOGGER = "mlflow.utils.async_logging.async_logging_queue"  # a failed background write of metrics
ENGINE_RETRY = "SQLAlchemy engine could not be created"


def _says_disk_full(record: logging.LogRecord) -> bool:
    if record.exc_info and disk_full(record.exc_info[1]):
        return True
    return any(text in record.getMessage().lower() for text in FULL_TEXTS)


def _db_noise(record: logging.LogRecord) -> bool:
    """A write a full disk refused, or a retry of opening a store lrsweep checked (its failure is said in one line)."""
    return _says_disk_full(record) or record.getMessage().startswith(ENGINE_RETRY)


def hold_back_mlflow_noise() -> None:
    """Sends MLflow's own log of a full disk and of its engine retries to the log file instead of the console
    (`lrsweep.core.held_back`), once per process (`tracking.connect` calls it). The errors are raised to lrsweep
    all the same (a background write's, when its run waits for it), which says them in one line."""
    held_back.hold_back(MLFLOW_DB_LOGGER, _db_noise)
    held_back.hold_back(MLFLOW_ASYNC_LOGGER, _says_disk_full)
