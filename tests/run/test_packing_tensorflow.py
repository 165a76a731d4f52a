"""A pack gives each member its solo run's numbers on TensorFlow too (tests/equivalence.py; JAX: test_packing.py).

Its own file, so that the test runner gives it a worker of its own: TensorFlow's compilations make it the suite's
longest test. The optimizers are split between two processes that run at once (a TensorFlow process cannot share
Keras with JAX's, nor run in the test process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests import equivalence
from tests.conftest import ROOT

# Models other than the fused MLP pack unrolled here (`lrsweep.ml.vmapped`): the user's functional CNN (BatchNorm,
# three optimizers) and the post-LN ViT with dropout (LayerNorm, random masks); the CNN option and the pre-LN ViT
# take the same path with no other kind of layer (on JAX all four are checked, vmapped).
# The optimizers: the pack of seven (`equivalence.SMALL`; JAX checks each optimizer with all three MEMBERS). Halves
# of about equal time (~60 s each, run alone): the ViT's XLA compilations take ~6 s per model.
HALVES = (["optimizers_small", "functional"], ["vit_post"])
TENSORFLOW_CASES = ["optimizers_small", "functional", "vit_post"]


@pytest.mark.timeout(1200)
def test_a_pack_matches_its_members_solo_runs_on_tensorflow():
    assert sorted(sum(HALVES, [])) == sorted(TENSORFLOW_CASES)
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    processes = [
        subprocess.Popen([sys.executable, "-m", "tests.equivalence", *half], cwd=ROOT, env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for half in HALVES
    ]  # fmt: skip
    results = {}
    for process in processes:
        out, err = process.communicate(timeout=900)
        assert process.returncode == 0, err[-5000:]
        results.update(json.loads(out.strip().splitlines()[-1]))
    assert sorted(results) == sorted(TENSORFLOW_CASES)
    for optimizer, compared in results.items():
        try:
            equivalence.check(compared, optimizer)
        except AssertionError as e:
            raise AssertionError(f"{optimizer}: {e}") from e
