"""The warm-up phase diagram: a real (small) sweep of target LR x warm-up length x seeds, read back."""

from __future__ import annotations

import csv

import pytest

from lrsweep import tracking
from lrsweep.analysis import grid as sweep_grid
from lrsweep.analysis import heatmap, report
from tests.conftest import TINY, train


@pytest.fixture(scope="module")
def phase_sweep(tmp_path_factory):
    """The preset with a 3 x 2 grid of its own values x 2 seeds: LR 0.003 trains, LR 10 and 100 diverge (Adam)."""
    tmp_path = tmp_path_factory.mktemp("phase")
    result = train(
        tmp_path, "+experiment=phase_diagram", "optimizer.learning_rate=0.003,10.0,100.0",
        "schedule.warmup.length=0,1", "training.seed=0,1", "training.epochs=2", "backend=jax",
        "tracking.effective_lr=false", *TINY, check=False,
    )  # fmt: skip
    # LR 10 and 100 without warm-up explode (training.divergence_factor): FAILED, so the sweep exits 1.
    assert result.returncode == 1, result.stderr[-3000:]
    client, experiment_id = tracking.connect(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}", "lrsweep")
    return tmp_path, result, report.build(tracking.load_sweep(client, experiment_id, "multirun"))


def test_large_learning_rates_diverge_and_small_ones_train(phase_sweep):
    tmp_path, _, built = phase_sweep
    assert len(built.runs) == 12 and built.swept == ["optimizer.learning_rate", "schedule.warmup.length"]
    assert {r.status for r in built.runs} <= {"FINISHED", "FAILED"}
    for run in built.runs:
        lr = float(run.overrides["optimizer.learning_rate"])
        assert run.diverged == (lr > 1), (run.name, run.status, run.final)
        if lr < 1:
            assert run.status == "FINISHED" and run.final["val_accuracy"] > 0.5
    with open(tmp_path / "multirun" / "report" / "summary.csv") as f:
        rows = {(r["learning_rate"], r["length"]): r for r in csv.DictReader(f)}
    assert {k: rows[k]["diverged"] for k in rows} == {
        (lr, length): ("0" if lr == "0.003" else "2") for lr in ("0.003", "10.0", "100.0") for length in ("0", "1")
    }
    with open(tmp_path / "multirun" / "report" / "runs.csv") as f:
        assert sum(r["diverged"] == "True" for r in csv.DictReader(f)) == 8


def test_the_diagram_marks_diverged_cells_and_the_boundary(phase_sweep):
    tmp_path, _, built = phase_sweep
    rows, cols, facets = sweep_grid.grid_axes(built)
    assert (rows, cols, facets) == ("schedule.warmup.length", "optimizer.learning_rate", [])  # LR on the x axis
    _, col_values, grid = sweep_grid.grid_cells(built, rows, cols, {})
    assert col_values == ["0.003", "10.0", "100.0"]
    assert [[cell.diverged for cell in row] for row in grid] == [[0, 2, 2], [0, 2, 2]]
    assert [sweep_grid.largest_training_column(row) for row in grid] == [0, 0]
    figure = heatmap.plot_heatmap(built)
    ax = figure.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert sum("✗ 2/2" in t for t in texts) == 4 and len(texts) == 6
    assert sum(p.get_hatch() == "///" for p in ax.patches) == 4
    (boundary,) = [line for line in ax.get_lines() if line.get_color() == "red"]
    assert set(boundary.get_xdata()) == {0.5}  # between LR 0.003 (trains) and 10 (diverges), in both rows
    assert (tmp_path / "multirun" / "report" / "heatmap.png").stat().st_size > 20_000
