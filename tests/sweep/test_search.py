"""Search, not only grids: the Optuna (TPE) sweeper over the warm-up, its trials as ordinary MLflow runs."""

from __future__ import annotations

import math

import optuna
import yaml
from hydra import compose, initialize_config_dir

from lrsweep import tracking
from tests.conftest import CONF_DIR, TINY, job_runs, store, train


def test_search_config_is_a_tpe_study_maximising_over_the_warmup():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["+experiment=warmup_search"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    assert (sweeper.direction, sweeper.study_name, sweeper.n_trials) == ("maximize", "warmup_search", 10)
    assert set(sweeper.params) == {"schedule.warmup.initial_lr", "schedule.peak_lr", "schedule.warmup.length"}
    assert sweeper.params["schedule.warmup.initial_lr"].startswith("tag(log,")
    assert cfg.schedule._target_ == "lrsweep.schedules.warmup_then_decay"
    assert optuna.__version__ == "2.10.1"  # hydra-optuna-sweeper 1.3.0 needs optuna < 3


def test_optuna_search_on_tiny_data_produces_mlflow_runs(tmp_path):
    result = train(
        tmp_path,
        "+experiment=warmup_search",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.n_jobs=3",  # one batch of 3 trials, handed to the launcher at once: one pack
        "backend=jax",
        "training.epochs=2",
        "training.verbose=0",
        *TINY,
    )
    client, experiment_id = store(tmp_path)
    runs = list(job_runs(client, experiment_id).values())
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}
    assert len({r.data.tags[tracking.TAG_SWEEP_ID] for r in runs}) == 1
    assert {r.data.tags[tracking.TAG_PACK_SIZE] for r in runs} == {"3"}
    trials = []
    for run in runs:
        params = run.data.params
        initial_lr, peak_lr = float(params["schedule.warmup.initial_lr"]), float(params["schedule.peak_lr"])
        length = float(params["schedule.warmup.length"])
        assert 1e-6 <= initial_lr <= 1e-3 <= peak_lr <= 3e-2 and 0 <= length <= 2
        assert params["choice.schedule"] == "warmup"
        assert client.get_metric_history(run.info.run_id, "lr_step")  # the per-step LR is there too
        trials.append((run.data.metrics["val_accuracy"], initial_lr, peak_lr, length))
    assert len({t[1:] for t in trials}) == 3  # three different proposals

    # The sweeper maximised what train.py returned: the best trial is the run with the best val_accuracy.
    results = yaml.safe_load((tmp_path / "multirun" / "optimization_results.yaml").read_text())
    best_accuracy = max(t[0] for t in trials)
    assert math.isclose(results["best_value"], best_accuracy, rel_tol=1e-6)
    best_params = results["best_params"]
    best = (
        best_params["schedule.warmup.initial_lr"],
        best_params["schedule.peak_lr"],
        best_params["schedule.warmup.length"],
    )
    assert best in {t[1:] for t in trials if t[0] == best_accuracy}
    assert "Best value:" in result.stdout + result.stderr
