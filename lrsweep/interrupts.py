"""Ctrl-C and SIGTERM as a request to stop at the next safe point, not an exception at an arbitrary one."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

log = logging.getLogger(__name__)

_requested: str | None = None  # the name of the signal that asked to stop, once one has


def _handle(signum: int, frame: Any) -> None:
    global _requested
    name = signal.Signals(signum).name
    if _requested is not None:  # asked twice: stop now, wherever we are
        raise KeyboardInterrupt(f"received {name} twice")
    _requested = name
    log.warning("Received %s: stopping after the current training step (send it again to stop at once).", name)


def install() -> None:
    """Routes SIGINT and SIGTERM here for this process (main thread only; elsewhere signals stay as they are)."""
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, _handle)


def requested() -> str | None:
    """The signal that asked to stop, or None."""
    return _requested


def check() -> None:
    """Raises KeyboardInterrupt if a stop was requested: call it where stopping leaves nothing half-written."""
    if _requested is not None:
        raise KeyboardInterrupt(f"received {_requested}")
