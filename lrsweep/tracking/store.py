"""Is an MLflow store usable? Answered with the filesystem and the stdlib in seconds, before MLflow touches it.

MLflow's own answers are slow or unreadable: an unwritable SQLite folder costs minutes of engine retries and ends in
a SQLAlchemy traceback that never names the path; a garbage `mlflow.db` is "database disk image is malformed" deep
in two tracebacks; a server that died makes every call retry for minutes. Here each way a store can be unusable is a
`StoreError` naming the URI or path, what is wrong and the fix; `tracking.connect` runs these checks first.

Also here: the lock that serialises creating a fresh SQLite store across processes (MLflow's `SqlAlchemyStore`
creates and migrates the tables without one, so two sweeps started together on a fresh store collide), the HTTP
retry and timeout settings of MLflow's client, and `as_store_error`, which tells an MLflow call that failed because
the store is gone (server down, disk full, file damaged) from any other error.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import sqlite3
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

from lrsweep.core.errors import StoreError, error_chain, first_line
from lrsweep.tracking import mlflow_adapter
from lrsweep.tracking.disk_full import disk_full, store_failure_message
from lrsweep.tracking.location import SQLITE as SQLITE  # `store.SQLITE`, `store.sqlite_path`: where callers look
from lrsweep.tracking.location import check_location, make_folder, sqlite_path

SQLITE_MAGIC = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite 3 database
LOCK_TIMEOUT = 300.0  # seconds to wait for another process creating the store (measured: 2-6 s per creation here)

# HTTP: MLflow's defaults (7 retries, backoff factor 2, 120 s per request) retry one call for about 4 minutes, and a
# job makes several calls after its server died. Defaults of `tracking.http_timeout` / `tracking.http_max_retries`.
HTTP_TIMEOUT = 10
HTTP_MAX_RETRIES = 2
HTTP_BACKOFF_FACTOR = 1  # urllib3 waits 0, then 2, 4, ... x this between tries (MLflow reads it as an int)
HTTP_BACKOFF_JITTER = 1.0  # plus up to this many seconds at random, so that parallel jobs do not retry in step

_verified: set[Path] = set()  # databases checked by this process: a store's schema does not change under a sweep


def check_database(uri: str, path: Path) -> bool:
    """Checks that an existing database file is an intact MLflow store of the schema this MLflow uses.

    Reads only (stdlib `sqlite3`, no MLflow): the 16-byte header, `PRAGMA quick_check` (0.3 s for 180 MB here; it
    finds a truncated file too), the tables and the Alembic revision in `alembic_version`.

    Returns:
        Whether it holds a store (False: the file is empty or has no tables yet, a fresh store to create).

    Raises:
        StoreError: not a SQLite database, damaged, not an MLflow store, or a schema of another MLflow.
    """
    with open(path, "rb") as f:
        head = f.read(len(SQLITE_MAGIC))
    if not head:
        return False
    if head != SQLITE_MAGIC:
        raise StoreError(
            f"The MLflow store tracking.uri={uri} is not a SQLite database: {path} starts with {head[:8]!r}. "
            "Restore it from a backup, or move it away to start a fresh store, or choose another `tracking.uri`."
        )
    try:
        # mode=rw: never creates the file; a hot journal left by a crash is rolled back as SQLite does on any open.
        connection = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=10)
        try:
            problems = [row[0] for row in connection.execute("PRAGMA quick_check(3)")]
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            revisions = (
                [row[0] for row in connection.execute("SELECT version_num FROM alembic_version")]
                if "alembic_version" in tables
                else []
            )
        finally:
            connection.close()
    except sqlite3.OperationalError as e:
        if "locked" in str(e):
            return True  # busy with another process's writes: in use, not unusable; MLflow waits its turn
        raise _damaged(uri, path, e) from e
    except sqlite3.DatabaseError as e:
        raise _damaged(uri, path, e) from e
    if problems != ["ok"]:
        raise _damaged(uri, path, "; ".join(problems))
    if not tables - {"alembic_version"}:
        return False
    if not revisions:
        if "experiments" in tables:
            return True  # tables of an interrupted creation, before Alembic's bookkeeping: MLflow completes it
        raise StoreError(
            f"tracking.uri={uri}: {path} is a SQLite database but not an MLflow store (tables: "
            f"{', '.join(sorted(tables)[:5])}{', ...' if len(tables) > 5 else ''}). Choose another `tracking.uri`."
        )
    import mlflow

    head_revision, known = mlflow_adapter.schema_revisions()
    revision = revisions[0]
    if revision not in known:
        raise StoreError(
            f"The MLflow store tracking.uri={uri} has schema revision {revision}, unknown to MLflow "
            f"{mlflow.__version__}: it was written by a newer MLflow. Use that MLflow here (`pip install -U mlflow`) "
            "or choose another `tracking.uri`."
        )
    if revision != head_revision:
        raise StoreError(
            f"The MLflow store tracking.uri={uri} has schema revision {revision}, older than MLflow "
            f"{mlflow.__version__} needs ({head_revision}). Back up {path}, then upgrade it: `mlflow db upgrade {uri}`."
        )
    return True


def _damaged(uri: str, path: Path, error: BaseException | str) -> StoreError:
    return StoreError(
        f"The MLflow store tracking.uri={uri} is damaged: SQLite says {first_line(error)!r} for {path}. "
        f"Restore it from a backup (or salvage it: `sqlite3 {path} .recover`), or move it away to start a fresh "
        "store, or choose another `tracking.uri`."
    )


@contextlib.contextmanager
def folder_lock(uri: str, folder: Path, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Holds an exclusive `flock` on the store's folder: one process at a time creates tables or experiments.

    The folder itself is locked, not a lock file, so that the lock leaves nothing behind. The kernel releases it
    when the holder dies, so a crashed process never blocks the next one. Where the filesystem cannot lock a folder
    (some network filesystems), it falls back to `<folder>/.lrsweep.lock`.

    Raises:
        StoreError: another process held the lock for `timeout` seconds.
    """
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # can this filesystem lock a folder at all?
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BlockingIOError:
            pass  # held by another process: it can
        except OSError:
            os.close(fd)
            fd = os.open(folder / ".lrsweep.lock", os.O_RDWR | os.O_CREAT, 0o666)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StoreError(
                        f"The MLflow store tracking.uri={uri} stayed locked for {timeout:.0f} s by another process "
                        f"creating or opening it (flock on {folder}). Look for a stuck lrsweep process "
                        f"(`fuser {folder}`) and end it."
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the lock


def prepare_sqlite(uri: str, path: Path, create: bool) -> contextlib.AbstractContextManager[bool] | None:
    """Checks a SQLite store and returns the lock to open it under, or None when there is no store and `create` is off.

    The lock's value says whether to go on: False when the database turned out empty and `create` is off.

    Raises:
        StoreError: the store cannot be used; nothing was created.
    """
    exists = check_location(uri, path)
    if not exists and not create:
        return None
    make_folder(uri, path)  # os.access can say yes where the filesystem says no (ACLs, root squash, FUSE)
    return _checked_under_lock(uri, path, create)


@contextlib.contextmanager
def _checked_under_lock(uri: str, path: Path, create: bool) -> Iterator[bool]:
    with folder_lock(uri, path.parent):
        # Checked under the lock: a store another process is creating right now looks half-made (tables, no
        # revision yet) and would be refused.
        if path not in _verified:
            if path.exists() and check_database(uri, path):
                _verified.add(path)
            elif not create:
                yield False
                return
        yield True


def http_settings(timeout: int = HTTP_TIMEOUT, max_retries: int = HTTP_MAX_RETRIES) -> None:
    """Sets MLflow's HTTP client to give up on a tracking server within `http_call_bound` seconds per call.

    MLflow reads these environment variables at every request (mlflow/utils/rest_utils.py), so this applies at
    once, and to every process this one starts.

    Raises:
        ValueError: a value out of range, naming the key.
    """
    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 1:
        raise ValueError(
            f"`tracking.http_timeout` must be an integer number of seconds >= 1. Received: "
            f"tracking.http_timeout={timeout!r}"
        )
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or not 0 <= max_retries <= 10:
        raise ValueError(
            "`tracking.http_max_retries` must be an integer in [0, 10] (MLflow's limit). Received: "
            f"tracking.http_max_retries={max_retries!r}"
        )
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(timeout)
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(max_retries)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = str(HTTP_BACKOFF_FACTOR)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"] = str(HTTP_BACKOFF_JITTER)


def http_call_bound(timeout: int = HTTP_TIMEOUT, max_retries: int = HTTP_MAX_RETRIES) -> float:
    """The longest one MLflow call to a dead or hung server takes with these settings, in seconds.

    1 + max_retries tries of at most `timeout` each (the connect or the read times out), and urllib3's waits between
    them: none before the first retry, then factor x 2, 4, ... plus up to the jitter each. The defaults: 3 x 10 + 3 =
    33 s. A server whose process is gone refuses at once: then only the waits count, 3 s.
    """
    waits = sum(HTTP_BACKOFF_FACTOR * 2**k + HTTP_BACKOFF_JITTER for k in range(1, max_retries))
    return (1 + max_retries) * timeout + waits


@contextlib.contextmanager
def one_try(timeout: int = 5) -> Iterator[None]:
    """MLflow HTTP calls in this block try once, waiting at most `timeout` s: for best-effort calls after a failure.

    E.g. closing a job's run FAILED after its server stopped answering: with the normal retries that attempt would
    cost another `http_call_bound` seconds before the job can end.
    """
    keys = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")
    saved = {key: os.environ.get(key) for key in keys}
    current = int(saved["MLFLOW_HTTP_REQUEST_TIMEOUT"] or timeout)
    os.environ.update({keys[0]: "0", keys[1]: str(min(timeout, current))})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


_SQLITE_FAULTS = (
    ("disk i/o error", "reading or writing {path} failed (disk I/O error). Check the disk and rerun"),
    ("readonly database", "{path} became read-only. Make it writable again and rerun"),
    (
        "unable to open database file",
        "SQLite cannot open or create {path} or its journal beside it ({why}). Check that path, or set "
        "`tracking.uri` to a writable path, and rerun",
    ),
    ("malformed", "{path} is damaged ('database disk image is malformed'). Restore it from a backup"),
    ("not a database", "{path} is not a SQLite database any more. Restore it from a backup"),
    ("database is locked", "{path} stayed locked by another process. Rerun when it is done"),
)


def as_store_error(error: BaseException, uri: str) -> StoreError | None:
    """The `StoreError` an MLflow call's failure amounts to when the store itself failed, else None.

    A store failure is the tracking server not answering (connection refused or reset, timeouts, retries used up on
    5xx), or the SQLite file full, damaged, read-only, gone or locked, or an OSError of the disk. Anything else (a
    bug, a bad value MLflow refused) returns None and should propagate as it is. Use it where a job's MLflow call
    fails: `raise tracking.as_store_error(e, uri) or e`... with `from e` to keep the original for HYDRA_FULL_ERROR.

    Args:
        error: the exception an MLflow call raised.
        uri: the tracking URI, to name in the message.
    """
    import requests
    import urllib3.exceptions
    from mlflow.exceptions import MlflowException

    chain = error_chain(error)
    for link in chain:
        if isinstance(link, StoreError):
            return link
    if disk_full(error):  # one wording wherever it is met: the path, the free space, the fix
        return StoreError(store_failure_message(error, uri))
    if uri.startswith(("http://", "https://")):
        if (refused := _credentials_refused(chain, uri)) is not None:
            return refused
        for link in chain:
            server_fault = isinstance(link, (requests.RequestException, urllib3.exceptions.HTTPError)) or (
                isinstance(link, MlflowException) and str(link.message).startswith("API request to ")
            )
            if server_fault:
                reason = first_line(link, limit=200)
                return StoreError(
                    f"The MLflow tracking server at tracking.uri={uri} stopped answering ({reason}). Start it "
                    "again and rerun: runs it left RUNNING are then marked KILLED (stale) and redone. On a slow "
                    "network, raise `tracking.http_timeout` / `tracking.http_max_retries`."
                )
        return None
    path = sqlite_path(uri) or uri
    import sqlalchemy.exc

    for link in chain:
        text = str(link).lower()
        if isinstance(link, (sqlite3.Error, sqlalchemy.exc.DBAPIError, MlflowException)):
            for needle, what in _SQLITE_FAULTS:
                if needle in text:
                    why = _why_unopenable(path) if isinstance(path, Path) else "?"
                    return StoreError(f"The MLflow store tracking.uri={uri} failed: {what.format(path=path, why=why)}.")
        if isinstance(link, OSError) and link.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS):
            return StoreError(
                f"The MLflow store tracking.uri={uri} failed: {first_line(link)} (writing at or beside {path}). "
                "Fix the disk and rerun."
            )
        if isinstance(link, sqlalchemy.exc.OperationalError):
            return StoreError(f"The MLflow store tracking.uri={uri} failed: {first_line(link)}.")
    return None


def _credentials_refused(chain: list[BaseException], uri: str) -> StoreError | None:
    """The `StoreError` for a tracking server that answered 401 (who is this?) or 403 (not allowed), else None.

    MLflow's basic-auth app answers so; the client sends MLflow's credentials (`MLFLOW_TRACKING_USERNAME` and
    `MLFLOW_TRACKING_PASSWORD`, or `~/.mlflow/credentials`), or a password in the URI."""
    import requests
    from mlflow.exceptions import MlflowException
    from mlflow.utils.credentials import read_mlflow_creds

    for link in chain:
        status = None
        if isinstance(link, MlflowException):
            found = re.search(r"error code (401|403) != 200", str(link.message))
            codes = {"UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403}
            status = int(found[1]) if found else codes.get(getattr(link, "error_code", None))
        elif isinstance(link, requests.HTTPError) and link.response is not None:
            status = link.response.status_code if link.response.status_code in (401, 403) else None
        if status is None:
            continue
        user = read_mlflow_creds().username or urllib.parse.urlsplit(uri).username
        if status == 403:
            return StoreError(
                f"The MLflow tracking server at tracking.uri={uri} lets user {user!r} in but refuses this (HTTP 403). "
                "Ask its admin for a permission on the experiment, or set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD to a user who has one."
            )
        given = f"user {user!r}" if user else "none were given"
        return StoreError(
            f"The MLflow tracking server at tracking.uri={uri} refused lrsweep's credentials (HTTP 401: {given}). "
            "Set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or ~/.mlflow/credentials) to a user it knows."
        )
    return None


def _why_unopenable(path: Path) -> str:
    """Why SQLite may have said "unable to open database file" for `path`, as far as the filesystem tells."""
    if path.exists():
        return "the file is there: no permission, or its folder refuses the journal"
    if not path.parent.is_dir():
        return f"its folder {path.parent} is not there"
    return "the file is not there (moved or deleted?) and cannot be created"
