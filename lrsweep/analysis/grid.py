"""A sweep as a grid: two numeric swept keys (a learning rate on the columns) times any categorical ones, its cells
pooled over seeds, and the boundary of where training works (the warm-up phase diagram's red line), with a bar a
reader can check. Drawn by `lrsweep.analysis.heatmap`, said in words by `lrsweep.analysis.headline`."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from lrsweep.analysis.report import RANK_METRIC, JobRun, SweepReport


def _numeric(values: Iterable[str]) -> list[float] | None:
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        return None


LR_KEY = re.compile(r"(^|[._])(lr|learning_rate)$")


CHANCE_ACCURACY = 0.1  # a uniform guess over the 10 classes, as CHANCE_LOSS = ln 10


@dataclass
class Cell:
    """One cell of a two-parameter grid: its configurations' runs pooled."""

    mean: float  # mean final val_accuracy of the finished runs (nan: none finished)
    runs: int
    finished: int
    diverged: int  # finished no better than chance, or failed on a NaN/inf loss
    failed: int  # failed for another reason (a crash), or killed
    lowest: float = math.nan  # the lowest final val_accuracy of its finished runs (nan: none, or one lacks it)
    bar: float = CHANCE_ACCURACY  # the final val_accuracy every run must reach to train (`trains_bar`)

    @property
    def trains(self) -> bool:
        """Every run finished, none diverged, and every one's final val_accuracy reached the bar."""
        return 0 < self.finished == self.runs and self.diverged == 0 and self.lowest >= self.bar


def grid_axes(report: SweepReport) -> tuple[str, str, list[str]] | None:
    """(row key, column key, facet keys) when the sweep is a grid of two numeric keys (times categorical ones).

    A learning-rate key (`...lr`, `...learning_rate`) goes on the columns, so that a row reads from small to
    large LR; None when there are not exactly two numeric swept keys.
    """
    numeric = [k for k in report.swept if _numeric(c.values[k] for c in report.configurations) is not None]
    if len(numeric) != 2:
        return None
    rows, cols = numeric
    if LR_KEY.search(rows) and not LR_KEY.search(cols):
        rows, cols = cols, rows
    return rows, cols, [k for k in report.swept if k not in numeric]


def grid_cells(
    report: SweepReport, row_key: str, col_key: str, facet: dict[str, str]
) -> tuple[list[str], list[str], list[list[Cell | None]]]:
    """Row values, column values (numerically sorted) and the cells of one facet (None: not in the sweep), each with
    the report's `trains_bar`."""

    def ordered(key: str) -> list[str]:
        return sorted({c.values[key] for c in report.configurations}, key=lambda v: float(v))

    row_values, col_values = ordered(row_key), ordered(col_key)
    bar = trains_bar(report)
    grid: list[list[Cell | None]] = [[None] * len(col_values) for _ in row_values]
    for config in report.configurations:
        if any(config.values[k] != v for k, v in facet.items()):
            continue
        mean, _, _ = config.stat(RANK_METRIC)
        failed = sum(r.status != "FINISHED" and not r.diverged for r in config.runs)
        finals = [r.final.get(RANK_METRIC, math.nan) for r in config.finished]
        lowest = math.nan if not finals or any(map(math.isnan, finals)) else min(finals)
        cell = Cell(mean, len(config.runs), len(config.finished), config.diverged, failed, lowest, bar)
        grid[row_values.index(config.values[row_key])][col_values.index(config.values[col_key])] = cell
    return row_values, col_values, grid


def largest_training_column(row: Sequence[Cell | None]) -> int | None:
    """The index of the largest column value whose cell trains (`Cell.trains`), or None."""
    trained = [j for j, cell in enumerate(row) if cell is not None and cell.trains]
    return max(trained) if trained else None


def best_cell_mean(report: SweepReport) -> float:
    """The best configuration's mean final val_accuracy (a cell is one configuration of the grid), nan without any."""
    means = [c.stat(RANK_METRIC)[0] for c in report.configurations]
    return max((m for m in means if math.isfinite(m)), default=math.nan)


def trains_bar(report: SweepReport) -> float:
    """The final val_accuracy each run of a cell must reach for the cell to train: halfway from chance
    (CHANCE_ACCURACY) to the best cell's mean; chance when nothing finished."""
    best = best_cell_mean(report)
    return CHANCE_ACCURACY + max(best - CHANCE_ACCURACY, 0.0) / 2 if math.isfinite(best) else CHANCE_ACCURACY


def boundary_definition(report: SweepReport) -> str:
    """The heatmap's boundary in words, with the numbers a reader can check it by."""
    best = best_cell_mean(report)
    halfway = f"halfway from chance {CHANCE_ACCURACY:.2f} to the best cell's {best:.3f}"
    if not math.isfinite(best):
        halfway = "chance: no run finished"
    return (
        f"largest target LR at which every seed finished, none diverged and each reached final {RANK_METRIC} >= "
        f"{trains_bar(report):.3f} ({halfway})"
    )


def recorded(runs: Iterable[JobRun], key: str) -> list[str]:
    """The values of a param over `runs`, as recorded, each once, numerically sorted when numeric."""
    values = list(dict.fromkeys(r.params[key] for r in runs if key in r.params))
    try:
        return sorted(values, key=float)
    except ValueError:
        return values
