"""What a sweep prints when it closes: one line of counts and problems, the table, the verdicts, where the files are,
and what could not be written (`Failures`), once."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from lrsweep import tracking
from lrsweep.analysis import headline, report
from lrsweep.core.secrets import redact
from lrsweep.sweep.outcome import Outcome


def status_line(built: report.SweepReport, outcome: Outcome, interrupted: str | None) -> str:
    """`Sweep <id>: 8 runs in 4 configurations; ...`: the counts, the reused runs, an interrupt, what did not finish."""
    parts = [f"\nSweep {built.sweep_id}: {len(built.runs)} runs in {len(built.configurations)} configurations"]
    if outcome.reused:
        parts.append(f"{outcome.reused} already finished before, reused (resume=false reruns them)")
    if interrupted:
        parts.append(f"interrupted by {interrupted}")
    if outcome.problems:
        parts.append(f"not finished: {'; '.join(outcome.problems)}")
    return "; ".join(parts)


def print_report(
    line: str,
    built: report.SweepReport,
    suggestion: str,
    out_dir: Path,
    paths: Sequence[Path],
    run_id: str,
    attached: bool = True,
) -> None:
    """The counts, the sweep's answer in words, the table, the 10 verdicts closest to the best, the range test's
    suggestion, the files. A range test's answer is its suggestion: no table of runs that explode on purpose.

    `paths` empty: the report's files could not be written; `attached` False: the store could not take them.
    """
    print(line)
    print("\n".join(headline.answer(built, suggestion)))
    if not headline.range_test_only(built):
        print(f"\n{built.table()}")
        print("\n".join(built.verdicts(limit=10)))
        if suggestion:
            print(f"\n{suggestion}")
    where = f"{out_dir} ({', '.join(p.name for p in paths)})" if paths else f"not written to {out_dir}"
    mlflow = f"MLflow parent run {run_id}" if attached or not paths else f"not attached to MLflow parent run {run_id}"
    print(f"Report: {where}; {mlflow}")


class Failures:
    """The writes a closing sweep could not make because a disk is full, each disk said once, after the report.

    The store's full disk is not said again if this process said it already (the job that met it stopped the sweep
    with it: `tracking.full_disk_said`); other failures are said as they are.
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.messages: dict[str, str] = {}  # what failed (the store's disk, the sweep's files, ...) -> one line

    def add(self, error: BaseException) -> bool:
        """Notes a write that a full disk refused; False if `error` is something else (for the caller to raise)."""
        message = tracking.store_failure_message(error, self.uri)
        if message is None:
            return False
        of_store = tracking.store_full(error, self.uri)
        if not (of_store and tracking.full_disk_said(self.uri)):
            self.messages.setdefault("store" if of_store else "files", message)
        return True

    def note(self, message: str) -> None:
        """Notes a failure that is not a full disk, in words."""
        self.messages.setdefault(message, message)

    def print(self) -> None:
        for message in self.messages.values():
            print(redact(f"lrsweep: {message}"), file=sys.stderr)
