"""The report's figures read back: one colour per configuration across figures, the validation set named, the
ranking's epoch stated, readable LR ticks, a phase diagram that says what it is and how its boundary is drawn.
From the shared real sweeps (tutorial, grid); reports made by hand from JobRuns where a case needs given numbers."""

from __future__ import annotations

import dataclasses

import pytest

from lrsweep import tracking
from lrsweep.analysis import figures, heatmap, report, rungs
from lrsweep.analysis import grid as sweep_grid
from lrsweep.core import stats
from lrsweep.ml.data import VALIDATION_IS_TEST


def _built(sweep) -> report.SweepReport:
    tmp_path, _ = sweep
    client, experiment_id = tracking.connect(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}", "lrsweep")
    return report.build(tracking.load_sweep(client, experiment_id, "multirun"))


@pytest.fixture(scope="module")
def tutorial(tutorial_sweep) -> report.SweepReport:
    """The tutorial's four strategies x 2 seeds, 2 epochs, validated on 64 held-out examples (conftest's, shared)."""
    return _built(tutorial_sweep)


@pytest.fixture(scope="module")
def grid(grid_sweep) -> report.SweepReport:
    """`schedule.initial_lr` x `schedule.final_lr` x 2 seeds, 5 epochs, Adam (conftest's, shared)."""
    return _built(grid_sweep)


def _ranked(configs: list[report.Configuration], swept: list[str]) -> report.SweepReport:
    """A report of these configurations as `report.build` ranks them: by mean final val_accuracy, best first."""
    configs = sorted(configs, key=lambda c: -c.stat(report.RANK_METRIC)[0])
    comparisons = stats.compare_to_best({c.label: c.samples() for c in configs})
    return report.SweepReport(None, [r for c in configs for r in c.runs], swept, configs, comparisons)


def _halved(built: report.SweepReport) -> report.SweepReport:
    """The report as successive halving would have left it: the last two configurations stopped after epoch 1."""
    kept, stopped = built.configurations[:2], []
    for config in built.configurations[2:]:
        runs = [
            dataclasses.replace(
                run,
                tags={**run.tags, tracking.TAG_STOPPED_EPOCH: "1"},
                history={metric: values[:1] for metric, values in run.history.items()},
            )
            for run in config.runs
        ]
        stopped.append(dataclasses.replace(config, runs=runs))
    halved = _ranked(kept, built.swept)
    return dataclasses.replace(halved, runs=[r for c in (*kept, *stopped) for r in c.runs], stopped=stopped)


def _lines(ax, suffix: str = "") -> dict[str, tuple[str, str]]:
    """{label without `suffix`: (colour, marker)} of an axes' labelled lines."""
    return {
        line.get_label().removesuffix(suffix): (line.get_color(), line.get_marker())
        for line in ax.get_lines()
        if not line.get_label().startswith("_")
    }


def test_a_configuration_has_one_colour_and_marker_in_every_figure(tutorial):
    style = figures.styles(tutorial)
    expected = {c.label: (style[c.label]["color"], style[c.label]["marker"]) for c in tutorial.configurations}
    assert len(set(expected.values())) == len(expected) == 4  # one of its own each
    lr = figures.plot_lr(tutorial)
    assert _lines(lr.axes[0]) == expected
    for panel in lr.axes[1:]:  # the effective-LR panels: each optimizer's configurations, as at left
        drawn = _lines(panel)
        assert drawn and drawn == {label: expected[label] for label in drawn}
    curves = figures.plot_curves(tutorial)
    for ax in curves.axes:
        assert _lines(ax, " (n=2)") == expected
    seeds = figures.plot_seeds(tutorial)
    (ax,) = seeds.axes
    assert _lines(ax, " (seeds)") == expected  # each seed, and the mean, in the configuration's colour and marker
    # Successive halving: the stopped configurations keep their colour, dotted and ending in a cross.
    halved = _halved(tutorial)
    assert figures.styles(halved) == style  # ranked, then stopped: the same order as here
    drawn = rungs.plot_rungs(halved)
    lines = {line.get_label(): line for line in drawn.axes[0].get_lines()}
    for config in halved.configurations:
        assert (lines[config.label].get_color(), lines[config.label].get_marker()) == expected[config.label]
    for config in halved.stopped:
        line = lines[f"{config.label} (stopped after epoch 1)"]
        assert line.get_color() == expected[config.label][0] and line.get_linestyle() == ":"
        assert line.get_marker() == "x" and len(line.get_xdata()) == 1
    legend = [t.get_text() for t in drawn.axes[0].get_legend().get_texts()]
    assert legend[-1] == "dotted, x: stopped (2 configurations)"


def test_seeds_show_the_verdict_by_fill_and_name_and_list_only_verdicts_present(tutorial):
    figure = figures.plot_seeds(tutorial)
    (ax,) = figure.axes
    means = {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    verdicts = {c.label: tutorial.comparisons[c.label].verdict for c in tutorial.configurations}
    tied = sum(v == stats.TIED for v in verdicts.values())
    lead = f"{stats.BEST} (tied with {tied})" if tied else stats.BEST  # as the table says it
    assert ticks == [f"{label}\n{lead if verdict == stats.BEST else verdict}" for label, verdict in verdicts.items()]
    for label, verdict in verdicts.items():
        fill = figures.VERDICT_FILL[verdict]
        assert means[label].get_fillstyle() == means[f"{label} (seeds)"].get_fillstyle() == fill
    present: dict[str, list[str]] = {}
    for verdict in dict.fromkeys(verdicts.values()):
        present.setdefault(figures.VERDICT_FILL[verdict], []).append(verdict)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[:2] == ["one seed", "mean, 95% CI"]
    assert sorted(legend[2:]) == sorted(f"{figures.FILL_NAMES[f]}: {', '.join(v)}" for f, v in present.items())
    assert stats.BEST in legend[2] and stats.BEST in ticks[0]


def test_validation_panels_name_the_set_they_were_measured_on(tutorial, grid):
    for built in (tutorial, grid):  # conftest's sweeps hold 64 training examples out for validation
        assert built.validation.startswith("held-out")
        titles = [ax.get_title() for ax in figures.plot_curves(built).axes]
        assert titles[:4] == ["Training loss", "Validation loss (held-out)", "Training accuracy",
                              "Validation accuracy (held-out)"]  # fmt: skip
        assert titles[5] == "Validation loss (held-out): zoom"
    # The tutorial's way, data.validation_size=null: its runs are tagged as validated on the test set.
    on_test = dataclasses.replace(
        tutorial, runs=[dataclasses.replace(r, tags={**r.tags, tracking.TAG_VALIDATION: VALIDATION_IS_TEST})
                        for r in tutorial.runs]
    )  # fmt: skip
    titles = [ax.get_title() for ax in figures.plot_curves(on_test).axes]
    assert titles[1] == "Validation loss (test set)" and titles[7] == "Validation accuracy (test set): zoom"
    assert titles[0] == "Training loss"


def test_curves_say_the_ranking_uses_the_last_epoch_and_when_the_leaders_crossed(tutorial):
    suptitle = figures.plot_curves(tutorial).get_suptitle()
    assert "The ranking uses the last epoch only: mean val_accuracy at epoch 2" in suptitle  # 2 epochs, 1-based
    best, second = tutorial.configurations[:2]
    (_, b1), (_, s1) = (c.curve("val_accuracy")[1] for c in (best, second))
    crossed = f"{second.label} led {best.label} at epoch 1"
    assert (crossed in suptitle) == (s1 > b1)

    # Given numbers: the warm-up ahead at epochs 1-4 and behind at 5, the last, which alone ranks.
    def config(name, accuracies):
        history = {"val_accuracy": list(enumerate(accuracies))}
        runs = [report.JobRun(name, name, "FINISHED", {}, {}, {"val_accuracy": accuracies[-1]}, history)]
        return report.Configuration({"strategy": name}, runs, f"strategy={name}")

    built = _ranked([config("linear", [0.6, 0.7, 0.8, 0.82, 0.84]), config("constant", [0.5, 0.6, 0.7, 0.8, 0.85])],
                    ["strategy"])  # fmt: skip
    assert figures.ranking_note(built) == (
        "The ranking uses the last epoch only: mean val_accuracy at epoch 5; "
        "strategy=linear led strategy=constant at epochs 1-4"
    )
    assert figures._spans([1, 2, 3, 5]) == "epochs 1-3, 5" and figures._spans([2]) == "epoch 2"
    ax = figures.plot_curves(built).axes[-1]  # the bottom row: the top one shares its x axis unlabelled
    ax.figure.canvas.draw()
    low, high = ax.get_xlim()
    shown = {t.get_position()[0]: t.get_text() for t in ax.get_xticklabels() if low <= t.get_position()[0] <= high}
    assert shown == {0: "1", 1: "2", 2: "3", 3: "4", 4: "5"}  # MLflow's steps 0-4 read as epochs 1-5


def _visible_labels(ax) -> list[tuple[float, str]]:
    low, high = ax.get_ylim()
    ticks = [*ax.yaxis.get_major_ticks(), *ax.yaxis.get_minor_ticks()]
    return [
        (tick.get_loc(), tick.label1.get_text())
        for tick in ticks
        if tick.label1.get_visible() and tick.label1.get_text() and low <= tick.get_loc() <= high
    ]


def test_the_lr_axis_has_labels_to_read_a_value_off(tutorial):
    figure = figures.plot_lr(tutorial)
    ax = figure.axes[0]
    figure.canvas.draw()
    lrs = [y for line in ax.get_lines() for y in line.get_ydata()]
    assert min(lrs) == pytest.approx(0.001) and max(lrs) == pytest.approx(0.01)  # Adagrad/Adadelta to Adam
    assert ax.get_yscale() == "log"
    labels = _visible_labels(ax)
    assert [text for _, text in labels] == ["0.001", "0.002", "0.005", "0.01"]
    assert all(float(text) == pytest.approx(y) for y, text in labels)  # plain numbers where they stand


def _phase_report() -> report.SweepReport:
    """Target LR x warm-up length x 2 seeds, given finals: the best cell 0.85; at LR 0.01 without warm-up 0.30 with
    no divergence; at 0.1 without warm-up both runs diverge, with 1 epoch of warm-up one seed ends at 0.2."""
    finals = {
        ("0", "0.001"): [0.84, 0.86], ("0", "0.01"): [0.30, 0.30], ("0", "0.1"): [None, None],
        ("1", "0.001"): [0.83, 0.85], ("1", "0.01"): [0.80, 0.82], ("1", "0.1"): [0.50, 0.20],
    }  # fmt: skip
    configs = []
    for (length, lr), accuracies in finals.items():
        values = {"optimizer.learning_rate": lr, "schedule.warmup.length": length}
        params = {"choice.optimizer": "adam", "choice.model": "cnn", "training.epochs": "3",
                  "schedule.warmup.length_unit": "epoch"}  # fmt: skip
        runs = []
        for seed, accuracy in enumerate(accuracies):
            name = f"lr{lr}-w{length}-s{seed}"
            final = {"val_accuracy": 0.1, "loss": 5.0} if accuracy is None else {"val_accuracy": accuracy, "loss": 1.0}
            runs.append(report.JobRun(name, name, "FINISHED", values, {**params, "training.seed": str(seed)}, final))
        configs.append(report.Configuration(values, runs, f"learning_rate={lr}, length={length}"))
    return _ranked(configs, ["optimizer.learning_rate", "schedule.warmup.length"])


def test_a_cell_trains_only_when_every_seed_reaches_halfway_from_chance_to_the_best():
    built = _phase_report()
    assert sweep_grid.trains_bar(built) == pytest.approx(0.475)  # (0.10 + 0.85) / 2
    assert sweep_grid.boundary_definition(built) == (
        "largest target LR at which every seed finished, none diverged and each reached final val_accuracy >= 0.475 "
        "(halfway from chance 0.10 to the best cell's 0.850)"
    )
    rows, cols, facets = sweep_grid.grid_axes(built)
    assert (rows, cols, facets) == ("schedule.warmup.length", "optimizer.learning_rate", [])
    _, col_values, grid = sweep_grid.grid_cells(built, rows, cols, {})
    assert col_values == ["0.001", "0.01", "0.1"]
    low = grid[0][1]  # at 0.30, nothing diverged: not training all the same
    assert (low.diverged, low.finished, low.lowest, low.trains) == (0, 2, 0.30, False)
    assert grid[1][2].lowest == 0.20 and not grid[1][2].trains  # one seed short of the bar
    assert [[cell.trains for cell in row] for row in grid] == [[True, False, False], [True, True, False]]
    assert [sweep_grid.largest_training_column(row) for row in grid] == [0, 1]
    figure = heatmap.plot_heatmap(built)
    ax = figure.axes[0]
    assert ax.get_xlabel() == "target LR (optimizer.learning_rate)"
    assert ax.get_ylabel() == "warm-up length (epochs)\nschedule.warmup.length"
    assert figure.get_suptitle().startswith("Warm-up phase diagram: cnn, Adam, 3 epochs\nfinal val_accuracy, mean")
    (boundary,) = [line for line in ax.get_lines() if line.get_color() == "red"]
    assert list(boundary.get_xdata()) == [0.5, 0.5, 1.5, 1.5]  # after 0.001 without warm-up, after 0.01 with
    (legend,) = figure.legends
    texts = [t.get_text().replace("\n", " ") for t in legend.get_texts()]
    assert texts[-1] == f"red line: {sweep_grid.boundary_definition(built)}"
    cells = [t.get_text() for t in ax.texts]
    assert "0.300\nseed 0.300 < bar" in cells and "0.350\nseed 0.200 < bar" in cells


def test_the_grid_heatmap_names_its_axes_optimizer_epochs_and_boundary(grid):
    figure = heatmap.plot_heatmap(grid)
    ax = figure.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("target LR (schedule.final_lr)", "schedule.initial_lr")
    assert figure.get_suptitle().splitlines()[:2] == [
        "Grid: mlp, Adam, 5 epochs",
        f"final val_accuracy, mean over seeds ({grid.validation})",
    ]
    best = max(c.stat("val_accuracy")[0] for c in grid.configurations)
    assert sweep_grid.trains_bar(grid) == pytest.approx(0.1 + (best - 0.1) / 2)
    (legend,) = figure.legends
    texts = [t.get_text().replace("\n", " ") for t in legend.get_texts()]
    assert texts[-1] == f"red line: {sweep_grid.boundary_definition(grid)}" and f"{best:.3f})" in texts[-1]
    row_values, col_values, cells = sweep_grid.grid_cells(grid, "schedule.initial_lr", "schedule.final_lr", {})
    for config in grid.configurations:
        row, column = (
            row_values.index(config.values["schedule.initial_lr"]),
            col_values.index(config.values["schedule.final_lr"]),
        )
        lowest = min(r.final["val_accuracy"] for r in config.runs)
        assert cells[row][column].lowest == lowest
        assert cells[row][column].trains == (lowest >= sweep_grid.trains_bar(grid))
