"""MLflow bookkeeping: the store, experiments, one run per job, and what identifies a job and its sweep."""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

TAG_SWEEP_ID = "lrsweep.sweep_id"
TAG_SWEEP_DIR = "lrsweep.sweep_dir"
TAG_ERROR = "lrsweep.error"
_SQLITE = "sqlite:///"


def normalize_uri(uri: str) -> str:
    """Makes a relative SQLite URI absolute (and creates its folder) so that every process agrees on it.

    `sqlite:///mlruns/mlflow.db` is relative to the working directory; other URIs pass through unchanged.
    """
    if not uri.startswith(_SQLITE):
        return uri
    path = Path(uri[len(_SQLITE) :]).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return _SQLITE + str(path)


def _artifact_location(uri: str, experiment_name: str) -> str | None:
    """Artifacts of a SQLite store live beside the database: <db folder>/<experiment>/<run id>/artifacts."""
    if not uri.startswith(_SQLITE):
        return None  # a tracking server decides where artifacts go
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment_name)
    return (Path(uri[len(_SQLITE) :]).parent / slug).as_uri()


def connect(uri: str, experiment_name: str) -> tuple[MlflowClient, str]:
    """Opens the store (creating the SQLite database if needed) and returns a client and the experiment id.

    Raises:
        ConnectionError: when the store cannot be reached, naming the URI and the fix.
    """
    uri = normalize_uri(uri)
    client = MlflowClient(tracking_uri=uri)
    try:
        experiment = client.get_experiment_by_name(experiment_name)
        if experiment is None:
            try:
                return client, client.create_experiment(
                    experiment_name, artifact_location=_artifact_location(uri, experiment_name)
                )
            except MlflowException:  # another process created it meanwhile
                experiment = client.get_experiment_by_name(experiment_name)
                if experiment is None:
                    raise
    except MlflowException as e:
        raise ConnectionError(
            f"Cannot use the MLflow store tracking.uri={uri} ({e}). Start the server or fix `tracking.uri`."
        ) from e
    if experiment.lifecycle_stage == "deleted":
        raise ValueError(
            f"MLflow experiment {experiment_name!r} is deleted in {uri}. Restore it "
            f"(`mlflow experiments restore --experiment-id {experiment.experiment_id}`) "
            "or choose another `tracking.experiment_name`."
        )
    return client, experiment.experiment_id


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
        return Path(self.sweep_dir).name if self.sweep_dir else None

    @classmethod
    def from_hydra(cls) -> JobContext:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized():
            return cls()
        hydra_cfg = HydraConfig.get()
        multirun = hydra_cfg.mode == RunMode.MULTIRUN
        return cls(
            choices={k: str(v) for k, v in hydra_cfg.runtime.choices.items() if not k.startswith("hydra/")},
            overrides=tuple(hydra_cfg.overrides.task),
            sweep_dir=str(Path(hydra_cfg.sweep.dir).resolve()) if multirun else None,
            job_num=hydra_cfg.job.num if multirun else None,
        )


def sweep_tags(sweep_dir: str | None) -> dict[str, str]:
    if not sweep_dir:
        return {}
    sweep_dir = str(Path(sweep_dir).resolve())
    return {TAG_SWEEP_ID: Path(sweep_dir).name, TAG_SWEEP_DIR: sweep_dir}


def run_name(context: JobContext, config: Mapping[str, Any]) -> str:
    """A name a person can read in the UI: optimizer-schedule, then any LR overrides, then the seed.

    E.g. `adam-linear-seed0`, or `adam-linear-initial_lr=0.001-final_lr=0.02-seed1` in a grid sweep.
    """

    def option(group: str) -> str:
        if group in context.choices:
            return context.choices[group]
        return str(config[group]["_target_"]).rsplit(".", 1)[-1].lower()

    parts = [option("optimizer"), option("schedule")]
    for override in context.overrides:
        key, _, value = override.lstrip("+~").partition("=")
        group, _, leaf = key.partition(".")
        if group in ("optimizer", "schedule") and leaf:
            parts.append(f"{leaf.rsplit('.', 1)[-1]}={value}")
    parts.append(f"seed{config['training']['seed']}")
    return "-".join(parts)


@contextlib.contextmanager
def job_run(
    client: MlflowClient,
    experiment_id: str,
    name: str,
    params: Mapping[str, str],
    tags: Mapping[str, str],
    artifacts: Mapping[str, str],
) -> Iterator[str]:
    """Opens one MLflow run for a job and always closes it: FINISHED, FAILED (an exception) or KILLED (Ctrl-C).

    Yields:
        The run id.
    """
    run = client.create_run(experiment_id, run_name=name, tags=dict(tags))
    run_id = run.info.run_id
    status = RunStatus.FAILED
    try:
        client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
        for path, text in artifacts.items():
            client.log_text(run_id, text, path)
        yield run_id
        status = RunStatus.FINISHED
    except KeyboardInterrupt:
        status = RunStatus.KILLED
        raise
    except BaseException as e:
        client.set_tag(run_id, TAG_ERROR, f"{type(e).__name__}: {e}"[:5000])
        raise
    finally:
        client.set_terminated(run_id, RunStatus.to_string(status))
        log.info("MLflow run %s (%s) ended %s", name, run_id, RunStatus.to_string(status))


def log_metrics(client: MlflowClient, run_id: str, metrics: Mapping[str, float], step: int) -> None:
    """Logs several metrics at one step in a single request."""
    timestamp = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), timestamp, step) for k, v in metrics.items()])


def set_tags(client: MlflowClient, run_id: str, tags: Mapping[str, str]) -> None:
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
