"""Draws every schedule option's LR over a default run (Adam at 0.01, 5 epochs of 1875 steps) for the README.

    .venv/bin/python scripts/plot_schedules.py            # writes docs/schedules/<name>.png

Each plot is the schedule that `train.py <overrides>` builds: the config is composed with Hydra and instantiated
as lrsweep.experiment does, then evaluated at every optimizer step.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lrsweep.core import backend  # noqa: E402

# (file name, the overrides that select the schedule): the README shows the same lines.
SCHEDULES = [
    ("constant", "schedule=constant"),
    ("linear", "schedule=linear"),
    ("warmup", "schedule=warmup"),
    ("warmup_exponential", "schedule=warmup schedule.warmup.shape=exponential"),
    ("warmup_cosine", "schedule=warmup schedule.warmup.shape=cosine"),
    ("decay_cosine", "schedule=warmup schedule/decay=cosine"),
    ("decay_linear", "schedule=warmup schedule/decay=linear"),
    ("decay_step", "schedule=warmup schedule/decay=step"),
    ("decay_exponential", "schedule=warmup schedule/decay=exponential"),
    ("decay_inverse_sqrt", "schedule=warmup schedule/decay=inverse_sqrt"),
    ("decay_wsd", "schedule=warmup schedule/decay=wsd"),
    (
        "warmup_per_epoch",
        "schedule=warmup schedule.unit=epoch schedule.warmup.length=4 schedule.warmup.initial_lr=0.005",
    ),
    ("untuned", "schedule=untuned"),
    ("untuned_exponential", "schedule=untuned schedule.rule=exponential"),
]
STEPS_PER_EPOCH = 1875  # 60,000 images in batches of 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "schedules")
    args = parser.parse_args()

    backend.select("tensorflow")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from keras import ops

    args.out.mkdir(parents=True, exist_ok=True)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for name, overrides in SCHEDULES:
            cfg = compose(config_name="config", overrides=overrides.split())
            epochs = cfg.training.epochs
            schedule = instantiate(cfg.schedule)(steps_per_epoch=STEPS_PER_EPOCH, total_steps=epochs * STEPS_PER_EPOCH)
            steps = np.arange(epochs * STEPS_PER_EPOCH)
            lrs = np.asarray(ops.convert_to_numpy(schedule(steps)))
            fig, ax = plt.subplots(figsize=(3.2, 1.5), dpi=100)
            ax.plot(steps / STEPS_PER_EPOCH, lrs * 1e3, color="tab:blue", linewidth=1.5)
            ax.set_xlim(0, epochs)
            ax.set_ylim(0, 10.5)
            ax.set_xticks(range(epochs + 1))
            ax.set_xlabel("epoch", fontsize=7, labelpad=1)
            ax.set_ylabel("LR (x1e-3)", fontsize=7, labelpad=1)
            ax.tick_params(labelsize=6, length=2, pad=1)
            ax.grid(alpha=0.3, linewidth=0.5)
            fig.tight_layout(pad=0.3)
            path = args.out / f"{name}.png"
            fig.savefig(path)
            plt.close(fig)
            print(f"{path.relative_to(ROOT)}: {overrides}")


if __name__ == "__main__":
    main()
