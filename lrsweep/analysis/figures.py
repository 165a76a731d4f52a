"""The figures of a sweep's report (`lrsweep.analysis.report.SweepReport`) and of its dataset, as matplotlib figures."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence

from lrsweep import tracking
from lrsweep.analysis.report import (
    RANK_METRIC,
    SEEDS_SHOWN,
    Configuration,
    JobRun,
    SweepReport,
    plural,
)
from lrsweep.core import stats
from lrsweep.ml.data import VALIDATION_IS_TEST


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def epoch_axis(ax) -> None:
    """Epochs counted from 1 (the data stay at MLflow's step = the 0-based epoch; the labels add 1)."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x + 1:g}"))
    ax.set_xlabel("epoch (1-based; MLflow step = epoch - 1)")


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
            _readable_log_ticks(ax, positive)


def _readable_log_ticks(ax, positive: Sequence[float]) -> None:
    """On a log axis spanning less than two decades, ticks at 1, 2 and 5 x each power of 10 labelled as plain
    numbers (0.002, 0.005, 0.01), so that a value can be read off; wider axes keep matplotlib's 10^k."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    if max(positive) / min(positive) < 100:
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())


def validation_set(report: SweepReport) -> str:
    """What the `val_*` panels were measured on, in a title's words: "test set" (data.validation_size=null, the
    tutorial's way) or "held-out" (part of the training set kept out)."""
    sets = [VALIDATION_IS_TEST if part == VALIDATION_IS_TEST else "held-out" for part in report.validation.split(" / ")]
    return " / ".join(dict.fromkeys(sets))


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
    """Line i of the ranked configurations: its own colour, dashes and marker (colour and marker together differ
    for the first 100); later lines thinner with smaller markers, drawn on top, so that lines which coincide (the
    same schedule) all stay visible."""
    return {
        "color": f"C{i % 10}",
        "linestyle": _DASHES[i % len(_DASHES)],
        "marker": _MARKERS[(i + i // 10) % len(_MARKERS)],
        "markersize": max(3.0, 12.0 - 2.5 * i),
        "linewidth": max(0.8, 3.2 - 0.5 * i),
        "zorder": 2 + i,
    }


def styles(report: SweepReport) -> dict[str, dict]:
    """{configuration label: its line style}, the same in every figure of the report: by rank over the ranked
    configurations, then the stopped ones (`_style`)."""
    return {c.label: _style(i) for i, c in enumerate([*report.configurations, *report.stopped])}


def shown_configurations(report: SweepReport) -> tuple[list[Configuration], str]:
    """The configurations a line figure draws (the best LINES_SHOWN) and what the title says when not all."""
    shown = report.configurations[:LINES_SHOWN]
    total = len(report.configurations)
    return shown, (f" (the best {len(shown)} of {total} configurations)" if len(shown) < total else "")


def plot_lr(report: SweepReport):
    """The schedule's LR of every configuration per epoch; beside it, one panel per adaptive optimizer with its
    effective per-parameter step size (definitions differ: Adam's is a step per unit of m, the others' per unit of
    gradient) and the share of parameters left out of its quantiles."""
    plt = pyplot()
    shown, note = shown_configurations(report)
    style = styles(report)
    families: dict[str, list[Configuration]] = {}
    for config in shown:
        if config.curve("effective_lr/p50")[0]:
            name = next((n for n in map(optimizer_name, config.runs) if n), "optimizer not recorded")
            families.setdefault(name, []).append(config)
    panels = 1 + len(families)
    ncols, nrows = min(2, panels), math.ceil(panels / 2)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(7 + 6 * (ncols - 1), 4.6 * nrows), squeeze=False, layout="constrained"
    )
    ax = axes[0][0]
    seen = []
    for config in shown:
        steps, lrs, _ = config.curve("lr")
        if steps:
            ax.plot(steps, lrs, label=config.label, **style[config.label])
            seen += lrs
    _log_if_spans_decades(ax, seen)
    ax.set(title="Learning rate set by the schedule" + note, ylabel="learning rate")
    epoch_axis(ax)
    if seen:  # no run logged an LR (none got far, e.g. a full disk): an empty panel, without matplotlib's warning
        ax.legend(fontsize="small")
    for ax, (name, members) in zip(axes.flat[1:], families.items(), strict=False):
        many = len(members) > LEGEND_LINES  # then no bands (they would hide each other), no legend but the left one
        for config in members:
            steps, p50, _ = config.curve("effective_lr/p50")
            ax.plot(steps, p50, label=config.label, **style[config.label])
            _, p10, _ = config.curve("effective_lr/p10")
            _, p90, _ = config.curve("effective_lr/p90")
            if not many and len(p10) == len(p90) == len(steps):
                ax.fill_between(steps, p10, p90, color=style[config.label]["color"], alpha=0.15)
        ax.set_yscale("log")
        drawn = [v for line in ax.get_lines() for v in line.get_ydata() if v > 0 and math.isfinite(v)]
        if drawn:
            _readable_log_ticks(ax, drawn)
        excluded = excluded_fraction(members)
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
        epoch_axis(ax)
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


def curve_title(report: SweepReport, metric: str) -> str:
    """A curves.png panel's title: a validation one names its set, "Validation loss (test set)"."""
    return CURVE_METRICS[metric] + (f" ({validation_set(report)})" if metric.startswith("val_") else "")


def _spans(epochs: Sequence[int]) -> str:
    """[1, 2, 3, 5] -> "epochs 1-3, 5"; [2] -> "epoch 2"."""
    runs: list[list[int]] = []
    for epoch in epochs:
        if runs and epoch == runs[-1][-1] + 1:
            runs[-1].append(epoch)
        else:
            runs.append([epoch])
    parts = [f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs]
    return ("epochs " if len(epochs) > 1 else "epoch ") + ", ".join(parts)


def ranking_note(report: SweepReport) -> str:
    """What the ranking reads, in words: the mean final val_accuracy, at the last epoch only (1-based, as the
    figures' axes); and the earlier epochs at which the two leading configurations were in the other order."""
    ranked = [c for c in report.configurations if c.curve(RANK_METRIC)[0]]
    if not ranked:
        return ""
    steps, _, _ = ranked[0].curve(RANK_METRIC)
    note = f"The ranking uses the last epoch only: mean {RANK_METRIC} at epoch {steps[-1] + 1}"
    if len(ranked) < 2:
        return note
    first, second = (dict(zip(*c.curve(RANK_METRIC)[:2], strict=True)) for c in ranked[:2])
    common = sorted(set(first) & set(second))
    if not common:
        return note
    ahead = first[common[-1]] >= second[common[-1]]  # the order at the last epoch both reached
    leader, trailer = (ranked[1], ranked[0]) if ahead else (ranked[0], ranked[1])
    other = [t + 1 for t in common[:-1] if (first[t] < second[t] if ahead else first[t] > second[t])]
    if other:
        note += f"; {leader.label} led {trailer.label} at {_spans(other)}"
    return note


def plot_curves(report: SweepReport):
    """Train and validation loss and accuracy per epoch: one line per configuration, a band of ±1 std over seeds.

    The first row shows the best LINES_SHOWN configurations whole; the second the same lines zoomed on the leading
    ZOOM_LEADING (y-limits from their curves), so that close configurations (the warm-up question) stay apart
    whatever the range of the worst.
    """
    plt = pyplot()
    shown, note = shown_configurations(report)
    style = styles(report)
    drawn = [c for c in shown if any(c.curve(m)[0] for m in CURVE_METRICS)]
    leading, which = leading_configurations(report, drawn)
    nrows = 2 if leading else 1
    fig, axes = plt.subplots(
        nrows, 4, figsize=(20, 4.4 * nrows + 0.35 * math.ceil(len(drawn) / 4) + 0.8), sharex=True, squeeze=False,
        layout="constrained",
    )  # fmt: skip
    for j, metric in enumerate(CURVE_METRICS):
        for ax in axes[:, j]:
            for config in shown:
                steps, means, stds = config.curve(metric)
                if not steps:
                    continue
                line = style[config.label] | {"linewidth": 1.8, "markersize": 5}
                ax.plot(steps, means, label=f"{config.label} (n={len(config.finished)})", **line)
                if len(config.finished) > 1:
                    lows = [m - s for m, s in zip(means, stds, strict=True)]
                    highs = [m + s for m, s in zip(means, stds, strict=True)]
                    ax.fill_between(steps, lows, highs, color=line["color"], alpha=0.15)
            unit = "cross-entropy" if "loss" in metric else "fraction correct"
            ax.set_ylabel(f"{metric} ({unit})")
            ax.grid(alpha=0.3)
            epoch_axis(ax)
        axes[0][j].set_title(curve_title(report, metric))
        if leading:
            limits = _zoom_limits(leading, metric)
            if limits is not None:  # within the whole panel's: a zoom never zooms out
                whole = axes[0][j].get_ylim()
                axes[1][j].set_ylim(max(limits[0], whole[0]), min(limits[1], whole[1]))
            axes[1][j].set_title(f"{curve_title(report, metric)}: zoom")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(4, len(labels)), fontsize="small")
    title = "Sweep " + report.sweep_id if report.sweep_id else "Training curves"
    zoom = f"\nsecond row: the same lines, y-limits from {which}" if leading else ""
    ranking = ranking_note(report)
    fig.suptitle(f"{title}: mean ± std over seeds{note}{zoom}" + (f"\n{ranking}" if ranking else ""))
    return fig


VERDICT_FILL = {
    stats.BEST: "full",
    stats.TIED: "full",
    stats.NO_TEST: "full",
    stats.WORSE_UNCORRECTED: "left",
    stats.WORSE: "none",
}
FILL_NAMES = {"full": "filled", "left": "half-filled", "none": "hollow"}


def plot_seeds(report: SweepReport):
    """Each seed's final val_accuracy as a small marker per configuration, the mean (large) with its 95% CI: in the
    configuration's colour and marker as in the other figures; the verdict under its name and as the markers' fill.

    Returns None when no configuration has a finished run.
    """
    configs = [c for c in report.configurations if c.samples()]
    if not configs:
        return None
    shown = configs[:SEEDS_SHOWN]  # the leading ones: a phase diagram has dozens
    plt = pyplot()
    style = styles(report)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(shown) + 3), 5.2))
    names, fills = [], {}  # {fill: the verdicts shown by it}
    for x, config in enumerate(shown):
        samples = config.samples()
        verdict = report.comparisons[config.label].verdict if config.label in report.comparisons else stats.NO_TEST
        fill = VERDICT_FILL.get(verdict, "full")
        fills.setdefault(fill, {})[verdict] = None
        names.append(f"{config.label}\n{report.lead() if verdict == stats.BEST else verdict}")  # as in the table
        marker = {"color": style[config.label]["color"], "marker": style[config.label]["marker"], "fillstyle": fill}
        values = list(samples.values())
        offsets = [0.08 * (k - (len(values) - 1) / 2) for k in range(len(values))]
        xs = [x + o for o in offsets]
        ax.plot(xs, values, ls="", markersize=5, alpha=0.7, zorder=3, label=f"{config.label} (seeds)", **marker)
        mean = statistics.fmean(values)
        low, high = stats.mean_interval(values)
        if math.isnan(low):
            ax.plot([x - 0.25, x + 0.25], [mean, mean], color=marker["color"], lw=2)
        else:
            ax.errorbar(
                x + 0.3, mean, yerr=[[mean - low], [high - mean]], fmt="none", ecolor=marker["color"], capsize=4
            )
        ax.plot([x + 0.3], [mean], ls="", markersize=9, markeredgewidth=1.5, zorder=4, label=config.label, **marker)
    turned = {"rotation": 30, "ha": "right", "rotation_mode": "anchor", "multialignment": "right"}
    ax.set_xticks(range(len(shown)), names, **(turned if len(shown) > 3 else {"multialignment": "center"}))
    ax.set(ylabel=f"final {RANK_METRIC} ({report.validation})")
    ax.grid(axis="y", alpha=0.3)
    from matplotlib.lines import Line2D

    legend = [Line2D([], [], marker="o", ls="", color="0.4", markersize=5, label="one seed")]
    legend.append(Line2D([], [], marker="o", ls="-", color="0.4", markersize=9, label="mean, 95% CI"))
    for fill, name in FILL_NAMES.items():  # only the verdicts some configuration has
        if fill in fills:
            label = f"{name}: {', '.join(fills[fill])}"
            legend.append(Line2D([], [], marker="o", ls="", color="0.4", markersize=9, fillstyle=fill, label=label))
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
