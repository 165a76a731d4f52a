"""The model options end to end: `python train.py model=...` into tmp_path, then what MLflow holds afterwards.

A CNN or ViT trains alone: a sweep of them goes through the default (packed) launcher, which says once why the
pack trains one run at a time.
"""

from __future__ import annotations

import yaml

from lrsweep import tracking
from tests.conftest import TINY, store, train

EPOCH_METRICS = {"accuracy", "loss", "lr", "val_accuracy", "val_loss", "test_accuracy", "test_loss"}
SMALL_VIT = ["model=vit", "model.width=16", "model.depth=1", "model.heads=2"]  # seconds to compile


def finished_job_runs(tmp_path, expected: int) -> list:
    client, experiment_id = store(tmp_path)
    runs = client.search_runs([experiment_id], f"tags.`{tracking.TAG_ROLE}` = 'job'")
    assert len(runs) == expected, [r.info.run_name for r in runs]
    assert {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:
        assert EPOCH_METRICS <= set(run.data.metrics), sorted(run.data.metrics)
        assert tracking.TAG_PACK not in run.data.tags  # trained alone
    return runs


def test_a_cnn_sweep_goes_through_the_packed_launcher_one_run_at_a_time_saying_why_once(tmp_path):
    result = train(
        tmp_path, "model=cnn", "model.channels=8", "training.seed=0,1", "backend=jax", "training.epochs=1",
        "training.verbose=0", *TINY,
    )  # fmt: skip
    runs = finished_job_runs(tmp_path, 2)
    assert sorted(r.data.params["training.seed"] for r in runs) == ["0", "1"]
    for run in runs:
        params = run.data.params
        assert (params["choice.model"], params["model.channels"], params["model.blocks"]) == ("cnn", "8", "3")
    output = result.stdout + result.stderr
    reason = "Pack multirun/pack1: the model does not start with a Flatten layer, so its 2 runs train one at a time"
    assert output.count(reason) == 1, output[-3000:]
    assert "Sweep multirun: 2 runs in 1 configurations" in result.stdout


def test_a_vit_trains_with_post_ln_and_with_pre_ln(tmp_path):
    train(tmp_path, *SMALL_VIT, "model.norm=post,pre", "backend=jax", "training.epochs=1", "training.verbose=0", *TINY)
    runs = {r.data.params["model.norm"]: r for r in finished_job_runs(tmp_path, 2)}
    assert set(runs) == {"post", "pre"}
    assert runs["post"].data.tags[tracking.TAG_CONFIG_HASH] != runs["pre"].data.tags[tracking.TAG_CONFIG_HASH]
    client, _ = store(tmp_path)
    for norm, run in runs.items():
        params = run.data.params
        assert (params["choice.model"], params["model.width"], params["model.pool"]) == ("vit", "16", "mean")
        config = yaml.safe_load(open(client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))))
        assert config["model"]["_target_"] == "lrsweep.model.build_vit" and config["model"]["norm"] == norm


def test_a_cnn_trains_on_tensorflow(tmp_path):
    """BatchNorm under XLA (`training.jit_compile` true) on the other backend."""
    train(tmp_path, "model=cnn", "model.channels=8", "backend=tensorflow", "training.epochs=1", *TINY, multirun=False)
    (run,) = finished_job_runs(tmp_path, 1)
    assert run.data.tags["lrsweep.backend"] == "tensorflow" and run.data.params["choice.model"] == "cnn"
