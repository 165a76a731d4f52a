"""The sweep's answer in words: the first lines of the printed summary, summary.md and report.html.

Warm-up against its constant-LR baseline (the tutorial's question), where a phase diagram's boundary sits and how
far warm-up moves it, a grid's best region and what is tied with it, or the leaders of a ranking; a tie is said as
a tie, never crowned. A range test's answer is its suggestion (`lrsweep.analysis.range_test`), not a ranking.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from lrsweep import tracking
from lrsweep.analysis.figures import optimizer_name
from lrsweep.analysis.grid import boundary_definition, grid_axes, grid_cells, largest_training_column, recorded
from lrsweep.analysis.range_test import is_range_test_run
from lrsweep.analysis.report import (
    RANK_METRIC,
    SEED_KEY,
    Configuration,
    SweepReport,
    plural,
    short_key,
    short_number,
)
from lrsweep.core import stats

NAMED = 3  # configurations named in a headline before "and N more"
WARMUP_LENGTH_KEY = re.compile(r"(^|\.)(warmup\.length|warmup_epochs)$")


def answer(report: SweepReport, suggestion: str = "") -> list[str]:
    """One or two sentences that answer the sweep's question, the most specific first; for a range test, its
    `suggestion` (the range test's text) when there is one."""
    if range_test_only(report):
        if suggestion:
            return [suggestion]
        return [
            "An LR range test: its answer is the suggested LR bounds (`python -m lrsweep.range_test --sweep "
            f"{report.sweep_id}`), not a ranking of runs that explode on purpose."
        ]
    if not report.configurations:
        return ["No configuration finished, so there is nothing to rank."]
    axes = grid_axes(report)
    if axes is not None and WARMUP_LENGTH_KEY.search(axes[0]):
        return phase_diagram(report, *axes)
    lines = []
    pair = warmup_pair(report)
    if pair is not None:
        lines.append(warmup_vs_constant(report, *pair))
    lines.append(grid_region(report, axes[:2]) if axes is not None else leaders(report))
    return lines


def range_test_only(report: SweepReport) -> bool:
    """Whether every run of the sweep is an LR range test (schedule=lr_range)."""
    return bool(report.runs) and all(is_range_test_run(run) for run in report.runs)


def warmup_of(config: Configuration) -> str | None:
    """How a configuration warms up, in words (`linear 0.005 -> 0.01 over 5 epochs`), or None if its LR does not."""
    params = config.runs[0].params
    choice = params.get("choice.schedule", "")
    if choice == "linear":
        start, end, epochs = (params.get(f"schedule.{k}") for k in ("initial_lr", "final_lr", "warmup_epochs"))
        if start is None or end is None or epochs is None or float(start) == float(end) or int(epochs) < 2:
            return None
        trained = params.get("training.epochs")
        cut = f" (of which {trained} trained)" if trained is not None and int(trained) < int(epochs) else ""
        return f"linear {float(start):g} -> {float(end):g} over {epochs} epochs{cut}"
    if choice == "warmup":
        length = float(params.get("schedule.warmup.length", 0))
        if length <= 0:
            return None
        start = params.get("schedule.warmup.initial_lr")
        unit = params.get("schedule.warmup.length_unit", "epoch")
        span = f"{length:g} of the training steps" if unit == "fraction" else plural_unit(length, unit)
        begin = "0" if start in (None, "None", "null") else f"{float(start):g}"
        return f"{params.get('schedule.warmup.shape', 'linear')} {begin} -> {_peak(params)} over {span}"
    if choice == "untuned":
        return f"untuned {params.get('schedule.rule', 'linear')} warm-up to {_peak(params)} (2 / (1 - beta_2) steps)"
    return None


def plural_unit(value: float, unit: str) -> str:
    return f"{value:g} {unit}" + ("" if value == 1 else "s")


def _peak(params: dict[str, str]) -> str:
    value = _target(params)
    return f"{value:g}" if value is not None else "the target LR"


def _constant_lr(config: Configuration) -> float | None:
    """The LR of a configuration that trains at one LR throughout (schedule=constant, or a warm-up of length 0
    with a constant decay), else None."""
    params = config.runs[0].params
    choice = params.get("choice.schedule", "")
    flat = choice == "constant" or (
        choice == "warmup"
        and float(params.get("schedule.warmup.length", 1)) <= 0
        and params.get("choice.schedule/decay", "constant") == "constant"
    )
    value = params.get("optimizer.learning_rate")
    return float(value) if flat and value is not None else None


def _target(params: dict[str, str]) -> float | None:
    """The LR a warm-up ends at: the linear schedule's final_lr, else the peak_lr, else the optimizer's LR."""
    value = params.get("schedule.final_lr", params.get("schedule.peak_lr", params.get("optimizer.learning_rate")))
    return float(value) if value is not None else None


def warmup_pair(report: SweepReport) -> tuple[Configuration, Configuration, int] | None:
    """(the best warm-up configuration, its constant-LR baseline, how many warm-up configurations had one): the
    baseline trains the same optimizer at one LR, the warm-up's target. None if no such pair is in the sweep."""
    pairs = []
    for config in report.configurations:  # best first
        if warmup_of(config) is None:
            continue
        optimizer = config.runs[0].tags.get(tracking.TAG_OPTIMIZER)
        target = _target(config.runs[0].params)
        for other in report.configurations:
            lr = _constant_lr(other)
            if (
                lr is not None
                and target is not None
                and math.isclose(lr, target, rel_tol=1e-6)
                and other.runs[0].tags.get(tracking.TAG_OPTIMIZER) == optimizer
            ):
                pairs.append((config, other))
                break
    if not pairs:
        return None
    return (*pairs[0], len(pairs))


def warmup_vs_constant(report: SweepReport, warm: Configuration, constant: Configuration, arms: int) -> str:
    """`Warm-up (adam_linear: linear 0.005 -> 0.01 over 5 epochs) vs constant LR (adam_constant): no measurable
    difference, -0.0003 [-0.0232, +0.0226], p = 0.96 over 3 seeds; ...`: the warm-up's mean minus the baseline's,
    tested on its own (paired by seed when both ran the same seeds)."""
    which = f"the best of {arms} warm-up configurations, " if arms > 1 else ""
    head = f"Warm-up ({which}{name(report, warm)}: {warmup_of(warm)}) vs constant LR ({name(report, constant)})"
    comparisons = stats.compare_to_best({warm.label: warm.samples(), constant.label: constant.samples()})
    if len(comparisons) < 2:
        missing = warm if warm.label not in comparisons else constant
        return f"{head}: no finished run of {name(report, missing)}."
    flip = comparisons[warm.label].verdict == stats.BEST  # compare_to_best gives the other minus the better one
    c = comparisons[constant.label] if flip else comparisons[warm.label]
    sign = -1 if flip else 1
    difference, (low, high) = sign * c.difference, sorted((sign * c.low, sign * c.high))
    if not c.test:
        return (
            f"{head}: {difference:+.4f} in mean {RANK_METRIC} with {plural(min(c.n, c.n_reference), 'run')} "
            f"of one of them: no test is possible; sweep seeds to compare, e.g. {SEED_KEY}=0,1,2."
        )
    seeds = f"{c.n} seeds" if c.test == "paired" else f"{c.n} and {c.n_reference} runs"
    numbers = f"{difference:+.4f} [{low:+.4f}, {high:+.4f}] in mean {RANK_METRIC}, p = {c.p:.2g} over {seeds}"
    numbers += " (this pair alone)" if len(report.configurations) > 2 else ""
    if c.verdict == stats.TIED:
        more = ""
        if c.seeds_needed is not None:
            needed = c.seeds_needed if c.seeds_needed < stats.MAX_SEEDS else f"{stats.MAX_SEEDS}+"
            more = f"; about {needed} seeds would detect a difference this size"
        return f"{head}: no measurable difference, {numbers}{more}."
    return f"{head}: warm-up is {'better' if difference > 0 else 'worse'}, {numbers}."


def name(report: SweepReport, config: Configuration) -> str:
    """A configuration as a reader names it: the value alone when one key is swept (`adam_linear`), else its label."""
    return config.values[report.swept[0]] if len(report.swept) == 1 else config.label


def _names(report: SweepReport, configs: Sequence[Configuration]) -> str:
    names = [name(report, c) for c in configs[:NAMED]]
    if len(configs) > NAMED:
        names.append(f"{len(configs) - NAMED} more")
    return ", ".join(names[:-1]) + (" and " if len(names) > 1 else "") + names[-1]


def _mean(config: Configuration) -> str:
    mean, std, n = config.stat(RANK_METRIC)
    spread = f" ± {std:.4f}" if math.isfinite(std) else ""
    return f"{RANK_METRIC} {mean:.4f}{spread} over {plural(n, 'seed')}"


def _split(report: SweepReport) -> tuple[Configuration, list[Configuration], list[Configuration]]:
    """The best configuration, those tied with it (not found worse after correction), and the worse."""
    best, *others = report.configurations
    compared = [(c, report.comparisons[c.label].verdict) for c in others if c.label in report.comparisons]
    tied = [c for c, verdict in compared if verdict in (stats.TIED, stats.WORSE_UNCORRECTED)]
    worse = [c for c, verdict in compared if verdict == stats.WORSE]
    return best, tied, worse


def leaders(report: SweepReport) -> str:
    """`Best: adam_constant (...), tied with adam_linear; 2 worse: adagrad and adadelta.`"""
    best, tied, worse = _split(report)
    if len(report.configurations) == 1:
        return f"One configuration: {name(report, best)}, {_mean(best)}."
    if not report.comparable:
        return (
            f"Highest: {name(report, best)} ({_mean(best)}), but with one run per configuration the ranking may be "
            f"noise; sweep seeds to compare, e.g. {SEED_KEY}=0,1,2."
        )
    if tied:
        line = f"Best, tied with {_names(report, tied)}: {name(report, best)} ({_mean(best)}), no measurable lead"
    else:
        line = f"Best: {name(report, best)} ({_mean(best)}), ahead of every other configuration"
    if worse:
        line += f"; {len(worse)} worse: {_names(report, worse)}"
    return line + "."


def grid_region(report: SweepReport, keys: Sequence[str]) -> str:
    """`Best region: initial_lr 0.001-0.003 x final_lr 0.001-0.002 (the best and the 4 tied with it); best ...`."""
    best, tied, worse = _split(report)
    if not report.comparable or not tied:
        return leaders(report)
    region = [best, *tied]
    spans = []
    for key in keys:
        values = sorted({float(c.values[key]) for c in region})
        span = f"{values[0]:g}" if len(values) == 1 else f"{values[0]:g}-{values[-1]:g}"
        spans.append(f"{short_key(key, report.swept)} {span}")
    shown = ", ".join(f"{short_key(k, report.swept)}={short_number(v)}" for k, v in best.values.items())
    return (
        f"Best region: {' x '.join(spans)} ({plural(len(tied), 'configuration')} tied with the best, "
        f"{len(worse)} worse of {len(report.configurations)}); the best: {shown} ({_mean(best)})."
    )


def phase_diagram(report: SweepReport, row_key: str, col_key: str, facet_keys: Sequence[str]) -> list[str]:
    """Per panel: the largest target LR that trains without warm-up and with the best warm-up length, and how
    many grid steps warm-up moves it."""
    facets = list(dict.fromkeys(tuple(c.values[k] for k in facet_keys) for c in report.configurations))
    lines = []
    for values in facets:
        facet = dict(zip(facet_keys, values, strict=True))
        rows, cols, grid = grid_cells(report, row_key, col_key, facet)
        bounds = {row: largest_training_column(cells) for row, cells in zip(rows, grid, strict=True)}
        panel = [f"{short_key(k, report.swept)}={v}" for k, v in facet.items()]
        runs = [run for c in report.configurations if all(c.values[k] == v for k, v in facet.items()) for run in c.runs]
        optimizers = sorted(set(filter(None, map(optimizer_name, runs))))  # as the heatmap's title names them
        epochs = recorded(runs, "training.epochs")
        seeds = plural(len({run.seed for run in runs}), "seed")
        where = f" ({', '.join([*panel, *optimizers, *(f'{e} epochs' for e in epochs), seeds])})"
        none = next((row for row in rows if float(row) == 0), None)
        known = {row: j for row, j in bounds.items() if j is not None}
        if not known:
            lines.append(f"Phase diagram{where}: no target LR trains at any warm-up length.")
            continue
        best_row = max(known, key=lambda row: (known[row], -float(row)))  # the shortest warm-up that gets furthest
        length = short_key(row_key, report.swept)
        if none is None or bounds[none] is None:
            base = "no target LR trains without warm-up" if none is not None else "no run without warm-up"
            lines.append(
                f"Phase diagram{where}: {base}; with {length}={best_row} up to target LR {cols[known[best_row]]}."
            )
            continue
        steps = known[best_row] - bounds[none]
        move = (
            f"warm-up ({length}={best_row}) moves it up by {plural(steps, 'grid step')}, to {cols[known[best_row]]}"
            if steps > 0
            else "no warm-up length moves it"
        )
        lines.append(
            f"Phase diagram{where}: the largest target LR that trains is {cols[bounds[none]]} without warm-up; {move}."
        )
    return [*lines, f"Boundary: {boundary_definition(report)}."]
