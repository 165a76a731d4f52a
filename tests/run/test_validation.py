"""Selection on held-out data: which training examples are held out, and the test set scored once per run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from lrsweep import tracking
from lrsweep.ml import data
from lrsweep.run import experiment
from tests.conftest import CONF_DIR, ROOT, TINY, job_runs, store, train

REAL = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.skipif(not REAL.is_dir(), reason="needs dataset-fashion-mnist")
TEST_METRICS = {"test_loss", "test_accuracy"}


def history(client, run, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]


def compose_data(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=[f"data.dir={REAL}", *overrides])


def test_held_out_examples_are_disjoint_from_training_and_of_the_requested_size():
    raw_images, raw_labels, _, _ = data._load_folder(REAL.resolve())
    split = data.load(dir=str(REAL), validation_size=1000)
    assert (len(split.x_train), len(split.x_val), len(split.x_test)) == (59000, 1000, 10000)
    assert split.validation == "held-out 1000 of train" and not split.validates_on_test
    kept, held_out = data.holdout_split(60000, 1000)
    assert len(set(held_out.tolist())) == 1000 and set(kept.tolist()).isdisjoint(held_out.tolist())
    assert sorted([*kept, *held_out]) == list(range(60000))
    assert list(kept) == sorted(kept)  # the rest, in the original order
    np.testing.assert_array_equal(split.x_train, raw_images[kept] / np.float32(255))
    np.testing.assert_array_equal(split.x_val, raw_images[held_out] / np.float32(255))
    np.testing.assert_array_equal(split.y_val, raw_labels[held_out])
    assert split.x_test is not split.x_val and len(np.unique(split.y_val)) == 10  # spread over the classes
    # data.train_size takes the first examples of the rest; a smaller held-out set is part of a larger one.
    head = data.load(dir=str(REAL), validation_size=1000, train_size=300)
    np.testing.assert_array_equal(head.x_train, split.x_train[:300])
    np.testing.assert_array_equal(head.x_val, split.x_val)
    assert set(data.holdout_split(60000, 10)[1].tolist()) <= set(held_out.tolist())


def test_the_held_out_examples_are_the_same_for_every_seed_and_every_process():
    by_seed = [
        experiment.instantiate(
            compose_data(f"training.seed={seed}", "data.validation_size=500", "data.train_size=1000").data
        )
        for seed in (0, 1, 7)
    ]
    for other in by_seed[1:]:
        np.testing.assert_array_equal(other.x_val, by_seed[0].x_val)
        np.testing.assert_array_equal(other.x_train, by_seed[0].x_train)
    code = "from lrsweep import data; print(data.holdout_split(60000, 500)[1].tolist())"
    fresh = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert fresh.stdout.strip() == str(data.holdout_split(60000, 500)[1].tolist())  # another run, another process


def test_null_validates_on_the_test_set_and_the_default_holds_out_10000():
    tutorial = data.load(dir=str(REAL), test_size=100)
    assert tutorial.validates_on_test and tutorial.validation == "test set"
    assert tutorial.x_val is tutorial.x_test and tutorial.y_val is tutorial.y_test and len(tutorial.x_train) == 60000
    assert compose_data().data.validation_size == 10000
    assert compose_data("+experiment=tutorial", "+strategy=adagrad").data.validation_size is None
    assert compose_data("+experiment=warmup_search").data.validation_size == 10000
    default = experiment.instantiate(compose_data().data)
    assert default.sizes == (50000, 10000) and len(default.x_val) == 10000


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        ({"validation_size": 0}, "`data.validation_size` must be an integer in 1..59999"),
        ({"validation_size": 60000}, "or null to validate on the test set. Received: validation_size=60000"),
        ({"validation_size": 1.5}, "Received: validation_size=1.5"),
        (
            {"validation_size": 10000, "train_size": 50001},
            "`data.train_size` must be in 1..50000 (the training examples left after data.validation_size=10000; "
            "lower either). Received: train_size=50001",
        ),
        ({"train_size": 60001}, "`data.train_size` must be in 1..60000. Received: train_size=60001"),
    ],
)
def test_sizes_out_of_bounds_name_the_key_value_and_fix(sizes, message):
    with pytest.raises(ValueError) as excinfo:
        data.load(dir=str(REAL), **sizes)
    assert message in str(excinfo.value)


def test_a_bad_validation_size_fails_before_any_run(store_uri):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"tracking.uri={store_uri}", "backend=jax", *TINY,
                                                       "data.validation_size=60000"])  # fmt: skip
    with pytest.raises(ValueError, match="`data.validation_size` must be an integer in 1..59999"):
        experiment.run(cfg)
    client, experiment_id = tracking.connect(store_uri, "lrsweep")
    assert client.search_runs([experiment_id]) == []


def test_a_run_validated_on_held_out_data_scores_the_test_set_once(tmp_path):
    result = train(tmp_path, "backend=jax", "training.epochs=2", "training.verbose=0", *TINY, multirun=False)
    client, experiment_id = store(tmp_path)
    (run,) = job_runs(client, experiment_id).values()
    assert run.info.status == "FINISHED"
    assert run.data.tags[tracking.TAG_VALIDATION] == "held-out 64 of train"
    assert run.data.params["data.validation_size"] == "64"
    for key in TEST_METRICS:
        ((step, value),) = history(client, run, key)
        assert step == 1 and np.isfinite(value), key  # once, at the last epoch
    assert 0.3 < run.data.metrics["test_accuracy"] <= 1.0
    assert [step for step, _ in history(client, run, "val_accuracy")] == [0, 1]
    assert "512 train / 64 validation (held-out 64 of train) / 256 test examples" in result.stdout + result.stderr


@pytest.mark.timeout(600)
def test_a_pack_logs_each_finished_members_test_scores_as_its_solo_run_does(tmp_path):
    sweep = ["optimizer=sgd", "training.seed=0,1", "backend=jax", "training.epochs=2", "training.verbose=0", *TINY]
    packed = train(tmp_path, *sweep, "optimizer.learning_rate=0.05,1e30", check=False)
    assert packed.returncode == 1  # the two diverged runs failed
    client, experiment_id = store(tmp_path)
    runs = job_runs(client, experiment_id, "multirun")
    assert {r.data.tags[tracking.TAG_PACK_SIZE] for r in runs.values()} == {"4"}
    assert "/ 64 validation (held-out 64 of train) / 256 test examples" in packed.stdout + packed.stderr
    for name, run in runs.items():
        assert run.data.tags[tracking.TAG_VALIDATION] == "held-out 64 of train"
        if "1e+30" in name:  # diverged: no test scores
            assert run.info.status == "FAILED" and not TEST_METRICS & set(run.data.metrics), name
        else:
            assert run.info.status == "FINISHED", name
    train(tmp_path, *sweep, "optimizer.learning_rate=0.05", "hydra/launcher=basic", "resume=false",
          f"hydra.sweep.dir={tmp_path / 'basic'}")  # fmt: skip
    solo = job_runs(client, experiment_id, "basic")
    assert len(solo) == 2
    for name, other in solo.items():
        assert tracking.TAG_PACK not in other.data.tags
        for key in TEST_METRICS:
            ours, theirs = history(client, runs[name], key), history(client, other, key)
            assert [s for s, _ in ours] == [s for s, _ in theirs] == [1], f"{name} {key}"
            np.testing.assert_allclose(ours[0][1], theirs[0][1], rtol=1e-5, atol=1e-7, err_msg=f"{name} {key}")


def test_validating_on_the_test_set_logs_val_as_the_test_score_and_no_test_metrics(tmp_path):
    # Held out 64: none of the first 512 training examples, so both runs train on exactly the same examples.
    assert data.holdout_split(60000, 64)[1].min() >= 512
    train(tmp_path, "backend=jax", "training.epochs=2", "training.verbose=0", *TINY, "data.validation_size=null,64",
          "hydra/launcher=basic")  # fmt: skip
    client, experiment_id = store(tmp_path)
    # (Run names leave data.* out: the two runs share one name.)
    jobs = client.search_runs([experiment_id], f"tags.`{tracking.TAG_ROLE}` = 'job'")
    runs = {r.data.params["data.validation_size"]: r for r in jobs}
    tutorial, held_out = runs["None"], runs["64"]
    assert tutorial.data.tags[tracking.TAG_VALIDATION] == "test set"
    assert not TEST_METRICS & set(tutorial.data.metrics)
    np.testing.assert_allclose(history(client, tutorial, "loss"), history(client, held_out, "loss"), rtol=1e-6)
    # The tutorial way's last val_* is the test set's score: what the held-out run logged as test_*.
    for key in ("loss", "accuracy"):
        (last_val,) = history(client, tutorial, f"val_{key}")[-1:]
        (test,) = history(client, held_out, f"test_{key}")
        assert last_val[0] == test[0] == 1
        np.testing.assert_allclose(last_val[1], test[1], rtol=1e-6, err_msg=key)
