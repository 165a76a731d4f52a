"""Sweep reports: a 2x2 grid x 2 seeds run for real, then the parent run, files, table and figures checked."""

from __future__ import annotations

import csv
import os
import statistics
import subprocess
import sys

import pytest

from lrsweep import tracking
from lrsweep.analysis import figures, heatmap, report
from tests.conftest import ROOT, TINY, train


@pytest.fixture(scope="module")
def grid_sweep(grid_sweep):
    """`schedule.initial_lr` x `schedule.final_lr` x 2 seeds: 8 jobs, 4 configurations (conftest's, shared)."""
    tmp_path, result = grid_sweep
    client, experiment_id = tracking.connect(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}", "lrsweep")
    return tmp_path, result, client, experiment_id


def test_jobs_nest_under_one_finished_sweep_run(grid_sweep):
    tmp_path, _, client, experiment_id = grid_sweep
    runs = client.search_runs([experiment_id])
    parents = [r for r in runs if r.data.tags.get(tracking.TAG_ROLE) == "sweep"]
    jobs = [r for r in runs if r.data.tags.get(tracking.TAG_ROLE) == "job"]
    assert len(parents) == 1 and len(jobs) == 8
    (parent,) = parents
    assert parent.info.status == "FINISHED" and parent.info.run_name == "sweep-multirun"
    assert {r.data.tags[tracking.TAG_PARENT] for r in jobs} == {parent.info.run_id}
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert artifacts == {
        f"report/{n}"
        for n in (
            "summary.csv", "summary.md", "runs.csv", "lr.png", "curves.png", "seeds.png", "heatmap.png", "report.html"
        )
    }  # fmt: skip
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "dataset")] == ["dataset/samples.png"]


def test_summary_has_one_row_per_configuration_with_mean_std_n(grid_sweep):
    tmp_path, result, client, experiment_id = grid_sweep
    with open(tmp_path / "multirun" / "report" / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    assert {(r["initial_lr"], r["final_lr"]) for r in rows} == {
        (i, f) for i in ("0.001", "0.005") for f in ("0.01", "0.02")
    }
    assert all(r["n"] == "2" and r["failed"] == "0" for r in rows)
    means = [float(r["val_accuracy_mean"]) for r in rows]
    assert means == sorted(means, reverse=True)  # ranked
    # Recompute one row independently from the runs' final metrics.
    jobs = [r for r in client.search_runs([experiment_id]) if r.data.tags.get(tracking.TAG_ROLE) == "job"]
    best = rows[0]
    finals = [
        r.data.metrics["val_accuracy"]
        for r in jobs
        if (r.data.params["schedule.initial_lr"], r.data.params["schedule.final_lr"])
        == (best["initial_lr"], best["final_lr"])
    ]
    assert float(best["val_accuracy_mean"]) == pytest.approx(statistics.fmean(finals))
    assert float(best["val_accuracy_std"]) == pytest.approx(statistics.stdev(finals))
    # The same table ends the command's output and is saved as Markdown.
    assert "Sweep multirun: 8 runs in 4 configurations" in result.stdout
    markdown = (tmp_path / "multirun" / "report" / "summary.md").read_text()
    assert markdown.count("\n| ") == 5 and "val_accuracy (mean ± std)" in markdown


def test_figures_have_one_line_per_configuration_and_a_four_cell_heatmap(grid_sweep):
    _, _, client, experiment_id = grid_sweep
    built = report.build(tracking.load_sweep(client, experiment_id, "multirun"))
    labels = {c.label for c in built.configurations}
    assert "initial_lr=0.001, final_lr=0.01" in labels and len(labels) == 4

    lr_figure = figures.plot_lr(built)
    lr_axes = lr_figure.axes[0]
    assert len(lr_axes.get_lines()) == 4
    assert {t.get_text() for t in lr_axes.get_legend().get_texts()} == labels
    assert lr_axes.get_xlabel().startswith("epoch") and lr_axes.get_ylabel() == "learning rate"
    # Each line holds the schedule's per-epoch LR: initial_lr at epoch 0, then an increment per epoch.
    line = next(ln for ln in lr_axes.get_lines() if ln.get_label() == "initial_lr=0.001, final_lr=0.02")
    assert list(line.get_xdata()) == [0, 1, 2, 3, 4]
    assert list(line.get_ydata()) == pytest.approx([0.001 + k * 0.019 / 4 for k in range(5)], rel=1e-6)

    curves = figures.plot_curves(built)
    assert len(curves.axes) == 8  # each metric whole, then zoomed on the leading configurations
    for ax in curves.axes:
        assert len(ax.get_lines()) == 4 and len(ax.collections) == 4  # a band across the 2 seeds per line

    figure = heatmap.plot_heatmap(built)
    (ax, _colorbar) = figure.axes
    assert ax.images[0].get_array().shape == (2, 2)
    cells = [t.get_text() for t in ax.texts]
    assert len(cells) == 4
    expected = {f"{c.stat('val_accuracy')[0]:.3f}" for c in built.configurations}
    assert set(cells) == expected
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("target LR (schedule.final_lr)", "schedule.initial_lr")


def test_report_rebuilds_from_mlflow_alone(grid_sweep, tmp_path):
    sweep_path, _, _, _ = grid_sweep
    out = tmp_path / "again"
    result = subprocess.run(
        [sys.executable, "-m", "lrsweep.report", "--tracking-uri", f"sqlite:///{sweep_path / 'mlruns' / 'mlflow.db'}",
         "--experiment", "lrsweep", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    assert "Sweep multirun: 8 runs, 4 configurations" in result.stdout  # the latest sweep by default
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["summary.csv", "summary.md", "runs.csv", "lr.png", "curves.png", "seeds.png", "heatmap.png", "report.html"]
    )
    original = (sweep_path / "multirun" / "report" / "summary.csv").read_text()
    assert (out / "summary.csv").read_text() == original


@pytest.mark.parametrize("command", ["lrsweep.report", "lrsweep.range_test"])
def test_the_command_lines_where_there_is_no_store_create_nothing_and_say_so_in_one_line(tmp_path, command):
    result = subprocess.run(
        [sys.executable, "-m", command], cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert result.returncode == 1
    db = tmp_path / "mlruns" / "mlflow.db"  # the default --tracking-uri, relative to the working directory
    assert result.stderr.strip().splitlines() == [
        f"No MLflow store at {db}: nothing to read (--tracking-uri names the store)."
    ]
    assert list(tmp_path.iterdir()) == []  # no empty mlruns/mlflow.db left behind


def test_a_failed_job_still_completes_the_sweep_run_and_report(tmp_path):
    # Hydra 1.3 skips on_multirun_end when a job raised; the sweep is closed at exit instead. The basic launcher
    # runs the jobs one at a time: the first diverges (FAILED), the second trains.
    result = train(
        tmp_path, "hydra/launcher=basic", "optimizer=sgd", "optimizer.learning_rate=1e9,0.01", "training.epochs=2",
        "backend=jax", *TINY, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    failed = "not finished: s0 · learning_rate=1000000000.0 · sgd-constant (FAILED)"
    assert failed in result.stdout, result.stdout[-3000:]
    client, experiment_id = tracking.connect(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}", "lrsweep")
    parent = tracking.find_sweep_run(client, experiment_id, "multirun")
    assert parent.info.status == "FAILED"
    assert (tmp_path / "multirun" / "report" / "summary.csv").is_file()
    assert {r.info.status for r in client.search_runs([experiment_id])} == {"FAILED", "FINISHED"}


def test_swept_keys_ignore_the_seed_and_constant_overrides():
    runs = [
        report.JobRun("a", "a", "FINISHED", {"schedule.initial_lr": "0.1", "training.seed": "0", "x": "1"}, {}, {}),
        report.JobRun("b", "b", "FINISHED", {"schedule.initial_lr": "0.2", "training.seed": "1", "x": "1"}, {}, {}),
    ]
    assert report.swept_keys(runs) == ["schedule.initial_lr"]


def test_table_formats_mean_std_and_single_runs():
    assert report.short_number("0.00019460990342853233") == "0.0001946"
    assert (report.short_number("0.005"), report.short_number("adam_constant_long")) == (
        "0.005",
        "adam_constant_long",
    )
    assert report._mean_std(0.85, float("nan")) == "0.8500"
    assert report._mean_std(0.85, 0.01234) == "0.8500 ± 0.0123"
    text = report.format_table(["a", "b"], [["x", 1.0]])
    assert text.splitlines() == ["a  b", "-  ------", "x  1.0000"]
