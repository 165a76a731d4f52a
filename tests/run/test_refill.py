"""A search whose freed pack places are refilled (`hydra.sweeper.refill`, asynchronous as ASHA): pruned trials stop,
new trials join the runs that go on in new packs at other epochs, and every run has the numbers the same
configuration gets trained to its end in plain batches, up to where it stopped."""

from __future__ import annotations

import os
import re
import signal
import sqlite3

import optuna
import pytest
from optuna.trial import TrialState

from hydra_plugins.lrsweep_sweeper._study import NOT_RUN, default_storage
from lrsweep import tracking
from tests.conftest import TINY, train
from tests.run.test_halving import by_hash
from tests.sweep.test_faults import start_train, wait_for

EPOCHS = 4
# The warm-up grid search (6 x 6 initial x final LR, Adam) with Optuna's successive-halving pruner. All 8 trials are
# TPE's random start-up trials, which do not depend on earlier outcomes: both searches below ask the same ones.
SEARCH = [
    "+experiment=warmup_grid_search",
    "hydra.sweeper.n_trials=8",
    "hydra.sweeper.n_jobs=3",
    "hydra.sweeper.sampler.n_startup_trials=8",
    "hydra.sweeper.refill=true",  # auto trains the fused MLP in batches
    f"training.epochs={EPOCHS}",
    "tracking.log_every_n_steps=3",  # 8 steps an epoch: a member ahead logs at its own multiples of 3
    "backend=jax",
    *TINY,
]  # fmt: skip
METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "lr_step")
STEPS_PER_EPOCH = 8  # TINY: 512 training examples, batches of 64
# Measured: the largest difference between a refilled run and its run in plain batches, over every metric and step,
# was 7e-8 (float32 rounding: a fused pack of another width sums its products in another order, as for halving).
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def searches(tmp_path_factory):
    """(the refilled search's folder and output, the same trials in batches of 3, each trained to its end)."""
    refilled = tmp_path_factory.mktemp("refilled")
    output = train(refilled, *SEARCH)
    plain = tmp_path_factory.mktemp("plain")
    train(plain, *SEARCH, "hydra.sweeper.pruner=null", "hydra.sweeper.refill=false")
    return refilled, output.stdout + output.stderr, plain


def histories(client, run) -> dict[str, list[tuple[int, float]]]:
    """(step, value) of each metric, by step."""
    return {
        metric: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, metric))
        for metric in METRICS
    }


def test_refilled_runs_match_their_runs_trained_to_the_end(searches):
    refilled, output, plain = searches
    client, runs = by_hash(refilled)
    plain_client, full = by_hash(plain)
    assert set(runs) == set(full) and {run.info.status for run in runs.values()} == {"FINISHED"}
    trained = 0
    for key, run in runs.items():
        mine, theirs = histories(client, run), histories(plain_client, full[key])
        stopped = run.data.tags.get(tracking.TAG_STOPPED_EPOCH)
        epochs = int(stopped) if stopped else EPOCHS
        trained += epochs
        for metric in METRICS:
            end = epochs * STEPS_PER_EPOCH if metric == "lr_step" else epochs  # the steps it trained
            expected = [(step, value) for step, value in theirs[metric] if step < end]
            assert [step for step, _ in mine[metric]] == [step for step, _ in expected], (run.info.run_name, metric)
            gap = max(abs(a[1] - b[1]) for a, b in zip(mine[metric], expected, strict=True))
            assert gap <= TOLERANCE, (run.info.run_name, metric, gap)
        assert ("test_accuracy" in run.data.metrics) == (stopped is None)
        if stopped is None:
            assert run.data.metrics["test_accuracy"] == pytest.approx(full[key].data.metrics["test_accuracy"])
    assert trained < EPOCHS * len(runs)  # the pruned runs cost nothing after their last epoch

    # New trials did join runs that went on: packs whose members stood at different epochs (more than one data
    # group, all members having seed 0), each freed place refilled.
    groups = [int(g) for g in re.findall(r"Pack \S+/refill\d+: \d+ runs .*? in one model, (\d+) data group", output)]
    assert max(groups) > 1, groups


def test_the_study_holds_every_trial_pruned_or_complete(searches):
    refilled, _, _ = searches
    study = optuna.load_study(study_name="warmup_grid_search", storage=default_storage(str(refilled / "mlruns")))
    client, runs = by_hash(refilled)
    by_trial = {int(run.data.tags[tracking.TAG_OPTUNA_TRIAL]): run for run in runs.values()}
    states = {trial.number: trial.state for trial in study.trials}
    assert sorted(states) == list(range(8)) and TrialState.PRUNED in states.values()
    assert set(states.values()) <= {TrialState.PRUNED, TrialState.COMPLETE}
    for number, run in by_trial.items():
        trial = study.trials[number]
        history = sorted(client.get_metric_history(run.info.run_id, "val_accuracy"), key=lambda m: m.step)
        assert trial.intermediate_values == {m.step: m.value for m in history}
        if states[number] == TrialState.PRUNED:
            assert run.data.tags[tracking.TAG_OPTUNA_PRUNED] == "true"
            assert int(run.data.tags[tracking.TAG_STOPPED_EPOCH]) == len(history) < EPOCHS
        else:
            assert trial.value == pytest.approx(history[-1].value) and len(history) == EPOCHS


def job_statuses(tmp_path) -> list[str]:
    """The statuses of the job runs so far (read-only SQL: the search is writing)."""
    db = tmp_path / "mlruns" / "mlflow.db"
    if not db.exists():
        return []
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = connection.execute(
            "SELECT r.status FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
            f"WHERE t.key = '{tracking.TAG_ROLE}' AND t.value = 'job'"
        ).fetchall()
    except sqlite3.OperationalError:  # the tables are still being made
        return []
    finally:
        connection.close()
    return [status for (status,) in rows]


@pytest.mark.timeout(600)
def test_ctrl_c_mid_refill_leaves_no_trial_running_and_the_same_command_finishes_the_study(tmp_path):
    # Threshold 0.99: every trial is pruned after its first epoch, so places free and refill at every epoch's end.
    search = [
        "+experiment=warmup_grid_search", "hydra.sweeper.n_trials=10", "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.refill=true", "hydra.sweeper.pruner=null",
        "hydra.sweeper.pruner={_target_: optuna.pruners.ThresholdPruner, lower: 0.99, n_warmup_steps: 0}",
        "training.epochs=3", "data.train_size=8000", "data.validation_size=512",
    ]  # fmt: skip
    process = start_train(tmp_path, *search, f"hydra.sweep.dir={tmp_path / 'first'}")
    refilled = lambda: (s := job_statuses(tmp_path)).count("FINISHED") >= 2 and "RUNNING" in s  # noqa: E731
    wait_for(refilled, what="two trials pruned and a run training in a place they freed")
    os.killpg(process.pid, signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output[-3000:]
    statuses = job_statuses(tmp_path)
    assert "RUNNING" not in statuses and "KILLED" in statuses and statuses.count("FINISHED") >= 2

    storage = default_storage(str(tmp_path / "mlruns"))
    trials = optuna.load_study(study_name="warmup_grid_search", storage=storage).trials
    assert {t.state for t in trials} <= {TrialState.PRUNED, TrialState.FAIL}
    interrupted = [t for t in trials if t.state == TrialState.FAIL]
    assert interrupted and all(NOT_RUN in t.user_attrs for t in interrupted)  # not counted toward n_trials

    train(tmp_path, "backend=jax", "training.verbose=0", *TINY, *search, f"hydra.sweep.dir={tmp_path / 'again'}")
    trials = optuna.load_study(study_name="warmup_grid_search", storage=storage).trials
    assert [t.number for t in trials] == list(range(len(trials)))  # numbers go on from the first run's
    assert sum(t.state == TrialState.PRUNED for t in trials) == 10  # n_trials counts what ran
    assert len(trials) == 10 + len(interrupted)  # the rerun asked the 10 - told trials still to run, no more
    assert "RUNNING" not in job_statuses(tmp_path)


def test_refill_auto_refills_models_packed_per_member_and_batches_the_fused_mlp(tmp_path):
    # auto (the default): the fused MLP trains in batches (a pruned member costs it less than a rebuilt pack); a CNN
    # packed one copy per member is refilled (a pruned member would cost a whole member until its batch ended).
    search = ["+experiment=warmup_grid_search", "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=2",
              "training.epochs=1", "backend=jax", *TINY]  # fmt: skip
    mlp = train(tmp_path / "mlp", *search)
    said = mlp.stdout + mlp.stderr
    assert "Trials train in batches of hydra.sweeper.n_jobs=2: a pruned member of a fused MLP pack" in said
    assert "/refill1" not in said
    cnn = train(tmp_path / "cnn", *search, "model=cnn", "model.channels=4", "hydra.launcher.other_models=unroll")
    said = cnn.stdout + cnn.stderr
    assert "Trials train in batches" not in said
    assert re.search(r"Pack \S+/refill1: 2 runs .* trained as one copy of the model", said), said[-3000:]
