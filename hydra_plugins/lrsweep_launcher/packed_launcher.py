"""`hydra/launcher=packed`: a sweep's compatible jobs train together as packs, each job still its own MLflow run.

The launcher composes and checks every job's config before anything trains, skips configurations that already
FINISHED (resume), groups the rest into packs (`lrsweep.run.launching.plan_packs`), trains each pack as one stacked
model, and hands Hydra one JobReturn per job, in order, as the basic launcher would. A job that cannot be packed
(alone in its group, or a model or optimizer the packed path does not support) trains alone, in this process, from
the job the launcher checked (`lrsweep.run.launching.train_alone`): no job is checked or composed twice.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class PackedLauncher(Launcher):
    """Packs a sweep's jobs; see `conf/hydra/launcher/packed.yaml` and the README's "Packed sweeps".

    Args:
        max_members: the most runs in one pack (bigger groups are split).
        max_seeds: the most distinct seeds (data orders) in one pack; each is one more data group.
        cluster: None trains the packs here, one after another; "local" or "slurm" submits each pack (or lone job)
            as one submitit job, "ray" as one Ray task to a running Ray cluster, all at once, and waits for them.
        submitit_folder: where submitit keeps its job scripts and logs.
        submitit: parameters for submitit's `AutoExecutor.update_parameters` (timeout_min, cpus_per_task, mem_gb,
            slurm_partition, ...).
        other_models: how models other than the fused MLP pack: auto, vmap, unroll or alone
            (`lrsweep.ml.stacking.other_models_path`).
        max_unrolled: the most runs in one pack of an unrolled model (each member one more copy to compile).
        ray: for cluster="ray": the cluster's `address` ("auto": the one `ray start` began on this machine; or
            "HOST:6379") and `num_cpus` each pack reserves (null: the jobs' `threads`, else 1).
        halving: successive halving (`lrsweep.core.halving.Halving`): eta (null: none), min_epochs, rule.
    """

    def __init__(
        self,
        max_members: int = 16,
        max_seeds: int = 8,
        cluster: str | None = None,
        submitit_folder: str | None = None,
        submitit: dict | None = None,
        other_models: str = "auto",
        max_unrolled: int = 4,
        halving: dict | None = None,
        ray: dict | None = None,
    ) -> None:
        super().__init__()
        self.max_members = max_members
        self.max_seeds = max_seeds
        self.cluster = cluster
        self.submitit_folder = submitit_folder
        self.submitit = dict(submitit or {})
        self.other_models = other_models
        self.max_unrolled = max_unrolled
        self.halving = dict(halving or {})
        self.ray = dict(ray or {})
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None
        self.packs_launched = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        # Hydra's sweeper composes every job of a batch to validate it, just before `launch` composes them again:
        # the loader, shared with the sweeper through this context, keeps what it composed for `launch` to take.
        if not isinstance(hydra_context.config_loader, ComposedOnce):
            hydra_context.config_loader = ComposedOnce(hydra_context.config_loader)
        self.hydra_context = hydra_context
        self.task_function = task_function

    def check_settings(self) -> None:
        """Raises ValueError naming the first launcher setting that cannot work."""
        from lrsweep.core import checks

        checks.check_count("hydra.launcher.max_members", self.max_members, 1)
        checks.check_count("hydra.launcher.max_seeds", self.max_seeds, 1)
        checks.check_choice("hydra.launcher.cluster", self.cluster, [None, "local", "slurm", "ray"])
        checks.check_count("hydra.launcher.max_unrolled", self.max_unrolled, 1)
        checks.check_choice("hydra.launcher.other_models", self.other_models, ["auto", "vmap", "unroll", "alone"])
        if self.cluster and not isinstance(self.submitit, dict):
            raise ValueError(f"`hydra.launcher.submitit` must be a mapping. Received: {self.submitit!r}")
        self.ray_settings()
        halving = self.halving_settings()
        halving.check()

    def ray_settings(self) -> dict:
        """`hydra.launcher.ray` over its defaults, checked."""
        from lrsweep.core import checks
        from lrsweep.run.remote import RAY_SETTINGS

        unknown = sorted(set(self.ray) - set(RAY_SETTINGS))
        if unknown:
            raise ValueError(f"`hydra.launcher.ray` has {' and '.join(RAY_SETTINGS)}. Received: {unknown[0]}")
        settings = {**RAY_SETTINGS, **self.ray}
        if not isinstance(settings["address"], str) or not settings["address"]:
            raise ValueError(
                "`hydra.launcher.ray.address` must be auto or HOST:PORT of a running Ray cluster. "
                f"Received: {settings['address']!r}"
            )
        if settings["num_cpus"] is not None:
            checks.check_count("hydra.launcher.ray.num_cpus", settings["num_cpus"], 1)
        return settings

    def cluster_settings(self) -> Any:
        """Where packs go (`lrsweep.run.remote.ClusterSettings`), or None: this process."""
        if not self.cluster:
            return None
        from lrsweep.run.remote import ClusterSettings

        assert self.config is not None
        folder = self.submitit_folder or str(Path(str(self.config.hydra.sweep.dir)) / ".submitit" / "%j")
        return ClusterSettings(self.cluster, folder, self.submitit, self.ray_settings())

    def halving_settings(self) -> Any:
        from lrsweep.core.halving import Halving

        unknown = sorted(set(self.halving) - {"eta", "min_epochs", "rule"})
        if unknown:
            raise ValueError(f"`hydra.launcher.halving` has eta, min_epochs and rule. Received: {unknown[0]}")
        return Halving(**self.halving)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        from lrsweep.core import errors

        with errors.reported():  # before anything is composed, created or opened
            errors.as_config_error(self.check_settings)
            if self.cluster == "ray":  # the cluster answers before any run is made
                from lrsweep.run import remote

                errors.as_config_error(lambda: remote.connect_ray(self.ray_settings()["address"]))
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        from lrsweep.sweep import job_tasks, open_parent

        loader = self.hydra_context.config_loader
        assert isinstance(loader, ComposedOnce)  # `setup` made it so
        tasks = job_tasks(loader.take, self.config, job_overrides, initial_job_idx)
        choose_backend(tasks[0][0])
        from lrsweep.run import launching  # imports Keras: only once the backend is chosen

        prepared = launching.check_jobs(tasks)
        halving = self.halving_settings()
        if halving.eta is not None:
            launching.check_halving(prepared, halving, self.other_models)
        open_parent(self.config)  # every job is valid: now the store and the sweep's parent run
        plan = launching.plan_sweep(prepared, self.max_members, self.max_seeds, self.max_unrolled, self.other_models)
        with errors.reported():  # Ctrl-C / SIGTERM in a pack: its runs end KILLED, then one line, no traceback
            if halving.eta is not None:
                return self._launch_halving(plan, halving, job_overrides, initial_job_idx)
            return self._launch_plan(plan, job_overrides, initial_job_idx)

    def refill_refused(self) -> str | None:
        """Why this launcher cannot refill a search's freed places (`launch_refilled`), or None: it can."""
        if self.cluster:
            return f"hydra.launcher.cluster={self.cluster} trains its packs elsewhere, each to its end"
        if self.halving.get("eta") is not None:
            return "hydra.launcher.halving.eta is set: rungs decide, not the search's pruner"
        return None

    def check_refill(self, overrides: Sequence[str], required: bool) -> str | None:
        """Why a search's jobs (`overrides`: its probe job) should train in batches rather than refilled packs
        (`launching.refill_pays`), or None. Exits with one line, before anything is opened, on a bad launcher
        setting, a job that fails its checks, or (`required`: refill=true) a model or optimizer that cannot pack."""
        assert self.config is not None and self.hydra_context is not None
        from lrsweep.core import errors
        from lrsweep.sweep import job_tasks

        with errors.reported():
            errors.as_config_error(self.check_settings)
        tasks = job_tasks(self.hydra_context.config_loader.take, self.config, [list(overrides)], 0)
        choose_backend(tasks[0][0])
        from lrsweep.run import launching

        prepared = launching.check_jobs(tasks)
        if required:
            launching.check_refill(prepared, self.other_models)
            return None
        return launching.refill_pays(prepared, self.other_models)

    def launch_refilled(
        self,
        more: Callable[[int], list[tuple[int, list[str]]]],
        told: Callable[[int, JobReturn], None],
        more_to_come: Callable[[], bool],
        places: int,
    ) -> None:
        """A search's jobs trained `places` at a time in this process, a freed place refilled at once
        (`lrsweep.run.refill`): `more(n)` gives up to n new jobs (job number, overrides); each job's JobReturn goes
        to `told` as soon as its run ends; `more_to_come()` says whether `more` could give another."""
        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        from lrsweep.core import errors

        with errors.reported():
            errors.as_config_error(self.check_settings)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        from lrsweep.sweep import job_tasks, open_parent

        loader = self.hydra_context.config_loader
        overrides: dict[int, list[str]] = {}

        def tasks(asked: list[tuple[int, list[str]]]) -> list:
            overrides.update(asked)
            return [task for num, lines in asked for task in job_tasks(loader.take, self.config, [lines], num)]

        first = tasks(more(places))
        if not first:
            return
        choose_backend(first[0][0])
        from lrsweep.core.errors import StoreError
        from lrsweep.run import launching, refill

        def checked(asked: list) -> list:
            jobs = launching.check_jobs(asked)
            launching.check_refill(jobs, self.other_models)  # a searched model that cannot pack: one line
            return jobs

        prepared = checked(first)
        open_parent(self.config)

        def ended(job: Any, value: Any) -> None:
            num = job.context.job_num
            told(num, self._run(num, overrides.pop(num), outcome(value)))

        search = refill.Search(lambda n: checked(tasks(more(n))) if n else [], ended, more_to_come)
        limits = (self.max_members, self.max_seeds, self.max_unrolled, self.other_models)
        with errors.reported():
            try:
                launching.train_refilled(prepared, search, places, limits)
            except StoreError as e:
                raise SystemExit(f"lrsweep: {e} The search stopped; jobs not finished: {jobs_list(overrides)}.") from e

    def _launch_halving(self, plan: Any, halving: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
        """The sweep trained by successive halving (`lrsweep.run.halving`): every pack to each rung, then the best."""
        from lrsweep.core.errors import StoreError
        from lrsweep.run import launching, remote

        jobs = [job for pack in plan.packs for job in pack]
        limits = (self.max_members, self.max_seeds, self.max_unrolled, self.other_models)
        try:
            cluster = self.cluster_settings()
            stretches = remote.stretches_on(cluster) if cluster else None  # each rung's packs at once on it
            values = launching.train_halving(jobs, halving, limits, stretches) if jobs else []
        except StoreError as e:  # as for packs: every later rung would fail the same way
            left = [job.context.job_num for job in jobs]
            raise SystemExit(f"lrsweep: {e} The sweep stopped; jobs not finished: {jobs_list(left)}.") from e
        results = {**plan.reused, **{job.context.job_num: value for job, value in zip(jobs, values, strict=True)}}
        returns = {num: self._run(num, job_overrides[num - initial_job_idx], outcome(v)) for num, v in results.items()}
        return [returns[num] for num in range(initial_job_idx, initial_job_idx + len(job_overrides))]

    def _launch_plan(self, plan: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
        from lrsweep.core.errors import StoreError
        from lrsweep.run import launching

        def overrides(num: int) -> Sequence[str]:
            return job_overrides[num - initial_job_idx]

        returns: dict[int, JobReturn] = {}
        for num, value in plan.reused.items():
            returns[num] = self._run(num, overrides(num), outcome(value))
        if self.cluster:
            from lrsweep.run import remote

            results = remote.submit(plan.packs, self.cluster_settings(), self.other_models) if plan.packs else []
        for k, pack in enumerate(plan.packs):
            if self.cluster:
                outcomes = results[k]
            elif len(pack) > 1:
                self.packs_launched += 1
                try:
                    outcomes = launching.train_pack(pack, f"pack{self.packs_launched}", self.other_models)
                except StoreError as e:  # every later job would fail the same way: stop the sweep here
                    left = [job.context.job_num for later in plan.packs[k:] for job in later]
                    raise SystemExit(f"lrsweep: {e} The sweep stopped; jobs not finished: {jobs_list(left)}.") from e
            else:
                outcomes = None  # each trains alone, inside its Hydra job (its output folder and log)
            for i, job in enumerate(pack):
                task = alone(job) if outcomes is None else outcome(outcomes[i])
                returns[job.context.job_num] = self._run(job.context.job_num, overrides(job.context.job_num), task)
        return [returns[num] for num in range(initial_job_idx, initial_job_idx + len(job_overrides))]

    def _run(self, num: int, overrides: Sequence[str], task: TaskFunction) -> JobReturn:
        """Job `num` through Hydra's own machinery: its output folder, logging, callbacks and JobReturn.

        Its whole sweep config is composed here, when it is needed: checking the sweep needed its task config only.
        """
        assert self.config is not None and self.hydra_context is not None
        from lrsweep.sweep import job_config

        sweep_config = job_config(self.hydra_context.config_loader.composer.compose, self.config, overrides, num)
        log.info("\t#%s : %s", num, " ".join(filter_overrides(sweep_config.hydra.overrides.task)))
        ret = run_job(
            hydra_context=self.hydra_context,
            task_function=task,
            config=sweep_config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return ret


class ComposedOnce:
    """A Hydra config loader that keeps the jobs it composes for the sweeper's validation of a batch until the
    launcher takes them (`take`): each job of a batch is composed once, as its task config, and the defaults tree once
    per distinct set of config-group choices (`lrsweep.sweep.hydra_adapter.SweepComposer`)."""

    def __init__(self, loader: Any) -> None:
        from lrsweep.sweep.hydra_adapter import SweepComposer

        self.loader = loader
        self.composer = SweepComposer(loader)
        self.composed: dict[tuple[int, tuple[str, ...]], tuple[DictConfig, DictConfig]] = {}

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        """Composes the job as the sweeper's `validate_batch_is_legal` asks (a bad override raises as Hydra's own
        composition would), keeps it for `take`, and returns its task config: the job's config without `hydra`.

        Within a packed sweep the validation, which discards what it gets, is the only caller; the launcher composes
        a job's whole sweep config (`hydra` node included: a tenth of the cost is the task config) when it runs it.
        """
        composed = self.composer.compose_task(master_config, sweep_overrides)
        self.composed[(id(master_config), tuple(sweep_overrides))] = composed
        return composed[0]

    def take(self, master_config: DictConfig, sweep_overrides: list[str]) -> tuple[DictConfig, DictConfig]:
        """The job's task config and `hydra` node (`SweepComposer.compose_task`) the sweeper composed, or composed
        now (a sweeper that did not validate)."""
        kept = self.composed.pop((id(master_config), tuple(sweep_overrides)), None)
        return kept if kept is not None else self.composer.compose_task(master_config, sweep_overrides)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


def choose_backend(task: DictConfig) -> None:
    """Sets the Keras backend of this process from the first job, before anything imports Keras."""
    from lrsweep.core import backend

    try:
        backend.select(task.backend, task.threads)
    except ValueError as e:
        print(f"lrsweep: job #0: {e}", file=sys.stderr)
        raise SystemExit(1) from e


def jobs_list(nums: Sequence[int]) -> str:
    return ", ".join(f"#{num}" for num in nums)


def outcome(value: Any) -> Callable[[DictConfig], Any]:
    """A task function that returns what a pack already computed for the job, or raises the job's error."""

    from lrsweep.core.errors import TrainingFailed
    from lrsweep.sweep.hydra_adapter import job_failed

    def task(_: DictConfig) -> Any:
        if isinstance(value, TrainingFailed):  # a member's own error (divergence), a lost pack: one line
            raise job_failed(value)
        if isinstance(value, BaseException):
            raise value
        return value

    return task


def alone(job: Any) -> Callable[[DictConfig], Any]:
    """A task function that trains a checked job alone (`launching.train_alone`), failing as `train.py` would."""
    from lrsweep.core import errors
    from lrsweep.run import launching
    from lrsweep.sweep.hydra_adapter import failures_in_one_line

    def task(_: DictConfig) -> Any:
        with errors.reported(), failures_in_one_line():  # each one line, as for `train.py`: a bad store, Ctrl-C,
            return launching.train_alone(job)  # a divergence

    return task
