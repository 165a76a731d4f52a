"""Where successive halving leaves each run that goes on after a rung, so that an interrupted sweep, run again,
continues from its last completed rung (`lrsweep.run.halving`).

A run that goes on past a rung leaves its member's state there (`lrsweep.ml.member_state`: weights, optimizer slots,
step count) with its run id and scores, in a file named by its configuration and the halving settings, beside the
MLflow store (`<store folder>/halving/`; `~/.cache/lrsweep/halving/<store>/` for a tracking server). The file goes
when the run ends, however it ends, except by an interrupt: then a rerun finds it, opens a new run holding the
interrupted one's metrics up to the rung (`tracking.copy_metrics`) and trains on from there.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

from lrsweep import tracking
from lrsweep.ml import member_state
from lrsweep.ml.member_state import MemberState
from lrsweep.run.callbacks import LR_STEP
from lrsweep.run.job import Job
from lrsweep.tracking.location import sqlite_path

TAG_RESUMED_FROM = "lrsweep.halving.resumed_from"  # on a run that went on from an interrupted one: that run's id
TAG_RESUMED_EPOCH = "lrsweep.halving.resumed_epoch"  # ... and the epochs it took over


@dataclass
class Checkpoint:
    """A run's state after a rung: its member's state, the epochs trained, its run id, its val_accuracy per epoch
    (what the rungs rank on), and its loss before training (the divergence rule's reference)."""

    state: MemberState
    epoch: int
    run_id: str
    scores: dict[int, float]
    starting_loss: float | None


def folder(tracking_uri: str) -> Path:
    database = sqlite_path(tracking_uri)
    if database is not None:
        return database.parent / "halving"
    digest = hashlib.sha1(tracking_uri.encode()).hexdigest()[:12]
    return Path.home() / ".cache" / "lrsweep" / "halving" / digest


def path(job: Job, halving: str) -> Path:
    """The checkpoint file of a job's configuration under these halving settings (`Halving.describe`)."""
    settings = hashlib.sha1(halving.encode()).hexdigest()[:8]
    return folder(job.cfg.tracking.uri) / f"{job.config_hash}-{settings}.npz"


def save(job: Job, halving: str, checkpoint: Checkpoint) -> None:
    notes = {
        "epoch": checkpoint.epoch,
        "run_id": checkpoint.run_id,
        "scores": {str(k): v for k, v in checkpoint.scores.items()},
        "starting_loss": checkpoint.starting_loss,
    }
    member_state.save(checkpoint.state, path(job, halving), notes)


def load(job: Job, halving: str) -> Checkpoint | None:
    """The job's checkpoint under these settings, if an interrupted sweep left one."""
    file = path(job, halving)
    if not file.is_file():
        return None
    state, notes = member_state.load(file)
    scores = {int(k): float(v) for k, v in notes["scores"].items()}
    return Checkpoint(state, int(notes["epoch"]), notes["run_id"], scores, notes["starting_loss"])


def drop(job: Job, halving: str) -> None:
    path(job, halving).unlink(missing_ok=True)


def take_over(client: MlflowClient, checkpoint: Checkpoint, run_id: str) -> None:
    """Copies the interrupted run's metrics up to the checkpoint (epochs before it, per-step LR before its step
    count) into the run that goes on, and tags it with where it came from."""

    def before(key: str, step: int) -> bool:
        return step < (checkpoint.state.iterations if key == LR_STEP else checkpoint.epoch)

    tracking.copy_metrics(client, checkpoint.run_id, run_id, before)
    tags = {TAG_RESUMED_FROM: checkpoint.run_id, TAG_RESUMED_EPOCH: str(checkpoint.epoch)}
    tracking.set_tags(client, run_id, tags)
