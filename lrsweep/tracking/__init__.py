"""Everything MLflow: the store (checked before MLflow touches it), runs and their tags, reading sweeps back.

    location        where a SQLite store lives, and whether a database can be there at all (`/proc` cannot)
    store           is a store usable? the checks, the creation lock, HTTP settings, `as_store_error`
    connection      `connect`: a client and the experiment id, or a `StoreError` within seconds
    tags            every tag and metric name lrsweep writes
    runs            a job's run: opened, its metrics logged, closed with a status; a sweep's summary
    readback        searching runs, a sweep read back (`load_sweep`), metric histories in bulk
    stale           runs left RUNNING by a process that is gone: found and ended KILLED
    claims          one live process at a time trains a configuration: a lock per config hash, dropped on exit
    disk_full       a full disk under the store or the sweep's files, in one line, once; MLflow's log of it held back
    mlflow_adapter  the MLflow internals relied on, pinned by tests/tracking/test_mlflow_adapter.py

The names below are the layer's interface: `from lrsweep import tracking; tracking.connect(...)`.
"""

from lrsweep.tracking import claims, store
from lrsweep.tracking.claims import Claim
from lrsweep.tracking.connection import check_server, connect, connect_config, normalize_uri
from lrsweep.tracking.disk_full import (
    disk_full,
    free_space,
    full_disk_said,
    note_full_disk_said,
    store_failure_message,
    store_full,
)
from lrsweep.tracking.readback import (
    SweepRuns,
    find_finished,
    find_job_run,
    find_stopped,
    find_sweep_run,
    latest_run,
    latest_sweep_id,
    load_sweep,
    metric_histories,
    reused_runs,
    search_all,
    sweep_runs,
)
from lrsweep.tracking.runs import (
    RunRecord,
    close_run,
    close_run_after,
    copy_metrics,
    float32_value,
    job_run,
    job_tags,
    log_metrics,
    log_summary,
    open_run,
    record_reuse,
    set_tags,
    sweep_tags,
)
from lrsweep.tracking.stale import (
    STALE_GRACE,
    Settled,
    end_stale,
    mark_stale,
    owner_tags,
    process_gone,
    process_token,
    settle_running,
)
from lrsweep.tracking.store import as_store_error
from lrsweep.tracking.tags import (
    HISTORY_METRICS,
    NOTE_LIMIT,
    PARAM_LIMIT,
    TAG_CONFIG_HASH,
    TAG_ERROR,
    TAG_FAILED_JOB_PREFIX,
    TAG_HALVING,
    TAG_HOST,
    TAG_JOB_NUM,
    TAG_NEVER_STARTED,
    TAG_NOTE,
    TAG_OPTIMIZER,
    TAG_OPTUNA_PRUNED,
    TAG_OPTUNA_STUDY,
    TAG_OPTUNA_TRIAL,
    TAG_OVERRIDES,
    TAG_PACK,
    TAG_PACK_MEMBER,
    TAG_PACK_SIZE,
    TAG_PARENT,
    TAG_PROCESS,
    TAG_REUSED_PREFIX,
    TAG_ROLE,
    TAG_SCHEDULE,
    TAG_STALE,
    TAG_STOPPED_EPOCH,
    TAG_STOPPED_RUNG,
    TAG_SWEEP_DIR,
    TAG_SWEEP_ID,
    TAG_VALIDATION,
)

__all__ = [
    "HISTORY_METRICS", "NOTE_LIMIT", "PARAM_LIMIT", "STALE_GRACE",
    "TAG_CONFIG_HASH", "TAG_ERROR", "TAG_FAILED_JOB_PREFIX", "TAG_HALVING", "TAG_HOST", "TAG_JOB_NUM",
    "TAG_NEVER_STARTED", "TAG_NOTE", "TAG_OPTIMIZER", "TAG_OPTUNA_PRUNED", "TAG_OPTUNA_STUDY", "TAG_OPTUNA_TRIAL",
    "TAG_OVERRIDES",
    "TAG_PACK", "TAG_PACK_MEMBER", "TAG_PACK_SIZE", "TAG_PARENT", "TAG_PROCESS", "TAG_REUSED_PREFIX", "TAG_ROLE",
    "TAG_SCHEDULE", "TAG_STALE", "TAG_STOPPED_EPOCH", "TAG_STOPPED_RUNG", "TAG_SWEEP_DIR", "TAG_SWEEP_ID",
    "TAG_VALIDATION",
    "Claim", "RunRecord", "Settled", "SweepRuns",
    "as_store_error", "check_server", "claims", "close_run", "close_run_after", "connect", "connect_config",
    "copy_metrics", "disk_full",
    "end_stale", "find_finished", "find_job_run", "find_stopped", "find_sweep_run", "float32_value", "free_space",
    "full_disk_said",
    "job_run", "job_tags",
    "latest_run", "latest_sweep_id", "load_sweep", "log_metrics", "log_summary", "mark_stale", "metric_histories",
    "normalize_uri", "note_full_disk_said", "open_run", "owner_tags", "process_gone", "process_token",
    "record_reuse", "reused_runs", "set_tags",
    "search_all", "settle_running", "store", "store_failure_message", "store_full",
    "sweep_runs", "sweep_tags",
]  # fmt: skip
