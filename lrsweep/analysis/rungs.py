"""Successive halving's figure (rungs.png): each configuration's mean validation curve up to where it stopped."""

from __future__ import annotations

from lrsweep.analysis.figures import epoch_axis, pyplot, shown_configurations, styles
from lrsweep.analysis.report import RANK_METRIC, SweepReport, plural

STOPPED_LEGEND = 6  # stopped configurations named in rungs.png's legend (the later ones drawn all the same)


def plot_rungs(report: SweepReport):
    """Successive halving: each configuration's mean validation curve, in its colour and marker as in the other
    figures: a stopped one thin and dotted up to where it stopped, ending in a cross; those that trained to the end
    full; a dashed grey line at each rung.

    Returns None when halving stopped nothing.
    """
    if not report.stopped:
        return None
    plt = pyplot()
    style = styles(report)
    fig, ax = plt.subplots(figsize=(8.5, 5.0))
    finished, note = shown_configurations(report)
    for config in (c for c in finished if c.curve(RANK_METRIC)[0]):  # none: every seed failed
        epochs, means, _ = config.curve(RANK_METRIC)
        ax.plot(epochs, means, label=config.label, **style[config.label])
    for k, config in enumerate(report.stopped):
        epochs, means, _ = config.curve(RANK_METRIC)
        label = f"{config.label} (stopped after epoch {config.runs[0].stopped_epoch})"
        ax.plot(
            epochs, means, color=style[config.label]["color"], ls=":", lw=1.2, marker="x", markersize=8,
            markeredgewidth=2, markevery=[len(epochs) - 1] if epochs else None, zorder=2,
            label=label if k < STOPPED_LEGEND else f"_{label}",
        )  # fmt: skip
    rungs = sorted({run.stopped_epoch for config in report.stopped for run in config.runs})
    for rung in rungs:  # a run that trained E epochs was ranked after epoch E (1-based), at step E - 1
        ax.axvline(rung - 1, color="0.3", ls="--", lw=0.8, zorder=1)
    epoch_axis(ax)
    ax.set_ylabel(f"{RANK_METRIC}, mean over seeds ({report.validation})")
    ax.grid(alpha=0.3)
    from matplotlib.lines import Line2D

    handles, _ = ax.get_legend_handles_labels()
    stopped = f"dotted, x: stopped ({plural(len(report.stopped), 'configuration')}"
    stopped += f", the first {STOPPED_LEGEND} named)" if len(report.stopped) > STOPPED_LEGEND else ")"
    handles.append(Line2D([], [], color="0.4", ls=":", marker="x", markeredgewidth=2, label=stopped))
    ax.legend(handles=handles, fontsize="small", loc="lower right")
    ranked = ", ".join(str(r) for r in rungs)
    ax.set_title(f"Successive halving: ranked after epochs {ranked}{note}")
    fig.tight_layout()
    return fig
