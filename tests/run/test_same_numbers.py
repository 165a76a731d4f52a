"""Every number a run logs, bit for bit as before the run path was restructured (solo and packed, JAX and TF).

The expected values (tests/same_numbers_28f8037.json) were measured on main at commit 28f8037, before the run path
was split into job / experiment / pack modules, with `python -m tests.same_numbers /path/to/that/checkout`. A
change that is meant to change the numbers (a new default, another Keras) measures them again the same way.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests import same_numbers
from tests.conftest import ROOT, run_train_py

EXPECTED = json.loads((ROOT / "tests" / "same_numbers_28f8037.json").read_text())


def fork_served(args: list[str], folder: Path) -> subprocess.CompletedProcess:
    """This checkout's train.py, forked from a fork server (the same process, sooner: tests/forkserver.py)."""
    return run_train_py(args, folder, {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})


@pytest.mark.parametrize("case", list(same_numbers.CASES))
@pytest.mark.parametrize("backend", same_numbers.BACKENDS)
def test_a_run_logs_exactly_the_numbers_it_logged_before(tmp_path, backend, case):
    measured = same_numbers.measure(ROOT, backend, case, tmp_path, fork_served)
    expected = EXPECTED[f"{backend}/{case}"]
    assert sorted(measured) == sorted(expected)  # the same runs
    for name, metrics in expected.items():
        assert measured[name] == metrics, name  # every metric, every step: the same float64 values


def test_a_sweeps_lone_job_trains_as_the_same_run_alone_would(tmp_path):
    """The packed launcher trains a job left alone itself, from the job it checked: the solo run's very numbers."""
    assert same_numbers.measure(ROOT, "jax", "lone", tmp_path, fork_served) == EXPECTED["jax/solo"]
