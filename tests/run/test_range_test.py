"""The LR range test: its ramp, its analysis on known curves, and real runs alone and packed, through train.py."""

from __future__ import annotations

import math
import re
import shlex

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from lrsweep import tracking
from lrsweep.analysis import range_test
from lrsweep.analysis.range_test import RangeRun, analyse
from lrsweep.analysis.report import JobRun
from lrsweep.core import backend, identity
from lrsweep.ml import range_test as rule
from lrsweep.ml import schedules
from lrsweep.ml.range_test import smooth, suggest
from tests.conftest import CONF_DIR, job_runs, store, train

# Small but real: 150 steps of 32 on the first Fashion-MNIST images, Adam from 1e-6 to 10, on JAX.
SMALL = ["backend=jax", "data.train_size=4800", "data.test_size=256", "data.validation_size=256"]
PLANNED_STEPS = 150
# Measured: a packed member's range_test/loss and its solo run's differ by at most 2.1e-5 (absolute; 2.0e-5 relative)
# up to the minimum of the smoothed loss, the part of the curve the suggestions come from: float32 rounding of
# Keras' running means, from which each step's loss is recovered, and of the pack's wider matrix product. Past it,
# as the loss explodes, the gap grows (1e-4 within 10-20 steps), as between any two equal computations there.
PACKED_ATOL = 1e-4


def values(client, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


# The ramp ------------------------------------------------------------------------------------------------------


def test_the_ramp_starts_at_min_lr_ends_at_max_lr_and_grows_by_one_factor_per_step():
    ramp = schedules.lr_range(1e-6, 10.0, steps_per_epoch=7, total_steps=101)
    lrs = np.asarray(ramp(np.arange(103)), dtype=np.float64)
    assert lrs[0] == pytest.approx(1e-6, rel=1e-6)
    assert lrs[100] == pytest.approx(10.0, rel=1e-5)
    assert lrs[50] == pytest.approx(1e-6 * math.sqrt(1e7), rel=1e-5)  # halfway in log space
    np.testing.assert_allclose(lrs[1:101] / lrs[:100], 10 ** (7 / 100), rtol=1e-5)  # the same factor every step
    assert lrs[101] == lrs[102] == lrs[100]  # held at max_lr past the end
    assert ramp.config == {"_target_": rule.SCHEDULE_TARGET, "min_lr": 1e-6, "max_lr": 10.0,
                           "steps_per_epoch": 7, "total_steps": 101}  # fmt: skip


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"min_lr": 0.0}, "`min_lr` must be a finite learning rate > 0. Received: min_lr=0.0"),
        ({"min_lr": -1e-3}, "`min_lr` must be a finite learning rate > 0. Received: min_lr=-0.001"),
        ({"max_lr": math.inf}, "`max_lr` must be a finite learning rate > 0. Received: max_lr=inf"),
        ({"min_lr": 1e-2, "max_lr": 1e-3}, "`max_lr` must be > min_lr=0.01 for a range test (the LR grows from "
                                           "min_lr to max_lr). Received: max_lr=0.001"),
        ({"min_lr": 1e-2, "max_lr": 1e-2}, "`max_lr` must be > min_lr=0.01"),
        ({"total_steps": 1}, "`total_steps` must be an integer >= 2 for a range test (raise data.train_size). "
                             "Received: total_steps=1"),
    ],
)  # fmt: skip
def test_bad_bounds_are_rejected_naming_the_key_the_value_and_the_fix(arguments, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        schedules.lr_range(**{"min_lr": 1e-6, "max_lr": 10.0, "total_steps": 100, **arguments})


def test_a_bad_bound_in_config_fails_before_anything_trains():
    from lrsweep.run import experiment

    backend.select("jax")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["+experiment=lr_range", *SMALL, "schedule.max_lr=1e-7"])
    with pytest.raises(ValueError, match=re.escape("`max_lr` must be > min_lr=1e-06")):
        experiment.prepare(cfg, identity.JobContext())


# The analysis on known curves ----------------------------------------------------------------------------------


def test_smoothing_is_fastais_bias_corrected_moving_average():
    assert smooth([3.0] * 5) == pytest.approx([3.0] * 5)  # bias correction: no pull towards 0
    losses = np.random.default_rng(0).normal(size=20)
    average, expected = 0.0, []
    for i, loss in enumerate(losses):
        average = 0.98 * average + 0.02 * loss
        expected.append(average / (1 - 0.98 ** (i + 1)))
    np.testing.assert_allclose(smooth(losses), expected, rtol=1e-12)


def known_curve(steps: int = 701, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A loss falling fastest at lr = 1e-3 * 10**shift and lowest just after 1e-1 * 10**shift, on 1e-6..10."""
    lrs = np.logspace(-6, 1, steps)
    x = np.log10(lrs) - shift
    loss = 1.0 - np.tanh((x + 3.0) / 0.5) + np.maximum(x + 1.0, 0.0) ** 2
    return lrs, loss


def test_suggestions_on_a_known_curve():
    lrs, loss = known_curve()  # 100 points per decade
    found = suggest(lrs, loss)
    assert found.steepest == pytest.approx(1e-3, rel=1e-9)  # the grid has it: the steepest point exactly
    # With x = log10(lr), d/dx = 0 past x = -1 where 2 (x + 1) = 2 sech^2(4): x = -0.9987, nearest grid point -1.
    assert found.minimum == pytest.approx(1e-1, rel=1e-9)
    assert found.min10 == pytest.approx(1e-2, rel=1e-9)
    # A first step that falls steeper still is left out when skipped, as the range test skips its start.
    early = loss.copy()
    early[:5] = [9, 7, 5, 3, 2.2]
    assert suggest(lrs, early).steepest < 1e-5
    assert suggest(lrs, early, skip=70).steepest == pytest.approx(1e-3, rel=1e-9)
    # Past the minimum the loss explodes; a spike it recovers from there falls steeper, and does not count.
    spiky = loss.copy()
    spiky[660:670] = [3, 9, 7, 5, 3, 2, 1.5, 1.2, 1.1, 1.05]
    assert suggest(lrs, spiky) == found
    with pytest.raises(ValueError, match="at least 3 points"):
        suggest(lrs[:12], loss[:12], skip=10)


def synthetic_run(seed: int, shift: float, stop: int, optimizer: str = "adam") -> RangeRun:
    """A run whose raw loss is the known curve shifted by `shift` decades, stopped after `stop` steps."""
    lrs, loss = known_curve(shift=shift)
    return RangeRun(
        run_id=f"{optimizer}{seed}",
        name=f"{optimizer}-lr_range-seed{seed}",
        params={
            "choice.optimizer": optimizer,
            "optimizer._target_": f"keras.optimizers.{optimizer.title()}",
            "training.seed": str(seed),
            "schedule._target_": rule.SCHEDULE_TARGET,
            "tracking.run_name": "None",
        },
        tags={rule.TAG_PLANNED_STEPS: str(len(lrs)), rule.TAG_STOPPED_AT_LR: repr(float(lrs[stop - 1]))},
        steps=np.arange(stop),
        lrs=lrs[:stop],
        losses=loss[:stop],
    )


def test_analysis_groups_seeds_bands_them_and_suggests_the_median_with_its_spread():
    runs = [synthetic_run(0, 0.0, 650), synthetic_run(1, -0.2, 600), synthetic_run(2, 0.1, 700),
            synthetic_run(0, 1.0, 700, "sgd")]  # fmt: skip
    adam, sgd = analyse(runs)
    assert (adam.label, sgd.label) == ("adam", "sgd")
    assert [run.seed for run in adam.runs] == ["0", "1", "2"]
    # The band spans the steps every seed reached, on their common LR grid.
    assert list(adam.steps) == list(range(600))
    np.testing.assert_array_equal(adam.lrs, np.logspace(-6, 1, 701)[:600])
    curves = np.stack([run.smoothed[:600] for run in adam.runs])
    np.testing.assert_allclose(adam.mean, curves.mean(axis=0))
    np.testing.assert_allclose(adam.low, curves.min(axis=0))
    np.testing.assert_allclose(adam.high, curves.max(axis=0))
    # Each seed's steepest point moves with its curve; the smoothing (a lag of ~1 / (1 - beta) = 50 steps, half a
    # decade here) puts it a little later than the raw curve's. The median is seed 0's.
    steepest = [run.suggestion.steepest for run in adam.runs]
    assert steepest[1] < steepest[0] < steepest[2]
    assert steepest[1] / steepest[0] == pytest.approx(10**-0.2, rel=0.03)
    assert 1e-3 < steepest[0] < 10**-2.3
    assert adam.steepest == steepest[0]
    assert all(s.steepest < s.minimum for s in adam.suggested)
    assert adam.min10 == adam.runs[0].suggestion.min10
    lines = adam.lines()
    spread = f"[{steepest[1]:.1e}..{steepest[2]:.1e}]"
    assert lines[0].startswith(f"adam: steepest {steepest[0]:.1e} {spread}, min/10 {adam.min10:.1e} [")
    assert "over 3 seeds; stopped at lr" in lines[0]
    initial = f"{steepest[0] / 10:.1e},{steepest[0]:.1e}"
    final = f"{steepest[0]:.1e},{adam.min10:.1e}"
    assert lines[1] == (f"  warm-up grid: python train.py -m optimizer=adam schedule=linear "
                        f"schedule.initial_lr={initial} schedule.final_lr={final} training.seed=0,1,2")  # fmt: skip
    assert sgd.lines()[0].startswith("sgd: steepest ") and "over 1 seed" in sgd.lines()[0]


# Real runs -------------------------------------------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_a_real_range_test_stops_when_the_loss_explodes_and_suggests_bounds(tmp_path):
    result = train(tmp_path, "+experiment=lr_range", *SMALL, "schedule.max_lr=100", multirun=False)
    client, experiment_id = store(tmp_path)
    (run,) = job_runs(client, experiment_id).values()
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags[rule.TAG_PLANNED_STEPS] == str(PLANNED_STEPS)
    stopped_step, stopped_lr = int(tags[rule.TAG_STOPPED_AT_STEP]), float(tags[rule.TAG_STOPPED_AT_LR])
    loss = values(client, run.info.run_id, rule.LOSS)
    lr = values(client, run.info.run_id, rule.LR)
    # One point per step up to the stop (a step whose loss is not finite is not logged), before the ramp's end.
    last = stopped_step if tags[rule.TAG_STOP_REASON].startswith("smoothed loss above 4x") else stopped_step - 1
    assert sorted(loss) == sorted(lr) == list(range(last + 1))
    assert stopped_step < PLANNED_STEPS - 1
    ramp = schedules.lr_range(1e-6, 100.0, total_steps=PLANNED_STEPS)
    assert float(ramp(stopped_step)) == pytest.approx(stopped_lr, rel=1e-6)
    np.testing.assert_allclose([lr[k] for k in sorted(lr)], ramp(np.arange(last + 1)), rtol=1e-6)
    smoothed = smooth([loss[k] for k in sorted(loss)])
    exploded = smoothed > rule.STOP_FACTOR * np.minimum.accumulate(smoothed)
    if last == stopped_step:  # it stopped at the first step whose smoothed loss was above 4x the lowest so far
        assert exploded[-1] and not exploded[:-1].any()

    # The suggestion, printed after the run and written to the run's folder.
    (tested,) = analyse(range_test.load(client, [JobRun.from_mlflow(run)]))
    steepest, min10 = tested.steepest, tested.min10
    assert 1e-6 < steepest < min10 * 10 < stopped_lr < 100  # inside the swept range, in this order
    assert f"adam: steepest {steepest:.1e}, min/10 {min10:.1e} over 1 seed; stopped at lr {stopped_lr:.1e}" in (
        result.stdout
    )
    for name in ("lr_range.png", "lr_range.csv", "lr_range.txt"):
        assert (tmp_path / "outputs" / name).stat().st_size > 0
    # The printed command is a valid sweep of the linear warm-up, around the suggestion.
    (command,) = re.findall(r"warm-up grid: python train.py -m (.*)", result.stdout)
    overrides = shlex.split(command)
    assert overrides[:2] == ["optimizer=adam", "schedule=linear"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[o.split(",")[0] for o in overrides])
    assert cfg.schedule.initial_lr == pytest.approx(steepest / 10, rel=0.05)
    assert cfg.schedule.final_lr == pytest.approx(steepest, rel=0.05)
    assert range_test.report(client, [], tmp_path / "none") == ("", [])  # no range test: nothing
    # Read back from MLflow alone (as a sweep's report does), the same text.
    assert range_test.report(client, [run.info.run_id], tmp_path / "again")[0] == (
        (tmp_path / "outputs" / "lr_range.txt").read_text().rstrip("\n")
    )


@pytest.mark.timeout(900)
def test_three_seeds_pack_into_one_model_with_the_solo_runs_losses(tmp_path):
    packed, solo = tmp_path / "packed", tmp_path / "solo"
    packed.mkdir(), solo.mkdir()
    result = train(packed, "+experiment=lr_range", *SMALL, "training.seed=0,1,2")
    # The sweep's report ends with the suggestion over the 3 seeds and holds its files.
    assert "LR range test:" in result.stdout and "adam: steepest " in result.stdout and "over 3 seeds" in result.stdout
    assert {"lr_range.png", "lr_range.csv"} <= {p.name for p in (packed / "multirun" / "report").iterdir()}
    # The suggestion is the answer, right after the counts: no ranking of runs that explode on purpose.
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Sweep multirun: 3 runs"))
    assert lines[start + 1].startswith("LR range test: 3 runs, 1 configuration.")
    assert not any(line.startswith("rank ") for line in lines)
    assert "| rank |" not in (packed / "multirun" / "report" / "summary.md").read_text()
    train(solo, "+experiment=lr_range", *SMALL, "training.seed=0,1,2", "hydra/launcher=basic")
    packed_client, packed_experiment = store(packed)
    solo_client, solo_experiment = store(solo)
    packed_runs = job_runs(packed_client, packed_experiment)
    solo_runs = job_runs(solo_client, solo_experiment)
    assert sorted(packed_runs) == sorted(solo_runs) == [f"s{k} · adam-lr_range" for k in range(3)]
    assert len({run.data.tags[tracking.TAG_PACK] for run in packed_runs.values()}) == 1
    assert {run.data.tags[tracking.TAG_PACK_SIZE] for run in packed_runs.values()} == {"3"}
    assert not any(tracking.TAG_PACK in run.data.tags for run in solo_runs.values())
    worst = 0.0
    for name, run in packed_runs.items():
        alone = solo_runs[name]
        assert run.info.status == alone.info.status == "FINISHED"
        (member,) = range_test.load(packed_client, [JobRun.from_mlflow(run)])
        (single,) = range_test.load(solo_client, [JobRun.from_mlflow(alone)])
        lowest = int(np.argmin(single.smoothed))  # compared up to the smoothed loss's minimum
        assert lowest > PLANNED_STEPS // 2
        np.testing.assert_array_equal(member.steps[: lowest + 1], single.steps[: lowest + 1])
        np.testing.assert_array_equal(member.lrs[: lowest + 1], single.lrs[: lowest + 1])  # the same float32 LRs
        gaps = np.abs(member.losses[: lowest + 1] - single.losses[: lowest + 1])
        worst = max(worst, float(gaps.max()))
        assert gaps.max() <= PACKED_ATOL, (name, int(gaps.argmax()), float(gaps.max()))
        # The same suggestions, to a step of the LR grid, and the same stop (if any) to a step or two.
        step_factor = (10.0 / 1e-6) ** (1 / (PLANNED_STEPS - 1))
        for found, expected in ((member.suggestion.steepest, single.suggestion.steepest),
                                (member.suggestion.minimum, single.suggestion.minimum)):  # fmt: skip
            assert 1 / step_factor <= found / expected <= step_factor
        stops = [r.data.tags.get(rule.TAG_STOPPED_AT_STEP) for r in (run, alone)]
        assert (stops[0] is None) == (stops[1] is None)
        if stops[0] is not None:
            assert abs(int(stops[0]) - int(stops[1])) <= 2
    print(f"largest packed vs solo range_test/loss gap up to the smoothed minimum: {worst:.2e}")
