"""Opening an MLflow store: the URI made absolute, the server or SQLite file checked, the experiment found or made."""

from __future__ import annotations

import contextlib
import re
import sqlite3
from pathlib import Path
from typing import Any, Literal, overload

import requests
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from lrsweep.core.errors import StoreError, first_line
from lrsweep.core.secrets import redact
from lrsweep.tracking import mlflow_adapter, store
from lrsweep.tracking.client import Client
from lrsweep.tracking.disk_full import hold_back_mlflow_noise


def normalize_uri(uri: str) -> str:
    """Makes a relative SQLite URI absolute so that every process agrees on it; creates nothing.

    `sqlite:///mlruns/mlflow.db` is relative to the working directory; other URIs pass through unchanged.
    """
    path = store.sqlite_path(uri)
    return uri if path is None else store.SQLITE + str(path.resolve())


def _artifact_location(uri: str, experiment_name: str) -> str | None:
    """Artifacts of a SQLite store live beside the database: <db folder>/<experiment>/<run id>/artifacts."""
    if not uri.startswith(store.SQLITE):
        return None  # a tracking server decides where artifacts go
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment_name)
    return (Path(uri[len(store.SQLITE) :]).parent / slug).as_uri()


def check_server(uri: str, timeout: float = store.HTTP_TIMEOUT) -> None:
    """Fails fast when a tracking server does not answer (MLflow's own client would retry for minutes).

    Raises:
        StoreError: naming the URI and how to start a server.
    """
    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=timeout).raise_for_status()
    except requests.RequestException as e:
        raise StoreError(
            f"No MLflow tracking server answers at tracking.uri={uri} ({type(e).__name__}). Start one, e.g. "
            "`mlflow server --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///mlruns/mlflow.db`, "
            "or fix `tracking.uri`."
        ) from e


def _store_failures() -> tuple[type[BaseException], ...]:
    """What MLflow raises when it cannot open or create a store, wrapped into a StoreError naming the URI.

    Imported here, not at the top: MLflow imports SQLAlchemy and Alembic only for a SQL store (slow imports).
    """
    from alembic.util.exc import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    return MlflowException, SQLAlchemyError, CommandError, OSError, sqlite3.Error, requests.RequestException


@overload
def connect(
    uri: str, experiment_name: str, *, create: Literal[True] = ..., http_timeout: int = ..., http_max_retries: int = ...
) -> tuple[MlflowClient, str]: ...


@overload
def connect(
    uri: str, experiment_name: str, *, create: bool, http_timeout: int = ..., http_max_retries: int = ...
) -> tuple[MlflowClient, str] | None: ...


def connect(
    uri: str,
    experiment_name: str,
    *,
    create: bool = True,
    http_timeout: int = store.HTTP_TIMEOUT,
    http_max_retries: int = store.HTTP_MAX_RETRIES,
) -> tuple[MlflowClient, str] | None:
    """Opens the store (creating the SQLite database and the experiment if needed); returns a client and the id.

    Every way the store can be unusable is a `StoreError` within seconds, and then nothing was created: a server
    that does not answer, a SQLite folder that cannot be created or written, a file that is not a SQLite database
    or is damaged, a schema of an older or newer MLflow (`lrsweep.tracking.store`). A fresh SQLite store is created
    under a lock on its folder, so processes starting together on it do not collide. MLflow's HTTP client is set to
    give up on a server within `store.http_call_bound(http_timeout, http_max_retries)` seconds per call (33 s by
    default), and MLflow's own log of a write a full disk refused, and of its engine retries, goes to the log file
    instead of the console (`disk_full.hold_back_mlflow_noise`).

    Args:
        uri: `tracking.uri`; a relative SQLite path is taken from the working directory.
        experiment_name: `tracking.experiment_name`.
        create: False: create nothing, and return None when there is no store or no such experiment yet (a missing
            or empty SQLite file stays missing or empty).
        http_timeout: `tracking.http_timeout`, seconds per HTTP request.
        http_max_retries: `tracking.http_max_retries`, retries of a failed HTTP request.

    Raises:
        StoreError: the store cannot be used, naming the URI or path, what is wrong and the fix.
        ValueError: the experiment is deleted, or an HTTP setting is out of range.
    """
    store.http_settings(http_timeout, http_max_retries)
    hold_back_mlflow_noise()
    given, uri = uri, normalize_uri(uri)
    if uri.startswith(("http://", "https://")):
        check_server(uri, http_timeout)
    path = store.sqlite_path(uri)
    lock = contextlib.nullcontext(True)
    if path is not None:
        # Checked as the user wrote it (`/proc/self/...`, not `/proc/1234/...`), the messages naming that value.
        lock = store.prepare_sqlite(given, store.sqlite_path(given) or path, create)
        if lock is None:
            return None
    try:
        with lock as go_on:
            if not go_on:
                return None
            mlflow_adapter.quick_engine_retries()
            return _experiment(Client(tracking_uri=uri), experiment_name, create)
    except StoreError:
        raise
    except _store_failures() as e:
        raise store.as_store_error(e, uri) or StoreError(
            f"Cannot use the MLflow store tracking.uri={uri}: {type(e).__name__}: {first_line(e)}. "
            "Fix or restore the store, start the server, or choose another `tracking.uri`."
        ) from e


def _experiment(client: MlflowClient, experiment_name: str, create: bool) -> tuple[MlflowClient, str] | None:
    """The client and the experiment's id, creating the experiment if `create` (else None when there is none)."""
    uri = client.tracking_uri
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        if not create:
            return None
        try:
            return client, client.create_experiment(
                experiment_name, artifact_location=_artifact_location(uri, experiment_name)
            )
        except MlflowException:  # another process (with no lock: a server's store) created it meanwhile
            experiment = client.get_experiment_by_name(experiment_name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        raise ValueError(
            f"MLflow experiment {experiment_name!r} is deleted in {redact(uri)}. Restore it "
            f"(`mlflow experiments restore --experiment-id {experiment.experiment_id}`) "
            "or choose another `tracking.experiment_name`."
        )
    return client, experiment.experiment_id


def connect_config(tracking_cfg: Any, create: bool = True) -> tuple[MlflowClient, str] | None:
    """`connect` with the settings of the config group `tracking` (uri, experiment_name, http_timeout, ...)."""
    return connect(
        tracking_cfg.uri,
        tracking_cfg.experiment_name,
        create=create,
        http_timeout=tracking_cfg.get("http_timeout", store.HTTP_TIMEOUT),
        http_max_retries=tracking_cfg.get("http_max_retries", store.HTTP_MAX_RETRIES),
    )
