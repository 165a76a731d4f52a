"""Log lines kept out of the console but not lost: written to the log file only.

A failure lrsweep reports in one line (a full disk, a store that cannot be opened) makes MLflow log its own ERROR or
retry lines first, and lrsweep's per-run details of it repeat what the one line and the sweep's summary say. Those
records are "held back": written to the log file of the Hydra job that is running (`<job folder>/train.log`) or,
where none is open (a pack training in a packed sweep), to the sweep's own log `<sweep dir>/sweep.log`
(`keep_in`), and never to the console.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

SWEEP_LOG = "sweep.log"
_fallback: logging.FileHandler | None = None  # the sweep's log, for when no Hydra job log is open


class _QuietFileHandler(logging.FileHandler):
    """A FileHandler that fails silently: the log of what was held back must not be noise of its own (a full
    disk under the sweep folder would otherwise print logging's '--- Logging error ---' traceback)."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        pass


def keep_in(folder: Path) -> None:
    """Held-back records go to `<folder>/sweep.log` when no Hydra job log is open (created at the first one)."""
    global _fallback
    path = (Path(folder) / SWEEP_LOG).absolute()
    if _fallback is not None and Path(_fallback.baseFilename) == path:
        return
    if _fallback is not None:
        _fallback.close()
    _fallback = _QuietFileHandler(path, delay=True)
    _fallback.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))


def destinations() -> list[logging.Handler]:
    """The log files a held-back record goes to: the open Hydra job logs (the root logger's file handlers), else
    the sweep's log (`keep_in`), else none."""
    files: list[logging.Handler] = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    return files or ([_fallback] if _fallback is not None else [])


def write(record: logging.LogRecord) -> None:
    """Writes a record to the log files only (`destinations`)."""
    for handler in destinations():
        if record.levelno >= handler.level:
            handler.handle(record)


def log(logger: logging.Logger, level: int, message: str, *args: object) -> None:
    """`logger.log(level, message, *args)`, to the log files only: a detail the console already says in other words."""
    if logger.isEnabledFor(level):
        write(logger.makeRecord(logger.name, level, "(held back)", 0, message, args, None))


class HeldBack(logging.Filter):
    """A logger filter that sends the records `held(record)` selects to the log files (`write`) instead of the
    logger's handlers: for another library's logger (MLflow's), whose console handler lrsweep does not own."""

    def __init__(self, held: Callable[[logging.LogRecord], bool]) -> None:
        super().__init__()
        self.held = held

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.held(record):
            return True
        write(record)
        return False


def hold_back(logger_name: str, held: Callable[[logging.LogRecord], bool]) -> None:
    """Installs `HeldBack(held)` on a logger, once per process and logger (a second call changes nothing)."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, HeldBack) for f in logger.filters):
        logger.addFilter(HeldBack(held))
