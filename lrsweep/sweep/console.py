"""What a sweep prints when it closes: one line of counts and problems, the table, the verdicts, where the files are."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from lrsweep.analysis import report
from lrsweep.sweep.outcome import Outcome


def headline(built: report.SweepReport, outcome: Outcome, interrupted: str | None) -> str:
    """`Sweep <id>: 8 runs in 4 configurations; ...`: the counts, the reused runs, an interrupt, what did not finish."""
    parts = [f"\nSweep {built.sweep_id}: {len(built.runs)} runs in {len(built.configurations)} configurations"]
    if outcome.reused:
        parts.append(f"{outcome.reused} already finished before, reused (resume=false reruns them)")
    if interrupted:
        parts.append(f"interrupted by {interrupted}")
    if outcome.problems:
        parts.append(f"not finished: {'; '.join(outcome.problems)}")
    return "; ".join(parts)


def print_table(line: str, built: report.SweepReport) -> None:
    """The headline and the table: what is printed even when the report's files could not be written."""
    print(line)
    print(built.table())


def print_report(
    line: str, built: report.SweepReport, suggestion: str, out_dir: Path, paths: Sequence[Path], run_id: str
) -> None:
    """The headline, the table, the 10 verdicts closest to the best, the range test's suggestion, the files."""
    print_table(line, built)
    print("\n".join(built.verdicts(limit=10)))
    if suggestion:
        print(f"\n{suggestion}")
    print(f"Report: {out_dir} ({', '.join(p.name for p in paths)}); MLflow parent run {run_id}")


def print_store_errors(messages: Iterable[str]) -> None:
    """Each store failure once on stderr (the same full disk, met by several writes, said once)."""
    for message in dict.fromkeys(messages):
        print(f"lrsweep: {message}", file=sys.stderr)
