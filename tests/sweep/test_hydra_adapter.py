"""What `lrsweep.sweep.hydra_adapter` relies on in Hydra, named one by one, with Hydra's own objects: an upgrade that
breaks one of these internals fails here, by name."""

from __future__ import annotations

import inspect

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.utils import JobReturn, JobStatus, run_job
from hydra.types import HydraContext
from hydra.utils import get_class

from lrsweep.sweep import hydra_adapter, planned_jobs
from tests.conftest import CONF_DIR


@pytest.fixture
def hydra_config():
    """The compose API's global Hydra, with conf/: its config loader is the one launchers compose jobs with."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield lambda *overrides: compose("config", overrides=list(overrides), return_hydra_config=True)


def test_the_basic_sweeper_is_hydras_default_and_expands_with_the_static_split_arguments(hydra_config):
    assert hydra_config().hydra.sweeper._target_ == hydra_adapter.BASIC_SWEEPER
    sweeper = get_class(hydra_adapter.BASIC_SWEEPER)
    assert isinstance(inspect.getattr_static(sweeper, "split_arguments"), staticmethod)
    assert list(inspect.signature(sweeper.split_arguments).parameters) == ["overrides", "max_batch_size"]


def test_basic_sweeper_jobs_are_the_cartesian_product_in_the_command_lines_order(hydra_config):
    jobs = hydra_adapter.basic_sweeper_jobs(["training.seed=0,1", "schedule=linear", "optimizer=adam,sgd"])
    assert jobs == [
        ["training.seed=0", "schedule=linear", "optimizer=adam"],
        ["training.seed=0", "schedule=linear", "optimizer=sgd"],
        ["training.seed=1", "schedule=linear", "optimizer=adam"],
        ["training.seed=1", "schedule=linear", "optimizer=sgd"],
    ]
    # A later override of a key replaces the earlier one, as the sweeper's `params` are overridden by the command.
    assert hydra_adapter.basic_sweeper_jobs(["training.seed=0,1", "training.seed=5"]) == [["training.seed=5"]]


def test_planned_jobs_is_none_for_another_sweeper(hydra_config):
    config = hydra_config("hydra.sweeper._target_=hydra_plugins.lrsweep_sweeper.optuna_sweeper.OptunaSweeper")
    assert planned_jobs(config) is None


def test_a_failed_jobs_exception_is_read_without_the_public_property_reraising_it(hydra_config, tmp_path, capsys):
    config = hydra_config(f"hydra.run.dir={tmp_path}", "hydra.job.chdir=false")
    context = HydraContext(config_loader=GlobalHydra.instance().config_loader(), callbacks=_no_callbacks())
    error = ValueError("bad value")

    def task(_config):
        raise error

    job_return = run_job(task, config, "hydra.run.dir", None, context, configure_logging=False)
    assert job_return.status == JobStatus.FAILED
    assert hydra_adapter.job_error(job_return) is error  # relied on: the field `_return_value` holds it
    assert "_return_value" in {field.name for field in JobReturn.__dataclass_fields__.values()}
    with pytest.raises(ValueError, match="bad value"):  # why not the public property: it re-raises, and says so
        _ = job_return.return_value
    assert "Error executing job" in capsys.readouterr().err
    completed = run_job(lambda _: 0.5, config, "hydra.run.dir", None, context, False)
    assert hydra_adapter.job_error(completed) is None and completed.return_value == 0.5


def _no_callbacks():
    from hydra._internal.callbacks import Callbacks

    return Callbacks()


SWEEP_JOBS = [
    ["optimizer.learning_rate=0.001", "training.seed=0"],
    ["optimizer.learning_rate=0.002", "training.seed=1"],  # same groups as the first: composed from its base
    ["schedule=linear", "schedule.initial_lr=0.001", "schedule.warmup_epochs=3", "training.seed=2"],
    ["+experiment=tutorial", "+strategy=adam_linear", "training.seed=1"],
    ["+experiment=tutorial", "+strategy=adadelta", "training.seed=2"],
    ["optimizer=sgd", "optimizer.momentum=0.5", "+training.extra=1"],
    ["schedule=warmup", "schedule/decay=cosine", "schedule.decay.min_lr=0.0001"],
]


def test_the_sweep_composer_composes_every_job_as_hydras_loader_does(hydra_config):
    """Each job's config, from a base per set of group choices plus its value overrides, equals Hydra's own."""
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    loader = GlobalHydra.instance().config_loader()
    master = loader.load_configuration("config", overrides=["hydra.sweep.dir=sweep"], run_mode=RunMode.MULTIRUN)
    composer = hydra_adapter.SweepComposer(loader)
    for overrides in SWEEP_JOBS:
        fast, hydra = composer.compose(master, overrides), loader.load_sweep_config(master, overrides)
        assert OmegaConf.to_yaml(fast) == OmegaConf.to_yaml(hydra), overrides
        assert OmegaConf.is_struct(fast) and fast.hydra.job.override_dirname == hydra.hydra.job.override_dirname
    assert len(composer.bases) == 6  # the first two jobs share one composition of the defaults tree


def test_a_jobs_task_config_is_its_sweep_config_without_hydra_and_its_context_hydras(hydra_config):
    """What checking a sweep needs, composed without the whole sweep config (`compose_task`, `job_tasks`), equals
    what Hydra's composition gives: the task config, and the JobContext the job reads from Hydra when it runs."""
    import dataclasses

    from hydra.types import RunMode
    from omegaconf import OmegaConf, open_dict

    from lrsweep.core import identity
    from lrsweep.sweep import job_tasks, task_config

    loader = GlobalHydra.instance().config_loader()
    master = loader.load_configuration("config", overrides=["hydra.sweep.dir=sweep"], run_mode=RunMode.MULTIRUN)
    jobs = [*SWEEP_JOBS, ["hydra.job.name=other", "training.seed=3"]]  # the last one: composed by Hydra itself
    composer = hydra_adapter.SweepComposer(loader)
    composed = job_tasks(composer.compose_task, master, jobs, 5)
    for num, ((task, context), overrides) in enumerate(zip(composed, jobs, strict=True)):
        hydras = loader.load_sweep_config(master, overrides)
        with open_dict(hydras):
            hydras.hydra.job.num = num + 5
        assert OmegaConf.to_yaml(task) == OmegaConf.to_yaml(task_config(hydras)), overrides
        assert OmegaConf.is_struct(task) and "hydra" not in task
        assert dataclasses.asdict(context) == dataclasses.asdict(identity.JobContext.from_config(hydras.hydra))
    assert len(composer.task_bases) == 6


@pytest.mark.parametrize("overrides", [["optimizer.learning_rat=0.1"], ["training.seed=abc"]])
def test_the_sweep_composer_fails_on_a_bad_override_as_hydra_does(hydra_config, overrides):
    from hydra.types import RunMode

    loader = GlobalHydra.instance().config_loader()
    master = loader.load_configuration("config", overrides=[], run_mode=RunMode.MULTIRUN)
    with pytest.raises(Exception) as hydras:
        loader.load_sweep_config(master, overrides)
    with pytest.raises(type(hydras.value)) as ours:
        hydra_adapter.SweepComposer(loader).compose(master, overrides)
    assert str(ours.value) == str(hydras.value)


def _raise_store_error_in_one_line(queue) -> None:
    from lrsweep.core.errors import StoreError

    try:
        with hydra_adapter.failures_in_one_line():
            raise StoreError("The disk is full at /x/mlflow.db")
    except Exception as e:
        queue.put(type(e).__name__)


def test_a_store_failure_is_one_line_from_a_worker_and_stops_the_sweep_in_its_own_process():
    """In a launcher's worker (a real child process) a StoreError leaves as `JobFailed`, which Hydra prints in the
    sweep's process as one line; in the sweep's own process it stays a StoreError (`errors.reported` says it)."""
    import multiprocessing

    from lrsweep.core.errors import StoreError

    queue = multiprocessing.get_context("spawn").Queue()
    worker = multiprocessing.get_context("spawn").Process(target=_raise_store_error_in_one_line, args=(queue,))
    worker.start()
    worker.join(timeout=120)
    assert queue.get(timeout=10) == "JobFailed"
    with pytest.raises(StoreError):
        with hydra_adapter.failures_in_one_line():
            raise StoreError("The disk is full at /x/mlflow.db")
