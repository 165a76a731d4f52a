"""Metrics written to MLflow in batches, by a background thread, at most every so many seconds."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

Point = tuple[str, float, int]  # (metric key, value, step)


class BatchedWriter:
    """Hands each run's points to MLflow as one `log_batch`, without waiting for it; `wait` waits for all.

    Writing to a SQLite store costs about 1 ms per point, against CPU epochs well under a second here
    (scripts/bench_step_lr.py), so training does not wait for it. MLflow splits a batch above its limit
    (1000 metrics) into several requests itself. The writes go through one thread of our own, in order, rather than
    MLflow's `synchronous=False` queue: ending a run after that queue was used waits for its thread, which polls
    with a 1 s timeout (0.5-1 s per pack, measured). The callbacks that use it decide when to write: at epoch ends,
    and whenever `due()` says `flush_seconds` have passed since the last write (or since `start`).
    """

    def __init__(self, client: MlflowClient, flush_seconds: float = 10.0):
        self.client = client
        self.flush_seconds = flush_seconds
        self._last_write = 0.0
        self._writes: list[Future] = []
        self._thread: ThreadPoolExecutor | None = None

    def start(self) -> None:
        """Starts the clock: the first write is due `flush_seconds` from now."""
        self._last_write = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self._last_write >= self.flush_seconds

    def write(self, points: Iterable[tuple[str, Sequence[Point]]]) -> None:
        """Queues each run's points, `(run_id, [(key, value, step), ...])`, with one timestamp; restarts the clock."""
        self._last_write = time.monotonic()
        timestamp = int(time.time() * 1000)
        for run_id, run_points in points:
            if run_points:
                metrics = [Metric(key, value, timestamp, step) for key, value, step in run_points]
                if self._thread is None:
                    self._thread = ThreadPoolExecutor(1, thread_name_prefix="lrsweep-writer")
                self._writes.append(self._thread.submit(self.client.log_batch, run_id, metrics=metrics))

    def wait(self) -> None:
        """Waits for every queued write to land (before the runs are closed), then lets the thread go.

        Raises:
            MlflowException: a write failed (the first that did; the others are waited for all the same).
        """
        writes, self._writes = self._writes, []
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.shutdown(wait=True)
        for write in writes:
            write.result()
