"""Shared fixtures: outputs and the MLflow store go to tmp_path, data is shrunk, nothing is downloaded."""

from __future__ import annotations

import functools
import gzip
import itertools
import json
import locale
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

# In-process tests use JAX (faster start-up); subprocess tests choose their backend with `backend=...`.
os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# JAX's persistent compilation cache (its own feature, read from these variables at `import jax`), one per test
# session: set here, in the process that starts the test workers, so that they, their train.py processes and the
# fork servers all share it. Many tests compile the same tiny models' steps; a hit loads the executable XLA built
# for the first (the same program, so the same numbers) instead of compiling it again.
_JAX_CACHE = None if "JAX_COMPILATION_CACHE_DIR" in os.environ else tempfile.mkdtemp(prefix="lrsweep-jax-cache-")
if _JAX_CACHE is not None:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _JAX_CACHE
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
# Small but real: the first examples of the real Fashion-MNIST, a few epochs. Validation on 64 held-out training
# examples (the default's 10,000 would be slow), none of them among the first 512: the same training examples as
# with validation on the test set, so numbers measured before held-out validation existed still apply.
TINY = ["data.train_size=512", "data.test_size=256", "data.validation_size=64", "training.batch_size=64"]


def write_idx(path: Path, array: np.ndarray, magic: int | None = None) -> Path:
    """Writes `array` (uint8) as a gzipped IDX file, optionally with a wrong magic number."""
    magic = magic if magic is not None else 0x0800 + array.ndim
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())
    return path


@pytest.fixture
def idx_dir(tmp_path: Path) -> Path:
    """A folder with tiny, valid Fashion-MNIST IDX files: 20 train and 10 test images."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    for split, n in (("train", 20), ("t10k", 10)):
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return folder


@pytest.fixture
def store_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"


def store(tmp_path: Path):
    """The MLflow client and experiment id of the store that `train` writes to."""
    from lrsweep import tracking

    return tracking.connect(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}", "lrsweep")


def job_runs(client, experiment_id: str, sweep_id: str | None = None) -> dict:
    """{run name: run} of the job runs (not sweep parents) in the experiment, or in one sweep of it."""
    from lrsweep import tracking

    query = f"tags.`{tracking.TAG_ROLE}` = 'job'"
    if sweep_id:
        query += f" and tags.`{tracking.TAG_SWEEP_ID}` = '{sweep_id}'"
    return {r.info.run_name: r for r in client.search_runs([experiment_id], query)}


class ForkServer:
    """Runs `python train.py ...` as a child of tests/forkserver.py, which did train.py's imports once.

    The same process a user starts (its own pid, argv, folder, environment, exit status, stdout and stderr), seconds
    sooner: most of a short `train.py`'s time is its imports. LRSWEEP_TEST_FORKSERVER=0 starts each one afresh.
    """

    def __init__(self, flavor: str):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.forkserver", flavor], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        self.lock = threading.Lock()
        self.changed = threading.Condition()
        self.replies: dict[str, dict] = {}
        self.ids = itertools.count()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            message = json.loads(line)
            with self.changed:
                self.replies.setdefault(message["id"], {}).update(message)
                self.changed.notify_all()
        with self.changed:  # the server is gone: nobody waits forever
            self.replies["gone"] = {}
            self.changed.notify_all()

    def request(self, args: list[str], cwd: Path, env: dict[str, str], stdout: str, stderr: str) -> str:
        """Asks for a child `python train.py *args`, its output into the files (or FIFOs) named; returns its id."""
        request = {"id": str(next(self.ids)), "argv": args, "cwd": str(cwd), "env": env, "stdout": stdout,
                   "stderr": stderr}  # fmt: skip
        with self.lock:
            self.process.stdin.write((json.dumps(request) + "\n").encode())
            self.process.stdin.flush()
        return request["id"]

    def reply(self, request_id: str, key: str, timeout: float | None) -> dict:
        """The server's messages about a child once `key` ("pid" or "returncode") is among them, or all there are
        after `timeout` seconds or once the server is gone."""
        with self.changed:
            self.changed.wait_for(lambda: key in self.replies.get(request_id, {}) or "gone" in self.replies, timeout)
            return dict(self.replies.get(request_id, {}))

    def run(self, args: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
        with tempfile.TemporaryDirectory() as folder:
            request_id = self.request(args, cwd, env, f"{folder}/stdout", f"{folder}/stderr")
            reply = self.reply(request_id, "returncode", timeout)
            with self.changed:
                self.replies.pop(request_id, None)
            if "returncode" not in reply:
                if "pid" in reply:
                    os.killpg(reply["pid"], signal.SIGKILL)
                if "gone" not in self.replies:
                    raise subprocess.TimeoutExpired(["train.py", *args], timeout)
                raise RuntimeError("tests/forkserver.py exited")
            encoding = locale.getpreferredencoding(False)
            output = [Path(folder, f).read_text(encoding=encoding, errors="replace") for f in ("stdout", "stderr")]
        result = subprocess.CompletedProcess(["train.py", *args], reply["returncode"], *output)
        result.cpu_seconds = reply["cpu"]
        return result

    def start(self, args: list[str], cwd: Path, env: dict[str, str]) -> ForkedProcess:
        """A child `python train.py *args` whose output (stdout and stderr, in one stream) the test reads as it
        comes, through a FIFO: see `ForkedProcess`."""
        folder = tempfile.mkdtemp(prefix="lrsweep-forked-")
        fifo = f"{folder}/output"
        os.mkfifo(fifo)
        request_id = self.request(args, cwd, env, fifo, fifo)
        # Opening blocks until the child opens the FIFO to write, its first act after the fork.
        stdout = open(fifo, encoding=locale.getpreferredencoding(False), errors="replace")
        shutil.rmtree(folder)  # both ends are open: the name is not needed any more
        reply = self.reply(request_id, "pid", 60)
        if "pid" not in reply:
            raise RuntimeError("tests/forkserver.py exited")
        return ForkedProcess(self, request_id, ["train.py", *args], reply["pid"], stdout)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


class ForkedProcess:
    """A child of a fork server, as `subprocess.Popen(..., stdout=PIPE, stderr=STDOUT, text=True,
    start_new_session=True)` gives a test its process: `pid` (its process group's too), `stdout` (a pipe: read as
    it comes; the end of it is when the child and every process it started have closed it), `poll`, `wait`,
    `communicate`, `send_signal`, `kill`, `returncode` (negative: killed by that signal)."""

    def __init__(self, server: ForkServer, request_id: str, args: list[str], pid: int, stdout) -> None:
        self.server, self.request_id, self.args, self.pid, self.stdout = server, request_id, args, pid, stdout
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self._ended(0)
        return self.returncode

    def _ended(self, timeout: float | None) -> bool:
        reply = self.server.reply(self.request_id, "returncode", timeout)
        if "returncode" in reply:
            self.returncode = reply["returncode"]
            return True
        if "gone" in self.server.replies:
            raise RuntimeError("tests/forkserver.py exited")
        return False

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None and not self._ended(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str, None]:
        """The rest of its output, once the pipe ends (within `timeout` seconds), and its exit."""
        rest: list[str] = []
        reader = threading.Thread(target=lambda: rest.append(self.stdout.read()), daemon=True)
        reader.start()
        reader.join(timeout)
        if reader.is_alive():
            raise subprocess.TimeoutExpired(self.args, timeout)
        self.stdout.close()
        self.wait(timeout)
        return rest[0], None

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:  # as Popen: never to a pid that may have been given to another process
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


_fork_servers: dict[str, ForkServer] = {}
_fork_server_lock = threading.Lock()


def fork_server(args: list[str]) -> ForkServer | None:
    """The fork server for `python train.py *args`, or None when LRSWEEP_TEST_FORKSERVER=0 turns them off.

    A job on JAX without `threads` is forked from a server where Keras is imported already; others from one where
    only train.py's top-level imports are done.
    """
    if os.environ.get("LRSWEEP_TEST_FORKSERVER", "1") == "0":
        return None
    backends = [a for a in args if a.startswith("backend=")]
    on_jax = backends == ["backend=jax"] and not any(a.startswith("threads=") for a in args)
    flavor = "jax" if on_jax else "plain"
    with _fork_server_lock:
        server = _fork_servers.get(flavor)
        if server is None or server.process.poll() is not None:
            server = _fork_servers[flavor] = ForkServer(flavor)
    return server


def run_train_py(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 900):
    """`python train.py *args` in `cwd`, its output captured as text: through a fork server unless turned off."""
    env = dict(os.environ if env is None else env)
    server = fork_server(args)
    if server is None:
        return subprocess.run(
            [sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip
    return server.run(args, cwd, env, timeout)


def start_train_py(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen | ForkedProcess:
    """`python train.py *args` started in `cwd` in a process group of its own, its stdout and stderr one text pipe
    the test reads as it comes: forked from a fork server (`ForkedProcess`) unless turned off."""
    env = dict(os.environ if env is None else env)
    server = fork_server(args)
    if server is None:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
    return server.start(args, cwd, env)


TIME_TO_ERROR = "time_to_error"  # a bad-input case's (name, exit status, seconds, first line): printed as a table


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The bad-input table's cases (tests/sweep/test_bad_input.py) with each one's time to its error."""
    rows = [
        value
        for reports in terminalreporter.stats.values()
        for report in reports
        if getattr(report, "when", None) == "call"
        for key, value in getattr(report, "user_properties", [])
        if key == TIME_TO_ERROR
    ]
    if rows:
        terminalreporter.section(f"bad input: {len(rows)} cases, each one `python train.py` to its error")
        for name, status, seconds, line in sorted(rows, key=lambda row: -row[2]):
            terminalreporter.write_line(f"{seconds:6.1f} s  exit {status}  {name:<36}  {line[:110]}")


def pytest_sessionfinish(session, exitstatus):
    for server in _fork_servers.values():
        server.close()
    if _empty_store is not None:  # the template store's folder in /tmp (`seed_store`): nothing left behind
        shutil.rmtree(_empty_store.parent, ignore_errors=True)
    if _JAX_CACHE is not None:  # made here, in the session's first process: the workers (if any) have ended
        shutil.rmtree(_JAX_CACHE, ignore_errors=True)


_empty_store: Path | None = None


def seed_store(db: Path) -> Path:
    """Puts an empty MLflow SQLite store (tables made, no experiment of ours) at `db`, unless one is there.

    Making a store's tables runs all of MLflow's schema migrations, seconds each time: they run once per session,
    into a template copied here. lrsweep then creates its experiment in it as in any store it finds.
    """
    global _empty_store
    with _fork_server_lock:
        if _empty_store is None:
            from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

            template = Path(tempfile.mkdtemp(prefix="lrsweep-empty-store-")) / "mlflow.db"
            SqlAlchemyStore(f"sqlite:///{template}", "mlflow-artifacts:/").engine.dispose()
            _empty_store = template
    if not db.exists():
        db.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_empty_store, db)
    return db


def train(
    tmp_path: Path, *overrides: str, multirun: bool = True, check: bool = True, fresh_store: bool = False
) -> subprocess.CompletedProcess:
    """Runs `python train.py [-m] ...` as a user would, with outputs and the MLflow store in tmp_path.

    The store is made beforehand from a template (`seed_store`) unless `fresh_store`: then train.py makes it, or
    none when it refuses to start.
    """
    if not fresh_store:
        seed_store(tmp_path / "mlruns" / "mlflow.db")
    args = ["-m"] if multirun else []
    args += [
        f"tracking.uri=sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}",
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
        f"hydra.run.dir={tmp_path / 'outputs'}",
        *overrides,
    ]
    result = run_train_py(args, cwd=tmp_path)
    if check and result.returncode != 0:
        raise AssertionError(f"train.py exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result


# Sweeps that several test files read: each trained once per session into its own folder. Readers only read; a
# test that changes a store trains its own.
TUTORIAL_STRATEGIES = ("adam_constant", "adam_linear", "adagrad", "adadelta")


@pytest.fixture(scope="session")
def tutorial_sweep(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The tutorial's four strategies x 2 seeds, 2 epochs on tiny data (JAX, effective LR logged): 8 runs, 4
    configurations, 3 optimizers. Read by test_report_html, test_mlflow_view and test_divergence."""
    tmp_path = tmp_path_factory.mktemp("tutorial")
    result = train(
        tmp_path, f"+strategy={','.join(TUTORIAL_STRATEGIES)}", "training.seed=0,1", "training.epochs=2",
        "training.verbose=0", "backend=jax", *TINY,
    )  # fmt: skip
    return tmp_path, result


@pytest.fixture(scope="session")
def grid_sweep(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The linear warm-up's `schedule.initial_lr` x `schedule.final_lr` x 2 seeds, 5 epochs (the whole warm-up) on
    tiny data (JAX): 8 runs, 4 configurations. Read by test_report and test_train."""
    tmp_path = tmp_path_factory.mktemp("grid")
    result = train(
        tmp_path, "schedule=linear", "schedule.initial_lr=0.001,0.005", "schedule.final_lr=0.01,0.02",
        "training.seed=0,1", "training.epochs=5", "training.verbose=0", "backend=jax", *TINY,
    )  # fmt: skip
    return tmp_path, result


def pytest_collection_modifyitems(config, items):
    """A test that uses a fixture made once per session (the sweeps above) or per module (e.g. the bad-input table's
    processes) may be the one that makes it: each gets 600 s unless it says otherwise."""
    for item in items:
        shared = any(
            fixturedef.scope in ("session", "package", "module")
            for name in item.fixturenames
            for fixturedef in item._fixtureinfo.name2fixturedefs.get(name, ())
            if fixturedef.baseid  # ours: pytest's own (tmp_path_factory, ...) are made once per worker anyway
        )
        if shared and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(600))


# How the tests are shared between the two test processes (pytest-xdist's LoadScopeScheduling, scopes as below):
# the tests that share a fixture made once (a session sweep above, or a module's fixture) run in one process, so it
# is made once; every other test is a unit of its own, so the long files (the packing equivalence cases, the fault
# tests) spread over both processes instead of keeping one busy to the end. (xdist's own `--dist loadgroup` cannot
# group here: it renames test ids, which pytest 9.2 no longer allows.) A file's shared fixtures are read from its
# text, in the process that hands out the tests (it collects nothing): a miss only makes a fixture twice.
SHARED_SWEEPS = ("tutorial_sweep", "grid_sweep")


@functools.cache
def _file_scope(path: str) -> str | None:
    """The scope every test of file `path` shares, or None when its tests share nothing made once."""
    text = (ROOT / path).read_text(encoding="utf-8") if (ROOT / path).is_file() else ""
    sweeps = [name for name in SHARED_SWEEPS if name in text]
    if sweeps:
        return sweeps[0]
    return path if re.search(r"scope=[\"'](module|package|session)[\"']", text) else None


def work_unit(nodeid: str) -> str:
    """The unit of work a test goes to one process in: its shared fixture's, else its own."""
    return _file_scope(nodeid.split("::", 1)[0]) or nodeid


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class SharedFixtureScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return SharedFixtureScheduling(config, log)
