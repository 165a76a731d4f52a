"""Ctrl-C and SIGTERM as a request to stop at the next safe point, not an exception at an arbitrary one.

A sweep's main process also writes a stop file into the sweep folder, which jobs in other processes
(hydra/launcher=parallel, a cluster sharing the folder) read at the same safe points.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STOP_FILE = ".lrsweep-stop"
# After a first Ctrl-C/SIGTERM, how long the process may take to reach its next safe point before it stops wherever
# it is: a training step takes well under a second, but an MLflow call to a server that hangs takes up to
# `tracking.http_timeout` x (1 + `tracking.http_max_retries`) seconds, and the user asked to stop now.
GRACE_SECONDS = 10.0
_requested: str | None = None  # the name of the signal that asked this process to stop
_stop_file: Path | None = None


class JobInterrupted(RuntimeError):
    """A stop was requested. Raised instead of KeyboardInterrupt in a launcher's worker process, where a
    KeyboardInterrupt would make the launcher (joblib) kill the other workers in the middle of their runs."""


def _handle(signum: int, frame: Any) -> None:
    global _requested
    name = signal.Signals(signum).name
    if _requested is not None:  # asked twice: stop now, wherever we are
        raise KeyboardInterrupt(f"received {name} twice")
    _requested = name
    if _stop_file is not None:
        _stop_file.write_text(name)
    log.warning("Received %s: stopping after the current training step (send it again to stop at once).", name)
    signal.signal(signal.SIGALRM, _overdue)
    signal.setitimer(signal.ITIMER_REAL, GRACE_SECONDS)


def _overdue(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(
        f"received {_requested} {GRACE_SECONDS:g} s ago and still busy (e.g. waiting on the MLflow store): stopping now"
    )


def disarm() -> None:
    """Cancels the grace period of a first signal: the stop was honoured (or the process is closing down)."""
    if threading.current_thread() is threading.main_thread():
        signal.setitimer(signal.ITIMER_REAL, 0)


def install(sweep_dir: str | Path | None = None) -> None:
    """Routes SIGINT and SIGTERM here (main thread only), and watches the sweep's stop file if given."""
    global _stop_file
    if sweep_dir is not None:
        _stop_file = Path(sweep_dir) / STOP_FILE
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, _handle)


def clear(sweep_dir: str | Path) -> None:
    """Removes a stop file left by an earlier, interrupted sweep in the same folder."""
    (Path(sweep_dir) / STOP_FILE).unlink(missing_ok=True)


def requested() -> str | None:
    """What asked to stop (a signal's name, here or in the sweep's main process), or None."""
    if _requested is None and _stop_file is not None and _stop_file.exists():
        return _stop_file.read_text() or "a stop request"
    return _requested


def exit_status() -> int:
    """The shell's status for a process a signal stopped: 128 + its number (130 for SIGINT, 143 for SIGTERM)."""
    name = requested()
    return 128 + signal.Signals[name].value if name in signal.Signals.__members__ else 130


def check() -> None:
    """Raises if a stop was requested: call it where stopping leaves nothing half-written.

    KeyboardInterrupt in a sweep's main process (the basic launcher stops there); JobInterrupted in a
    worker process, so its launcher finishes cleanly while every job still to come stops at once.
    """
    reason = requested()
    if reason is not None:
        disarm()
        error = KeyboardInterrupt if multiprocessing.parent_process() is None else JobInterrupted
        raise error(f"received {reason}")
