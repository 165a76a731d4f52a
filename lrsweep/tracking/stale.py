"""Stale runs, in one place: runs left RUNNING by a process that is gone, found by their owner's tags and ended.

A run RUNNING carries its owner's host and process token (`owner_tags`). A sweep starting on a store ends as KILLED
(tag `lrsweep.stale`) the runs whose process on this host is gone (`mark_stale`); a sweep closing does the same for
its own jobs' runs, once their processes had a moment to exit (`settle_running`). Resume then reruns them.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.entities import Run, RunStatus
from mlflow.tracking import MlflowClient

from lrsweep.core import held_back
from lrsweep.tracking.tags import TAG_HOST, TAG_PROCESS, TAG_STALE

log = logging.getLogger(__name__)

STALE_GRACE = 10.0  # seconds a worker going down (joblib kills the others when one dies) gets to exit at close


def process_token(pid: int | None = None) -> str:
    """`pid:start time`, which tells a live process from a later one that got the same pid."""
    pid = pid or os.getpid()
    try:
        start = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        start = "?"
    return f"{pid}:{start}"


def owner_tags() -> dict[str, str]:
    """Who owns a run while it is RUNNING, so a later sweep can tell a live run from one whose process died."""
    return {TAG_HOST: socket.gethostname(), TAG_PROCESS: process_token()}


def _process_alive(token: str) -> bool:
    pid, _, start = token.partition(":")
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return start == "?" or process_token(int(pid)) == token


def process_gone(token: str) -> bool:
    """Whether the process of a `lrsweep.process` token has exited, a zombie (exited, not yet reaped) included."""
    if not _process_alive(token):
        return True
    try:
        state = Path(f"/proc/{token.partition(':')[0]}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state in ("Z", "X")


def end_stale(client: MlflowClient, run_id: str) -> None:
    """Ends a run left RUNNING by a process that is gone: KILLED with tag `lrsweep.stale`, so resume reruns it."""
    client.set_tag(run_id, TAG_STALE, "true")
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))


def mark_stale(client: MlflowClient, experiment_id: str) -> list[Run]:
    """Ends as KILLED (tag `lrsweep.stale`) the RUNNING runs whose process on this host is gone (e.g. SIGKILL).

    Runs owned by other hosts cannot be checked from here and are left as they are.
    """
    host = socket.gethostname()
    stale = []
    for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=1000):
        token = run.data.tags.get(TAG_PROCESS)
        if run.data.tags.get(TAG_HOST) == host and token and process_gone(token):
            end_stale(client, run.info.run_id)
            stale.append(run)
            log.warning("Run %s (%s) was left RUNNING by a process that is gone: marked KILLED (stale)",
                        run.info.run_name, run.info.run_id)  # fmt: skip
    return stale


@dataclass
class Settled:
    """The job runs of a sweep that were still RUNNING when it closed, by run id, with what became of them."""

    stale: dict[str, str] = field(default_factory=dict)  # marked stale (KILLED) -> by whom it was left RUNNING
    running: dict[str, str] = field(default_factory=dict)  # still RUNNING -> why
    store_errors: dict[str, Exception] = field(default_factory=dict)  # run id -> why the store refused its end


def settle_running(client: MlflowClient, runs: list[Run], grace: float = STALE_GRACE) -> Settled:
    """Marks stale (KILLED, tag `lrsweep.stale`) the runs still RUNNING whose process is gone, so resume reruns them.

    Called once a sweep's jobs are over: a run still RUNNING then was left so by a process that died (SIGKILL, a
    crashed joblib worker) or, in this process, by a job whose end the store could not record. A process on this
    host that is still alive gets `grace` seconds to exit first (joblib kills the other workers when one dies); one
    still alive after that, or a run of another host (which cannot be checked from here), stays RUNNING.
    """
    host = socket.gethostname()
    me = process_token()
    running = [run for run in runs if run.info.status == "RUNNING"]

    def alive_elsewhere(run: Run) -> bool:
        token = run.data.tags.get(TAG_PROCESS)
        local = run.data.tags.get(TAG_HOST) == host and bool(token)
        return local and token != me and not process_gone(token)

    deadline = time.monotonic() + grace
    while any(alive_elsewhere(run) for run in running) and time.monotonic() < deadline:
        time.sleep(0.2)
    settled = Settled()
    for run in running:
        run_id, tags = run.info.run_id, run.data.tags
        token = tags.get(TAG_PROCESS)
        if tags.get(TAG_HOST) != host or not token:
            settled.running[run_id] = f"on host {tags.get(TAG_HOST, '?')}, which cannot be checked from here"
            continue
        if alive_elsewhere(run):
            pid = token.partition(":")[0]
            settled.running[run_id] = f"by process {pid}, still alive {grace:.0f} s after the sweep's jobs ended"
            continue
        try:
            end_stale(client, run_id)
        except Exception as e:
            settled.store_errors[run_id] = e
            settled.running[run_id] = (
                "(the store could not record the end; the next sweep on this store marks such runs stale)"
            )
            continue
        died = "by this process (the store could not record the end)" if token == me else "by a process that died"
        settled.stale[run_id] = died
        # The sweep's summary names each run this marked, and why: the line per run is for the log file.
        held_back.log(log, logging.WARNING, "Run %s (%s) was left RUNNING %s: marked KILLED (stale)",
                      run.info.run_name, run_id, died)  # fmt: skip
    return settled
