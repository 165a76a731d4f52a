"""Bad input, as a user types it: each case is one `python train.py ...` from an empty folder with the default store.

Every case must exit 1 with a short message naming the key (or path, or URI), show no traceback, and leave no
MLflow store, run or report behind. To add a case, add a row to CASES: (id, arguments, what the message names).
The cases run as real processes, a few at once (they are mostly start-up time), then each is asserted alone. Each is
forked from a process that did train.py's imports once (tests/forkserver.py): the same process otherwise, seconds
sooner. test_hydra_full_error_still_shows_the_traceback starts `python train.py` afresh.
"""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import ROOT, TIME_TO_ERROR, TINY, run_train_py

JAX = ["backend=jax", *TINY]  # JAX starts faster; the checks are the same on both backends
SWEEP = ["-m", *JAX]  # the default launcher (packed)

CASES: list[tuple[str, list[str], str]] = [
    # Learning rates and training settings.
    ("lr negative", [*JAX, "optimizer.learning_rate=-0.01"], "optimizer.learning_rate"),
    ("lr zero", [*JAX, "optimizer.learning_rate=0"], "optimizer.learning_rate"),
    ("lr nan", [*JAX, "optimizer.learning_rate=nan"], "optimizer.learning_rate"),
    ("lr inf", [*JAX, "optimizer.learning_rate=inf"], "optimizer.learning_rate"),
    ("lr text", [*JAX, "optimizer.learning_rate=fast"], "optimizer.learning_rate"),
    ("lr 0 in float32", [*JAX, "optimizer.learning_rate=1e-300"], "optimizer.learning_rate"),
    ("lr inf in float32", [*JAX, "optimizer.learning_rate=1e300"], "optimizer.learning_rate"),
    ("epochs beyond the step counter", [*JAX, "training.epochs=2000000000"], "training.epochs"),
    ("epochs 0", [*JAX, "training.epochs=0"], "training.epochs"),
    ("epochs text", [*JAX, "training.epochs=abc"], "training.epochs"),
    ("batch 0", [*JAX, "training.batch_size=0"], "training.batch_size"),
    ("seed text", [*JAX, "training.seed=abc"], "training.seed"),
    ("seed negative", [*JAX, "training.seed=-1"], "training.seed"),
    ("steps_per_execution 0", [*JAX, "training.steps_per_execution=0"], "training.steps_per_execution"),
    ("jit_compile maybe", [*JAX, "training.jit_compile=maybe"], "training.jit_compile"),
    ("log_every_n_steps -1", [*JAX, "tracking.log_every_n_steps=-1"], "tracking.log_every_n_steps"),
    ("resume maybe", [*JAX, "resume=maybe"], "resume"),
    ("effective_lr maybe", [*JAX, "tracking.effective_lr=maybe"], "tracking.effective_lr"),
    # The process.
    ("backend pytorch", ["backend=pytorch"], "backend"),
    ("threads -1", [*JAX, "threads=-1"], "threads"),
    ("threads 0", [*JAX, "threads=0"], "threads"),
    # Optimizer hyperparameters.
    ("adam beta_1 1.5", [*JAX, "optimizer.beta_1=1.5"], "optimizer.beta_1"),
    ("adam beta_2 1", [*JAX, "optimizer.beta_2=1"], "optimizer.beta_2"),
    ("adam epsilon 0", [*JAX, "optimizer.epsilon=0"], "optimizer.epsilon"),
    ("adam epsilon text", [*JAX, "optimizer.epsilon=tiny"], "optimizer.epsilon"),
    ("sgd momentum 1.5", [*JAX, "optimizer=sgd", "optimizer.momentum=1.5"], "optimizer.momentum"),
    ("sgd momentum -0.1", [*JAX, "optimizer=sgd", "optimizer.momentum=-0.1"], "optimizer.momentum"),
    ("sgd nesterov maybe", [*JAX, "optimizer=sgd", "optimizer.nesterov=maybe"], "optimizer.nesterov"),
    ("adadelta rho 1", [*JAX, "optimizer=adadelta", "optimizer.rho=1"], "optimizer.rho"),
    (
        "adagrad accumulator -1",
        [*JAX, "optimizer=adagrad", "optimizer.initial_accumulator_value=-1"],
        "optimizer.initial_accumulator_value",
    ),  # fmt: skip
    ("unknown optimizer", [*JAX, "optimizer=adamw"], "optimizer/adamw"),
    ("misspelt key", [*JAX, "optimizer.learning_rat=0.1"], "learning_rat"),
    # Schedules.
    ("warmup_epochs 1", [*JAX, "schedule=linear", "schedule.warmup_epochs=1"], "warmup_epochs"),
    ("linear initial_lr 0", [*JAX, "schedule=linear", "schedule.initial_lr=0"], "schedule.initial_lr"),
    (
        "warmup initial_lr negative",
        [*JAX, "schedule=warmup", "schedule.warmup.initial_lr=-0.1"],
        "schedule.warmup.initial_lr",
    ),  # fmt: skip
    ("linear final_lr null", [*JAX, "schedule=linear", "schedule.final_lr=null"], "schedule.final_lr"),
    ("warmup shape quadratic", [*JAX, "schedule=warmup", "schedule.warmup.shape=quadratic"], "shape"),
    ("warmup length -1", [*JAX, "schedule=warmup", "schedule.warmup.length=-1"], "length"),
    ("warmup length 1e9 epochs", [*JAX, "schedule=warmup", "schedule.warmup.length=1e9"], "warmup.length"),
    ("untuned with sgd", [*JAX, "optimizer=sgd", "schedule=untuned"], "beta_2"),
    (
        "cosine min_lr negative",
        [*JAX, "schedule=warmup", "schedule/decay=cosine", "schedule.decay.min_lr=-1"],
        "min_lr",
    ),  # fmt: skip
    # Data.
    ("train_size 100000", [*JAX, "data.train_size=100000"], "data.train_size"),
    ("validation_size 0", [*JAX, "data.validation_size=0"], "validation_size"),
    ("missing data files", [*JAX, "data.dir={tmp}/empty"], "{tmp}/empty"),
    ("corrupt data files", [*JAX, "data.dir={tmp}/corrupt"], "{tmp}/corrupt"),
    # Models: ranges in the schema, relations when the model is built (checking the job, before any run).
    ("vit norm middle", [*JAX, "model=vit", "model.norm=middle"], "model.norm"),
    ("vit width 60 heads 8", [*JAX, "model=vit", "model.width=60", "model.heads=8"], "width=60, heads=8"),
    ("vit patch_size 5", [*JAX, "model=vit", "model.patch_size=5"], "patch_size=5"),
    ("cnn blocks 0", [*JAX, "model=cnn", "model.blocks=0"], "model.blocks"),
    ("model not a model", [*JAX, "model._target_=builtins.dict"], "model._target_"),
    # Stores.
    ("unknown store scheme", [*JAX, "tracking.uri=bogus://nowhere"], "bogus://nowhere"),
    ("no server answers", [*JAX, "tracking.uri=http://127.0.0.1:9"], "http://127.0.0.1:9"),
    ("no server answers, a password", [*JAX, "tracking.uri=http://alice:hunter2@127.0.0.1:9"], "alice:***@127.0.0.1:9"),
    ("store under a file", [*JAX, "tracking.uri=sqlite:///{tmp}/afile/mlflow.db"], "{tmp}/afile"),
    ("store not a database", [*JAX, "tracking.uri=sqlite:///{tmp}/garbage/mlflow.db"], "{tmp}/garbage/mlflow.db"),
    # A store where no file can ever be: the kernel's filesystems (root's os.access says "writable" there).
    ("store under /proc", [*JAX, "tracking.uri=sqlite:////proc/nonexistent/mlflow.db"], "/proc/nonexistent"),
    ("store in /proc", [*JAX, "tracking.uri=sqlite:////proc/x.db"], "tracking.uri=sqlite:////proc/x.db`"),
    (
        "store in /proc/self",
        [*JAX, "tracking.uri=sqlite:////proc/self/x.db"],
        "tracking.uri=sqlite:////proc/self/x.db`",
    ),
    ("store in /sys", [*JAX, "tracking.uri=sqlite:////sys/x.db"], "tracking.uri=sqlite:////sys/x.db`"),
    # Sweeps: every job is checked before the first starts, whichever launcher runs them.
    ("sweep lr", [*SWEEP, "optimizer.learning_rate=0.01,-1"], "optimizer.learning_rate"),
    ("sweep epochs basic launcher", [*SWEEP, "hydra/launcher=basic", "training.epochs=1,0"], "training.epochs"),
    (
        "sweep epochs parallel launcher",
        [*SWEEP, "hydra/launcher=parallel", "threads=1", "training.epochs=0,1"],
        "training.epochs",
    ),  # fmt: skip
    ("sweep backend", [*SWEEP, "backend=pytorch"], "backend"),
    ("sweep unknown optimizer", [*SWEEP, "optimizer=adam,adamw"], "optimizer/adamw"),
    ("sweep beta_1", [*SWEEP, "optimizer.beta_1=0.9,1.5"], "optimizer.beta_1"),
    ("sweep resume", [*SWEEP, "resume=true,maybe"], "resume"),
    ("sweep vit heads", [*SWEEP, "model=vit", "model.heads=4,7"], "job #1 (model.heads=7): `width` must be a multiple"),
    (
        "sweep warmup parallel launcher",
        [*SWEEP, "hydra/launcher=parallel", "threads=1", "schedule=linear", "schedule.warmup_epochs=1,2"],
        "warmup_epochs",
    ),  # fmt: skip
    (
        "sweep 12 bad lrs",
        [*SWEEP, "optimizer.learning_rate=" + ",".join(f"-{k}" for k in range(1, 13))],
        "learning_rate=-10",
    ),
    (
        "sweep 1000 jobs 10 bad",
        [
            *SWEEP,
            "optimizer.learning_rate=-1," + ",".join(f"{k / 10000:g}" for k in range(1, 100)),
            "training.seed=" + ",".join(map(str, range(10))),
        ],
        "10 of 1000 jobs",
    ),  # fmt: skip
    ("sweep max_members 0", [*SWEEP, "hydra.launcher.max_members=0", "training.seed=0,1"], "max_members"),
    ("sweep max_members -3", [*SWEEP, "hydra.launcher.max_members=-3", "training.seed=0,1"], "max_members"),
    ("sweep max_seeds 0", [*SWEEP, "hydra.launcher.max_seeds=0", "training.seed=0,1"], "max_seeds"),
    (
        "sweep other_models typo",
        [*SWEEP, "hydra.launcher.other_models=maybe", "training.seed=0,1"],
        "`hydra.launcher.other_models` must be one of auto, vmap, unroll, alone",
    ),
    ("sweep halving eta 1", [*SWEEP, "hydra.launcher.halving.eta=1", "training.seed=0,1"], "halving.eta"),
    (
        "sweep halving rule typo",
        [*SWEEP, "hydra.launcher.halving.eta=3", "hydra.launcher.halving.rule=median", "training.seed=0,1"],
        "hydra.launcher.halving.rule",
    ),
    (
        "sweep halving over unequal epochs",
        [*SWEEP, "hydra.launcher.halving.eta=3", "training.epochs=2,3"],
        "training.epochs differs",
    ),
    (
        "sweep halving with a model that trains alone",
        [*SWEEP, "hydra.launcher.halving.eta=3", "model=cnn", "training.seed=0,1"],
        "hydra.launcher.other_models=unroll",
    ),
    ("sweep cluster typo", [*SWEEP, "hydra.launcher.cluster=slrum", "training.seed=0,1"], "hydra.launcher.cluster"),
    (
        "sweep ray num_cpus 0",
        [*SWEEP, "hydra.launcher.cluster=ray", "hydra.launcher.ray.num_cpus=0", "training.seed=0,1"],
        "`hydra.launcher.ray.num_cpus` must be an integer >= 1",
    ),
    (
        "sweep ray setting typo",
        [*SWEEP, "hydra.launcher.cluster=ray", "+hydra.launcher.ray.adress=10.0.0.1:6379", "training.seed=0,1"],
        "`hydra.launcher.ray` has address and num_cpus. Received: adress",
    ),
    (
        "search refill maybe",
        [*SWEEP, "+experiment=warmup_grid_search", "hydra.sweeper.refill=maybe"],
        "`hydra.sweeper.refill` must be one of auto, true, false. Received: hydra.sweeper.refill='maybe'",
    ),
    (
        "search refilled with a model that trains alone",
        [*SWEEP, "+experiment=warmup_grid_search", "hydra.sweeper.n_jobs=2", "hydra.sweeper.refill=true", "model=cnn"],
        "hydra.sweeper.refill=false",
    ),
    ("sweep store", [*SWEEP, "training.seed=0,1", "tracking.uri=http://127.0.0.1:9"], "http://127.0.0.1:9"),
    ("sweep store in /proc", [*SWEEP, "training.seed=0,1", "tracking.uri=sqlite:////proc/x.db"], "/proc/x.db`"),
    (
        "sweep store under /proc basic launcher",
        [*SWEEP, "hydra/launcher=basic", "training.seed=0,1", "tracking.uri=sqlite:////proc/nonexistent/mlflow.db"],
        "/proc/nonexistent",
    ),  # fmt: skip
]
CANNOT_EXIST = [case[0] for case in CASES if "/proc" in case[0] or "/sys" in case[0]]


def make_inputs(tmp: Path) -> None:
    """What the cases point at: an empty data folder, one with corrupt files, a file where a folder should be,
    and a store that is not a database."""
    (tmp / "empty").mkdir()
    corrupt = tmp / "corrupt"
    corrupt.mkdir()
    for split in ("train", "t10k"):
        for kind in ("images-idx3", "labels-idx1"):
            with gzip.open(corrupt / f"{split}-{kind}-ubyte.gz", "wb") as f:
                f.write(b"not an IDX file")
    (tmp / "afile").write_text("a file, not a folder")
    (tmp / "garbage").mkdir()
    (tmp / "garbage" / "mlflow.db").write_bytes(b"this is not a SQLite database" * 100)


def run_case(root: Path, case: tuple[str, list[str], str]) -> tuple[Path, subprocess.CompletedProcess, float]:
    name, args, _ = case
    folder = root / name.replace(" ", "_").replace(">", "gt").replace("/", "_")
    folder.mkdir()
    make_inputs(folder)
    args = [a.replace("{tmp}", str(folder)) for a in args]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    started = time.monotonic()
    result = run_train_py(args, cwd=folder, env=env, timeout=300)  # its own process, forked (tests/forkserver.py)
    seconds = time.monotonic() - started  # to the error: the process ends on it
    (root / f"{folder.name}.stderr").write_text(result.stderr)  # kept beside the case, to read what a user saw
    return folder, result, seconds


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess, float]]:
    """Every case's folder, process and seconds to the error (3 cases run at once on 2 cores: the seconds are a
    bound, not a benchmark). Each case's test records its row; the session's summary prints them as a table."""
    root = tmp_path_factory.mktemp("bad_input")
    with ThreadPoolExecutor(max_workers=3) as pool:
        done = list(pool.map(lambda case: run_case(root, case), CASES))
    return {case[0]: outcome for case, outcome in zip(CASES, done, strict=True)}


NOISE = re.compile(r"^([IWE]\d{4} |WARNING: All log messages before absl|\[\d{4}-\d\d-\d\d [\d:,]+\]\[)")


def first_line(stderr: str) -> str:
    return next((line for line in stderr.splitlines() if line.strip() and not NOISE.match(line)), "")


# What may be left in the folder: Hydra's own output folders (no report in them) and our inputs.
INPUTS = {"empty", "corrupt", "afile", "garbage", "outputs", "multirun"}


@pytest.mark.timeout(900)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line_and_leaves_nothing(results, case, record_property):
    name, _, names = case
    folder, result, seconds = results[name]
    record_property(TIME_TO_ERROR, (name, result.returncode, round(seconds, 1), first_line(result.stderr)))
    output = result.stdout + result.stderr
    # The message, without the backends' start-up chatter (absl's "I0000 ..." lines, which TensorFlow prints as it
    # loads even with the JAX backend): one line of ours, or Hydra's short block (a wrong type, an unknown option
    # with the options available).
    message = [line for line in result.stderr.splitlines() if line.strip() and not NOISE.match(line)]
    assert result.returncode == 1, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert 1 <= len(message) <= 20, "\n".join(message)
    assert message[0].startswith(("lrsweep: ", "Error ", "In '", "Could not")), message[0]  # ours or Hydra's first
    assert names.replace("{tmp}", str(folder)) in result.stderr, result.stderr[-3000:]
    assert "hunter2" not in output  # a URI's password is never shown (lrsweep.core.secrets)
    assert set(os.listdir(folder)) <= INPUTS  # no mlruns/: no store, so no run
    assert not list(folder.glob("multirun/**/report")), "a report was written"
    assert not (folder / "garbage" / "mlflow.db").read_bytes().startswith(b"SQLite"), "the file was overwritten"


@pytest.mark.parametrize("name", CANNOT_EXIST)
def test_a_store_that_cannot_exist_is_one_line_at_once_and_no_retries(results, name):
    _, result, seconds = results[name]
    lines = [line for line in result.stderr.splitlines() if line.strip() and not NOISE.match(line)]
    assert len(lines) == 1 and lines[0].startswith("lrsweep: `tracking.uri=sqlite:///"), result.stderr[-3000:]
    assert lines[0].endswith("Set `tracking.uri` to a writable path, e.g. tracking.uri=sqlite:///mlruns/mlflow.db.")
    assert "Restore" not in result.stderr and "retried" not in result.stderr + result.stdout
    assert "Pack " not in result.stdout + result.stderr  # before any work: no job, no pack started
    print(f"{name}: exit {result.returncode} in {seconds:.1f} s: {lines[0]}")


def test_a_refusal_lists_ten_bad_jobs_then_how_many_more(results):
    _, result, _ = results["sweep 12 bad lrs"]
    assert "lrsweep: 12 of 12 jobs of this sweep cannot run, so none was started:" in result.stderr
    assert result.stderr.count("  job #") == 10 and "\n  and 2 more" in result.stderr, result.stderr[-3000:]


def test_hydra_full_error_still_shows_the_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *JAX, "training.epochs=0"], cwd=tmp_path, capture_output=True,
        text=True, timeout=300, env={**os.environ, "HYDRA_FULL_ERROR": "1"},
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "training.epochs" in result.stderr
