"""Starts `python train.py ...` processes without paying for train.py's imports each time (a fork server).

Every `python train.py` spends seconds importing what train.py imports at its top (MLflow, SciPy, Hydra) before it
reads its arguments. This process does those imports once (train.py's own top-level import statements, read from
the file), then forks a child per request. Each child is a real process of its own: it runs train.py as
`__main__` with the request's arguments, folder and environment, its stdin from /dev/null and its stdout and stderr
into files, and exits as `python train.py` would (an uncaught exception prints its traceback and exits 1, atexit
handlers run). What the imports printed here is written at the start of each child's output, as a user would see it.

Protocol (one JSON object per line): a request on stdin {"id", "argv", "cwd", "env", "stdout", "stderr"}; on
stdout {"id", "pid"} once the child is forked, then {"id", "returncode"} when it has exited (negative: killed by
that signal). Nothing is imported here that starts a thread: a forked child keeps only the thread that forked it.
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


def preload() -> tuple[bytes, bytes]:
    """Runs train.py's top-level import statements here; returns what they printed to stdout and stderr."""
    tree = ast.parse(open(TRAIN).read(), TRAIN)
    imports = ast.Module([node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)], [])
    printed = []
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            exec(compile(imports, TRAIN, "exec"), {"__name__": "__preload__"})
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
    return printed[0], printed[1]


def send(message: dict) -> None:
    os.write(1, (json.dumps(message) + "\n").encode())


def serve() -> dict:
    """Forks a child per request and reports its end; returns the request in the child (never in this process)."""
    buffered = b""
    children: dict[int, str] = {}
    while True:
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            send({"id": children.pop(pid), "returncode": os.waitstatus_to_exitcode(status)})
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


def become(request: dict, printed: tuple[bytes, bytes]) -> None:
    """In the child: the process `python train.py <argv>` would be, up to running train.py."""
    os.setpgid(0, 0)  # its own group, so a timeout stops it with whatever it started
    stdin = os.open(os.devnull, os.O_RDONLY)
    os.dup2(stdin, 0)
    for fd, (path, early) in enumerate(zip((request["stdout"], request["stderr"]), printed, strict=True), start=1):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(target, early)
        os.dup2(target, fd)
        os.close(target)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = [TRAIN, *request["argv"]]
    sys.path[0] = ROOT  # as for `python /path/to/train.py`


if __name__ == "__main__":
    early = preload()
    job = serve()
    become(job, early)
    import runpy

    runpy.run_path(TRAIN, run_name="__main__")
