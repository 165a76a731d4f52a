"""Hydra callbacks around a multirun: the MLflow store before the jobs start, a summary after they end."""

from __future__ import annotations

import logging
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from lrsweep import report, tracking

log = logging.getLogger(__name__)


class SweepCallback(Callback):
    """Creates the MLflow store and experiment once, before any job runs, and prints the sweep's table at the end.

    Creating the store up front matters: several jobs creating a fresh SQLite database at once race on its tables.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        tracking.connect(config.tracking.uri, config.tracking.experiment_name)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        client, experiment_id = tracking.connect(config.tracking.uri, config.tracking.experiment_name)
        sweep_id = tracking.sweep_tags(config.hydra.sweep.dir)[tracking.TAG_SWEEP_ID]
        runs = report.sweep_runs(client, experiment_id, sweep_id)
        print(f"\nSweep {sweep_id}: {len(runs)} MLflow runs in experiment {config.tracking.experiment_name!r}")
        print(report.runs_table(runs))
