"""The model options end to end: `python train.py model=...` into tmp_path, then what MLflow holds afterwards.

A sweep of CNNs or ViTs packs on JAX with `hydra.launcher.other_models=vmap` (`lrsweep.ml.vmapped`; on a JAX CPU
they train alone by default), and unrolled on TensorFlow by default, in packs of at most `max_unrolled`.
"""

from __future__ import annotations

import yaml

from lrsweep import tracking
from tests.conftest import TINY, store, train

EPOCH_METRICS = {"accuracy", "loss", "lr", "val_accuracy", "val_loss", "test_accuracy", "test_loss"}
SMALL_VIT = ["model=vit", "model.width=16", "model.depth=1", "model.heads=2"]  # seconds to compile


def finished_job_runs(tmp_path, expected: int, packed: bool = False) -> list:
    client, experiment_id = store(tmp_path)
    runs = client.search_runs([experiment_id], f"tags.`{tracking.TAG_ROLE}` = 'job'")
    assert len(runs) == expected, [r.info.run_name for r in runs]
    assert {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:
        assert EPOCH_METRICS <= set(run.data.metrics), sorted(run.data.metrics)
        assert (tracking.TAG_PACK in run.data.tags) == packed
    return runs


def test_a_cnn_sweep_packs_on_jax_mapped_over_its_members(tmp_path):
    result = train(
        tmp_path, "hydra.launcher.other_models=vmap", "model=cnn", "model.channels=8", "training.seed=0,1",
        "backend=jax", "training.epochs=1", "training.verbose=0", *TINY,
    )  # fmt: skip
    runs = finished_job_runs(tmp_path, 2, packed=True)
    assert sorted(r.data.params["training.seed"] for r in runs) == ["0", "1"]
    for run in runs:
        params = run.data.params
        assert (params["choice.model"], params["model.channels"], params["model.blocks"]) == ("cnn", "8", "3")
    output = result.stdout + result.stderr
    assert "2 data group(s), 1 optimizer(s) (Adam), trained as jax.vmap over the model's stateless_call" in output
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


def test_a_cnn_sweep_on_tensorflow_packs_unrolled_in_packs_of_at_most_max_unrolled(tmp_path):
    """BatchNorm under XLA (`training.jit_compile` true) on the other backend: 3 runs, max_unrolled=2, so one pack
    of 2 (one copy of the model per member) and one run alone."""
    result = train(tmp_path, "model=cnn", "model.channels=8", "training.seed=0,1,2", "backend=tensorflow",
                   "hydra.launcher.max_unrolled=2", "training.epochs=1", "training.verbose=0", *TINY)  # fmt: skip
    client, experiment_id = store(tmp_path)
    runs = client.search_runs([experiment_id], f"tags.`{tracking.TAG_ROLE}` = 'job'")
    assert {(r.info.status, r.data.tags["lrsweep.backend"], r.data.params["choice.model"]) for r in runs} == {
        ("FINISHED", "tensorflow", "cnn")
    }
    packed = sorted(r.data.params["training.seed"] for r in runs if tracking.TAG_PACK in r.data.tags)
    assert (len(runs), packed) == (3, ["0", "1"])
    output = result.stdout + result.stderr
    assert output.count("trained as one copy of the model's stateless_call per member in the step") == 1, output[-3000:]
