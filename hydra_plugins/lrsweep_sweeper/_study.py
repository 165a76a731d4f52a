"""The Optuna side of `hydra/sweeper=optuna`: its settings checked, the search space read from Hydra's override
grammar, the study opened or resumed, trials turned into job overrides and told their jobs' outcomes, the best
trial written out.

The search space is Hydra's sweep grammar, as hydra-optuna-sweeper read it: `interval(a, b)` is a float in [a, b]
(Hydra reads both ends as floats), `tag(log, interval(a, b))` the same on a log scale, `choice(x, y)` and `x,y` a
categorical, `range(a, b, step)` the values Hydra's basic sweeper would run (b excluded), as ints or stepped floats.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import optuna
from hydra.core.utils import JobReturn, JobStatus
from hydra.utils import instantiate
from omegaconf import OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import Trial, TrialState

from lrsweep.core import checks
from lrsweep.core import trials as judges
from lrsweep.core.errors import first_line
from lrsweep.tracking.location import sqlite_path
from lrsweep.tracking.tags import TAG_OPTUNA_STUDY, TAG_OPTUNA_TRIAL

log = logging.getLogger(__name__)

STORAGE_FILE = "optuna.db"  # the study's SQLite file, beside the MLflow store's
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
NOT_RUN = "lrsweep.not_run"  # user attribute of a FAIL trial whose batch never ran (refused, interrupted): why
RESULTS_FILE = "optimization_results.yaml"


@dataclass(frozen=True)
class Settings:
    """`hydra.sweeper.*` checked, with the storage's URL (None: in memory)."""

    sampler: Any
    pruner: Any
    direction: str
    study_name: str | None
    storage: str | None
    n_trials: int
    n_jobs: int
    max_failure_rate: float
    refill: bool | str = "auto"

    @classmethod
    def checked(cls, settings: Mapping[str, Any], tracking_uri: str) -> Settings:
        """The settings, `storage: auto` made `default_storage(tracking_uri)`.

        Raises:
            ValueError: naming the first setting that cannot work, e.g. "`hydra.sweeper.n_trials` must be an
                integer >= 1. Received: hydra.sweeper.n_trials=0".
        """
        checks.check_count("hydra.sweeper.n_trials", settings["n_trials"], 1)
        checks.check_count("hydra.sweeper.n_jobs", settings["n_jobs"], 1, " (trials per batch)")
        checks.check_number("hydra.sweeper.max_failure_rate", settings["max_failure_rate"], 0.0, 1.0)
        checks.check_choice("hydra.sweeper.direction", settings["direction"], ["minimize", "maximize"])
        checks.check_choice("hydra.sweeper.refill", settings.get("refill", "auto"), ["auto", True, False])
        storage = default_storage(tracking_uri) if settings["storage"] == "auto" else settings["storage"]
        return cls(**{**settings, "storage": storage})


def default_storage(tracking_uri: str) -> str:
    """`sqlite:///<folder of the MLflow store>/optuna.db` (absolute): the folder of a SQLite store's file, a file
    store's own folder, or the working directory for a tracking server (its store is elsewhere)."""
    database = sqlite_path(tracking_uri)
    if database is not None:
        folder = database.parent
    elif tracking_uri.startswith("file:"):
        folder = Path(urlparse(tracking_uri).path)
    elif "://" not in tracking_uri:
        folder = Path(tracking_uri).expanduser()
    else:
        folder = Path()
    return f"sqlite:///{folder.absolute() / STORAGE_FILE}"


@dataclass(frozen=True)
class SearchSpace:
    """The Optuna distribution of each swept key, and the overrides every trial passes on as they are."""

    distributions: dict[str, BaseDistribution]
    fixed: tuple[str, ...]

    @classmethod
    def parse(cls, lines: Sequence[str]) -> SearchSpace:
        """Reads `hydra.sweeper.params` and the command line's overrides, in that order (a later line for a key
        replaces an earlier one). Raises a ValueError naming a line Optuna cannot search, or no search at all."""
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from hydra.errors import OverrideParseException

        try:
            parsed = OverridesParser.create().parse_overrides(list(lines))
        except OverrideParseException as e:
            raise ValueError(f"`hydra.sweeper.params` or the command line: {first_line(e)}") from e
        entries: dict[str, BaseDistribution | str] = {}
        for override in parsed:
            key = override.get_key_element()
            entries.pop(key, None)
            entries[key] = distribution(override) if override.is_sweep_override() else override.input_line
        distributions = {k: v for k, v in entries.items() if isinstance(v, BaseDistribution)}
        if not distributions:
            raise ValueError(
                "`hydra.sweeper.params` has nothing to search: give a key an interval(a, b), choice(x, y) or "
                f"range(a, b). Received: {' '.join(lines) or 'no params'}"
            )
        return cls(distributions, tuple(v for v in entries.values() if isinstance(v, str)))

    def probe(self) -> list[str]:
        """One job's overrides with each swept key at its lowest value (its first choice): to compose once before
        any trial is asked."""
        lows = {
            name: d.choices[0] if isinstance(d, CategoricalDistribution) else d.low
            for name, d in self.distributions.items()
        }
        return [*(f"{name}={value}" for name, value in lows.items()), *self.fixed]

    def overrides(self, trial: Trial, study_name: str, sweep_dir: Path, job_num: int) -> list[str]:
        """The job overrides of an asked trial: its values, the fixed overrides, and the trial's number and study as
        MLflow tags (`tracking.tags`, no part of the run's identity). The trial notes its sweep folder and job."""
        trial.set_user_attr("lrsweep.sweep_dir", str(sweep_dir))
        trial.set_user_attr("lrsweep.job_num", job_num)
        plain = re.fullmatch(r"[\w.-]+", study_name)
        quoted = study_name if plain else "'" + study_name.replace("'", "\\'") + "'"  # Hydra's quoted value
        return [
            *(f"{name}={trial.params[name]}" for name in self.distributions),
            *self.fixed,
            f"++tracking.tags.{TAG_OPTUNA_TRIAL}={trial.number}",
            f"++tracking.tags.{TAG_OPTUNA_STUDY}={quoted}",
        ]


def distribution(override: Any) -> BaseDistribution:
    """The Optuna distribution of a sweep override (`interval`, `tag(log, interval)`, `choice`, `range`)."""
    from hydra.core.override_parser.types import Glob, Transformer

    key, value = override.get_key_element(), override.value()
    cannot = f"`{key}`: Optuna cannot search {override.input_line}; use interval(a, b), choice(x, y) or range(a, b)."
    if isinstance(value, Glob):  # config-group options listed from Hydra's repository, which this sweeper does not read
        raise ValueError(cannot)
    if override.is_interval_sweep():
        return FloatDistribution(float(value.start), float(value.end), log="log" in value.tags)
    if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if override.is_range_sweep():
        values = list(override.sweep_iterator())
        if not values or value.step < 0:
            raise ValueError(f"`{key}`: {override.input_line} must run upwards through one value or more.")
        if all(isinstance(v, int) for v in (value.start, value.stop, value.step)):
            return IntDistribution(values[0], values[-1], step=value.step)
        return FloatDistribution(float(values[0]), float(values[-1]), step=float(value.step))
    raise ValueError(cannot)


def open_study(settings: Settings) -> optuna.Study:
    """Creates the study, or loads it from its storage (the same `study_name`): it resumes where it stopped.

    A resumed study's seeded sampler is seeded with `seed + trials so far`: the first seed would propose the
    first trials' values again. Logs the storage and the optuna-dashboard command once.
    """
    storage = settings.storage
    if storage and (database := sqlite_path(storage)) is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
    sampler = instantiate(settings.sampler) if settings.sampler else None
    pruner = instantiate(settings.pruner) if settings.pruner else None
    try:
        study = optuna.create_study(
            storage=storage,
            sampler=sampler,
            pruner=pruner,
            study_name=settings.study_name,
            direction=settings.direction,
            load_if_exists=True,
        )
    except Exception as e:  # a URL SQLAlchemy cannot parse, a database it cannot open
        raise SystemExit(
            f"lrsweep: the Optuna study could not be opened in hydra.sweeper.storage={storage}: {first_line(e)}. "
            "Give a database URL (sqlite:///path/optuna.db), auto (beside the MLflow store) or null (in memory)."
        ) from e
    wanted = optuna.study.StudyDirection[settings.direction.upper()]
    if study.direction != wanted:
        raise SystemExit(
            f"lrsweep: study {study.study_name!r} in {storage} is set to {study.direction.name.lower()}, not "
            f"hydra.sweeper.direction={settings.direction}. Give the search another hydra.sweeper.study_name."
        )
    so_far = len(study.trials)
    seed = settings.sampler.get("seed") if settings.sampler else None
    if so_far and seed is not None:
        study.sampler = instantiate(settings.sampler, seed=seed + so_far)
    log.info("Optuna study %r, %d trials so far, in %s", study.study_name, so_far, storage or "memory")
    if storage:
        log.info("To watch it: optuna-dashboard %s", storage)
    return study


def finished(study: optuna.Study) -> int:
    """How many of the study's trials ran and ended (completed, pruned or failed): they count toward n_trials.

    Trials of a batch that never ran (`NOT_RUN`) do not, nor trials a killed process left RUNNING.
    """
    return sum(NOT_RUN not in trial.user_attrs for trial in study.get_trials(deepcopy=False, states=FINISHED))


@contextlib.contextmanager
def failed_if_raised(study: optuna.Study, trials: Iterable[Trial] | Callable[[], Iterable[Trial]]) -> Iterator[None]:
    """Around a batch's launch: if it raises (a refused batch, Ctrl-C), its trials (or those `trials()` gives then:
    the ones not yet told) are told FAIL, marked `NOT_RUN` with the error's first line, before the error goes on:
    the study holds no trial left running, and a resumed search does not count them."""
    try:
        yield
    except BaseException as e:
        stopped = isinstance(e, SystemExit) and not isinstance(e.code, str)  # Ctrl-C: SystemExit(130), said before
        why = f"the search stopped (exit status {e.code})" if stopped else first_line(e)
        for trial in list(trials() if callable(trials) else trials):
            with contextlib.suppress(Exception):  # the error that stopped the batch is the one to report
                trial.set_user_attr(NOT_RUN, why)
                study.tell(trial, state=TrialState.FAIL)
        raise


PRUNED_AFTER = "lrsweep.pruned_after_epoch"  # user attribute of a pruned trial: the epochs its run trained


@contextlib.contextmanager
def judged(
    study: optuna.Study, trials: Sequence[Trial], pruner: Any = None, storage: str | None = None
) -> Iterator[dict[int, judges.Judge]]:
    """Around a batch's launch, with a pruner (its config): each trial's judge registered (`lrsweep.core.trials`), so
    that its run reports its val_accuracy after every epoch (`trial.report`) and stops when `trial.should_prune()`
    says so. With a `storage` other processes reach, each judge can also be made in a cluster's worker
    (`RemoteJudge`). Yields the judges by trial number (none without a pruner)."""
    registered: dict[int, judges.Judge] = {}
    if pruner:
        for trial in trials:
            registered[trial.number] = register_judge(study, trial, pruner, storage)
    try:
        yield registered
    finally:
        judges.unregister(judges.key(study.study_name, number) for number in registered)


def register_judge(study: optuna.Study, trial: Trial, pruner: Any, storage: str | None) -> judges.Judge:
    """Registers a trial's judge (`judged`) and returns it; `judges.unregister` ends it."""
    plain = OmegaConf.to_container(pruner, resolve=True) if OmegaConf.is_config(pruner) else dict(pruner)

    def report(value: float, epoch: int) -> bool:
        trial.report(value, epoch)
        return trial.should_prune()

    elsewhere = RemoteJudge(storage, study.study_name, trial._trial_id, plain) if storage else None
    judge = judges.Judge(report, elsewhere=elsewhere)
    judges.register(judges.key(study.study_name, trial.number), judge)
    return judge


@dataclass(frozen=True)
class RemoteJudge:
    """Makes a trial's judge in another process (a cluster's worker): the study loaded from its storage with the
    search's pruner, the trial reported to and asked there. A pruned trial notes its epochs (`PRUNED_AFTER`), which
    the sweeper reads when it tells the trial (`tell`)."""

    storage: str
    study_name: str
    trial_id: int
    pruner: dict

    def __call__(self) -> judges.Judge:
        study = optuna.load_study(study_name=self.study_name, storage=self.storage, pruner=instantiate(self.pruner))
        trial = Trial(study, self.trial_id)

        def report(value: float, epoch: int) -> bool:
            trial.report(value, epoch)
            pruned = trial.should_prune()
            if pruned:
                trial.set_user_attr(PRUNED_AFTER, epoch + 1)
            return pruned

        return judges.Judge(report)


def tell(
    study: optuna.Study,
    trials: Sequence[Trial],
    returns: Sequence[JobReturn],
    registered: Mapping[int, judges.Judge] | None = None,
) -> int:
    """Tells each trial its job's value, PRUNED if its pruner stopped its run (`judged`), or FAIL with the job's
    error (user attribute `lrsweep.error`); returns how many failed."""
    failed = 0
    elsewhere: dict[int, Any] = {}  # what judges in other processes noted (`RemoteJudge`)
    if any(judge.elsewhere is not None for judge in (registered or {}).values()):
        elsewhere = {t.number: t.user_attrs.get(PRUNED_AFTER) for t in study.get_trials(deepcopy=False)}
    for trial, job_return in zip(trials, returns, strict=True):
        value, problem = outcome(job_return)
        judge = (registered or {}).get(trial.number)
        pruned_after = judge.pruned_epoch + 1 if judge is not None and judge.pruned_epoch is not None else None
        pruned_after = pruned_after or elsewhere.get(trial.number)
        if problem is None and pruned_after is not None:
            trial.set_user_attr(PRUNED_AFTER, pruned_after)
            study.tell(trial, state=TrialState.PRUNED)  # its last reported value is the one Optuna keeps
            continue
        if problem is None:
            study.tell(trial, value)
            continue
        failed += 1
        log.warning("Trial %d failed: %s", trial.number, problem)
        trial.set_user_attr("lrsweep.error", problem)
        study.tell(trial, state=TrialState.FAIL)
    return failed


SAME_AS = "lrsweep.same_as_trial"  # user attribute of a trial that repeated an earlier one of its batch


def repeats(trials: Sequence[Trial]) -> tuple[list[Trial], dict[Trial, Trial]]:
    """(the trials of a batch to run, {a trial that repeats one of them: that one}): a sampler may propose the same
    values twice in one batch (a categorical or stepped space, or TPE's few candidates), which would train the same
    configuration twice at once. The repeat is told its twin's outcome instead (`tell_repeats`)."""
    first: dict[tuple, Trial] = {}
    run, same = [], {}
    for trial in trials:
        key = tuple(sorted(trial.params.items()))
        if key in first:
            same[trial] = first[key]
        else:
            first[key] = trial
            run.append(trial)
    return run, same


def tell_repeats(study: optuna.Study, same: Mapping[Trial, Trial]) -> None:
    """Tells each repeated trial what its twin was told (value, PRUNED or FAIL), with user attribute `SAME_AS`."""
    if not same:  # the usual batch: the study's trials are not read
        return
    held = {t.number: t for t in study.get_trials(deepcopy=False)}
    for trial, twin in same.items():
        told = held[twin.number]
        trial.set_user_attr(SAME_AS, twin.number)
        if told.state == TrialState.COMPLETE:
            study.tell(trial, told.value)
        else:
            study.tell(trial, state=told.state if told.state == TrialState.PRUNED else TrialState.FAIL)


def outcome(job_return: JobReturn) -> tuple[float | None, str | None]:
    """(the job's value, None), or (None, why there is none): its error, or a return value that is no number."""
    from lrsweep.sweep.hydra_adapter import job_error

    if job_return.status != JobStatus.COMPLETED:
        return None, first_line(job_error(job_return) or RuntimeError("the job did not complete"))
    returned = job_return.return_value
    try:
        value = float(returned)
    except (TypeError, ValueError):
        return None, f"the job returned {returned!r}, not a number"
    return (value, None) if math.isfinite(value) else (None, f"the job returned {value}")


def write_results(study: optuna.Study, sweep_dir: Path) -> None:
    """Writes the study's best trial so far to `<sweep_dir>/optimization_results.yaml` and logs it."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        log.warning("No trial of study %r has completed: no best value yet.", study.study_name)
        return
    best = study.best_trial
    results = {
        "name": "optuna",
        "study_name": study.study_name,
        "best_trial": best.number,
        "best_params": best.params,
        "best_value": best.value,
    }
    sweep_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(results), sweep_dir / RESULTS_FILE)
    log.info("Best trial: #%d of study %r", best.number, study.study_name)
    log.info("Best parameters: %s", best.params)
    log.info("Best value: %s", best.value)


class Refilling:
    """A search's trials asked one place at a time (`hydra.sweeper.refill`): the launcher asks for trials as places
    in its packs free (`more`) and tells each trial's outcome as soon as its run ends (`told`), so the sampler
    proposes each trial knowing every outcome so far, as in asynchronous successive halving (ASHA).

    A proposal that repeats a trial of this search is not trained again: told its twin's outcome, at once if the
    twin has ended, else when it does. Once more than `max_failure_rate` of the trials told have failed, no more
    are asked (`stop_reason`); the running ones train to their end.
    """

    def __init__(self, study: optuna.Study, space: SearchSpace, settings: Settings, sweep_dir: Path, to_go: int):
        self.study, self.space, self.settings, self.sweep_dir = study, space, settings, sweep_dir
        self.to_go = to_go
        self.running: dict[int, Trial] = {}  # job number -> its trial
        self.twins: dict[int, list[Trial]] = {}  # job number -> the proposals that repeat its trial
        self.ended: dict[tuple, Trial] = {}  # params -> the trial with them that was told
        self.judges: dict[int, judges.Judge] = {}  # trial number -> its judge
        self.next_num = 0
        self.told_count = 0
        self.failed = 0

    def more(self, places: int) -> list[tuple[int, list[str]]]:
        """Up to `places` new trials, as (job number, overrides); none once the search has asked all it will."""
        asked: list[tuple[int, list[str]]] = []
        while len(asked) < places and self.more_to_come():
            trial = self.study.ask(self.space.distributions)
            self.to_go -= 1
            key = tuple(sorted(trial.params.items()))
            twin = next((num for num, t in self.running.items() if tuple(sorted(t.params.items())) == key), None)
            if twin is not None:
                self.twins.setdefault(twin, []).append(trial)
            elif key in self.ended:
                tell_repeats(self.study, {trial: self.ended[key]})
            else:
                num, self.next_num = self.next_num, self.next_num + 1
                asked.append((num, self.space.overrides(trial, self.study.study_name, self.sweep_dir, num)))
                self.running[num] = trial
                if self.settings.pruner:
                    self.judges[trial.number] = register_judge(self.study, trial, self.settings.pruner, None)
        return asked

    def more_to_come(self) -> bool:
        return self.to_go > 0 and self.stop_reason() is None

    def told(self, num: int, job_return: JobReturn) -> None:
        """Tells job `num`'s trial its outcome (`tell`), and its repeats the same."""
        trial = self.running.pop(num)
        self.failed += tell(self.study, [trial], [job_return], self.judges)
        self.told_count += 1
        judges.unregister([judges.key(self.study.study_name, trial.number)])
        self.ended[tuple(sorted(trial.params.items()))] = trial
        tell_repeats(self.study, {repeat: trial for repeat in self.twins.pop(num, [])})

    def unfinished(self) -> list[Trial]:
        """The trials asked and not told: running, or waiting for their twins."""
        return [*self.running.values(), *(t for repeats in self.twins.values() for t in repeats)]

    def stop_reason(self) -> str | None:
        """Why the search stops asking: its failed trials, or None."""
        if self.failed and self.failed / self.told_count > self.settings.max_failure_rate:
            return (
                f"lrsweep: {self.failed} of {self.told_count} trials failed, more than hydra.sweeper.max_failure_rate="
                f"{self.settings.max_failure_rate}: the search stopped (raise it to go on past failed trials)."
            )
        return None
