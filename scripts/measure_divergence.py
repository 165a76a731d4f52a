"""Measurement: how far above its starting loss a healthy run's loss goes, and how far an exploding run's does.

    .venv/bin/python scripts/measure_divergence.py                # everything below, JAX, full data, seeds 0 and 1
    .venv/bin/python scripts/measure_divergence.py --seeds 0 1 2  # 3 seeds (15 minutes on the shared 2-core machine)

`training.divergence_factor` (`lrsweep.callbacks.StopOnDivergence`) flags a run whose loss, as Keras reports it
(the epoch's running mean, at every batch end Keras calls back), is above factor x its starting loss (its loss
before any update, on the first 256 training examples: `lrsweep.callbacks.member_losses`). This trains, in
process and in packs (`lrsweep.run.pack`, the way sweeps train), on the full data:

- healthy: the tutorial's four strategies (`+experiment=tutorial`, 5 epochs) for each seed, and the phase
  diagram's warm-up runs (`+experiment=phase_diagram`, 3 epochs) at its trainable Adam LRs 0.001-0.03, every
  warm-up length, for each seed;
- exploding: SGD at LR 1e9 (1 epoch) and Adam at LR 1 and 10 (the phase diagram's, no warm-up);
- in between, for information: the phase diagram's LRs 0.1 and 0.3 (warm-up 0 and 1 epoch), and LR 1 and 10
  warmed up over 1 epoch (they do not explode: they end no better than chance, which the report counts).

Every run trains with `training.steps_per_execution=1`, so every step's running mean is seen (the same updates
as with 64). Printed per run: the starting loss, the largest ratio (running loss / starting loss) at any batch
end (what `steps_per_execution=1` would check) and at the default checks (every 64 steps and at epoch ends), and,
for the exploding runs, the ratio at the first check (step 64) and where the loss first became NaN/inf. Then the
figures the default is chosen from: the largest healthy ratio and the smallest exploding one. Asserts nothing.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lrsweep.core import backend  # noqa: E402

CHECK_EVERY = 64  # conf/training/default.yaml steps_per_execution: where the rule looks by default
TRAINABLE_LRS = ("0.001", "0.003", "0.01", "0.03")  # conf/experiment/phase_diagram.yaml's LRs Adam trains at
WARMUP_LENGTHS = ("0", "0.25", "0.5", "1", "2")


def groups(seeds: list[int]) -> list[tuple[str, str, list[list[str]]]]:
    """(kind, label, per-run overrides) per pack: runs that share an optimizer and epochs train together."""
    tutorial = [f"+strategy={s}" for s in ("adam_constant", "adam_linear", "adagrad", "adadelta")]
    phase = ["+experiment=phase_diagram", "training.epochs=3"]
    out = []
    for strategy in ("adam", "adagrad", "adadelta"):
        runs = [["+experiment=tutorial", t, f"training.seed={s}"] for t in tutorial if strategy in t for s in seeds]
        out.append(("healthy", f"tutorial {strategy}", runs))
    runs = [[*phase, f"optimizer.learning_rate={lr}", f"schedule.warmup.length={length}", f"training.seed={s}"]
            for lr in TRAINABLE_LRS for length in WARMUP_LENGTHS for s in seeds]  # fmt: skip
    out.append(("healthy", "phase diagram, Adam LR 0.001-0.03", runs))
    runs = [[*phase, f"optimizer.learning_rate={lr}", "schedule.warmup.length=0", "training.seed=0"]
            for lr in ("1.0", "10.0")]  # fmt: skip
    out.append(("exploding", "phase diagram, Adam LR 1 and 10, no warm-up", runs))
    out.append(("exploding", "SGD LR 1e9", [["optimizer=sgd", "optimizer.learning_rate=1e9", "training.epochs=1"]]))
    # Warmed up, LR 1 and 10 do not explode: the loss stays near its start and the run ends no better than chance
    # (final loss >= ln 10, which the report counts as diverged); LR 0.1 and 0.3 train poorly or not at all.
    runs = [
        [*phase, f"optimizer.learning_rate={lr}", f"schedule.warmup.length={length}", "training.seed=0"]
        for lr, length in (("0.1", "0"), ("0.1", "1"), ("0.3", "0"), ("0.3", "1"), ("1.0", "1"), ("10.0", "1"))
    ]
    out.append(("between", "phase diagram, Adam LR 0.1 and 0.3; LR 1 and 10 warmed up over 1 epoch", runs))
    return out


def compose_jobs(overrides: list[list[str]]):
    from hydra import compose, initialize_config_dir

    from lrsweep.core import identity
    from lrsweep.run import experiment

    jobs = []
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for k, run in enumerate(overrides):
            cfg = compose(
                config_name="config",
                overrides=[*run, "training.steps_per_execution=1", "training.verbose=0", f"tracking.run_name=r{k}"],
            )
            job = experiment.prepare(cfg, identity.JobContext(overrides=tuple(run)))
            job.name = " ".join(o for o in run if not o.startswith("+experiment") and o != "training.epochs=3")
            jobs.append(job)
    return sorted(jobs, key=lambda job: job.seed)


def recorder(members):
    """A callback keeping each member's starting loss and the running loss Keras reports after every step."""
    import keras

    from lrsweep.run.callbacks import member_losses, reference_examples

    class Recorder(keras.callbacks.Callback):
        def __init__(self, dataset):
            super().__init__()
            self.reference = reference_examples(dataset)
            self.start: list[float] = []
            self.losses: list[list[float]] = [[] for _ in members]  # every step's running loss, per member
            self.checks: list[list[bool]] = [[] for _ in members]  # whether the default rule looks at that step

        def on_train_begin(self, logs=None):
            self.start = member_losses(self.model, *self.reference, members)

        def on_train_batch_end(self, batch, logs=None):
            steps_in_epoch = self.params["steps"]
            checked = (batch + 1) % CHECK_EVERY == 0 or batch + 1 == steps_in_epoch
            for k, member in enumerate(members):
                self.losses[k].append(float(logs[member.key("loss")]))
                self.checks[k].append(checked)

    return Recorder


def measure(overrides: list[list[str]]) -> list[dict]:
    """Trains the runs as one pack; per run its starting loss and ratios."""
    from lrsweep.ml.training import Member, fit_epochs
    from lrsweep.run import experiment, pack

    jobs = compose_jobs(overrides)
    cfg = jobs[0].cfg
    dataset = experiment.instantiate(cfg.data)
    plan = pack.build_pack(jobs, dataset)
    members = [Member(run_id="", schedule=s, index=k, name=job.name) for k, (job, s) in enumerate(
        zip(jobs, plan.schedules, strict=True))]  # fmt: skip
    record = recorder(members)(dataset)
    fit_epochs(plan.model, dataset, plan.seeds, cfg.training.batch_size, cfg.training.epochs, [record])
    results = []
    for k, member in enumerate(members):
        losses, checks, start = np.array(record.losses[k]), np.array(record.checks[k]), record.start[k]
        ratios = losses / start
        bad = np.flatnonzero(~np.isfinite(ratios))
        finite = np.where(np.isfinite(ratios), ratios, np.inf)
        results.append({
            "name": member.name,
            "start": start,
            "max_any": float(np.max(finite)),
            "max_checked": float(np.max(finite[checks])),
            "first_check": float(finite[CHECK_EVERY - 1]) if len(finite) >= CHECK_EVERY else float(finite[-1]),
            "first_bad_step": int(bad[0]) + 1 if len(bad) else None,
            "final": float(losses[-1]),
        })  # fmt: skip
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    backend.select("jax")
    began = time.perf_counter()
    by_kind: dict[str, list[dict]] = {"healthy": [], "exploding": [], "between": []}
    for kind, label, runs in groups(args.seeds):
        start = time.perf_counter()
        results = measure(runs)
        by_kind[kind] += results
        print(f"\n== {kind}: {label} ({len(runs)} runs, {time.perf_counter() - start:.0f} s)", flush=True)
        print(f"{'run':64} {'start':>7} {'max any':>9} {'max @64':>9} {'@64':>9} {'nan at':>7} {'final':>9}")
        for r in results:
            bad = "-" if r["first_bad_step"] is None else str(r["first_bad_step"])
            print(f"{r['name'][:64]:64} {r['start']:7.4f} {r['max_any']:9.3g} {r['max_checked']:9.3g} "
                  f"{r['first_check']:9.3g} {bad:>7} {r['final']:9.3g}", flush=True)  # fmt: skip
    healthy, exploding = by_kind["healthy"], by_kind["exploding"]
    worst = max(healthy, key=lambda r: r["max_any"])
    print(
        f"\nhealthy runs ({len(healthy)}): largest ratio at any batch end {worst['max_any']:.4g} ({worst['name']}), "
        f"at the default checks {max(r['max_checked'] for r in healthy):.4g}"
    )
    weakest = min(exploding, key=lambda r: r["max_checked"])
    print(
        f"exploding runs ({len(exploding)}): smallest largest ratio at the default checks "
        f"{weakest['max_checked']:.4g} ({weakest['name']}; inf: the loss became NaN/inf), smallest ratio at the "
        f"first check (step {CHECK_EVERY}) {min(r['first_check'] for r in exploding):.4g}"
    )
    low, high = worst["max_any"], weakest["max_checked"]
    if math.isfinite(high):
        print(f"geometric middle: {math.sqrt(low * high):.3g}")
    print(f"total {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
