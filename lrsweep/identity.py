"""What identifies a job: its Hydra context, the hash of what its results depend on, its run's name, its sweep.

Pure functions of the config and of Hydra's job info; the MLflow store is `lrsweep.tracking`'s.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Keys that do not change a run's results, left out of its config hash.
NON_RESULT_KEYS = ("tracking", "training.verbose", "resume", "threads", "data.dir")


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flattens nested mappings to dotted keys with string values, for MLflow params."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = "None" if value is None else str(value)
    return flat


@dataclass(frozen=True)
class JobContext:
    """What Hydra knows about the running job; empty outside a Hydra app (e.g. the compose API)."""

    choices: Mapping[str, str] = field(default_factory=dict)
    overrides: tuple[str, ...] = ()
    sweep_dir: str | None = None
    job_num: int | None = None

    @property
    def sweep_id(self) -> str | None:
        return sweep_id(self.sweep_dir) if self.sweep_dir else None

    @classmethod
    def from_hydra(cls) -> JobContext:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return cls()
        return cls.from_config(HydraConfig.get())

    @classmethod
    def from_config(cls, hydra_cfg: Any) -> JobContext:
        """From a job's `hydra` config node (what HydraConfig holds while the job runs)."""
        from hydra.types import RunMode

        multirun = hydra_cfg.mode == RunMode.MULTIRUN
        return cls(
            choices={k: str(v) for k, v in hydra_cfg.runtime.choices.items() if not k.startswith("hydra/")},
            overrides=tuple(hydra_cfg.overrides.task),
            sweep_dir=str(Path(hydra_cfg.sweep.dir).resolve()) if multirun else None,
            job_num=hydra_cfg.job.num if multirun else None,
        )


def sweep_id(sweep_dir: str | Path) -> str:
    """A sweep's id: the name of its multirun folder (e.g. `2026-11-26_13-05-22`)."""
    return Path(sweep_dir).resolve().name


def config_hash(resolved: Mapping[str, Any]) -> str:
    """A short hash of everything in the resolved config that can change a run's results.

    Keys in `NON_RESULT_KEYS` (verbosity, tracking, output locations, thread counts) are left out, so
    re-running a sweep with other such settings still recognises the work as done.
    """
    flat = {
        k: v for k, v in flatten(resolved).items() if not any(k == x or k.startswith(x + ".") for x in NON_RESULT_KEYS)
    }
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:16]


def overrides_dict(overrides: tuple[str, ...] | list[str]) -> dict[str, str]:
    """Hydra overrides as {key: value}, without `+`/`++` prefixes: `+strategy=adagrad` -> {"strategy": "adagrad"}."""
    pairs = (override.lstrip("+~").partition("=") for override in overrides)
    return {key: value for key, _, value in pairs}


def run_name(context: JobContext, config: Mapping[str, Any]) -> str:
    """A name a person can read in the UI: optimizer-schedule, then its overridden values, then the seed.

    E.g. `adam-linear-seed0`, `adam-linear-initial_lr=0.001-final_lr=0.02-seed1` in a grid sweep, or
    `adam-warmup-decay=cosine-shape=linear-seed0` (the nested group `schedule/decay` and `schedule.warmup.shape`).
    """

    def option(group: str) -> str:
        if group in context.choices:
            return context.choices[group]
        return str(config[group]["_target_"]).rsplit(".", 1)[-1].lower()

    parts = [option("optimizer"), option("schedule")]
    for key, value in overrides_dict(context.overrides).items():
        path = re.split(r"[./]", key)
        if path[0] in ("optimizer", "schedule") and len(path) > 1:
            parts.append(f"{path[-1]}={value}")
    parts.append(f"seed{config['training']['seed']}")
    return "-".join(parts)
