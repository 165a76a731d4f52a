"""Search, not only grids: lrsweep's Optuna sweeper (hydra/sweeper=optuna) over the warm-up, its trials ordinary
MLflow runs tagged with their trial numbers, its study kept in SQLite beside the MLflow store and resumed."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from hydra_plugins.lrsweep_sweeper._study import NOT_RUN, SearchSpace, default_storage, failed_if_raised, finished
from lrsweep import tracking
from lrsweep.core import identity
from tests.conftest import CONF_DIR, TINY, job_runs, store, train

SEARCH = ["+experiment=warmup_search", "backend=jax", "training.epochs=1", "training.verbose=0", *TINY]


def study(tmp_path: Path) -> optuna.Study:
    """The warm-up search's study, where the sweeper keeps it by default: beside the MLflow store of `train`."""
    return optuna.load_study(study_name="warmup_search", storage=f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}")


def trial_tags(runs) -> list[int]:
    return sorted(int(run.data.tags[tracking.TAG_OPTUNA_TRIAL]) for run in runs)


def test_search_config_is_a_tpe_study_maximising_over_the_warmup():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["+experiment=warmup_search"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.lrsweep_sweeper.optuna_sweeper.OptunaSweeper"
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    assert (sweeper.direction, sweeper.study_name, sweeper.n_trials) == ("maximize", "warmup_search", 10)
    assert sweeper.storage == "auto" and sweeper.pruner is None
    assert set(sweeper.params) == {"schedule.warmup.initial_lr", "schedule.peak_lr", "schedule.warmup.length"}
    assert sweeper.params["schedule.warmup.initial_lr"].startswith("tag(log,")
    assert cfg.schedule._target_ == "lrsweep.schedules.warmup_then_decay"
    assert cfg.tracking.tags == {}
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        tagged = compose(config_name="config", overrides=["+tracking.tags.team=vision", "++tracking.tags.a.b=1"])
        plain = compose(config_name="config")
    assert tagged.tracking.tags == {"team": "vision", "a": {"b": 1}}  # a run's tags `team` and `a.b`
    # Tags are no params and no part of what identifies a configuration: resume finds a FINISHED run by its values.
    tagged, plain = (OmegaConf.to_container(c, resolve=True) for c in (tagged, plain))
    assert identity.config_hash(tagged) == identity.config_hash(plain)
    assert identity.job_params(tagged, {}) == identity.job_params(plain, {})
    assert int(optuna.__version__.split(".")[0]) >= 4  # ask-and-tell with fixed distributions, SQLAlchemy 2


def test_the_study_is_stored_beside_the_mlflow_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert default_storage("sqlite:///mlruns/mlflow.db") == f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}"
    assert default_storage("sqlite:////data/store/mlflow.db") == "sqlite:////data/store/optuna.db"
    assert default_storage("file:///data/mlruns") == "sqlite:////data/mlruns/optuna.db"
    assert default_storage("mlruns") == f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}"
    assert default_storage("http://127.0.0.1:5000") == f"sqlite:///{tmp_path / 'optuna.db'}"  # a server: here


def test_the_search_space_is_hydras_sweep_grammar():
    space = SearchSpace.parse([
        "a=tag(log, interval(1e-6, 1e-3))", "b=interval(0, 2)", "c=choice(adam, sgd)", "d=range(1, 9, 2)",
        "e=range(0.0, 1.0, 0.25)", "f=3", "schedule/decay=cosine", "b=interval(0.0, 2.0)",
    ])  # fmt: skip
    assert space.distributions == {
        "a": FloatDistribution(1e-6, 1e-3, log=True),
        "c": CategoricalDistribution(["adam", "sgd"]),
        "d": IntDistribution(1, 7, step=2),  # Hydra's range: the stop is excluded, as the basic sweeper runs it
        "e": FloatDistribution(0.0, 0.75, step=0.25),
        "b": FloatDistribution(0.0, 2.0),  # the later line for a key replaces the earlier one
    }
    assert space.fixed == ("f=3", "schedule/decay=cosine")
    assert space.probe() == ["a=1e-06", "c=adam", "d=1", "e=0.0", "b=0.0", "f=3", "schedule/decay=cosine"]


@pytest.mark.parametrize(
    "lines, message",
    [
        (["a=glob(*)"], "`a`: Optuna cannot search a=glob(*); use interval(a, b), choice(x, y) or range(a, b)."),
        (["a=1"], "`hydra.sweeper.params` has nothing to search"),
        (["a=interval(1"], "`hydra.sweeper.params` or the command line:"),
    ],
)
def test_a_search_space_optuna_cannot_search_is_one_line_naming_it(lines, message):
    with pytest.raises(ValueError) as raised:
        SearchSpace.parse(lines)
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


def test_trials_that_never_ran_are_failed_and_do_not_count_toward_n_trials():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    held = optuna.create_study()  # in memory: the same trial states as in SQLite
    space = {"x": FloatDistribution(0.0, 1.0)}
    completed, failed = held.ask(space), held.ask(space)
    held.tell(completed, 0.5)
    held.tell(failed, state=TrialState.FAIL)  # its job ran and failed (e.g. diverged)
    refused = [held.ask(space), held.ask(space)]
    with pytest.raises(SystemExit), failed_if_raised(held, refused):
        raise SystemExit("lrsweep: 2 of 2 jobs of this sweep cannot run, so none was started:")
    assert [t.state for t in held.trials] == [TrialState.COMPLETE] + [TrialState.FAIL] * 3
    assert [t.user_attrs.get(NOT_RUN) for t in held.trials[2:]] == [
        "lrsweep: 2 of 2 jobs of this sweep cannot run, so none was started:"
    ] * 2
    assert finished(held) == 2
    running = held.ask(space)  # as a killed process leaves it: neither counted nor waited on
    assert running.number == 4 and finished(held) == 2


def test_optuna_search_on_tiny_data_produces_mlflow_runs(tmp_path):
    result = train(
        tmp_path,
        *SEARCH,
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.n_jobs=3",  # one batch of 3 trials, handed to the launcher at once: one pack
        "training.epochs=2",
    )
    client, experiment_id = store(tmp_path)
    runs = list(job_runs(client, experiment_id).values())
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}
    assert len({r.data.tags[tracking.TAG_SWEEP_ID] for r in runs}) == 1
    assert {r.data.tags[tracking.TAG_PACK_SIZE] for r in runs} == {"3"}
    assert trial_tags(runs) == [0, 1, 2]
    assert {r.data.tags[tracking.TAG_OPTUNA_STUDY] for r in runs} == {"warmup_search"}
    assert not any(key.startswith("tracking.") for r in runs for key in r.data.params)  # tags are no params
    trials = {}
    for run in runs:
        params = run.data.params
        initial_lr, peak_lr = float(params["schedule.warmup.initial_lr"]), float(params["schedule.peak_lr"])
        length = float(params["schedule.warmup.length"])
        assert 1e-6 <= initial_lr <= 1e-3 <= peak_lr <= 3e-2 and 0 <= length <= 2
        assert params["choice.schedule"] == "warmup"
        assert client.get_metric_history(run.info.run_id, "lr_step")  # the per-step LR is there too
        trials[int(run.data.tags[tracking.TAG_OPTUNA_TRIAL])] = (
            run.data.metrics["val_accuracy"],
            initial_lr,
            peak_lr,
            length,
        )
    assert len({t[1:] for t in trials.values()}) == 3  # three different proposals

    # Optuna holds the same trials: each told the value train.py returned, with the values its run was trained with.
    held = study(tmp_path).trials
    assert [(t.number, t.state) for t in held] == [
        (0, TrialState.COMPLETE),
        (1, TrialState.COMPLETE),
        (2, TrialState.COMPLETE),
    ]
    for t in held:
        accuracy, *values = trials[t.number]
        assert math.isclose(t.value, accuracy, rel_tol=1e-6)
        assert [
            t.params[k] for k in ("schedule.warmup.initial_lr", "schedule.peak_lr", "schedule.warmup.length")
        ] == values

    # The sweeper maximised what train.py returned: the best trial is the run with the best val_accuracy.
    results = yaml.safe_load((tmp_path / "multirun" / "optimization_results.yaml").read_text())
    best_accuracy = max(t[0] for t in trials.values())
    assert math.isclose(results["best_value"], best_accuracy, rel_tol=1e-6)
    assert trials[results["best_trial"]][0] == best_accuracy
    best_params = results["best_params"]
    best = (
        best_params["schedule.warmup.initial_lr"],
        best_params["schedule.peak_lr"],
        best_params["schedule.warmup.length"],
    )
    assert best == trials[results["best_trial"]][1:]
    output = result.stdout + result.stderr
    assert "Best value:" in output
    assert f"optuna-dashboard sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}" in output


@pytest.mark.timeout(600)
def test_the_same_command_again_resumes_the_study(tmp_path):
    train(tmp_path, *SEARCH, "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2")
    client, experiment_id = store(tmp_path)
    first = job_runs(client, experiment_id)
    assert trial_tags(first.values()) == [0, 1]

    # The same command with more trials, as a new run of it (its own sweep folder): trials 2 and 3 only.
    again = train(
        tmp_path, *SEARCH, "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2", f"hydra.sweep.dir={tmp_path / 'again'}"
    )
    assert "Optuna study 'warmup_search', 2 trials so far" in again.stdout + again.stderr
    resumed = job_runs(client, experiment_id, "again")
    assert trial_tags(resumed.values()) == [2, 3]  # the first two were not trained again
    everything = job_runs(client, experiment_id)
    assert len(everything) == 4 and {r.info.status for r in everything.values()} == {"FINISHED"}
    assert {r.info.run_id for r in first.values()} <= {r.info.run_id for r in everything.values()}
    held = study(tmp_path).trials
    assert [t.number for t in held] == [0, 1, 2, 3] and {t.state for t in held} == {TrialState.COMPLETE}
    assert len({tuple(t.params.values()) for t in held}) == 4  # the resumed sampler did not propose trials 0, 1 again

    # The study holds its n_trials already: a third run trains nothing and says the best trial again.
    done = train(tmp_path, *SEARCH, "hydra.sweeper.n_trials=4", f"hydra.sweep.dir={tmp_path / 'done'}")
    assert "Best value:" in done.stdout + done.stderr
    assert len(job_runs(client, experiment_id)) == 4 and len(study(tmp_path).trials) == 4


def test_failed_trials_are_failed_in_optuna_and_too_many_stop_the_search(tmp_path):
    result = train(
        tmp_path, *SEARCH, "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2", "hydra.sweeper.max_failure_rate=0.5",
        "schedule.peak_lr=interval(1e8, 1e9)", "schedule.warmup.length=0.0",  # every trial diverges at once
        check=False,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "lrsweep: 2 of 2 trials failed, more than hydra.sweeper.max_failure_rate=0.5" in result.stderr
    held = study(tmp_path).trials  # the first batch only: the search stopped there
    assert [(t.number, t.state) for t in held] == [(0, TrialState.FAIL), (1, TrialState.FAIL)]
    assert all(t.user_attrs["lrsweep.error"].startswith("training diverged in epoch 0") for t in held)
    client, experiment_id = store(tmp_path)
    runs = job_runs(client, experiment_id).values()
    assert trial_tags(runs) == [0, 1] and {r.info.status for r in runs} == {"FAILED"}
    assert not (tmp_path / "multirun" / "optimization_results.yaml").exists()  # no trial completed: no best one


def test_a_pruner_stops_the_trials_behind_inside_their_packs(tmp_path):
    # ThresholdPruner: a trial whose val_accuracy after an epoch is below 0.6 is pruned. Batches of 2 trials, not
    # refilled (tests/run/test_refill.py refills): a pruned member is frozen while the other trains on, and a pack
    # whose members are all pruned stops.
    train(
        tmp_path, "+experiment=warmup_grid_search", "hydra.sweeper.n_trials=6", "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.refill=false",
        "hydra.sweeper.pruner=null",
        "hydra.sweeper.pruner={_target_: optuna.pruners.ThresholdPruner, lower: 0.6, n_warmup_steps: 0}",
        "backend=jax", "training.epochs=3", *TINY,
    )  # fmt: skip
    client, experiment_id = store(tmp_path)
    runs = {int(r.data.tags[tracking.TAG_OPTUNA_TRIAL]): r for r in job_runs(client, experiment_id).values()}
    study = optuna.load_study(study_name="warmup_grid_search", storage=default_storage(str(tmp_path / "mlruns")))
    states = {trial.number: trial.state for trial in study.trials}
    twins = {
        t.number: t.user_attrs["lrsweep.same_as_trial"] for t in study.trials if "lrsweep.same_as_trial" in t.user_attrs
    }
    assert sorted(states) == list(range(6)) and sorted(runs) == sorted(set(states) - set(twins))  # repeats: no run
    assert all(states[number] == states[twin] for number, twin in twins.items())
    for number, run in runs.items():
        history = sorted(client.get_metric_history(run.info.run_id, "val_accuracy"), key=lambda m: m.step)
        assert run.info.status == "FINISHED"
        if history[0].value < 0.6:  # pruned after its first epoch: no more epochs, no test score
            assert states[number] == TrialState.PRUNED
            assert len(history) == 1 and run.data.tags[tracking.TAG_OPTUNA_PRUNED] == "true"
            assert run.data.tags[tracking.TAG_STOPPED_EPOCH] == "1" and "test_accuracy" not in run.data.metrics
            assert study.trials[number].intermediate_values == {0: history[0].value}
        else:
            assert states[number] == TrialState.COMPLETE and len(history) == 3
            assert study.trials[number].value == pytest.approx(history[-1].value)
            assert tracking.TAG_OPTUNA_PRUNED not in run.data.tags and "test_accuracy" in run.data.metrics
    packs: dict[str, set] = {}
    for number, run in runs.items():
        packs.setdefault(run.data.tags.get(tracking.TAG_PACK, f"alone {number}"), set()).add(states[number])
    # With seed 0: a pack whose trials were both pruned (it stopped after epoch 1), and one with one of each (a batch
    # whose two proposals were the same trained one run, alone).
    assert {TrialState.PRUNED} in packs.values() and {TrialState.PRUNED, TrialState.COMPLETE} in packs.values()


def test_a_batch_that_proposes_the_same_values_twice_trains_them_once(tmp_path):
    # 3 trials in one batch over 2 values: at least one proposal repeats another. It is not trained again: it is
    # told its twin's value, and says whose.
    train(
        tmp_path, *SEARCH, "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=3", "schedule.peak_lr=choice(0.01, 0.02)",
        "schedule.warmup.initial_lr=choice(0.001)", "schedule.warmup.length=choice(0.5)",
    )  # fmt: skip
    held = study(tmp_path).trials
    assert [t.state for t in held] == [TrialState.COMPLETE] * 3
    twins = {t.number: t.user_attrs["lrsweep.same_as_trial"] for t in held if "lrsweep.same_as_trial" in t.user_attrs}
    launched = [t for t in held if t.number not in twins]
    assert len(launched) == len({t.params["schedule.peak_lr"] for t in held}) and twins  # one per distinct value
    for number, twin in twins.items():
        assert held[number].params == held[twin].params and held[number].value == held[twin].value
    client, experiment_id = store(tmp_path)
    runs = list(job_runs(client, experiment_id).values())
    assert trial_tags(runs) == [t.number for t in launched]  # one run per distinct proposal
    for run in runs:
        trial = held[int(run.data.tags[tracking.TAG_OPTUNA_TRIAL])]
        assert math.isclose(trial.value, run.data.metrics["val_accuracy"], rel_tol=1e-6)
