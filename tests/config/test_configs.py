"""Every option of every config group composes and instantiates (Hydra compose API, no training)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate

from lrsweep.ml.schedules import KerasSchedule, Schedule
from tests.conftest import CONF_DIR


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def compose_config(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def build_optimizer(cfg, steps_per_epoch: int = 10):
    schedule = instantiate(cfg.schedule)(
        steps_per_epoch=steps_per_epoch, total_steps=cfg.training.epochs * steps_per_epoch
    )
    return schedule, instantiate(cfg.optimizer, learning_rate=KerasSchedule(schedule))


def test_groups_have_the_expected_options():
    assert options("optimizer") == ["adadelta", "adagrad", "adam", "rmsprop", "sgd"]
    assert {"constant", "linear"} <= set(options("schedule"))
    assert options("strategy") == [
        "adadelta", "adagrad", "adam_constant", "adam_linear", "no_warmup", "tuned_warmup", "untuned_warmup",
    ]  # fmt: skip
    assert options("model") == ["cnn", "mlp", "vit"]


@pytest.mark.parametrize("optimizer", options("optimizer"))
@pytest.mark.parametrize("schedule", options("schedule"))
def test_every_optimizer_and_schedule_instantiates(optimizer, schedule):
    cfg = compose_config(f"optimizer={optimizer}", f"schedule={schedule}")
    if schedule == "untuned" and "beta_2" not in cfg.optimizer:  # the untuned rules need Adam's beta_2
        with pytest.raises(ValueError, match="`beta_2` must be read from an Adam-type optimizer"):
            build_optimizer(cfg)
        return
    built_schedule, built_optimizer = build_optimizer(cfg)
    assert isinstance(built_schedule, Schedule)
    assert isinstance(built_optimizer, keras.optimizers.Optimizer)
    assert type(built_optimizer).__name__.lower() == optimizer


def test_model_and_defaults_match_the_tutorial():
    cfg = compose_config()
    assert (cfg.optimizer._target_, cfg.optimizer.learning_rate) == ("keras.optimizers.Adam", 0.01)
    assert (cfg.training.epochs, cfg.training.batch_size, cfg.backend) == (5, 32, "tensorflow")
    model = instantiate(cfg.model)
    assert [type(layer).__name__ for layer in model.layers] == ["Flatten", "Dense", "Dense"]
    assert model.layers[1].units == 128 and model.layers[2].units == 10
    assert model.count_params() == 784 * 128 + 128 + 128 * 10 + 10


@pytest.mark.parametrize("model", options("model"))
def test_every_model_builds_an_uncompiled_model_of_ten_logits(model):
    built = instantiate(compose_config(f"model={model}").model)
    assert isinstance(built, keras.Model) and built.name == model and not built.compiled
    assert tuple(built(np.zeros((2, 28, 28), "float32")).shape) == (2, 10)


@pytest.mark.parametrize(
    ("optimizer", "expected"),
    [
        ("adagrad", {"learning_rate": 0.001, "initial_accumulator_value": 0.1, "epsilon": 1e-7}),
        ("adadelta", {"learning_rate": 0.001, "rho": 0.95, "epsilon": 1e-7}),
    ],
)
def test_adaptive_optimizers_have_the_tutorial_settings(optimizer, expected):
    schedule, built = build_optimizer(compose_config(f"optimizer={optimizer}"))
    assert schedule.config["value"] == expected["learning_rate"]
    for key, value in expected.items():
        if key != "learning_rate":
            assert getattr(built, key) == pytest.approx(value)


@pytest.mark.parametrize("decay", sorted(p.stem for p in (CONF_DIR / "schedule" / "decay").glob("*.yaml")))
@pytest.mark.parametrize("schedule", ["warmup", "untuned"])
def test_every_decay_follows_every_warmup(schedule, decay):
    cfg = compose_config(f"schedule={schedule}", f"schedule/decay={decay}")
    built_schedule, _ = build_optimizer(cfg)
    assert built_schedule.config["decay"]["_target_"] == cfg.schedule.decay._target_
    assert built_schedule.config["peak_lr"] == cfg.optimizer.learning_rate


def test_warmup_sweep_keys_and_untuned_beta_2_come_from_the_config():
    cfg = compose_config("schedule=warmup", "schedule.warmup.shape=cosine", "schedule.warmup.length=0.5")
    assert (cfg.schedule.warmup.shape, cfg.schedule.warmup.length, cfg.schedule.decay._target_) == (
        "cosine",
        0.5,
        "lrsweep.schedules.hold",
    )
    cfg = compose_config("schedule=untuned", "optimizer.beta_2=0.99", "optimizer.learning_rate=0.002")
    assert (cfg.schedule.beta_2, cfg.schedule.peak_lr) == (0.99, 0.002)
    assert compose_config("schedule=untuned", "optimizer=sgd").schedule.beta_2 is None


def test_linear_warms_up_to_the_optimizer_lr_by_default():
    cfg = compose_config("schedule=linear", "optimizer.learning_rate=0.02")
    assert (cfg.schedule.initial_lr, cfg.schedule.final_lr, cfg.schedule.warmup_epochs) == (0.005, 0.02, 5)
    assert compose_config("schedule=linear", "schedule.final_lr=0.03").schedule.final_lr == 0.03


@pytest.mark.parametrize(
    ("experiment", "strategy", "expected"),
    [
        ("tutorial", "adam_constant", ("Adam", "constant")),
        ("tutorial", "adam_linear", ("Adam", "linear_warmup")),
        ("tutorial", "adagrad", ("Adagrad", "constant")),
        ("tutorial", "adadelta", ("Adadelta", "constant")),
        ("warmup_rules", "no_warmup", ("Adam", "constant")),
        ("warmup_rules", "untuned_warmup", ("Adam", "untuned_warmup")),
        ("warmup_rules", "tuned_warmup", ("Adam", "warmup_then_decay")),
    ],
)
def test_strategies_select_optimizer_and_schedule(experiment, strategy, expected):
    cfg = compose_config(f"+experiment={experiment}", f"+strategy={strategy}")
    assert (cfg.optimizer._target_.rsplit(".", 1)[1], cfg.schedule._target_.rsplit(".", 1)[1]) == expected
    schedule, _ = build_optimizer(cfg, steps_per_epoch=100)
    if strategy in ("untuned_warmup", "tuned_warmup"):  # from near 0 to the target LR 0.003 over their length
        length = 2000 if strategy == "untuned_warmup" else cfg.schedule.warmup.length
        assert float(schedule(0)) < 0.003 / 50 and float(schedule(length)) == pytest.approx(0.003)
        assert float(schedule(length // 2)) == pytest.approx(0.0015, rel=0.02)
    elif strategy == "no_warmup":
        assert float(schedule(0)) == pytest.approx(0.003)


def test_every_strategy_is_in_an_experiment():
    swept = set()
    for experiment in options("experiment"):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=[f"+experiment={experiment}"], return_hydra_config=True)
        swept |= set(str((cfg.hydra.sweeper.get("params") or {}).get("+strategy", "")).split(","))
    assert set(options("strategy")) <= swept


def test_tutorial_experiment_sweeps_the_four_strategies():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["+experiment=tutorial"], return_hydra_config=True)
    assert cfg.hydra.sweeper.params["+strategy"] == "adam_constant,adam_linear,adagrad,adadelta"


def test_unknown_option_is_a_clear_error():
    with pytest.raises(ConfigCompositionException, match="Could not find 'optimizer/adamw'"):
        compose_config("optimizer=adamw")
