"""Successive halving in a real packed sweep: configurations stop at rungs, and every run, stopped or not, has
the numbers the same configuration gets in the full grid (`grid_sweep`, the same jobs without halving), although
its packs changed at every rung."""

from __future__ import annotations

import math

import pytest

from lrsweep import tracking
from lrsweep.core.halving import going_on
from tests.conftest import TINY, job_runs, store, train

GRID = [
    "schedule=linear",
    "schedule.initial_lr=0.001,0.005",
    "schedule.final_lr=0.01,0.02",
    "training.seed=0,1",
    "training.epochs=5",
    "training.verbose=0",
    "backend=jax",
    *TINY,
]  # fmt: skip  (conftest.grid_sweep's jobs)
EPOCHS = 5
METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "lr")
# Measured: the largest difference between a run here and in the full grid, over every metric and epoch, was 3e-7
# (float32 rounding: a narrower fused pack sums its products in another order); accuracies on 64 examples agree.
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def halving_sweep(tmp_path_factory):
    """The grid's 8 jobs with eta=2 (rungs after epochs 1, 2 and 4) in packs of at most 3: every rung repacks."""
    tmp_path = tmp_path_factory.mktemp("halving")
    result = train(tmp_path, *GRID, "hydra.launcher.halving.eta=2", "hydra.launcher.max_members=3")
    return tmp_path, result


def histories(client, run) -> dict[str, list[float]]:
    return {
        metric: [m.value for m in sorted(client.get_metric_history(run.info.run_id, metric), key=lambda m: m.step)]
        for metric in METRICS
    }


def by_hash(tmp_path) -> tuple:
    client, experiment_id = store(tmp_path)
    runs = job_runs(client, experiment_id).values()
    return client, {run.data.tags[tracking.TAG_CONFIG_HASH]: run for run in runs}


def test_halving_stops_the_behind_at_each_rung_and_every_run_matches_the_full_grid(halving_sweep, grid_sweep):
    client, halved = by_hash(halving_sweep[0])
    grid_client, full = by_hash(grid_sweep[0])
    assert set(halved) == set(full) and len(halved) == 8
    assert {run.info.status for run in halved.values()} == {"FINISHED"}
    assert {run.data.tags[tracking.TAG_HALVING] for run in halved.values()} == {"eta=2 min_epochs=1 rule=quantile"}

    trained = {}
    for key, run in halved.items():
        mine, theirs = histories(client, run), histories(grid_client, full[key])
        stopped = run.data.tags.get(tracking.TAG_STOPPED_EPOCH)
        epochs = int(stopped) if stopped else EPOCHS
        trained[key] = epochs
        for metric in METRICS:
            assert len(mine[metric]) == epochs
            gap = max(abs(a - b) for a, b in zip(mine[metric], theirs[metric][:epochs], strict=True))
            assert gap <= TOLERANCE, (run.info.run_name, metric, gap)
        if stopped:  # not finished: no test score, its last epoch's numbers as its final ones
            assert "test_accuracy" not in run.data.metrics
            assert run.data.metrics["val_accuracy"] == pytest.approx(theirs["val_accuracy"][epochs - 1], abs=TOLERANCE)
        else:
            assert run.data.metrics["test_accuracy"] == pytest.approx(full[key].data.metrics["test_accuracy"])

    # 4 configurations: 2 go on after epoch 1, 1 after epoch 2, and it trains to the end.
    configs = {}
    for key, run in halved.items():
        configs.setdefault(run.data.tags[tracking.TAG_OVERRIDES].replace('"training.seed": "1"', "").replace(
            '"training.seed": "0"', ""), []).append(key)  # fmt: skip
    assert sorted(sorted({trained[k] for k in keys}) for keys in configs.values()) == [[1], [1], [2], [5]]
    assert sum(trained.values()) == 2 * (1 + 1 + 2 + 5)  # model-epochs: 18 of the full grid's 40

    # The decisions are the ones the full grid's validation scores give at each rung.
    alive = list(configs)
    for rung, epoch in enumerate((1, 2, 4), start=1):
        scores = {
            c: {int(halved[k].data.params["training.seed"]): histories(grid_client, full[k])["val_accuracy"][epoch - 1]
                for k in configs[c]}
            for c in alive
        }  # fmt: skip
        kept = going_on(scores, eta=2)
        for c in alive:
            for k in configs[c]:
                tags = halved[k].data.tags
                if c in kept:
                    assert tracking.TAG_STOPPED_EPOCH not in tags or int(tags[tracking.TAG_STOPPED_EPOCH]) > epoch
                else:
                    where = (tags[tracking.TAG_STOPPED_RUNG], tags[tracking.TAG_STOPPED_EPOCH])
                    assert where == (str(rung), str(epoch))
        alive = kept


def test_a_stopped_run_is_never_reused_as_a_result_and_the_report_lists_it_apart(halving_sweep):
    tmp_path, result = halving_sweep
    client, experiment_id = store(tmp_path)
    runs = job_runs(client, experiment_id).values()
    for run in runs:
        found = tracking.find_finished(client, experiment_id, run.data.tags[tracking.TAG_CONFIG_HASH])
        if tracking.TAG_STOPPED_EPOCH in run.data.tags:
            assert found is None  # a rerun without halving trains it to its end
        else:
            assert found.info.run_id == run.info.run_id
    packs = {run.data.tags[tracking.TAG_PACK].rsplit("/", 1)[-1] for run in runs}
    assert packs == {"rung1-pack1", "rung1-pack2", "rung1-pack3"}  # 8 runs, at most 3 a pack
    out = result.stdout + result.stderr
    assert "Stopped early by successive halving or the search's pruner (behind, not finished), so not ranked" in out
    assert "so not ranked above: 3 configurations: " in out
    assert out.count("Rung ") >= 3 and "Rung 1 (epoch 1): 2 of 4 configurations go on, 4 runs stopped" in out
    summary = (tmp_path / "multirun" / "report" / "summary.csv").read_text().splitlines()
    assert len(summary) == 2  # the header and the one configuration that finished
    assert not math.isnan(float(summary[1].split(",")[summary[0].split(",").index("val_accuracy_mean")]))


def test_the_rung_figure_draws_every_configuration_to_where_it_stopped(halving_sweep):
    from lrsweep import tracking as t
    from lrsweep.analysis import figures, report, rungs

    tmp_path, _ = halving_sweep
    client, experiment_id = store(tmp_path)
    built = report.build(t.load_sweep(client, experiment_id, t.latest_sweep_id(client, experiment_id)))
    assert [len(c.runs) for c in built.stopped] == [2, 2, 2] and len(built.configurations) == 1
    assert [c.runs[0].stopped_epoch for c in built.stopped] == [2, 1, 1]  # most epochs first
    figure = rungs.plot_rungs(built)
    lines = figure.axes[0].get_lines()
    stopped = [line for line in lines if line.get_linestyle() == ":" and line.get_marker() == "x"]
    assert sorted(len(line.get_xdata()) for line in stopped) == [1, 1, 2]  # each stopped curve ends at its rung
    style = figures.styles(built)  # in its own colour, as in the other figures
    assert [line.get_color() for line in stopped] == [style[c.label]["color"] for c in built.stopped]
    coloured = [line for line in lines if line.get_label() == built.configurations[0].label]
    assert len(coloured) == 1 and list(coloured[0].get_xdata()) == [0, 1, 2, 3, 4]
    dashed = [line for line in lines if line.get_linestyle() == "--"]
    assert sorted(line.get_xdata()[0] for line in dashed) == [0, 1]  # ranked after epochs 1 and 2 (1-based)
    assert (tmp_path / "multirun" / "report" / "rungs.png").is_file()
