"""What identifies a job: its Hydra context, the hash of what its results depend on, its run's name, its sweep.

Pure functions of the config and of Hydra's job info; the MLflow store is `lrsweep.tracking`'s.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SEED_KEY = "training.seed"  # what tells apart the runs of one configuration

# Keys that do not change a run's results, left out of its config hash; all but those in RESULT_FREE_PARAMS are no
# MLflow params either (`NOT_PARAMS`).
NON_RESULT_KEYS = ("tracking", "training.verbose", "resume", "threads", "data.dir", "training.divergence_factor")
# `training.divergence_factor` only decides when a run that blows up is stopped as FAILED: a param all the same, to
# filter runs on. Leaving it out of the hash keeps the hashes of runs made before it existed (resume reuses FINISHED
# runs only).
RESULT_FREE_PARAMS = ("training.divergence_factor",)


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


def under(key: str, prefixes: Sequence[str]) -> bool:
    """Whether dotted `key` is one of `prefixes` or inside one of them (`tracking.uri` is under `tracking`)."""
    return any(key == prefix or key.startswith(prefix + ".") for prefix in prefixes)


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
        from omegaconf import OmegaConf

        multirun = hydra_cfg.mode == RunMode.MULTIRUN
        return cls(
            choices={k: str(v) for k, v in hydra_cfg.runtime.choices.items() if not k.startswith("hydra/")},
            overrides=tuple(hydra_cfg.overrides.task),
            sweep_dir=str(Path(hydra_cfg.sweep.dir).resolve()) if multirun else None,
            job_num=OmegaConf.select(hydra_cfg, "job.num") if multirun else None,  # unset while composing
        )


def claim_sweep_dir(path: str) -> str:
    """A sweep folder no other sweep has: `path`, else `path_2`, `path_3`, ... (created here, atomically).

    The default `multirun/<date>_<time>` changes once a second; two sweeps started in the same second would share
    it, and with it their sweep id, report and stop file. Used as the resolver `${lrsweep.claim:...}`, cached,
    so every job of a sweep (in this process or, through the copied cache, in a worker) sees the same folder.
    """
    base = Path(path)
    base.parent.mkdir(parents=True, exist_ok=True)
    for k in itertools.count(1):
        candidate = base if k == 1 else base.with_name(f"{base.name}_{k}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return str(candidate)
    raise AssertionError("unreachable")


def register_resolvers() -> None:
    """Registers `${lrsweep.claim:path}` (`claim_sweep_dir`) with OmegaConf, once per process."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("lrsweep.claim"):
        OmegaConf.register_new_resolver("lrsweep.claim", claim_sweep_dir, use_cache=True)


def sweep_id(sweep_dir: str | Path) -> str:
    """A sweep's id: the name of its multirun folder (e.g. `2026-11-26_13-05-22`)."""
    return Path(sweep_dir).resolve().name


def config_hash(resolved: Mapping[str, Any]) -> str:
    """A short hash of everything in the resolved config that can change a run's results.

    Keys in `NON_RESULT_KEYS` (verbosity, tracking, output locations, thread counts) are left out, so
    re-running a sweep with other such settings still recognises the work as done.
    """
    flat = {k: v for k, v in flatten(resolved).items() if not under(k, NON_RESULT_KEYS)}
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:16]


def overrides_dict(overrides: tuple[str, ...] | list[str]) -> dict[str, str]:
    """Hydra overrides as {key: value}, without `+`/`++` prefixes: `+strategy=adagrad` -> {"strategy": "adagrad"}."""
    pairs = (override.lstrip("+~").partition("=") for override in overrides)
    return {key: value for key, _, value in pairs}


SEED_LABEL = "s"  # how the seed reads in a run name: `s1 · ...`
DEFAULT_MODEL = "mlp"  # the tutorial's model, left out of run names; any other leads: `s0 · vit-adam-warmup`
NAME_SEPARATOR = " · "


def run_name(context: JobContext, config: Mapping[str, Any]) -> str:
    """A name that reads in a narrow column of MLflow's runs table: the seed, then what tells the run apart.

    The seed (short, so never cut off), the model's, optimizer's and schedule's overridden values (what a grid
    sweeps), then [model-]optimizer-schedule: `s1 · initial_lr=0.001 final_lr=0.02 · adam-linear`,
    `s0 · shape=cosine decay=cosine · adam-warmup` (the nested group `schedule/decay` and
    `schedule.warmup.shape`), `s0 · norm=pre · vit-adam-constant` (a model other than the tutorial's MLP), or
    `s0 · adam-linear` without such values. `tracking.run_name=...` replaces it.
    """

    def option(group: str) -> str:
        if group in context.choices:
            return context.choices[group]
        return str(config[group]["_target_"]).rsplit(".", 1)[-1].lower()

    values = []
    for key, value in overrides_dict(context.overrides).items():
        path = re.split(r"[./]", key)
        if path[0] in ("model", "optimizer", "schedule") and len(path) > 1:
            values.append(f"{path[-1]}={value}")
    model = context.choices.get("model", DEFAULT_MODEL)
    parts = [
        f"{SEED_LABEL}{config['training']['seed']}",
        " ".join(values),
        "-".join([*([model] if model != DEFAULT_MODEL else []), option("optimizer"), option("schedule")]),
    ]
    return NAME_SEPARATOR.join(part for part in parts if part)


def is_seed(part: str) -> bool:
    """Whether a part of a run name is its seed (`s1`)."""
    return re.fullmatch(re.escape(SEED_LABEL) + r"-?\d+", part) is not None


def without_seed(name: str) -> str:
    """A run's name without its seed: what names its configuration (`s0 · adam-linear` -> `adam-linear`).

    Names of the older form `adam-linear-seed0` lose their `-seed0` too.
    """
    parts = [part for part in name.split(NAME_SEPARATOR) if not is_seed(part)]
    return re.sub(r"-seed\d+$", "", NAME_SEPARATOR.join(parts))


def with_values(name: str, values: str) -> str:
    """A run's name with more values where its values go, after the seed: `s0 · <values> · adam-linear`."""
    parts = name.split(NAME_SEPARATOR)
    parts.insert(1 if is_seed(parts[0]) else 0, values)
    return NAME_SEPARATOR.join(parts)


# Config keys that are no MLflow params: how objects are built (`_target_`, `_partial_`), where things are
# (`data.dir`, `tracking.*`) and settings that change no result. They stay in the run's config.yaml artifact;
# the optimizer's and schedule's `_target_` become tags (`lrsweep.optimizer`, `lrsweep.schedule`).
NOT_PARAMS = tuple(key for key in NON_RESULT_KEYS if key not in RESULT_FREE_PARAMS)
NOT_PARAM_CHOICES = ("tracking", "hydra")  # Hydra config groups whose choice is no param


def job_params(resolved: Mapping[str, Any], choices: Mapping[str, str]) -> dict[str, str]:
    """The params a person filters and compares runs on, with the values as set (`optimizer.learning_rate` 0.01).

    The optimizer's and schedule's values, training values, data sizes, the model's values, the backend, and
    the Hydra group choices as `choice.<group>` (`choice.strategy`, `choice.optimizer`, `choice.schedule/decay`).
    """
    params = {
        key: value
        for key, value in flatten(resolved).items()
        if not any(part.startswith("_") and part.endswith("_") for part in key.split("."))
        and not under(key, NOT_PARAMS)
    }
    params.update(
        {f"choice.{group}": option for group, option in choices.items() if group.split("/")[0] not in NOT_PARAM_CHOICES}
    )
    return params
