"""The LR range test read back from MLflow: which learning rates to put in a warm-up grid.

    python train.py +experiment=lr_range                                   # one run, prints its suggestion
    python train.py -m +experiment=lr_range training.seed=0,1,2            # 3 seeds, one pack: how stable it is
    python -m lrsweep.range_test --sweep 2026-11-26_13-05-22               # the analysis of a past sweep (`cli`)

Training runs a short while with the LR growing exponentially every step (`lrsweep.schedules.lr_range`);
`lrsweep.run.callbacks.RangeTestRecorder` logs `range_test/loss`, `range_test/smoothed_loss` and `range_test/lr`
at step = global step and stops a run once its smoothed loss is above 4x its minimum or not finite.
`analyse` reads those histories back, groups runs by configuration (seed aside) and suggests two LRs per seed:
the steepest descent of the smoothed loss against log LR, and the LR at its minimum / 10.
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from lrsweep import tracking
from lrsweep.analysis.figures import pyplot
from lrsweep.analysis.report import SEED_KEY, JobRun
from lrsweep.core import identity
from lrsweep.ml.range_test import (
    BETA,
    LOSS,
    LR,
    SCHEDULE_TARGET,
    SKIP_START,
    TAG_PLANNED_STEPS,
    TAG_STOPPED_AT_LR,
    Suggestion,
    is_range_test,
    smooth,
    suggest,
)


@dataclass
class RangeRun:
    """One run's range test: its (step, lr, loss) points, as logged, with the smoothed loss and its suggestion."""

    run_id: str
    name: str
    params: dict[str, str]
    tags: dict[str, str]
    steps: np.ndarray
    lrs: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray = field(init=False)
    suggestion: Suggestion | None = field(init=False)
    problem: str = field(init=False, default="")

    def __post_init__(self):
        self.smoothed = smooth(self.losses)
        planned = int(self.tags.get(TAG_PLANNED_STEPS, len(self.steps)))
        skip = int(np.searchsorted(self.steps, int(SKIP_START * planned)))
        try:
            self.suggestion = suggest(self.lrs, self.smoothed, skip)
        except ValueError as e:
            self.suggestion, self.problem = None, str(e)

    @property
    def seed(self) -> str:
        return self.params.get(SEED_KEY, "?")

    @property
    def stopped_at_lr(self) -> float | None:
        value = self.tags.get(TAG_STOPPED_AT_LR)
        return float(value) if value is not None else None

    @property
    def planned_steps(self) -> int | None:
        value = self.tags.get(TAG_PLANNED_STEPS)
        return int(value) if value is not None else None


def geometric_median(values: Sequence[float]) -> float:
    """The median in log space: for LRs, the middle one (or the geometric mean of the two middle ones)."""
    return float(np.exp(np.median(np.log(values))))


def _lr(value: float) -> str:
    """An LR as a Hydra override value with 2 significant digits: 1.2e-03."""
    return f"{value:.1e}"


@dataclass
class RangeTest:
    """A configuration's range test over its seeds: the smoothed loss (mean, min, max) on the common LR grid."""

    label: str
    optimizer: str | None
    runs: list[RangeRun]
    steps: np.ndarray = field(init=False)  # the steps every seed reached
    lrs: np.ndarray = field(init=False)
    mean: np.ndarray = field(init=False)
    low: np.ndarray = field(init=False)
    high: np.ndarray = field(init=False)

    def __post_init__(self):
        self.runs.sort(key=lambda run: (_seed_order(run.seed), run.name))
        common = functools.reduce(np.intersect1d, [run.steps for run in self.runs])
        curves = np.stack([run.smoothed[np.searchsorted(run.steps, common)] for run in self.runs])
        self.steps = common
        self.lrs = self.runs[0].lrs[np.searchsorted(self.runs[0].steps, common)]
        self.mean, self.low, self.high = curves.mean(axis=0), curves.min(axis=0), curves.max(axis=0)

    @property
    def suggested(self) -> list[Suggestion]:
        return [run.suggestion for run in self.runs if run.suggestion is not None]

    @property
    def steepest(self) -> float:
        return geometric_median([s.steepest for s in self.suggested])

    @property
    def min10(self) -> float:
        return geometric_median([s.min10 for s in self.suggested])

    def grid(self) -> tuple[list[float], list[float]]:
        """The warm-up grid around the suggestions: initial_lr in {steepest/10, steepest}, final_lr in
        {steepest, min/10}, rounded to 2 significant digits."""
        steepest, min10 = self.steepest, self.min10
        initial = sorted({float(_lr(steepest / 10)), float(_lr(steepest))})
        final = sorted({float(_lr(steepest)), float(_lr(min10))})  # min/10 may be below steepest: then it decays
        return initial, final

    def command(self) -> str:
        initial, final = self.grid()
        seeds = sorted({run.seed for run in self.runs}, key=_seed_order)
        parts = ["python train.py -m"]
        if self.optimizer:
            parts.append(f"optimizer={self.optimizer}")
        parts += [
            "schedule=linear",
            f"schedule.initial_lr={','.join(_lr(v) for v in initial)}",
            f"schedule.final_lr={','.join(_lr(v) for v in final)}",
        ]
        if len(seeds) > 1:
            parts.append(f"training.seed={','.join(seeds)}")
        return " ".join(parts)

    def lines(self) -> list[str]:
        n = len(self.runs)
        stopped = [run.stopped_at_lr for run in self.runs if run.stopped_at_lr is not None]
        stop = f"stopped at lr {_spread(stopped)}" if stopped else "did not stop"
        if len(stopped) not in (0, n):
            stop += f" ({len(stopped)} of {n} runs; the others reached max_lr)"
        elif not stopped:
            stop += " (the loss never exploded up to max_lr: raise schedule.max_lr for a clearer upper bound)"
        seeds = f"{n} seed{'s' if n > 1 else ''}"
        out = []
        if self.suggested:
            out.append(
                f"{self.label}: steepest {_spread([s.steepest for s in self.suggested], self.steepest)}, "
                f"min/10 {_spread([s.min10 for s in self.suggested], self.min10)} over {seeds}; {stop}"
            )
            out.append(f"  warm-up grid: {self.command()}")
        else:
            out.append(f"{self.label}: no suggestion over {seeds}; {stop}")
        out += [f"  {run.name}: {run.problem}" for run in self.runs if run.problem]
        return out


def _seed_order(seed: str) -> tuple[int, str]:
    return (int(seed), "") if seed.isdigit() else (1 << 62, seed)


def _spread(values: Sequence[float], centre: float | None = None) -> str:
    """`1.2e-03 [9.0e-04..1.5e-03]`: the (median) value and the range over seeds, or the value alone."""
    centre = geometric_median(values) if centre is None else centre
    if len(values) < 2:
        return f"{centre:.1e}"
    return f"{centre:.1e} [{min(values):.1e}..{max(values):.1e}]"


NOT_CONFIGURATION = (SEED_KEY, *identity.NON_RESULT_KEYS)  # keys that tell no configuration apart


def _config_key(params: Mapping[str, str]) -> str:
    """What identifies a configuration: every param but the seed and those that do not change results."""
    kept = {k: v for k, v in params.items() if not identity.under(k, NOT_CONFIGURATION)}
    return repr(sorted(kept.items()))


def _labels(groups: Sequence[Sequence[RangeRun]]) -> list[str]:
    """Short names: the optimizer chosen, then the config values that tell configurations apart."""
    params = [group[0].params for group in groups]
    keys = sorted({k for p in params for k in p})
    differing = [
        k for k in keys
        if len({p.get(k) for p in params}) > 1
        and not k.startswith("choice.")
        and not identity.under(k, NOT_CONFIGURATION)
    ]  # fmt: skip
    if len({p.get("choice.optimizer") for p in params}) > 1:  # the optimizer's name says it
        differing = [k for k in differing if not k.startswith("optimizer.")]
    labels = []
    for p in params:
        name = p.get("choice.optimizer") or p.get("optimizer._target_", "?").rsplit(".", 1)[-1].lower()
        labels.append(" ".join([name, *(f"{k.rsplit('.', 1)[-1]}={p.get(k, '-')}" for k in differing)]))
    return labels


def analyse(runs: Sequence[RangeRun]) -> list[RangeTest]:
    """Groups range test runs by configuration (everything but the seed), in the order first seen."""
    groups: dict[str, list[RangeRun]] = {}
    for run in runs:
        if len(run.steps):
            groups.setdefault(_config_key(run.params), []).append(run)
    members = list(groups.values())
    return [
        RangeTest(label, group[0].params.get("choice.optimizer"), group)
        for label, group in zip(_labels(members), members, strict=True)
    ]


def is_range_test_run(job: JobRun) -> bool:
    """Whether a run trained on the range test's schedule (tag `lrsweep.schedule`; param `schedule._target_` in
    runs recorded before that tag)."""
    return job.tags.get(tracking.TAG_SCHEDULE, job.params.get("schedule._target_")) == SCHEDULE_TARGET


def load(client: MlflowClient, jobs: Sequence[JobRun]) -> list[RangeRun]:
    """The FINISHED range test runs among `jobs`, with their range_test/* histories (one bulk query per metric)."""
    jobs = [job for job in jobs if is_range_test_run(job) and job.status == "FINISHED"]
    histories = tracking.metric_histories(client, [job.run_id for job in jobs], (LOSS, LR))
    loaded = []
    for job in jobs:
        loss, lr = (dict(histories[job.run_id].get(key, [])) for key in (LOSS, LR))
        steps = sorted(set(loss) & set(lr))
        loaded.append(
            RangeRun(
                run_id=job.run_id,
                name=job.name,
                # The optimizer's class, a tag since it is no param, still tells configurations apart.
                params={"optimizer._target_": job.tags.get(tracking.TAG_OPTIMIZER, "?"), **job.params},
                tags=dict(job.tags),
                steps=np.array(steps, dtype=np.int64),
                lrs=np.array([lr[s] for s in steps], dtype=np.float64),
                losses=np.array([loss[s] for s in steps], dtype=np.float64),
            )
        )
    return loaded


def text(tests: Sequence[RangeTest], skipped: int = 0) -> str:
    runs = sum(len(test.runs) for test in tests)
    head = (
        f"LR range test: {runs} run{'s' if runs != 1 else ''}, {len(tests)} configuration"
        f"{'s' if len(tests) != 1 else ''}. steepest: the LR where the smoothed loss (EMA, beta {BETA}) falls "
        f"fastest against log LR (first {SKIP_START:.0%} of the steps left out); min/10: the LR at its minimum / 10. "
        "Median [min..max] over seeds."
    )
    if skipped:
        head += f" {skipped} run(s) without range test data (not FINISHED, or no step logged) left out."
    lines = [head]
    for test in tests:
        lines += test.lines()
    return "\n".join(lines)


def plot(tests: Sequence[RangeTest]):
    """Smoothed loss against LR (log axis): per configuration the mean over seeds, a min-max band, and the
    suggestions (dashed: steepest, dotted: min/10)."""
    figure, ax = pyplot().subplots(figsize=(8, 5))
    for i, test in enumerate(tests):
        color = f"C{i}"
        n = len(test.runs)
        ax.plot(test.lrs, test.mean, color=color, label=f"{test.label} ({n} seed{'s' if n > 1 else ''})")
        if n > 1:
            ax.fill_between(test.lrs, test.low, test.high, color=color, alpha=0.2, linewidth=0)
        if test.suggested:
            ax.axvline(test.steepest, color=color, linestyle="--", linewidth=1,
                       label=f"{test.label}: steepest {test.steepest:.1e}")  # fmt: skip
            ax.axvline(test.min10, color=color, linestyle=":", linewidth=1.5,
                       label=f"{test.label}: min/10 {test.min10:.1e}")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel(f"smoothed training loss (EMA, beta {BETA})")
    ax.set_title("LR range test: mean over seeds, band min..max (steps every seed reached)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    figure.tight_layout()
    return figure


def write(tests: Sequence[RangeTest], out_dir: Path, summary: str) -> list[Path]:
    """Writes lr_range.png, lr_range.csv (every run's points) and lr_range.txt (the suggestions) to `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    path = out_dir / "lr_range.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["configuration", "run", "run_id", "seed", "step", "lr", "loss", "smoothed_loss"])
        for test in tests:
            for run in test.runs:
                for step, lr, loss, smoothed in zip(run.steps, run.lrs, run.losses, run.smoothed, strict=True):
                    writer.writerow([test.label, run.name, run.run_id, run.seed, int(step), repr(float(lr)),
                                     repr(float(loss)), repr(float(smoothed))])  # fmt: skip
    written.append(path)
    path = out_dir / "lr_range.txt"
    path.write_text(summary + "\n")
    written.append(path)
    if tests:
        figure = plot(tests)
        path = out_dir / "lr_range.png"
        figure.savefig(path, dpi=120)
        pyplot().close(figure)
        written.append(path)
    return written


def report_jobs(client: MlflowClient, jobs: Sequence[JobRun], out_dir: Path) -> tuple[str, list[Path]]:
    """The range test part of a report: the suggestions as text, and the files written into `out_dir`.

    Returns:
        ("", []) when none of the runs is a range test (schedule=lr_range).
    """
    jobs = [job for job in jobs if is_range_test_run(job)]
    if not jobs:
        return "", []
    tests = analyse(load(client, jobs))
    summary = text(tests, skipped=len(jobs) - sum(len(test.runs) for test in tests))
    return summary, write(tests, out_dir, summary)


def report(client: MlflowClient, run_ids: Sequence[str], out_dir: Path) -> tuple[str, list[Path]]:
    """`report_jobs` for the runs of these ids, read from MLflow."""
    return report_jobs(client, [JobRun.from_mlflow(client.get_run(run_id)) for run_id in run_ids], out_dir)


def print_single_run(cfg: DictConfig) -> None:
    """After a range test trained alone (no -m): prints its suggestion, writes its files to the Hydra run dir."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not is_range_test(cfg) or not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.RUN:
        return
    client, experiment_id = tracking.connect_config(cfg.tracking)
    run = tracking.find_finished(client, experiment_id, identity.config_hash(OmegaConf.to_container(cfg, resolve=True)))
    if run is None:
        return
    summary, paths = report_jobs(client, [JobRun.from_mlflow(run)], Path(HydraConfig.get().runtime.output_dir))
    print(f"\n{summary}\nFiles: {', '.join(str(p) for p in paths)}", flush=True)
