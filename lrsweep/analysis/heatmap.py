"""The grid figure of a sweep's report: mean final val_accuracy over two numeric swept keys, which is the warm-up
phase diagram when the grid is target LR x warm-up length, with its boundary and what the boundary means."""

from __future__ import annotations

import math
import textwrap

from lrsweep.analysis.figures import optimizer_name, pyplot
from lrsweep.analysis.grid import (
    CHANCE_ACCURACY,
    LR_KEY,
    boundary_definition,
    grid_axes,
    grid_cells,
    largest_training_column,
    recorded,
)
from lrsweep.analysis.report import (
    RANK_METRIC,
    SweepReport,
    plural,
    short_key,
    short_number,
)

WARMUP_UNITS = {"epoch": "epochs", "step": "optimizer steps", "fraction": "fraction of all training steps"}


def grid_label(report: SweepReport, key: str, column: bool = False) -> str:
    """A heatmap axis in words: an LR on the columns is the target LR ("target LR (optimizer.learning_rate)"); a
    warm-up length gives its unit ("warm-up length (epochs)", the key below); any other key as it is."""
    if column and LR_KEY.search(key):
        return f"target LR ({key})"
    if key.endswith("warmup_epochs"):  # the tutorial's linear warm-up: a count of epochs
        return f"warm-up length (epochs)\n{key}"
    if key.endswith("warmup.length"):
        units = [WARMUP_UNITS.get(u, u) for u in recorded(report.runs, f"{key}_unit")]
        return f"warm-up length ({' / '.join(units) or 'unit not recorded'})\n{key}"
    return key


def heatmap_title(report: SweepReport, row_key: str, col_key: str) -> str:
    """What the heatmap shows, on two lines: a phase diagram when target LR x warm-up length, the model, the
    optimizer(s) and the epochs the runs trained; then the metric and the set it was measured on."""
    phase = LR_KEY.search(col_key) and ("warmup" in row_key)
    optimizers = " / ".join(dict.fromkeys(sorted(filter(None, map(optimizer_name, report.runs)))))
    epochs = recorded(report.runs, "training.epochs")
    trained = plural(int(epochs[0]), "epoch") if len(epochs) == 1 else f"{' / '.join(epochs) or '?'} epochs"
    head = "Warm-up phase diagram" if phase else "Grid"
    model = " / ".join(recorded(report.runs, "choice.model"))  # the model option (`model=cnn`), when the runs name one
    return (
        f"{head}: {f'{model}, ' if model else ''}{optimizers or 'optimizer not recorded'}, {trained}\n"
        f"final {RANK_METRIC}, mean over seeds ({report.validation})"
    )


def plot_heatmap(report: SweepReport):
    """Mean final val_accuracy over a grid of two numeric swept keys, one panel per value of any other swept key.

    Cells where a run diverged (its loss not finite or above `training.divergence_factor` x its start, or no
    better than chance) are hatched and say how many of their runs did; cells with no finished run are grey; a
    cell whose every run finished without diverging but with a seed below `trains_bar` gives that seed's value.
    When the columns are a learning rate, a red line marks, per row, the largest LR whose cell trains
    (`boundary_definition`, stated in the legend): with rows = warm-up length, the warm-up phase diagram.
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
    width, height = 1.25 * len(col_values) + 3, 0.8 * len(row_values) + 2.6
    fig_width = max(width * len(facets) + 1, 7.0)
    fig, axes = plt.subplots(1, len(facets), figsize=(fig_width, height), squeeze=False, layout="constrained")
    is_lr = bool(LR_KEY.search(col_key))
    # From chance (a uniform guess over the 10 classes) to the best cell, so that the trained cells differ.
    finished_means = [c.stat(RANK_METRIC)[0] for c in report.configurations if c.finished]
    top = max((m for m in finished_means if math.isfinite(m)), default=1.0)
    low = min(CHANCE_ACCURACY, top - 0.01)
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
                if cell.finished == cell.runs and not cell.diverged and cell.lowest < cell.bar:
                    text += f"\nseed {cell.lowest:.3f} < bar"
                ax.text(j, i, text, ha="center", va="center", color=colour, fontsize="small")
        if is_lr:
            boundary = [largest_training_column(row) for row in grid]
            xs, ys = [], []
            for i, j in enumerate(boundary):
                x = (j if j is not None else -1) + 0.5
                xs += [x, x]
                ys += [i - 0.5, i + 0.5]
            label = textwrap.fill(f"red line: {boundary_definition(report)}", max(50, int(11 * fig_width)))
            ax.plot(xs, ys, color="red", lw=2.5, label=label)
        ax.set_xticks(range(len(col_values)), [short_number(v) for v in col_values])
        ax.set_yticks(range(len(row_values)), [short_number(v) for v in row_values])
        title = ", ".join(f"{short_key(k, report.swept)}={v}" for k, v in facet.items())
        ax.set(xlabel=grid_label(report, col_key, column=True), ylabel=grid_label(report, row_key), title=title or None)
    handles = [Patch(facecolor="white", edgecolor="red", hatch="///", label="diverged in ✗ k/n runs")]
    if is_lr:
        handles.append(axes[0][0].get_lines()[0])
    fig.legend(handles=handles, loc="outside lower center", ncol=1, fontsize="small")
    fig.colorbar(image, ax=list(axes[0]), label=f"final {RANK_METRIC} (mean over seeds)")
    title = heatmap_title(report, row_key, col_key)
    fig.suptitle(f"{title}\ndiverged: loss blew up, or no better than chance; grey: no run finished")
    return fig


# seeds.png shows a configuration's verdict by its markers' fill (colour and shape are the configuration's own).
