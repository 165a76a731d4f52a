"""Start-up: no TensorFlow imported on the JAX backend (with the same initial weights as Keras' own seeding gives),
and each job of a packed sweep composed once."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
from hydra import compose, initialize_config_dir

from tests.conftest import CONF_DIR, ROOT, TINY

# `python train.py ...` in this interpreter, then whether anything imported TensorFlow on the way.
PROBE = """
import runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as e:
    print("exit status", e.code)
print("tensorflow imported:", "tensorflow" in sys.modules)
"""


def test_a_run_on_jax_never_imports_tensorflow(tmp_path):
    args = [str(ROOT / "train.py"), "backend=jax", "training.epochs=1", "training.verbose=0", *TINY,
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", f"hydra.run.dir={tmp_path / 'outputs'}"]  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *args], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert "exit status" not in result.stdout, result.stderr[-3000:]
    assert "val_accuracy=" in result.stderr + result.stdout  # it trained
    assert "tensorflow imported: False" in result.stdout, result.stdout[-2000:]


# `python train.py -m ...` in this interpreter, counting Hydra's compositions of a job's config.
COUNT_COMPOSITIONS = """
import runpy, sys
from hydra._internal.config_loader_impl import ConfigLoaderImpl
composed = []
compose = ConfigLoaderImpl.load_sweep_config
def counted(self, master_config, sweep_overrides):
    composed.append(tuple(sweep_overrides))
    return compose(self, master_config, sweep_overrides)
ConfigLoaderImpl.load_sweep_config = counted
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as e:
    print("exit status", e.code)
print("compositions:", len(composed), "of", len(set(composed)), "distinct")
print("tensorflow imported:", "tensorflow" in sys.modules)
"""


def test_a_packed_sweep_composes_the_defaults_once_per_group_choice_and_on_jax_never_imports_tensorflow(tmp_path):
    """Hydra's sweeper composes each job to validate it; the packed launcher takes those instead of composing again,
    and Hydra's loader composes the defaults tree once per distinct set of config-group choices (`SweepComposer`):
    here 2 (schedule=constant, schedule=linear) for 4 jobs."""
    args = [str(ROOT / "train.py"), "-m", "backend=jax", "training.seed=0,1", "schedule=constant,linear",
            "training.epochs=1",
            "training.verbose=0", *TINY, f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            f"hydra.sweep.dir={tmp_path / 'multirun'}"]  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-c", COUNT_COMPOSITIONS, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},  # `python -c` puts no script folder on sys.path: hydra_plugins
    )
    assert "exit status" not in result.stdout, result.stderr[-3000:]
    assert "Sweep multirun: 4 runs" in result.stdout
    assert "compositions: 2 of 2 distinct" in result.stdout, result.stdout[-2000:]
    assert "tensorflow imported: False" in result.stdout


def test_a_jobs_initial_weights_are_those_keras_own_seeding_gives():
    import keras

    from lrsweep.run import job

    cfg = compose_seed(7)
    ours = job.build_model(cfg).get_weights()
    keras.utils.set_random_seed(7)
    theirs = job.instantiate(cfg.model).get_weights()
    assert len(ours) == len(theirs) == 4
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(ours[0], job.build_model(compose_seed(1)).get_weights()[0])  # the seed matters


def compose_seed(seed: int):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=["backend=jax", f"training.seed={seed}"])
