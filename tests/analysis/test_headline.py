"""The sweep's answer in words (`lrsweep.analysis.headline`): sweeps of known final accuracies, ranked by the report's
own code, then the tutorial's real sweep read back from MLflow, where the answer opens the printed summary,
summary.md and report.html."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from lrsweep import tracking
from lrsweep.analysis import files, headline, report
from lrsweep.ml.range_test import SCHEDULE_TARGET
from tests.analysis.test_report_html import Page

ADAM, ADAGRAD = "keras.optimizers.Adam", "keras.optimizers.Adagrad"
LINEAR = {"choice.schedule": "linear", "schedule.initial_lr": "0.005", "schedule.final_lr": "0.01",
          "schedule.warmup_epochs": "5", "training.epochs": "10"}  # fmt: skip
CONSTANT = {"choice.schedule": "constant"}


def runs_of(overrides: dict[str, str], params: dict[str, str], optimizer: str, accuracies, loss: float = 0.5):
    """One FINISHED run per seed with these final val_accuracy values (`loss`: the final training loss)."""
    return [
        report.JobRun(
            f"{'-'.join(overrides.values())}-{seed}",
            f"{'-'.join(overrides.values())}-{seed}",
            "FINISHED",
            dict(overrides),
            {"optimizer.learning_rate": "0.01", **params, "training.seed": str(seed)},
            {"val_accuracy": accuracy, "loss": loss},
            tags={tracking.TAG_OPTIMIZER: optimizer},
        )  # fmt: skip
        for seed, accuracy in enumerate(accuracies)
    ]


def tutorial(linear, constant, adagrad=(0.80, 0.81, 0.79)) -> report.SweepReport:
    jobs = runs_of({"+strategy": "adam_linear"}, LINEAR, ADAM, linear)
    jobs += runs_of({"+strategy": "adam_constant"}, CONSTANT, ADAM, constant)
    jobs += runs_of({"+strategy": "adagrad"}, CONSTANT, ADAGRAD, adagrad)
    return report.from_jobs("s", jobs)


def test_a_warmup_tied_with_its_constant_baseline_is_said_to_make_no_measurable_difference():
    linear, constant = (0.850, 0.862, 0.845), (0.853, 0.860, 0.851)
    first, second = headline.answer(tutorial(linear, constant))
    test = scipy_stats.ttest_rel(linear, constant)
    difference = np.mean(linear) - np.mean(constant)
    low, high = test.confidence_interval(0.95)
    assert first == (
        "Warm-up (adam_linear: linear 0.005 -> 0.01 over 5 epochs) vs constant LR (adam_constant): no measurable "
        f"difference, {difference:+.4f} [{low:+.4f}, {high:+.4f}] in mean val_accuracy, p = {test.pvalue:.2g} "
        f"over 3 seeds (this pair alone); about {first.split('about ')[1].split()[0]} seeds would detect a "
        "difference this size."
    )
    assert int(first.split("about ")[1].split()[0]) > 3
    # The leader is not crowned: the table says the best has one tied with it.
    assert second.startswith("Best, tied with adam_linear: adam_constant (val_accuracy 0.8547 ± 0.0047 over 3 seeds)")
    assert second.endswith("; 1 worse: adagrad.")
    header, body = tutorial(linear, constant).table_cells()
    assert body[0][header.index("verdict")] == "best (tied with 1)"


def test_a_clearly_better_warmup_is_said_to_be_better_and_the_losers_named():
    linear, constant = (0.88, 0.89, 0.885), (0.85, 0.858, 0.852)
    first, second = headline.answer(tutorial(linear, constant))
    test = scipy_stats.ttest_rel(linear, constant)
    assert first.startswith("Warm-up (adam_linear: linear 0.005 -> 0.01 over 5 epochs) vs constant LR (adam_constant):")
    assert f"warm-up is better, {np.mean(linear) - np.mean(constant):+.4f} [" in first
    assert first.endswith(f"p = {test.pvalue:.2g} over 3 seeds (this pair alone).") and test.pvalue < 0.05
    assert second.startswith("Best: adam_linear (val_accuracy 0.8850 ± 0.0050 over 3 seeds), ahead of every other")
    assert second.endswith("; 2 worse: adam_constant and adagrad.")
    # Reversed: the baseline ahead, and the warm-up cut short by the epochs it trained.
    jobs = tutorial(constant, linear).runs
    for job in jobs:
        job.params["training.epochs"] = "2"
    first = headline.answer(report.from_jobs("s", jobs))[0]
    assert "linear 0.005 -> 0.01 over 5 epochs (of which 2 trained)" in first
    assert f"warm-up is worse, {np.mean(constant) - np.mean(linear):+.4f} [" in first


def test_one_run_per_arm_asks_for_seeds_instead_of_a_verdict():
    first, second = headline.answer(tutorial([0.86], [0.85], [0.8]))
    assert first.endswith("+0.0100 in mean val_accuracy with 1 run of one of them: no test is possible; sweep seeds "
                          "to compare, e.g. training.seed=0,1,2.")  # fmt: skip
    assert second.startswith("Highest: adam_linear (val_accuracy 0.8600 over 1 seed), but with one run per")


def test_a_grid_names_its_best_region_and_how_many_are_tied_with_the_best():
    # 3 x 3 initial_lr x final_lr: high at small initial_lr and final_lr 0.01-0.02, clearly lower elsewhere.
    means = {("0.001", "0.01"): 0.880, ("0.001", "0.02"): 0.878, ("0.003", "0.01"): 0.877,
             ("0.003", "0.02"): 0.86, ("0.001", "0.05"): 0.80, ("0.003", "0.05"): 0.79,
             ("0.01", "0.01"): 0.82, ("0.01", "0.02"): 0.81, ("0.01", "0.05"): 0.70}  # fmt: skip
    noise = [(0.0, 0.004, -0.004), (0.004, -0.004, 0.0), (-0.004, 0.0, 0.004)]  # seeds differ by configuration
    jobs = []
    for i, ((initial, final), mean) in enumerate(means.items()):
        overrides = {"schedule.initial_lr": initial, "schedule.final_lr": final}
        params = {**LINEAR, **overrides}
        jobs += runs_of(overrides, params, ADAM, [mean + e for e in noise[i % 3]])
    built = report.from_jobs("g", jobs)
    verdicts = {c.label: c.verdict for c in built.comparisons.values()}
    tied = [label for label, v in verdicts.items() if v in ("tied with best", "worse before correction")]
    assert sorted(tied) == ["initial_lr=0.001, final_lr=0.02", "initial_lr=0.003, final_lr=0.01"]
    (first,) = headline.answer(built)
    assert first == (
        "Best region: initial_lr 0.001-0.003 x final_lr 0.01-0.02 (2 configurations tied with the best, 6 worse of "
        "9); the best: initial_lr=0.001, final_lr=0.01 (val_accuracy 0.8800 ± 0.0040 over 3 seeds)."
    )


def test_a_phase_diagram_says_where_the_boundary_sits_and_how_far_warmup_moves_it():
    lrs = ("0.001", "0.01", "0.03", "0.1", "0.3")
    largest = {"0": "0.03", "1": "0.1", "2": "0.1"}  # the largest target LR that trains at each warm-up length
    jobs = []
    for length, limit in largest.items():
        for lr in lrs:
            trains = float(lr) <= float(limit)
            overrides = {"optimizer.learning_rate": lr, "schedule.warmup.length": length}
            params = {"choice.schedule": "warmup", "training.epochs": "3", **overrides}
            accuracies = [0.85 - float(lr), 0.86 - float(lr)] if trains else [0.1, 0.1]
            jobs += runs_of(overrides, params, ADAM, accuracies, loss=0.5 if trains else 2.5)
    lines = headline.answer(report.from_jobs("p", jobs))
    assert lines[0] == (
        "Phase diagram (Adam, 3 epochs, 2 seeds): the largest target LR that trains is 0.03 without warm-up; warm-up "
        "(length=1) moves it up by 1 grid step, to 0.1."
    )
    assert lines[1].startswith("Boundary: ")


def test_a_range_test_is_answered_by_its_suggestion_not_a_ranking(tmp_path):
    jobs = runs_of({"training.seed": "0"}, {}, ADAM, [0.1, 0.3], loss=9.0)
    for job in jobs:
        job.tags[tracking.TAG_SCHEDULE] = SCHEDULE_TARGET
    built = report.from_jobs("r", jobs)
    assert headline.answer(built, "LR range test: 2 runs ...\nsteepest 1e-3") == [
        "LR range test: 2 runs ...\nsteepest 1e-3"
    ]
    assert "python -m lrsweep.range_test --sweep r" in headline.answer(built)[0]
    (tmp_path / "lr_range.txt").write_text("LR range test: 2 runs ...\n")
    markdown = files.summary_md(built, files.range_suggestion(tmp_path))
    assert markdown == "# Sweep r\n\n```\nLR range test: 2 runs ...\n```\n"  # no table of exploded runs
    page = Page(files.write_html(built, tmp_path).read_text())
    assert page.rows == [] and "LR range test: 2 runs ..." in page.text


@pytest.fixture(scope="module")
def tutorial_sweep(tutorial_sweep):
    tmp_path, result = tutorial_sweep
    client, experiment_id = tracking.connect(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}", "lrsweep")
    return tmp_path, result, report.build(tracking.load_sweep(client, experiment_id, "multirun"))


def test_the_tutorials_answer_opens_the_printed_summary_summary_md_and_report_html(tutorial_sweep):
    tmp_path, result, built = tutorial_sweep
    answer = headline.answer(built)
    assert len(answer) == 2 and answer[0].startswith(
        "Warm-up (adam_linear: linear 0.005 -> 0.01 over 5 epochs (of which 2 trained)) vs constant LR "
        "(adam_constant): "
    )
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Sweep multirun: 8 runs in 4 configurations"))
    assert lines[start + 1 : start + 3] == answer
    folder = tmp_path / "multirun" / "report"
    assert (folder / "summary.md").read_text().startswith(f"# Sweep multirun\n\n**{answer[0]}**\n\n**{answer[1]}**\n")
    page = Page((folder / "report.html").read_text())
    assert [t for t in page.text if t.strip()][2:5] == ["Sweep multirun", *answer]  # the h1, then the answer
    # The table fits: rank, strategy, the ranking metric, vs best, p, verdict; the rest folded below.
    assert page.rows[0] == ["rank", "strategy", "val_accuracy (mean ± std)", "vs best [95% CI]", "p (Holm)", "verdict"]
    folded = page.rows[len(built.configurations) + 1]
    assert folded[:2] == ["rank", "strategy"] and folded[-4:] == ["n", "failed", "diverged", "reused"]
    assert math.isfinite(built.configurations[0].stat("val_accuracy")[0])
