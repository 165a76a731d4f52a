"""A run's numbers, as MLflow holds them after `python train.py`: what tests/run/test_same_numbers.py pins, bit for bit.

Run as a script against any checkout to measure them: `python -m tests.same_numbers /path/to/checkout` prints JSON.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

# As conftest.TINY, two epochs.
TINY = ["data.train_size=512", "data.test_size=256", "data.validation_size=64", "training.batch_size=64",
        "training.epochs=2", "training.verbose=0"]  # fmt: skip
# A solo run (no -m) and a sweep of four that the packed launcher trains as one pack.
CASES = {
    "solo": ["schedule=linear", "training.seed=3"],
    "packed": ["-m", "schedule=constant,linear", "training.seed=0,1"],
}
# The solo run's config as a sweep of one job, which the packed launcher trains alone: the solo run's numbers.
LONE = ["-m", "schedule=linear", "training.seed=3"]
BACKENDS = ("jax", "tensorflow")


Runner = Callable[[list[str], Path], subprocess.CompletedProcess]  # (train.py's arguments, folder) -> its process


def train_py(root: Path, args: list[str], folder: Path) -> subprocess.CompletedProcess:
    """`python <root>/train.py *args` in `folder`, its output captured."""
    env = {**os.environ, "PYTHONPATH": str(root), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, str(root / "train.py"), *args], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=900)  # fmt: skip


Numbers = dict[str, dict[str, list[float]]]  # {run name: {metric: values by step}}


def measure(root: Path, backend: str, case: str, folder: Path, run: Runner | None = None) -> Numbers:
    """The numbers of the job runs `root`'s train.py logs for `case` (or "lone": `LONE`).

    `run(args, folder)` runs train.py (default: `train_py`, `root`'s); the tests pass this checkout's fork server's."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    overrides = LONE if case == "lone" else CASES[case]
    args = [*overrides, f"backend={backend}", *TINY, f"tracking.uri={uri}", f"hydra.sweep.dir={folder / 'multirun'}",
            f"hydra.run.dir={folder / 'outputs'}"]  # fmt: skip
    result = (run or functools.partial(train_py, root))(args, folder)
    if result.returncode != 0:
        raise AssertionError(f"train.py exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("lrsweep")
    numbers = {}
    for run in client.search_runs([experiment.experiment_id], "tags.`lrsweep.role` = 'job'"):
        histories = {key: sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
                     for key in run.data.metrics if not key.startswith("system/")}  # fmt: skip
        numbers[run.info.run_name] = {key: [m.value for m in history] for key, history in sorted(histories.items())}
    return dict(sorted(numbers.items()))


if __name__ == "__main__":
    measured = {}
    for backend in BACKENDS:
        for case in CASES:
            with tempfile.TemporaryDirectory() as folder:
                measured[f"{backend}/{case}"] = measure(Path(sys.argv[1]), backend, case, Path(folder))
    print(json.dumps(measured, indent=1))
