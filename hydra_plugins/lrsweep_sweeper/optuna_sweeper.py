"""`hydra/sweeper=optuna`: an Optuna search, its trials asked n_jobs at a time and launched as one batch.

Each batch goes to the launcher at once (the packed launcher trains it as one pack); each trial is told the value
its job returned, or FAIL. The study lives in SQLite beside the MLflow store by default, so running the same
command again resumes it (`_study.py`). This module stays light: Hydra imports every plugin at start-up, and Optuna
is imported only when a search starts: Hydra skips modules named `_*` when it scans for plugins. (No `from __future__
import annotations` here: the scan runs a module before it is in `sys.modules`, where a dataclass cannot read string
annotations.)
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

log = logging.getLogger(__name__)


@dataclass
class OptunaSweeperConf:
    """`hydra.sweeper.*` of `hydra/sweeper=optuna`: the keys of hydra-optuna-sweeper, which this plugin replaces (its
    `custom_search_space` aside), and `pruner`.

    Attributes:
        sampler: an Optuna sampler's `_target_` and arguments (TPE by default). A resumed study's sampler gets
            `seed + trials so far`: the same seed would propose the first trials again.
        pruner: an Optuna pruner's `_target_` and arguments (null: none). Each trial's run reports its val_accuracy
            after every epoch and stops when the pruner says so, in this process or in a cluster's worker (packs on
            `hydra.launcher.cluster`, with a `storage` the workers reach); its trial ends PRUNED, its run FINISHED
            as a stopped run.
        direction: minimize or maximize what the task function returns.
        study_name: the study in `storage`: the same name resumes it; null lets Optuna name a new one.
        storage: a database URL; auto: `sqlite:///<folder of the MLflow store>/optuna.db`; null: in memory.
        n_trials: the trials the study holds when the search ends, those of earlier runs of the command included.
        n_jobs: trials asked and launched at a time: one batch (one pack with the packed launcher); with `refill`,
            the trials training at once.
        max_failure_rate: the search stops after a batch in which a larger share of the trials failed (with
            `refill`: once a larger share of those told so far failed; the running ones train to their end).
        refill: true: with a pruner, n_jobs > 1 and the packed launcher training here (no cluster, no halving),
            a place a pruned, diverged or finished trial frees in its pack is refilled at that epoch's end with the
            next trial the sampler proposes, knowing every outcome so far (asynchronous, as ASHA); the runs that go
            on keep their state and epoch. false: batches of `n_jobs`, each trained to its end. auto: true for
            models packed one copy per member, where a pruned member would cost a whole member's training until
            its batch ends; false for the fused MLP, whose pruned member costs less than rebuilding its pack
            (scripts/bench_halving.py).
        params: the search space, `key: <Hydra sweep>` (`interval(a, b)`, `tag(log, interval(a, b))`, `choice(...)`,
            `range(...)`), read before the command line's overrides.
    """

    _target_: str = "hydra_plugins.lrsweep_sweeper.optuna_sweeper.OptunaSweeper"
    _recursive_: bool = False  # the sampler and pruner arrive as configs: a resumed study reseeds its sampler
    sampler: Any = field(
        default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": None, "n_startup_trials": 10}
    )
    pruner: Any = None
    direction: str = "minimize"
    study_name: str | None = None
    storage: str | None = "auto"
    n_trials: int = 20
    n_jobs: int = 2
    max_failure_rate: float = 0.0
    refill: Any = "auto"
    params: dict[str, str] | None = None


ConfigStore.instance().store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="lrsweep")


class OptunaSweeper(Sweeper):
    """Asks an Optuna study for `n_jobs` trials, launches them as one batch, tells each its job's value; repeats
    until the study holds `n_trials` trials that ran. The arguments are `OptunaSweeperConf`'s."""

    def __init__(
        self,
        sampler: Any,
        pruner: Any,
        direction: str,
        study_name: str | None,
        storage: str | None,
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float,
        params: Any,
        refill: Any = "auto",
    ) -> None:
        self.settings = {
            "sampler": sampler, "pruner": pruner, "direction": direction, "study_name": study_name,
            "storage": storage, "n_trials": n_trials, "n_jobs": n_jobs, "max_failure_rate": max_failure_rate,
            "refill": refill,
        }  # fmt: skip
        self.params = dict(params or {})
        self.config: DictConfig | None = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def sweep(self, arguments: list[str]) -> None:
        assert self.config is not None and self.launcher is not None
        from hydra_plugins.lrsweep_sweeper import _study as search
        from lrsweep.core import errors

        with errors.reported():  # bad settings or search space: one line, before the study is opened
            settings = errors.as_config_error(search.Settings.checked, self.settings, self.config.tracking.uri)
            space = errors.as_config_error(search.SearchSpace.parse, [*self._params(), *arguments])
        self.validate_batch_is_legal([space.probe()])  # a key the config lacks fails here, with Hydra's message
        refill = bool(settings.pruner and settings.refill is not False and settings.n_jobs > 1)  # one place: batches
        refused = self._refill_refused() if refill else None
        if refill and refused is None:  # refill=true and a model that cannot pack: one line, before the study opens
            refused = self.launcher.check_refill(space.probe(), required=settings.refill is True)
            refused = refused and f"{refused} (hydra.sweeper.refill=auto; true refills anyway)"
        if refused is not None:
            log.info("Trials train in batches of hydra.sweeper.n_jobs=%d: %s", settings.n_jobs, refused)
            refill = False
        study = search.open_study(settings)
        to_go = settings.n_trials - search.finished(study)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        if refill:
            return self._sweep_refilled(search.Refilling(study, space, settings, sweep_dir, to_go))
        job_idx = 0
        while to_go > 0:
            trials = [study.ask(space.distributions) for _ in range(min(settings.n_jobs, to_go))]
            launched, same = search.repeats(trials)  # the same values twice in a batch: trained once
            overrides = [
                space.overrides(trial, study.study_name, sweep_dir, job_idx + k) for k, trial in enumerate(launched)
            ]
            with search.judged(study, launched, settings.pruner, settings.storage) as registered:
                with search.failed_if_raised(study, trials):
                    returns = self.launcher.launch(overrides, initial_job_idx=job_idx)
                failed = search.tell(study, launched, returns, registered)
            search.tell_repeats(study, same)
            job_idx += len(returns)
            to_go -= len(trials)
            if failed / len(launched) > settings.max_failure_rate:
                search.write_results(study, sweep_dir)
                raise SystemExit(
                    f"lrsweep: {failed} of {len(launched)} trials failed, more than hydra.sweeper.max_failure_rate="
                    f"{settings.max_failure_rate}: the search stopped (raise it to go on past failed trials)."
                )
        search.write_results(study, sweep_dir)

    def _refill_refused(self) -> str | None:
        """Why this search's launcher cannot refill freed places (None: it can)."""
        refused = getattr(self.launcher, "refill_refused", None)
        if refused is None:
            return f"{type(self.launcher).__name__} does not refill freed places (hydra/launcher=packed does)"
        return refused()

    def _sweep_refilled(self, refilling: Any) -> None:
        """The search with its freed places refilled (`_study.Refilling`), then its results written."""
        from hydra_plugins.lrsweep_sweeper import _study as search

        with search.failed_if_raised(refilling.study, refilling.unfinished):
            self.launcher.launch_refilled(
                refilling.more, refilling.told, refilling.more_to_come, self.settings["n_jobs"]
            )
        search.write_results(refilling.study, refilling.sweep_dir)
        if (reason := refilling.stop_reason()) is not None:
            raise SystemExit(reason)

    def _params(self) -> list[str]:
        """`hydra.sweeper.params` as override lines (`key=value`), before the command line's."""
        return [f"{key}={value}" for key, value in self.params.items()]
