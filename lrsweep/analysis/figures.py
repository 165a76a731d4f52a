"""The figures of a sweep's report (`lrsweep.analysis.report.SweepReport`) and of its dataset, as matplotlib figures."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence

from lrsweep import tracking
from lrsweep.analysis.report import (
    LR_KEY,
    RANK_METRIC,
    SEEDS_SHOWN,
    Configuration,
    JobRun,
    SweepReport,
    grid_axes,
    grid_cells,
    largest_training_column,
    plural,
    short_key,
    short_number,
)
from lrsweep.core import stats


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
    """A log axis when the positive values span a decade; symmetric log (linear below the smallest positive value)
    when some are 0, e.g. a warm-up from 0, so that those points stay on the figure."""
    values = [v for v in values if math.isfinite(v)]
    positive = [v for v in values if v > 0]
    if positive and max(positive) / min(positive) >= 10:
        if any(v <= 0 for v in values):
            ax.set_yscale("symlog", linthresh=min(positive))
        else:
            ax.set_yscale("log")


LINES_SHOWN = 10  # configurations drawn in lr.png and curves.png (the best ones): a phase diagram has 45
LEGEND_LINES = 4  # an effective-LR panel with more lines has no bands and no legend of its own
ZOOM_LEADING = 3  # configurations whose range sets the y-limits of curves.png's zoom row
# How each adaptive optimizer's effective per-parameter LR is defined (lrsweep.ml.effective_lr); SGD logs none.
EFFECTIVE_LR = {
    "Adagrad": "lr/sqrt(acc+eps)",
    "Adadelta": "lr*sqrt(E[dx²]+eps)/sqrt(E[g²]+eps)",
    "Adam": "lr*sqrt(1-β2^t)/(1-β1^t)/(sqrt(v)+eps), a step per unit of m",
    "RMSprop": "lr/sqrt(v+eps)",
}
EXCLUDED = "effective_lr/excluded_fraction"
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
_DASHES = ("-", "--", "-.", ":")


def optimizer_name(run: JobRun) -> str | None:
    """The optimizer family of a run (`Adam`, `Adagrad`, ...): from its params `choice.optimizer` (`adam`), else its
    tag `lrsweep.optimizer`, else its params `optimizer._target_` (`keras.optimizers.Adam`); the first that names
    a known family wins (a config group option may be called otherwise), else the first recorded."""
    recorded = [
        run.params.get("choice.optimizer"),
        run.tags.get(tracking.TAG_OPTIMIZER),
        run.params.get("optimizer._target_"),
    ]
    leaves = [value.rsplit(".", 1)[-1] for value in recorded if value]
    families = {name.lower(): name for name in (*EFFECTIVE_LR, "SGD")}
    return next((families[leaf.lower()] for leaf in leaves if leaf.lower() in families), leaves[0] if leaves else None)


def excluded_fraction(configs: Sequence[Configuration]) -> tuple[float, float, str] | None:
    """(lowest, highest, over what) share of parameters left out of the effective-LR quantiles in these runs' finished
    runs: over all epochs when the history was read, else the final epoch's value; None when none was logged."""
    runs = [r for c in configs for r in c.finished]
    values = [v for r in runs for _, v in r.history.get(EXCLUDED, [])]
    source = "all epochs"
    if not values:
        values, source = [r.final[EXCLUDED] for r in runs if EXCLUDED in r.final], "final epoch"
    values = [v for v in values if math.isfinite(v)]
    return (min(values), max(values), source) if values else None


def _percent_range(low: float, high: float) -> str:
    low_text, high_text = f"{100 * low:.0f}", f"{100 * high:.0f}"
    return f"{low_text}%" if low_text == high_text else f"{low_text}-{high_text}%"


def _style(i: int) -> dict:
    """Line i of the ranked configurations: its own colour, dashes and marker; later lines thinner with smaller
    markers, drawn on top, so that lines which coincide (the same schedule) all stay visible."""
    return {
        "color": f"C{i % 10}",
        "linestyle": _DASHES[i % len(_DASHES)],
        "marker": _MARKERS[i % len(_MARKERS)],
        "markersize": max(3.0, 12.0 - 2.5 * i),
        "linewidth": max(0.8, 3.2 - 0.5 * i),
        "zorder": 2 + i,
    }


def _shown(report: SweepReport) -> tuple[list[Configuration], str]:
    """The configurations a line figure draws (the best LINES_SHOWN) and what the title says when not all."""
    shown = report.configurations[:LINES_SHOWN]
    total = len(report.configurations)
    return shown, (f" (the best {len(shown)} of {total} configurations)" if len(shown) < total else "")


def plot_lr(report: SweepReport):
    """The schedule's LR of every configuration per epoch; beside it, one panel per adaptive optimizer with its
    effective per-parameter step size (definitions differ: Adam's is a step per unit of m, the others' per unit of
    gradient) and the share of parameters left out of its quantiles."""
    plt = pyplot()
    shown, note = _shown(report)
    families: dict[str, list[tuple[int, Configuration]]] = {}
    for i, config in enumerate(shown):
        if config.curve("effective_lr/p50")[0]:
            name = next((n for n in map(optimizer_name, config.runs) if n), "optimizer not recorded")
            families.setdefault(name, []).append((i, config))
    panels = 1 + len(families)
    ncols, nrows = min(2, panels), math.ceil(panels / 2)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(7 + 6 * (ncols - 1), 4.6 * nrows), squeeze=False, layout="constrained"
    )
    ax = axes[0][0]
    seen = []
    for i, config in enumerate(shown):
        steps, lrs, _ = config.curve("lr")
        if steps:
            ax.plot(steps, lrs, label=config.label, **_style(i))
            seen += lrs
    _log_if_spans_decades(ax, seen)
    ax.set(title="Learning rate set by the schedule" + note, ylabel="learning rate")
    _epoch_axis(ax)
    if seen:  # no run logged an LR (none got far, e.g. a full disk): an empty panel, without matplotlib's warning
        ax.legend(fontsize="small")
    for ax, (name, members) in zip(axes.flat[1:], families.items(), strict=False):
        many = len(members) > LEGEND_LINES  # then no bands (they would hide each other), no legend but the left one
        for i, config in members:
            steps, p50, _ = config.curve("effective_lr/p50")
            ax.plot(steps, p50, label=config.label, **_style(i))
            _, p10, _ = config.curve("effective_lr/p10")
            _, p90, _ = config.curve("effective_lr/p90")
            if not many and len(p10) == len(p90) == len(steps):
                ax.fill_between(steps, p10, p90, color=_style(i)["color"], alpha=0.15)
        ax.set_yscale("log")
        excluded = excluded_fraction([c for _, c in members])
        reason = "no gradient yet" + (", or m < 1e-30" if name == "Adam" else "")
        left_out = (
            f"{_percent_range(*excluded[:2])} of parameters left out ({excluded[2]}): {reason}"
            if excluded
            else "share of parameters left out: not logged"
        )
        definition = EFFECTIVE_LR.get(name, "effective LR").split(", ")
        unit = definition[1] if len(definition) > 1 else "a step per unit of gradient"
        shown_as = "median (lines as at left)" if many else "median, band p10-p90"
        ax.set_title(f"{name}: {definition[0]}\n{unit}; {shown_as}\n{left_out}", fontsize="medium")
        ax.set_ylabel(f"{name} effective LR")
        if not many:
            ax.legend(fontsize="small")
        _epoch_axis(ax)
    for ax in axes.flat[panels:]:
        fig.delaxes(ax)
    fig.suptitle(f"Sweep {report.sweep_id}" if report.sweep_id else "Learning rates")
    return fig


def _zoom_limits(configs: Sequence[Configuration], metric: str) -> tuple[float, float] | None:
    """y-limits holding the mean ± std curves of `configs`, with a 10% margin; None without values."""
    values = []
    for config in configs:
        _, means, stds = config.curve(metric)
        values += [m + sign * s for m, s in zip(means, stds, strict=True) for sign in (-1, 1)]
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return None
    low, high = min(values), max(values)
    margin = 0.1 * (high - low) or 0.01 * max(abs(high), 1e-12)
    return low - margin, high + margin


def leading_configurations(report: SweepReport, configs: Sequence[Configuration]) -> tuple[list[Configuration], str]:
    """The configurations curves.png's zoom row sets its y-limits from, and how its titles name them: the best and
    those not found worse than it (tied, or worse only before correction), at most ZOOM_LEADING; when the best
    stands alone or nothing was compared, the best ZOOM_LEADING. Never all: the zoom leaves the worst out."""
    close = (stats.BEST, stats.TIED, stats.WORSE_UNCORRECTED)
    chosen = [c for c in configs if c.label in report.comparisons and report.comparisons[c.label].verdict in close]
    limit = min(ZOOM_LEADING, len(configs) - 1)
    if len(chosen) >= 2 and limit >= 2:
        others = plural(min(limit, len(chosen)) - 1, "configuration")
        if len(chosen) > limit:
            others = f"first {others} of the {len(chosen) - 1}"
        return chosen[:limit], f"the best and the {others} not found worse than it"
    return list(configs[:limit]), f"the best {plural(max(limit, 0), 'configuration')}"


CURVE_METRICS = {
    "loss": "Training loss",
    "val_loss": "Validation loss",
    "accuracy": "Training accuracy",
    "val_accuracy": "Validation accuracy",
}


def plot_curves(report: SweepReport):
    """Train and validation loss and accuracy per epoch: one line per configuration, a band of ±1 std over seeds.

    The first row shows the best LINES_SHOWN configurations whole; the second the same lines zoomed on the leading
    ZOOM_LEADING (y-limits from their curves), so that close configurations (the warm-up question) stay apart
    whatever the range of the worst.
    """
    plt = pyplot()
    shown, note = _shown(report)
    drawn = [c for c in shown if any(c.curve(m)[0] for m in CURVE_METRICS)]
    leading, which = leading_configurations(report, drawn)
    nrows = 2 if leading else 1
    fig, axes = plt.subplots(
        nrows, 4, figsize=(20, 4.4 * nrows + 0.35 * math.ceil(len(drawn) / 4) + 0.8), sharex=True, squeeze=False,
        layout="constrained",
    )  # fmt: skip
    for j, metric in enumerate(CURVE_METRICS):
        for ax in axes[:, j]:
            for i, config in enumerate(shown):
                steps, means, stds = config.curve(metric)
                if not steps:
                    continue
                style = _style(i) | {"linewidth": 1.8, "markersize": 5}
                ax.plot(steps, means, label=f"{config.label} (n={len(config.finished)})", **style)
                if len(config.finished) > 1:
                    lows = [m - s for m, s in zip(means, stds, strict=True)]
                    highs = [m + s for m, s in zip(means, stds, strict=True)]
                    ax.fill_between(steps, lows, highs, color=style["color"], alpha=0.15)
            unit = "cross-entropy" if "loss" in metric else "fraction correct"
            ax.set_ylabel(f"{metric} ({unit})")
            ax.grid(alpha=0.3)
            _epoch_axis(ax)
        axes[0][j].set_title(CURVE_METRICS[metric])
        if leading:
            limits = _zoom_limits(leading, metric)
            if limits is not None:  # within the whole panel's: a zoom never zooms out
                whole = axes[0][j].get_ylim()
                axes[1][j].set_ylim(max(limits[0], whole[0]), min(limits[1], whole[1]))
            axes[1][j].set_title(f"{CURVE_METRICS[metric]}: zoom")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(4, len(labels)), fontsize="small")
    title = "Sweep " + report.sweep_id if report.sweep_id else "Training curves"
    zoom = f"\nsecond row: the same lines, y-limits from {which}" if leading else ""
    fig.suptitle(f"{title}: mean ± std over seeds{note}{zoom}")
    return fig


def plot_heatmap(report: SweepReport):
    """Mean final val_accuracy over a grid of two numeric swept keys, one panel per value of any other swept key.

    Cells where a run diverged (its loss not finite or above `training.divergence_factor` x its start, or no
    better than chance) are hatched and say how many of their runs did; cells with no finished run are grey. When
    the columns are a learning rate, a red line marks, per row, the largest LR at which every run trained: with
    rows = warm-up length, the warm-up phase diagram.
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
        ax.set_xticks(range(len(col_values)), [short_number(v) for v in col_values])
        ax.set_yticks(range(len(row_values)), [short_number(v) for v in row_values])
        title = ", ".join(f"{short_key(k, report.swept)}={v}" for k, v in facet.items())
        ax.set(xlabel=col_key, ylabel=row_key, title=title or None)
    handles = [Patch(facecolor="white", edgecolor="red", hatch="///", label="diverged in ✗ k/n runs")]
    if is_lr:
        handles.append(axes[0][0].get_lines()[0])
    fig.legend(handles=handles, loc="outside lower center", ncol=2, fontsize="small")
    fig.colorbar(image, ax=list(axes[0]), label=f"final {RANK_METRIC} (mean over seeds)")
    fig.suptitle(
        f"Final {RANK_METRIC} (mean over seeds, {report.validation})\ndiverged: loss blew up, or no better than chance"
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


def plot_rungs(report: SweepReport):
    """Successive halving: each configuration's mean validation curve up to where it stopped (grey, ending in a
    cross), those that trained to the end in colour, and a dashed line at each rung.

    Returns None when halving stopped nothing.
    """
    if not report.stopped:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8.5, 5.0))
    for config in report.stopped:
        epochs, means, _ = config.curve(RANK_METRIC)
        ax.plot(epochs, means, color="0.6", lw=1, marker="x", markevery=[len(epochs) - 1], zorder=2)
    finished, note = _shown(report)
    for i, config in enumerate(c for c in finished if c.curve(RANK_METRIC)[0]):  # none: every seed failed
        epochs, means, _ = config.curve(RANK_METRIC)
        ax.plot(epochs, means, label=config.label, **_style(i))
    rungs = sorted({run.stopped_epoch for config in report.stopped for run in config.runs})
    for rung in rungs:  # a run that trained E epochs was ranked after epoch E - 1 (0-based)
        ax.axvline(rung - 1, color="0.3", ls="--", lw=0.8, zorder=1)
    _epoch_axis(ax)
    ax.set_ylabel(f"{RANK_METRIC}, mean over seeds ({report.validation})")
    ax.grid(alpha=0.3)
    from matplotlib.lines import Line2D

    handles, _ = ax.get_legend_handles_labels()
    stopped = Line2D([], [], color="0.6", marker="x", label=f"stopped ({plural(len(report.stopped), 'configuration')})")
    ax.legend(handles=[*handles, stopped], fontsize="small", loc="lower right")
    ranked = ", ".join(str(r) for r in rungs)
    ax.set_title(f"Successive halving: ranked after epochs {ranked} (1-based){note}")
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
