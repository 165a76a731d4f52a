"""A multirun as one MLflow parent run, and the Hydra callback that opens and closes it.

callback       SweepCallback, the Hydra callback `conf/config.yaml` names
parent         Sweep (the parent run: opened, closed with its report) and open_parent
outcome        how the jobs ended: the parent's status (`judge`), its summary, unique run names
composition    the jobs composed as a launcher composes them, to count and check them before any starts
console        what a closing sweep prints
hydra_adapter  the Hydra internals relied on, pinned by tests/sweep/test_hydra_adapter.py
"""

from lrsweep.sweep.callback import SweepCallback
from lrsweep.sweep.composition import check_planned_jobs, job_config, job_tasks, planned_jobs, task_config
from lrsweep.sweep.outcome import Outcome, judge, rename_duplicates, summary
from lrsweep.sweep.parent import Sweep, open_parent
from lrsweep.tracking import Settled, settle_running, store_failure_message  # where they live now: tracking

__all__ = [
    "Outcome", "Settled", "Sweep", "SweepCallback",
    "check_planned_jobs", "job_config", "job_tasks", "judge", "open_parent", "planned_jobs", "rename_duplicates",
    "settle_running", "store_failure_message", "summary", "task_config",
]  # fmt: skip
