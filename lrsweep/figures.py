"""The figures of a sweep's report (`lrsweep.report.SweepReport`) and of its dataset, as matplotlib figures."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence

from lrsweep import stats
from lrsweep.report import (
    LR_KEY,
    RANK_METRIC,
    SEEDS_SHOWN,
    SweepReport,
    _short_number,
    grid_axes,
    grid_cells,
    largest_training_column,
    short_key,
)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _epoch_axis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch (0-based, as logged)")


def _log_if_spans_decades(ax, values: Iterable[float]) -> None:
    positive = [v for v in values if v > 0 and math.isfinite(v)]
    if positive and max(positive) / min(positive) >= 10:
        ax.set_yscale("log")


def plot_lr(report: SweepReport):
    """The schedule's LR of every configuration per epoch; beside it, the effective per-parameter step size."""
    plt = pyplot()
    effective = [c for c in report.configurations if c.curve("effective_lr/p50")[0]]
    fig, axes = plt.subplots(1, 2 if effective else 1, figsize=(13 if effective else 7, 4.5), squeeze=False)
    ax = axes[0][0]
    seen = []
    for i, config in enumerate(report.configurations):
        steps, lrs, _ = config.curve("lr")
        if steps:
            # Schedules often coincide (two optimizers at the same constant LR): vary the dashes so none hides.
            ax.plot(steps, lrs, marker="o", linestyle=("-", "--", "-.", ":")[i % 4], label=config.label)
            seen += lrs
    _log_if_spans_decades(ax, seen)
    ax.set(title="Learning rate set by the schedule", ylabel="learning rate")
    _epoch_axis(ax)
    ax.legend(fontsize="small")
    if effective:
        ax = axes[0][1]
        for config in effective:
            steps, p50, _ = config.curve("effective_lr/p50")
            (line,) = ax.plot(steps, p50, marker="o", label=config.label)
            _, p10, _ = config.curve("effective_lr/p10")
            _, p90, _ = config.curve("effective_lr/p90")
            if len(p10) == len(p90) == len(steps):
                ax.fill_between(steps, p10, p90, color=line.get_color(), alpha=0.2)
        ax.set_yscale("log")
        ax.set(title="Effective per-parameter step size (median, band p10-p90)", ylabel="effective learning rate")
        _epoch_axis(ax)
        ax.legend(fontsize="small")
    fig.suptitle(f"Sweep {report.sweep_id}" if report.sweep_id else "Learning rates")
    fig.tight_layout()
    return fig


def plot_curves(report: SweepReport):
    """Train and validation loss and accuracy per epoch: one line per configuration, a band of ±1 std over seeds."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=True)
    titles = {
        "loss": "Training loss",
        "val_loss": "Validation loss",
        "accuracy": "Training accuracy",
        "val_accuracy": "Validation accuracy",
    }
    for ax, metric in zip(axes.flat, ("loss", "val_loss", "accuracy", "val_accuracy"), strict=True):
        for config in report.configurations:
            steps, means, stds = config.curve(metric)
            if not steps:
                continue
            n = len(config.finished)
            (line,) = ax.plot(steps, means, marker="o", label=f"{config.label} (n={n})")
            if n > 1:
                lows = [m - s for m, s in zip(means, stds, strict=True)]
                highs = [m + s for m, s in zip(means, stds, strict=True)]
                ax.fill_between(steps, lows, highs, color=line.get_color(), alpha=0.2)
        unit = "cross-entropy" if "loss" in metric else "fraction correct"
        ax.set(title=titles[metric], ylabel=f"{metric} ({unit})")
        _epoch_axis(ax)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, max(1, len(labels))), fontsize="small")
    fig.suptitle(("Sweep " + report.sweep_id if report.sweep_id else "Training curves") + ": mean ± std over seeds")
    fig.tight_layout(rect=(0, 0.06 + 0.025 * math.ceil(len(labels) / 4), 1, 1))
    return fig


def plot_heatmap(report: SweepReport):
    """Mean final val_accuracy over a grid of two numeric swept keys, one panel per value of any other swept key.

    Cells where a run diverged (NaN/inf loss, or no better than chance) are hatched and say how many of their runs
    did; cells with no finished run are grey. When the columns are a learning rate, a red line marks, per row,
    the largest LR at which every run trained: with rows = warm-up length, the warm-up phase diagram.
    Returns None when the sweep is not such a grid.
    """
    axes_keys = grid_axes(report)
    if axes_keys is None:
        return None
    row_key, col_key, facet_keys = axes_keys
    facets = list(dict.fromkeys(tuple(c.values[k] for k in facet_keys) for c in report.configurations))
    plt = pyplot()
    from matplotlib.patches import Patch, Rectangle

    row_values, col_values, _ = grid_cells(report, row_key, col_key, {})
    width, height = 1.25 * len(col_values) + 3, 0.8 * len(row_values) + 2.2
    fig, axes = plt.subplots(
        1, len(facets), figsize=(width * len(facets) + 1, height), squeeze=False, layout="constrained"
    )
    is_lr = bool(LR_KEY.search(col_key))
    # From chance (a uniform guess over the 10 classes) to the best cell, so that the trained cells differ.
    finished_means = [c.stat(RANK_METRIC)[0] for c in report.configurations if c.finished]
    top = max((m for m in finished_means if math.isfinite(m)), default=1.0)
    low = min(0.1, top - 0.01)
    for ax, facet_values in zip(axes[0], facets, strict=True):
        facet = dict(zip(facet_keys, facet_values, strict=True))
        _, _, grid = grid_cells(report, row_key, col_key, facet)
        means = [[cell.mean if cell is not None else math.nan for cell in row] for row in grid]
        image = ax.imshow(means, cmap="viridis", aspect="auto", vmin=low, vmax=top)
        for i, row in enumerate(grid):
            for j, cell in enumerate(row):
                if cell is None:
                    continue
                if cell.finished == 0:  # no value to colour by
                    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, color="0.6"))
                    text, colour = "-", "black"
                else:
                    red, green, blue, _ = image.cmap(image.norm(cell.mean))
                    colour = "white" if 0.299 * red + 0.587 * green + 0.114 * blue < 0.5 else "black"
                    text = f"{cell.mean:.3f}"
                if cell.diverged:
                    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="red", lw=0))
                    text += f"\n✗ {cell.diverged}/{cell.runs}"
                if cell.failed:
                    text += f"\nfailed {cell.failed}/{cell.runs}"
                ax.text(j, i, text, ha="center", va="center", color=colour, fontsize="small")
        if is_lr:
            boundary = [largest_training_column(row) for row in grid]
            xs, ys = [], []
            for i, j in enumerate(boundary):
                x = (j if j is not None else -1) + 0.5
                xs += [x, x]
                ys += [i - 0.5, i + 0.5]
            ax.plot(xs, ys, color="red", lw=2.5, label="largest LR at which every seed trains")
        ax.set_xticks(range(len(col_values)), [_short_number(v) for v in col_values])
        ax.set_yticks(range(len(row_values)), [_short_number(v) for v in row_values])
        title = ", ".join(f"{short_key(k, report.swept)}={v}" for k, v in facet.items())
        ax.set(xlabel=col_key, ylabel=row_key, title=title or None)
    handles = [Patch(facecolor="white", edgecolor="red", hatch="///", label="diverged in ✗ k/n runs")]
    if is_lr:
        handles.append(axes[0][0].get_lines()[0])
    fig.legend(handles=handles, loc="outside lower center", ncol=2, fontsize="small")
    fig.colorbar(image, ax=list(axes[0]), label=f"final {RANK_METRIC} (mean over seeds)")
    fig.suptitle(
        f"Final {RANK_METRIC} (mean over seeds, {report.validation})\ndiverged: NaN/inf loss, or no better than chance"
    )
    return fig


def plot_seeds(report: SweepReport):
    """Each seed's final val_accuracy as a dot per configuration, the mean with its 95% CI, the verdict as colour.

    Returns None when no configuration has a finished run.
    """
    configs = [c for c in report.configurations if c.samples()]
    if not configs:
        return None
    shown = configs[:SEEDS_SHOWN]  # the leading ones: a phase diagram has dozens
    plt = pyplot()
    colours = {
        stats.BEST: "tab:green",
        stats.TIED: "tab:blue",
        stats.WORSE_UNCORRECTED: "tab:orange",
        stats.WORSE: "tab:red",
    }
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(shown) + 3), 4.8))
    for x, config in enumerate(shown):
        samples = config.samples()
        verdict = report.comparisons[config.label].verdict if config.label in report.comparisons else stats.NO_TEST
        colour = colours.get(verdict, "0.4")
        values = list(samples.values())
        offsets = [0.08 * (k - (len(values) - 1) / 2) for k in range(len(values))]
        ax.scatter([x + o for o in offsets], values, color=colour, alpha=0.6, s=22, zorder=3)
        mean = statistics.fmean(values)
        low, high = stats.mean_interval(values)
        if math.isnan(low):
            ax.plot([x - 0.25, x + 0.25], [mean, mean], color=colour, lw=2)
        else:
            ax.errorbar(x + 0.3, mean, yerr=[[mean - low], [high - mean]], fmt="D", color=colour, capsize=4, zorder=4)
    ax.set_xticks(range(len(shown)), [c.label for c in shown], rotation=30 if len(shown) > 3 else 0, ha="right")
    ax.set(ylabel=f"final {RANK_METRIC} ({report.validation})")
    ax.grid(axis="y", alpha=0.3)
    from matplotlib.lines import Line2D

    legend = [Line2D([], [], marker="o", ls="", color="0.4", alpha=0.6, label="one seed")]
    legend.append(Line2D([], [], marker="D", color="0.4", label="mean, 95% CI"))
    legend += [Line2D([], [], marker="s", ls="", color=c, label=v) for v, c in colours.items()]
    ax.legend(handles=legend, fontsize="small", loc="best")
    title = f"Sweep {report.sweep_id}: final {RANK_METRIC} per seed" if report.sweep_id else f"Final {RANK_METRIC}"
    ax.set_title(title + (f" (the best {len(shown)} of {len(configs)} configurations)" if shown != configs else ""))
    fig.tight_layout()
    return fig


def plot_samples(x, y, class_names: Sequence[str]):
    """The tutorial's first four training images with their class names."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(6, 6))
    for i, ax in enumerate(axes.flat):
        ax.imshow(x[i], cmap=plt.cm.binary)
        ax.set(xticks=[], yticks=[])
        ax.set_xlabel(class_names[int(y[i])])
    fig.suptitle("Fashion-MNIST: first four training images")
    fig.tight_layout()
    return fig
