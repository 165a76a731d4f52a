"""The MLflow client lrsweep writes with: MLflow's own, with every text it writes redacted (`lrsweep.core.secrets`).

A store URI may carry a password (`http://user:secret@host`, `postgresql://mlflow:secret@db/mlflow`), and the URI is
in each job's config (`config.yaml`), overrides (`overrides.yaml`, a tag), params and error tags. Everything lrsweep
records passes through this client, so no password reaches the store, whichever module records it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from lrsweep.core.secrets import redact


class Client(MlflowClient):
    """`MlflowClient`, its params, tags and text artifacts redacted before they are written.

    MLflow prints each ended run's link on a tracking server, the URI whole: with a password in the URI, this
    process asks MLflow not to (`MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT`); lrsweep's own output names the runs."""

    def __init__(self, tracking_uri: str | None = None, registry_uri: str | None = None, **kwargs: Any) -> None:
        super().__init__(tracking_uri, registry_uri, **kwargs)
        if redact(self.tracking_uri) != self.tracking_uri:
            os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"

    def create_run(self, experiment_id: str, start_time: int | None = None, tags: dict[str, Any] | None = None,
                   run_name: str | None = None):  # fmt: skip
        tags = None if tags is None else {key: redact(str(value)) for key, value in tags.items()}
        return super().create_run(experiment_id, start_time, tags, None if run_name is None else redact(run_name))

    def log_batch(self, run_id: str, metrics: Sequence[Metric] = (), params: Sequence[Param] = (),
                  tags: Sequence[RunTag] = (), synchronous: bool | None = None):  # fmt: skip
        params = [Param(p.key, redact(str(p.value))) for p in params]
        tags = [RunTag(t.key, redact(str(t.value))) for t in tags]
        return super().log_batch(run_id, metrics, params, tags, synchronous=synchronous)

    def set_tag(self, run_id: str, key: str, value: Any, synchronous: bool | None = None):
        return super().set_tag(run_id, key, redact(str(value)), synchronous=synchronous)

    def log_param(self, run_id: str, key: str, value: Any, synchronous: bool | None = None):
        return super().log_param(run_id, key, redact(str(value)), synchronous=synchronous)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        super().log_text(run_id, redact(text), artifact_file)
