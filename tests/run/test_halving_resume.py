"""An interrupted halving sweep, run again, goes on from its last completed rung: the configurations it stopped stay
stopped (their runs reused), the ones going on continue from their checkpoints in new runs, and they end with the
numbers the same configurations get trained straight through."""

from __future__ import annotations

import os
import signal
import sqlite3

import pytest

from lrsweep import tracking
from lrsweep.run import rung_checkpoints
from tests.conftest import TINY, store, train
from tests.sweep.test_faults import start_train, wait_for

SWEEP = ["optimizer.learning_rate=0.001,0.003,0.01,0.1", "training.seed=0,1", "training.epochs=9",
         "hydra.launcher.halving.eta=2", "data.train_size=8000", "data.validation_size=512"]  # fmt: skip
AS_STARTED = ["backend=jax", "training.verbose=0", *TINY]  # what `start_train` passes before the overrides
METRICS = ("loss", "val_loss", "accuracy", "val_accuracy", "lr")


def epochs_logged(tmp_path) -> int:
    """The most epochs a RUNNING run has logged (read-only SQL: the sweep is writing)."""
    db = tmp_path / "mlruns" / "mlflow.db"
    if not db.exists():
        return 0
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = connection.execute(
            "SELECT max(n) FROM (SELECT count(*) AS n FROM metrics m JOIN runs r ON r.run_uuid = m.run_uuid "
            "WHERE m.key = 'val_accuracy' AND r.status = 'RUNNING' GROUP BY m.run_uuid)"
        ).fetchone()
    except sqlite3.OperationalError:  # the tables are still being made
        return 0
    finally:
        connection.close()
    return row[0] or 0


def history(client, run_id: str) -> dict[str, list[float]]:
    return {
        key: [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)] for key in METRICS
    }


@pytest.mark.timeout(600)
def test_an_interrupted_halving_sweep_goes_on_from_its_last_rung(tmp_path):
    process = start_train(tmp_path, *SWEEP, f"hydra.sweep.dir={tmp_path / 'first'}")
    wait_for(lambda: epochs_logged(tmp_path) >= 3, what="a run in its third epoch (rungs after epochs 1, 2, 4, 8)")
    os.killpg(process.pid, signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output[-3000:]
    checkpoints = sorted((tmp_path / "mlruns" / "halving").glob("*.npz"))
    assert len(checkpoints) == 2  # the one configuration still going, 2 seeds

    again = train(tmp_path, *AS_STARTED, *SWEEP, f"hydra.sweep.dir={tmp_path / 'again'}")
    client, experiment_id = store(tmp_path)
    runs = {r.info.run_id: r for r in client.search_runs([experiment_id], f"tags.`{tracking.TAG_ROLE}` = 'job'")}
    first = {i: r for i, r in runs.items() if r.data.tags[tracking.TAG_SWEEP_ID] == "first"}
    second = [r for r in runs.values() if r.data.tags[tracking.TAG_SWEEP_ID] == "again"]
    assert len(first) == 8 and len(second) == 2  # only the two going on got new runs
    killed = [r for r in first.values() if r.info.status == "KILLED"]
    stopped = [r for r in first.values() if tracking.TAG_STOPPED_EPOCH in r.data.tags]
    assert len(killed) == 2 and len(stopped) == 6 and {r.info.status for r in stopped} == {"FINISHED"}
    assert again.stdout.count("by an earlier run of this sweep") + again.stderr.count("by an earlier run") == 6
    assert not list((tmp_path / "mlruns" / "halving").glob("*.npz"))  # gone once their runs ended

    for run in second:  # went on from the killed run's last rung, with its metrics before it
        source = first[run.data.tags[rung_checkpoints.TAG_RESUMED_FROM]]
        resumed = int(run.data.tags[rung_checkpoints.TAG_RESUMED_EPOCH])
        assert source.info.status == "KILLED" and resumed in (2, 4, 8) and run.info.status == "FINISHED"
        mine, theirs = history(client, run.info.run_id), history(client, source.info.run_id)
        for key in METRICS:
            assert len(mine[key]) == 9 and mine[key][:resumed] == theirs[key][:resumed]

    # Trained straight through, without halving or an interrupt: the same numbers.
    lr = second[0].data.params["optimizer.learning_rate"]
    straight = tmp_path / "straight"
    straight.mkdir()
    train(straight, *AS_STARTED, *[o for o in SWEEP if "learning_rate" not in o and "halving" not in o],
          f"optimizer.learning_rate={lr}")  # fmt: skip
    plain_client, plain_experiment = store(straight)
    plain = {r.data.params["training.seed"]: r for r in plain_client.search_runs(
        [plain_experiment], f"tags.`{tracking.TAG_ROLE}` = 'job'")}  # fmt: skip
    for run in second:
        mine, theirs = (
            history(client, run.info.run_id),
            history(plain_client, plain[run.data.params["training.seed"]].info.run_id),
        )
        for key in METRICS:
            gap = max(abs(a - b) for a, b in zip(mine[key], theirs[key], strict=True))
            assert gap <= 1e-6, (key, gap)
        assert run.data.metrics["test_accuracy"] == pytest.approx(
            plain[run.data.params["training.seed"]].data.metrics["test_accuracy"]
        )
