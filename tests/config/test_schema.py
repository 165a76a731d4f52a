"""The config schema: wrong types refused when Hydra composes, ranges by `schema.check`, hashes as before."""

from __future__ import annotations

import math
import re
from pathlib import Path

import keras
import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lrsweep.config import schema
from lrsweep.core import identity
from tests.conftest import CONF_DIR, TINY, job_runs, store, train


def compose_config(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


# Types, at compose time ------------------------------------------------------------------------------------------

# (overrides, the key and the value OmegaConf names). Hydra prints "Error merging override <override>", then the
# cause: e.g. "Value 'maybe' is not a valid bool (type str)\n    full_key: resume".
WRONG_TYPES = [
    (["resume=maybe"], "resume", "Value 'maybe' is not a valid bool"),
    (["training.epochs=abc"], "training.epochs", "Value 'abc' of type 'str' could not be converted to Integer"),
    (["training.seed=1.5"], "training.seed", "Value '1.5' of type 'float' could not be converted to Integer"),
    (["optimizer.beta_1=abc"], "optimizer.beta_1", "Value 'abc' of type 'str' could not be converted to Float"),
    (["optimizer=sgd", "optimizer.nesterov=maybe"], "optimizer.nesterov", "Value 'maybe' is not a valid bool"),
    (["threads=1.5"], "threads", "Value '1.5' of type 'float' could not be converted to Integer"),
    (["model=vit", "model.width=wide"], "model.width", "Value 'wide' of type 'str' could not be converted to Integer"),
    (["data.train_size=half"], "data.train_size", "Value 'half' of type 'str' could not be converted to Integer"),
    (["tracking.effective_lr=often"], "tracking.effective_lr", "Value 'often' is not a valid bool"),
    (["tracking.http_max_retries=1.5"], "tracking.http_max_retries", "could not be converted to Integer"),
    (["training.divergence_factor=abc"], "training.divergence_factor", "could not be converted to Float"),
    (["schedule=linear", "schedule.warmup_epochs=abc"], "schedule.warmup_epochs", "could not be converted to Integer"),
    (["schedule=warmup", "schedule.warmup.initial_lr=abc"], "schedule.warmup.initial_lr", "converted to Float"),
    (["schedule=warmup", "schedule/decay=step", "schedule.decay.gamma=half"], "schedule.decay.gamma", "to Float"),
    (["schedule=linear", "schedule.final_lr=null"], "schedule.final_lr", "field 'schedule.final_lr' is not Optional"),
    (["optimizer=sgd", "optimizer.momentum=null"], "optimizer.momentum", "field 'optimizer.momentum' is not Optional"),
]


@pytest.mark.parametrize(("overrides", "key", "message"), WRONG_TYPES)
def test_a_value_of_the_wrong_type_is_refused_when_hydra_composes(overrides, key, message):
    with pytest.raises(ConfigCompositionException) as excinfo:
        compose_config(*overrides)
    assert str(excinfo.value) == f"Error merging override {overrides[-1]}"
    cause = str(excinfo.value.__cause__)
    assert message in cause and f"full_key: {key}\n" in cause + "\n"


def test_an_int_where_a_float_is_wanted_becomes_a_float_and_keras_takes_it():
    """`optimizer=sgd optimizer.momentum=0` was refused by Keras (it wants a float); the schema makes it 0.0."""
    cfg = compose_config("optimizer=sgd", "optimizer.momentum=0")
    assert type(cfg.optimizer.momentum) is float and cfg.optimizer.momentum == 0.0
    optimizer = instantiate(cfg.optimizer, learning_rate=0.01)
    assert isinstance(optimizer, keras.optimizers.SGD) and optimizer.momentum == 0.0
    rmsprop = instantiate(compose_config("optimizer=rmsprop", "optimizer.momentum=1", "optimizer.rho=0.5").optimizer)
    assert (rmsprop.momentum, rmsprop.rho) == (1.0, 0.5)
    # Schedule values too, read through an interpolation or set.
    cfg = compose_config("optimizer.learning_rate=1", "schedule=linear", "schedule.initial_lr=1")
    assert (type(cfg.schedule.initial_lr), type(cfg.schedule.final_lr)) == (float, float)


def test_booleans_follow_omegaconf():
    """true/false and YAML 1.1's yes/no/on/off are booleans; anything else is refused (above)."""
    assert compose_config("resume=false").resume is False
    assert compose_config("optimizer=sgd", "optimizer.nesterov=yes").optimizer.nesterov is True
    assert compose_config("tracking.effective_lr=off").tracking.effective_lr is False


# Ranges, checked by schema.check ---------------------------------------------------------------------------------

BAD_RANGES = [
    (["optimizer.beta_1=1.5"], "`optimizer.beta_1` must be a number in [0, 1). Received: optimizer.beta_1=1.5"),
    (["optimizer.beta_1=-0.1"], "`optimizer.beta_1` must be a number in [0, 1). Received: optimizer.beta_1=-0.1"),
    (["optimizer.beta_2=1"], "`optimizer.beta_2` must be a number in [0, 1). Received: optimizer.beta_2=1.0"),
    (["optimizer.epsilon=0"], "`optimizer.epsilon` must be a number in (0, inf). Received: optimizer.epsilon=0.0"),
    (
        ["optimizer.epsilon=-1e-7"],
        "`optimizer.epsilon` must be a number in (0, inf). Received: optimizer.epsilon=-1e-07",
    ),
    (
        ["optimizer=sgd", "optimizer.momentum=1.5"],
        "`optimizer.momentum` must be a number in [0, 1]. Received: optimizer.momentum=1.5",
    ),
    (
        ["optimizer=rmsprop", "optimizer.momentum=-0.5"],
        "`optimizer.momentum` must be a number in [0, 1]. Received: optimizer.momentum=-0.5",
    ),
    (
        ["optimizer=rmsprop", "optimizer.rho=0"],
        "`optimizer.rho` must be a number in (0, 1). Received: optimizer.rho=0.0",
    ),
    (
        ["optimizer=adadelta", "optimizer.rho=1"],
        "`optimizer.rho` must be a number in (0, 1). Received: optimizer.rho=1.0",
    ),
    (
        ["optimizer=adagrad", "optimizer.initial_accumulator_value=-0.1"],
        "`optimizer.initial_accumulator_value` must be a number in [0, inf). "
        "Received: optimizer.initial_accumulator_value=-0.1",
    ),
    (
        ["optimizer.learning_rate=-0.01"],
        "`optimizer.learning_rate` must be a finite learning rate > 0. Received: optimizer.learning_rate=-0.01",
    ),
    (
        ["optimizer.learning_rate=0"],
        "`optimizer.learning_rate` must be a finite learning rate > 0. Received: optimizer.learning_rate=0",
    ),
    (
        ["optimizer.learning_rate=nan"],
        "`optimizer.learning_rate` must be a finite learning rate > 0. Received: optimizer.learning_rate=nan",
    ),
    (
        ["optimizer.learning_rate=inf"],
        "`optimizer.learning_rate` must be a finite learning rate > 0. Received: optimizer.learning_rate=inf",
    ),
    (
        ["optimizer.learning_rate=abc"],
        "`optimizer.learning_rate` must be a finite learning rate > 0. Received: optimizer.learning_rate='abc'",
    ),
    (
        ["optimizer.learning_rate=null"],
        "`optimizer.learning_rate` must be set to a learning rate > 0. Received: optimizer.learning_rate=None",
    ),
    (["backend=pytorch"], "`backend` must be one of tensorflow, jax. Received: backend='pytorch'"),
    (
        ["threads=-1"],
        "`threads` must be an integer >= 1 (compute threads per job), or null for the backend's default (all cores). "
        "Received: threads=-1",
    ),
    (["training.epochs=0"], "`training.epochs` must be an integer >= 1. Received: training.epochs=0"),
    (["training.batch_size=0"], "`training.batch_size` must be an integer >= 1. Received: training.batch_size=0"),
    (["training.seed=-1"], "`training.seed` must be an integer >= 0. Received: training.seed=-1"),
    (
        ["training.steps_per_execution=0"],
        "`training.steps_per_execution` must be an integer >= 1. Received: training.steps_per_execution=0",
    ),
    (
        ["training.jit_compile=yes"],
        "`training.jit_compile` must be one of true, false, auto. Received: training.jit_compile='yes'",
    ),
    (
        ["training.divergence_factor=1"],
        "`training.divergence_factor` must be a number in (1, inf). Received: training.divergence_factor=1.0",
    ),
    (["data.train_size=0"], "`data.train_size` must be an integer >= 1. Received: data.train_size=0"),
    (["model.hidden_units=0"], "`model.hidden_units` must be an integer >= 1. Received: model.hidden_units=0"),
    (
        ["model=cnn", "model.channels=0"],
        "`model.channels` must be an integer >= 1 (the first block's filters; each next block doubles them). "
        "Received: model.channels=0",
    ),
    (["model=vit", "model.norm=middle"], "`model.norm` must be one of post, pre. Received: model.norm='middle'"),
    (["model=vit", "model.pool=max"], "`model.pool` must be one of cls, mean. Received: model.pool='max'"),
    (["model=vit", "model.heads=0"], "`model.heads` must be an integer >= 1. Received: model.heads=0"),
    (["model=vit", "model.dropout=1"], "`model.dropout` must be a number in [0, 1). Received: model.dropout=1.0"),
    (
        ["tracking.log_every_n_steps=-1"],
        "`tracking.log_every_n_steps` must be an integer >= 0 (0: off). Received: tracking.log_every_n_steps=-1",
    ),
    (
        ["tracking.http_timeout=0"],
        "`tracking.http_timeout` must be an integer >= 1 (seconds per HTTP request to a tracking server). "
        "Received: tracking.http_timeout=0",
    ),
    (
        ["tracking.http_max_retries=-1"],
        "`tracking.http_max_retries` must be a number in [0, 10]. Received: tracking.http_max_retries=-1",
    ),
    (
        ["schedule=linear", "schedule.initial_lr=-1"],
        "`schedule.initial_lr` must be a finite learning rate > 0. Received: schedule.initial_lr=-1.0",
    ),
    (
        ["schedule=linear", "schedule.final_lr=0"],
        "`schedule.final_lr` must be a finite learning rate > 0. Received: schedule.final_lr=0.0",
    ),
    (
        ["schedule=linear", "schedule.warmup_epochs=1"],
        "`schedule.warmup_epochs` must be an integer >= 2 for a linear warm-up. Received: schedule.warmup_epochs=1",
    ),
    (
        ["schedule=lr_range", "schedule.max_lr=inf"],
        "`schedule.max_lr` must be a finite learning rate > 0. Received: schedule.max_lr=inf",
    ),
    (
        ["schedule=warmup", "schedule.warmup.shape=quadratic"],
        "`schedule.warmup.shape` must be one of linear, exponential, cosine. "
        "Received: schedule.warmup.shape='quadratic'",
    ),
    (
        ["schedule=warmup", "schedule.warmup.length=-1"],
        "`schedule.warmup.length` must be a number in [0, inf). Received: schedule.warmup.length=-1",
    ),
    (
        ["schedule=warmup", "schedule.warmup.length=abc"],
        "`schedule.warmup.length` must be a number in [0, inf). Received: schedule.warmup.length='abc'",
    ),
    (
        ["schedule=warmup", "schedule.warmup.length_unit=epochs"],
        "`schedule.warmup.length_unit` must be one of step, epoch, fraction. "
        "Received: schedule.warmup.length_unit='epochs'",
    ),
    (
        ["schedule=warmup", "schedule.warmup.initial_lr=-0.001"],
        "`schedule.warmup.initial_lr` must be a finite learning rate >= 0. Received: schedule.warmup.initial_lr=-0.001",
    ),
    (
        ["schedule=warmup", "schedule.unit=batch"],
        "`schedule.unit` must be one of step, epoch. Received: schedule.unit='batch'",
    ),
    (
        ["schedule=untuned", "schedule.rule=cosine"],
        "`schedule.rule` must be one of linear, exponential. Received: schedule.rule='cosine'",
    ),
    (
        ["schedule=untuned", "optimizer.beta_2=0"],  # fine for Adam, not for the untuned rule's 1 / (1 - beta_2)
        "`schedule.beta_2` must be a number in (0, 1). Received: schedule.beta_2=0.0",
    ),
    (
        ["optimizer.learning_rate=[0.1]"],
        "`optimizer.learning_rate` must be a finite learning rate > 0. Received: optimizer.learning_rate=[0.1]",
    ),
    (
        ["schedule=warmup", "schedule/decay=cosine", "schedule.decay.min_lr=-1"],
        "`schedule.decay.min_lr` must be a finite learning rate >= 0. Received: schedule.decay.min_lr=-1.0",
    ),
    (
        ["schedule=warmup", "schedule/decay=step", "schedule.decay.gamma=0"],
        "`schedule.decay.gamma` must be a number in (0, 1]. Received: schedule.decay.gamma=0.0",
    ),
    (
        ["schedule=warmup", "schedule/decay=step", "schedule.decay.every_epochs=0"],
        "`schedule.decay.every_epochs` must be a number in (0, inf). Received: schedule.decay.every_epochs=0.0",
    ),
    (
        ["schedule=warmup", "schedule/decay=exponential", "schedule.decay.decay_rate=2"],
        "`schedule.decay.decay_rate` must be a number in (0, 1]. Received: schedule.decay.decay_rate=2.0",
    ),
    (
        ["schedule=warmup", "schedule/decay=inverse_sqrt", "schedule.decay.timescale_epochs=-2"],
        "`schedule.decay.timescale_epochs` must be a number in (0, inf). "
        "Received: schedule.decay.timescale_epochs=-2.0",
    ),
    (
        ["schedule=warmup", "schedule/decay=wsd", "schedule.decay.decay_fraction=1.5"],
        "`schedule.decay.decay_fraction` must be a number in (0, 1]. Received: schedule.decay.decay_fraction=1.5",
    ),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_RANGES, ids=[" ".join(o) for o, _ in BAD_RANGES])
def test_a_value_out_of_range_is_refused_in_one_line(overrides, message):
    cfg = compose_config(*overrides)  # the type is right: Hydra composes it
    with pytest.raises(ValueError) as excinfo:
        schema.check(cfg)
    assert str(excinfo.value) == message


def test_prepare_checks_the_ranges_first(tmp_path):
    """The ranges are checked once, before `experiment.prepare` looks at anything (train.py and the packed launcher's
    `check_jobs` call `schema.check` first): here a data folder that does not exist is not reached."""
    from lrsweep.core import backend

    backend.select("jax")
    from lrsweep.run import experiment

    cfg = compose_config("optimizer.beta_1=1.5", f"data.dir={tmp_path / 'nowhere'}")
    with pytest.raises(ValueError, match=re.escape("`optimizer.beta_1` must be a number in [0, 1).")):
        schema.check(cfg)
        experiment.prepare(cfg, identity.JobContext())
    # In range (and optimizer.momentum an int), it builds everything, up to the Keras optimizer.
    job = experiment.prepare(compose_config("optimizer=sgd", "optimizer.momentum=0", *TINY), identity.JobContext())
    assert job.resolved["optimizer"]["momentum"] == 0.0


def test_boundaries_and_nulls_that_are_allowed_pass():
    for overrides in [
        ["optimizer.beta_1=0", "optimizer.beta_2=0.999999"],
        ["optimizer=sgd", "optimizer.momentum=1", "optimizer.nesterov=true"],
        ["optimizer=adagrad", "optimizer.initial_accumulator_value=0"],
        ["threads=null", "training.divergence_factor=null", "data.validation_size=null", "training.jit_compile=auto"],
        ["threads=1", "training.seed=0", "tracking.log_every_n_steps=0", "tracking.http_max_retries=0"],
        ["schedule=warmup", "schedule.warmup.length=0", "schedule.warmup.initial_lr=0", "schedule/decay=wsd"],
        ["schedule=warmup", "schedule/decay=inverse_sqrt", "schedule.decay.timescale_epochs=null"],
        ["schedule=untuned", "optimizer=sgd"],  # beta_2 null: the schedule itself says why it cannot run
        ["training.verbose=2", "training.jit_compile=false"],
        ["model=vit", "model.norm=pre", "model.pool=cls", "model.dropout=0.99"],
        ["model=cnn", "model.channels=1", "model.blocks=1"],
    ]:
        schema.check(compose_config(*overrides))


def test_check_without_a_schema_checks_nothing_and_reports_missing_values():
    schema.check(OmegaConf.create({"optimizer": {"beta_1": 7}}))  # no schema: no ranges
    cfg = OmegaConf.structured(schema.Training)
    with pytest.raises(ValueError, match=re.escape("`training.epochs` must be set. Received: training.epochs=???")):
        schema.check(OmegaConf.create({"training": cfg}))


# Every option composes, with its schema -------------------------------------------------------------------------


def test_every_option_file_names_its_schema():
    """A new option file without a schema would compose untyped and unchecked: each one names its own."""
    files = {str(p.relative_to(CONF_DIR).with_suffix("")) for p in CONF_DIR.glob("*/**/*.yaml")}
    typed = files - {f for f in files if f.split("/")[0] in ("experiment", "strategy", "hydra")}
    assert typed == set(schema.SCHEMAS) - {"config"}
    for path in [*typed, "config"]:
        text = (CONF_DIR / f"{path}.yaml").read_text()
        assert f"- /schema/{path}@_here_" in text, path


@pytest.mark.parametrize("optimizer", options("optimizer"))
@pytest.mark.parametrize("schedule", options("schedule"))
def test_every_optimizer_and_schedule_composes_typed_and_in_range(optimizer, schedule):
    cfg = compose_config(f"optimizer={optimizer}", f"schedule={schedule}")
    schema.check(cfg)
    for node, path in [
        (cfg, "config"),
        (cfg.optimizer, f"optimizer/{optimizer}"),
        (cfg.schedule, f"schedule/{schedule}"),
        (cfg.training, "training/default"),
        (cfg.tracking, "tracking/mlflow"),
        (cfg.data, "data/fashion_mnist"),
        (cfg.model, "model/mlp"),
    ]:
        assert OmegaConf.get_type(node) is schema.SCHEMAS[path]
    assert OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


@pytest.mark.parametrize("decay", options("schedule/decay"))
@pytest.mark.parametrize("schedule", ["warmup", "untuned"])
def test_every_decay_composes_typed_and_in_range(schedule, decay):
    cfg = compose_config(f"schedule={schedule}", f"schedule/decay={decay}")
    schema.check(cfg)
    assert OmegaConf.get_type(cfg.schedule.decay) is schema.SCHEMAS[f"schedule/decay/{decay}"]
    if schedule == "warmup":
        assert OmegaConf.get_type(cfg.schedule.warmup) is schema.Warmup


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_value_an_experiment_sweeps_composes_in_range(experiment):
    """Each preset's sweep, every value of every swept key at least once (job i takes each key's value i)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        hydra_cfg = compose(config_name="config", overrides=[f"+experiment={experiment}"], return_hydra_config=True)
    swept = hydra_cfg.hydra.sweeper.get("params") or {}
    if hydra_cfg.hydra.sweeper._target_.endswith("OptunaSweeper"):  # distributions: each choice, or both ends
        from hydra_plugins.lrsweep_sweeper._study import SearchSpace

        space = SearchSpace.parse([f"{key}={value}" for key, value in swept.items()])
        params = {
            key: [str(c) for c in getattr(d, "choices", [])] or [str(d.low), str(d.high)]
            for key, d in space.distributions.items()
        }
    else:
        params = {key: str(values).split(",") for key, values in swept.items()}
    for i in range(max(map(len, params.values()), default=0)):
        job = [f"{key}={values[i % len(values)]}" for key, values in params.items()]
        schema.check(compose_config(f"+experiment={experiment}", *job))
    schema.check(compose_config(f"+experiment={experiment}"))


def test_interpolations_still_resolve_and_follow_the_optimizer():
    cfg = compose_config("optimizer.learning_rate=0.02")
    assert OmegaConf.is_interpolation(cfg.schedule, "value") and cfg.schedule.value == 0.02
    assert compose_config("schedule=linear", "optimizer.learning_rate=0.03").schedule.final_lr == 0.03
    cfg = compose_config("schedule=warmup", "optimizer=sgd", "optimizer.learning_rate=0.3")
    assert cfg.schedule.peak_lr == 0.3
    cfg.optimizer.learning_rate = 0.5  # a sweep's later change is seen: the interpolation is kept, not copied
    assert cfg.schedule.peak_lr == 0.5
    cfg = compose_config("schedule=untuned", "optimizer.beta_2=0.99")
    assert (cfg.schedule.beta_2, cfg.schedule.peak_lr) == (0.99, 0.01)
    assert compose_config("schedule=untuned", "optimizer=adagrad").schedule.beta_2 is None


def test_extra_keras_arguments_can_still_be_added():
    """`+optimizer.<arg>=...` passes an argument the option file does not set, as before the schema."""
    cfg = compose_config("+optimizer.amsgrad=true", "+optimizer.clipnorm=1")
    optimizer = instantiate(cfg.optimizer, learning_rate=0.01)
    assert optimizer.amsgrad is True and optimizer.clipnorm == 1
    with pytest.raises(ConfigCompositionException, match="Could not override 'optimizer.amsgrad'"):
        compose_config("optimizer.amsgrad=true")  # a misspelt or unknown key without `+` is still an error


def test_both_warmups_accept_a_decreasing_ramp_from_config():
    """`linear` and `warmup` agree (lrsweep.schedules): an initial LR above the one reached is allowed."""
    for overrides in (
        ["schedule=linear", "schedule.initial_lr=0.05"],
        ["schedule=warmup", "schedule.warmup.initial_lr=0.05"],
    ):
        cfg = compose_config(*overrides)
        schema.check(cfg)
        lr = instantiate(cfg.schedule)(steps_per_epoch=10, total_steps=50)
        assert float(lr(0)) == pytest.approx(0.05) and float(lr(49)) == pytest.approx(0.01)


# Config hashes: the same as before the schema --------------------------------------------------------------------

# Computed on main at f529174 (before the schema) with identity.config_hash(OmegaConf.to_container(compose(
# config_name="config", overrides=...), resolve=True)); runs made before are still recognised (resume).
HASHES_BEFORE = {
    "": "0cacccdfdfab81f0",
    "+experiment=tutorial +strategy=adam_constant": "dc9418c34650e6bb",
    "+experiment=tutorial +strategy=adam_linear": "94388d9a0ac44631",
    "+experiment=tutorial +strategy=adagrad": "8411401dbbadb334",
    "+experiment=tutorial +strategy=adadelta": "4bfcf98d7f3d3b1e",
    "+experiment=tutorial +strategy=adam_linear training.seed=2": "697c02fc9175d93c",
    "optimizer=adadelta": "ae1c70a814188954",
    "optimizer=adagrad": "b1f2c8dedc1a5d69",
    "optimizer=adam": "0cacccdfdfab81f0",
    "optimizer=rmsprop": "eece8185da4f3ad7",
    "optimizer=sgd": "746bdc618d24dba4",
    "schedule=constant": "0cacccdfdfab81f0",
    "schedule=linear": "4c30431990949bb6",
    "schedule=lr_range": "fd1581ef84253156",
    "schedule=untuned": "23d5a6f30c41073a",
    "schedule=warmup": "218b10ee0fcbadf4",
    "schedule=warmup schedule/decay=constant": "218b10ee0fcbadf4",
    "schedule=warmup schedule/decay=cosine": "95fb6151001b5848",
    "schedule=warmup schedule/decay=exponential": "addd1e1c61ff27b2",
    "schedule=warmup schedule/decay=inverse_sqrt": "17e62277b1f80c45",
    "schedule=warmup schedule/decay=linear": "8ca346247f9e7979",
    "schedule=warmup schedule/decay=step": "8c7d3c7eb9b6d702",
    "schedule=warmup schedule/decay=wsd": "9014c8eaedc45fc8",
    "+experiment=lr_range": "028bc51e02004f60",
    "+experiment=phase_diagram": "140853c1d3f57dd0",
    "+experiment=warmup_search": "218b10ee0fcbadf4",
    # The phase diagram's grid sweeps ints (schedule.warmup.length=0,1,2): kept as ints, their hashes hold.
    "+experiment=phase_diagram optimizer.learning_rate=1.0 schedule.warmup.length=2 training.seed=1": (
        "18e6b24cbc59f7aa"
    ),
    "+experiment=phase_diagram optimizer.learning_rate=0.001 schedule.warmup.length=0": "c92d4b7c7cbb6a60",
    "+experiment=phase_diagram optimizer=sgd optimizer.learning_rate=0.3 schedule.warmup.length=0.25": (
        "f1d9ec13b105b6dd"
    ),
    "schedule=linear schedule.initial_lr=0.001 schedule.final_lr=0.02 schedule.warmup_epochs=3": "4b3099372883ef38",
    "+experiment=warmup_search schedule.warmup.initial_lr=1e-05 schedule.peak_lr=0.01 schedule.warmup.length=1.5": (
        "3a0af2a1185d78fb"
    ),
}


@pytest.mark.parametrize("overrides", sorted(HASHES_BEFORE))
def test_config_hashes_are_those_of_runs_made_before_the_schema(overrides):
    # Issue 11's new keys (training.divergence_factor, tracking.http_*) are among identity.NON_RESULT_KEYS.
    resolved = OmegaConf.to_container(compose_config(*overrides.split()), resolve=True)
    assert identity.config_hash(resolved) == HASHES_BEFORE[overrides]


# As a user runs it -----------------------------------------------------------------------------------------------


def test_train_py_refuses_a_wrong_type_before_anything_and_takes_an_int_momentum(tmp_path: Path):
    refused = train(tmp_path, "resume=maybe", "backend=jax", multirun=False, check=False, fresh_store=True)
    output = refused.stdout + refused.stderr
    assert refused.returncode == 1
    assert "Error merging override resume=maybe\nValue 'maybe' is not a valid bool (type str)\n" in output
    assert "Traceback" not in output
    assert not (tmp_path / "mlruns").exists()  # Hydra stopped before the job: no store

    # The wrongly refused case trains, with momentum 0.0 in its run.
    train(tmp_path, "optimizer=sgd", "optimizer.momentum=0", "training.epochs=1", "backend=jax", *TINY, multirun=False)
    client, experiment_id = store(tmp_path)
    (run,) = job_runs(client, experiment_id).values()
    assert run.info.status == "FINISHED" and run.data.params["optimizer.momentum"] == "0.0"
    assert math.isfinite(run.data.metrics["val_accuracy"])


def test_a_sweep_with_one_value_out_of_range_starts_no_job(tmp_path: Path):
    result = train(tmp_path, "optimizer.beta_1=0.9,1.5", "backend=jax", *TINY, check=False)
    assert result.returncode != 0
    assert (
        "job #1 (optimizer.beta_1=1.5): `optimizer.beta_1` must be a number in [0, 1). Received: optimizer.beta_1=1.5"
    ) in result.stderr
    if (tmp_path / "mlruns" / "mlflow.db").exists():  # whether a store is made before the checks is not the schema's
        client, experiment_id = store(tmp_path)
        assert job_runs(client, experiment_id) == {}


def test_a_sweeps_checks_run_once_per_distinct_value_and_fail_every_job_that_shares_it():
    """`job.Checks`, shared by a sweep's jobs: 3 LRs x 4 seeds build one dataset and, for the 2 LRs whose jobs pass
    their schema, 2 optimizers, 2 schedules and one model; each job gets the outcome its own full check gives."""
    from lrsweep.core import backend, errors

    backend.select("jax")
    from lrsweep.run.job import Checks, checked

    jobs = [
        compose_config(*TINY, f"optimizer.learning_rate={lr}", f"training.seed={seed}", f"optimizer.beta_1={beta}")
        for lr, beta in [(0.001, 0.9), (0.002, 0.9), (0.003, 1.5)]
        for seed in range(4)
    ]

    def outcome(check) -> str:
        try:
            return check().config_hash
        except (errors.ConfigError, ValueError) as e:
            return str(e)

    checks = Checks()
    shared = [outcome(lambda cfg=cfg: checked(cfg, identity.JobContext(), checks, checks.schema(cfg))) for cfg in jobs]
    alone = [outcome(lambda cfg=cfg: (schema.check(cfg), checked(cfg, identity.JobContext()))[1]) for cfg in jobs]
    assert shared == alone
    assert shared[8:] == ["`optimizer.beta_1` must be a number in [0, 1). Received: optimizer.beta_1=1.5"] * 4
    assert len(set(shared[:8])) == 8  # each job its own config hash (seed, LR)
    built = [key[0] for key, (passed, _) in checks.outcomes.items() if passed and isinstance(key[1], str)]
    # The schedule reads the optimizer's LR (`${optimizer.learning_rate}`): one per LR, as the optimizers. The third
    # LR's jobs failed their schema first. One model for all (its values are the same).
    assert sorted(built) == ["data", "model", "optimizer", "optimizer", "schedule", "schedule"]
