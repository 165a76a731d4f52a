"""Starts `python train.py ...` processes without paying for train.py's imports each time (a fork server).

Every `python train.py` spends seconds importing what train.py imports at its top (MLflow, SciPy, Hydra) before it
reads its arguments. This process does those imports once (train.py's own top-level import statements, read from
the file), then forks a child per request. Each child is a real process of its own: it runs train.py as
`__main__` with the request's arguments, folder and environment, its stdin from /dev/null and its stdout and stderr
into files, and exits as `python train.py` would (an uncaught exception prints its traceback and exits 1, atexit
handlers run), without the interpreter's ~2 s teardown of its modules (`run_train`). What the imports printed here
is written at the start of each child's output, as a user would see it.

Protocol (one JSON object per line): a request on stdin {"id", "argv", "cwd", "env", "stdout", "stderr"} (files
or FIFOs; a stderr that names stdout's path joins it, as `stderr=subprocess.STDOUT` does); on
stdout {"id", "pid"} once the child is forked, then {"id", "returncode", "cpu"} when it has exited (negative: killed by
that signal). Nothing is imported here that starts a thread: a forked child keeps only the thread that forked it.

`python -m tests.forkserver jax` goes further, for jobs run with `backend=jax` and no `threads`: it chooses the
backend as train.py does (`backend.select("jax")`), then does every import train.py does, its lazy ones too (the
experiment and Keras, without starting JAX's runtime: that happens in each child, at its first computation). A job
that sets `threads` or another backend needs a process where Keras has not started: the plain server runs it.
"""

from __future__ import annotations

import ast
import json
import os
import select
import sys
import tempfile
import threading

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "train.py")


def preload(flavor: str) -> tuple[tuple[bytes, bytes], dict[str, str]]:
    """Runs train.py's import statements here (its top-level ones; with "jax", all, after choosing the backend).

    Returns:
        What the imports printed to stdout and stderr, and the environment variables that choosing the backend set.
    """
    tree = ast.parse(open(TRAIN).read(), TRAIN)
    nodes = list(ast.walk(tree)) if flavor == "jax" else tree.body
    imports = ast.Module([node for node in nodes if isinstance(node, ast.Import | ast.ImportFrom)], [])
    printed, namespace, before = [], {"__name__": "__preload__"}, dict(os.environ)
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            if flavor == "jax":  # train.py chooses the backend before its lazy imports start Keras
                top = ast.Module([node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)], [])
                exec(compile(top, TRAIN, "exec"), namespace)
                namespace["backend"].select("jax")
            exec(compile(imports, TRAIN, "exec"), namespace)
            if flavor == "jax":
                import keras  # noqa: F401  (imported by the experiment already; here in case that changes)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
        for f in (out, err):
            f.seek(0)
            printed.append(f.read())
    assert threading.active_count() == 1, f"train.py's imports started threads: {threading.enumerate()}"
    if flavor == "jax":
        from jax._src import xla_bridge

        assert not xla_bridge._backends, "JAX's runtime started before the fork"
    chosen = {name: value for name, value in os.environ.items() if before.get(name) != value}
    return (printed[0], printed[1]), chosen


def send(message: dict) -> None:
    os.write(1, (json.dumps(message) + "\n").encode())


def serve() -> dict:
    """Forks a child per request and reports its end; returns the request in the child (never in this process)."""
    buffered = b""
    children: dict[int, str] = {}
    while True:
        while children:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
            if pid == 0:
                break
            cpu = usage.ru_utime + usage.ru_stime  # its CPU seconds and its reaped children's
            send({"id": children.pop(pid), "returncode": os.waitstatus_to_exitcode(status), "cpu": cpu})
        ready, _, _ = select.select([0], [], [], 0.05)
        if not ready:
            continue
        chunk = os.read(0, 65536)
        if not chunk:  # the test session ended: the children still running are its to stop
            os._exit(0)
        buffered += chunk
        while b"\n" in buffered:
            line, buffered = buffered.split(b"\n", 1)
            request = json.loads(line)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                return request
            children[pid] = request["id"]
            send({"id": request["id"], "pid": pid})


def become(request: dict, printed: tuple[bytes, bytes], chosen: dict[str, str]) -> None:
    """In the child: the process `python train.py <argv>` would be, up to running train.py."""
    os.setpgid(0, 0)  # its own group, so a timeout stops it with whatever it started
    stdin = os.open(os.devnull, os.O_RDONLY)
    os.dup2(stdin, 0)
    for fd, (path, early) in enumerate(zip((request["stdout"], request["stderr"]), printed, strict=True), start=1):
        if fd == 2 and path == request["stdout"]:  # stderr into stdout (a FIFO the test reads, opened once)
            os.write(1, early)
            os.dup2(1, 2)
            continue
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(target, early)
        os.dup2(target, fd)
        os.close(target)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for name, value in chosen.items():  # what train.py's backend.select would have set in this process
        if name == "KERAS_BACKEND":
            os.environ[name] = value
        else:
            os.environ.setdefault(name, value)
    sys.argv = [TRAIN, *request["argv"]]
    sys.path[0] = ROOT  # as for `python /path/to/train.py`


def run_train() -> None:
    """Runs train.py as `python train.py` does, and ends as the interpreter ends, but for its teardown of modules.

    With JAX and TensorFlow loaded, that teardown takes ~2 s and does nothing a test can see: most of a refused
    input's time here. Everything before it is kept: the exit status Python gives a `SystemExit` (its message
    printed), non-daemon threads joined, `atexit` handlers run (MLflow ends its runs there), output flushed. An
    error other than `SystemExit` takes Python's own path (its traceback, exit 1; SIGINT's death for Ctrl-C).
    """
    import atexit
    import runpy

    try:
        runpy.run_path(TRAIN, run_name="__main__")
        status = 0
    except SystemExit as e:
        status = e.code if e.code is None or isinstance(e.code, int) else 1
        if not (e.code is None or isinstance(e.code, int)):
            print(e.code, file=sys.stderr)
    threading._shutdown()  # what the interpreter does first when it exits, then the atexit handlers
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status or 0)


if __name__ == "__main__":
    early, chosen = preload(sys.argv[1] if len(sys.argv) > 1 else "plain")
    job = serve()
    become(job, early, chosen)
    run_train()
