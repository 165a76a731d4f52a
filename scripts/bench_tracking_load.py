"""Benchmark: N packs logging at once to a tracking server, over PostgreSQL and over SQLite. Prints a table.

    .venv/bin/python scripts/bench_tracking_load.py                        # 1, 4, 8 packs of 16, both stores
    .venv/bin/python scripts/bench_tracking_load.py --packs 8 16 --epoch-seconds 0   # as fast as the store takes

Each pack is a process of its own that logs what a packed sweep's process logs for 16 members, through lrsweep's
own code (`tracking.connect`, `open_run` with a job's params, tags and config artifacts, the `BatchedWriter` of
per-step LR points, `log_metrics` at each epoch's end, `close_run`), against a real `mlflow server` (2 workers,
proxied artifacts) started here over a fresh PostgreSQL (scripts/tracking_server.py) or a fresh SQLite file. The
training is left out: `--epoch-seconds` of sleep stand for an epoch (a 16-member MLP pack on the full data takes
about 16 s here; 2 s is 8 times the load, 0 is as fast as the store answers), so the figures are the store's.
Every member logs, per epoch, 10 epoch metrics and one `lr_step` point every 50 of 1,563 steps (the defaults with
batch 32 on 50,000 examples): 32 log calls per epoch per pack of 16.

Per store and number of packs: packs that failed (a request that ran out of `tracking.http_timeout` x retries; its
last line is printed), points logged by the others and found in the database afterwards (counted with SQL: nothing
lost; a failed pack's points count as found, not logged), log calls and their latency (p50 and p99 over every
`log_batch`, `create_run` and `set_terminated` of every pack), the wait for a pack's last writes after its last
epoch, runs opened and closed per minute, and the CPU seconds of the server's processes (and PostgreSQL's).
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts import tracking_server  # noqa: E402
from scripts.tracking_server import free_port  # noqa: E402

MEMBERS = 16
STEPS_PER_EPOCH = 1563  # 50,000 held-in examples in batches of 32
LOG_EVERY = 50  # tracking.log_every_n_steps
EPOCH_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "effective_lr/p10", "effective_lr/p50",
              "effective_lr/p90", "effective_lr/excluded_fraction", "epoch_seconds")  # fmt: skip


def pack(uri: str, name: str, epochs: int, epoch_seconds: float) -> dict:
    """One pack's logging, in this process: returns its latencies and counts."""
    from lrsweep.core import backend

    backend.select("jax")
    from lrsweep import tracking
    from lrsweep.run.callbacks.batched_writer import BatchedWriter

    client, experiment_id = tracking.connect(uri, "load")
    latencies: list[float] = []
    for method in ("log_batch", "create_run", "set_terminated"):
        inner = getattr(client, method)

        def timed(*args, _inner=inner, **kwargs):
            start = time.perf_counter()
            try:
                return _inner(*args, **kwargs)
            finally:
                latencies.append(time.perf_counter() - start)

        setattr(client, method, timed)
    started = time.perf_counter()
    config = "\n".join(f"key{i}: value{i}" for i in range(120))  # a job's config.yaml, about 2 KB
    run_ids = [
        tracking.open_run(client, experiment_id, tracking.RunRecord(
            f"{name}-m{k}", {f"param{i}": str(i * k) for i in range(20)}, {f"lrsweep.tag{i}": name for i in range(15)},
            {"config.yaml": config, "overrides.yaml": "- training.seed=0\n"},
        ))
        for k in range(MEMBERS)
    ]  # fmt: skip
    writer = BatchedWriter(client, flush_seconds=10.0)
    writer.start()
    for epoch in range(epochs):
        time.sleep(epoch_seconds)  # the epoch's training
        first = epoch * STEPS_PER_EPOCH
        steps = range(first, first + STEPS_PER_EPOCH, LOG_EVERY)
        writer.write((run_id, [("lr_step", 0.001 * (1 + s % 7), s) for s in steps]) for run_id in run_ids)
        for k, run_id in enumerate(run_ids):
            tracking.log_metrics(client, run_id, {key: 0.5 + 0.01 * k for key in EPOCH_KEYS}, epoch)
    last_epoch = time.perf_counter()
    writer.wait()
    drained = time.perf_counter() - last_epoch
    for k, run_id in enumerate(run_ids):
        tracking.close_run(client, run_id, f"{name}-m{k}")
    points = MEMBERS * epochs * (len(EPOCH_KEYS) + len(range(0, STEPS_PER_EPOCH, LOG_EVERY)))
    return {"latencies": latencies, "points": points, "wall": time.perf_counter() - started, "drained": drained}


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes and their children that ended, from /proc."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime
    return total


def server_pids(server: subprocess.Popen, database: tracking_server.Postgres | None) -> list[int]:
    """The server's process group, and PostgreSQL's processes (the postmaster and its backends)."""
    processes = {}  # pid -> (parent pid, process group, command line)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except (FileNotFoundError, ProcessLookupError):
                continue
            processes[int(entry.name)] = (int(stat[1]), int(stat[2]), command)
    postmaster = {pid for pid, (_, _, command) in processes.items() if database and f"-D {database.cluster}" in command}
    return [pid for pid, (parent, group, _) in processes.items()
            if group == server.pid or pid in postmaster or parent in postmaster]  # fmt: skip


def count_points(database: tracking_server.Postgres | None, folder: Path) -> int:
    query = "SELECT count(*) FROM metrics"
    if database is not None:
        return int(database.sql(query))
    with sqlite3.connect(folder / "mlflow.db") as connection:
        return connection.execute(query).fetchone()[0]


def measure(store: str, packs: int, epochs: int, epoch_seconds: float) -> dict:
    """A fresh server over a fresh `store` ("postgresql" or "sqlite"), `packs` packs logging at once."""
    with tempfile.TemporaryDirectory(prefix="lrsweep-load-") as tmp:
        folder = Path(tmp)
        database = tracking_server.Postgres(folder, free_port()).start() if store == "postgresql" else None
        backend_uri = database.uri if database else f"sqlite:///{folder / 'mlflow.db'}"
        port = free_port()
        server = tracking_server.mlflow_server(backend_uri, folder / "artifacts", port=port, workers=2,
                                               backend_env=database.server_env if database else None,
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            tracking_server.wait_healthy(url, server)
            before = cpu_seconds(server_pids(server, database))
            started = time.perf_counter()
            processes = [
                subprocess.Popen([sys.executable, __file__, "--pack", url, f"p{i}", str(epochs), str(epoch_seconds)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
                for i in range(packs)
            ]  # fmt: skip
            results, failed = [], []
            for process in processes:
                out, err = process.communicate()
                if process.returncode == 0:
                    results.append(json.loads(out.strip().splitlines()[-1]))
                else:  # the store did not keep up: the pack's last error line
                    failed.append(next(line for line in reversed(err.strip().splitlines()) if line.strip()))
            wall = time.perf_counter() - started
            cpu = cpu_seconds(server_pids(server, database)) - before
            found = count_points(database, folder)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
            if database is not None:
                database.stop()
    latencies = sorted(t for r in results for t in r["latencies"]) or [float("nan")]
    return {
        "store": store, "packs": packs, "failed": failed, "logged": sum(r["points"] for r in results), "found": found,
        "calls": len(latencies), "p50": 1000 * statistics.median(latencies),
        "p99": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
        "drained": max((r["drained"] for r in results), default=float("nan")),
        "runs_per_min": len(results) * MEMBERS / (wall / 60), "cpu": cpu, "wall": wall,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packs", type=int, nargs="+", default=[1, 4, 8], help="packs logging at once")
    parser.add_argument("--stores", nargs="+", default=["postgresql", "sqlite"], choices=["postgresql", "sqlite"])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--epoch-seconds", type=float, default=2.0, help="sleep standing for an epoch's training")
    parser.add_argument("--pack", nargs=4, help=argparse.SUPPRESS)  # (url, name, epochs, seconds): one pack's process
    args = parser.parse_args()
    if args.pack:
        url, name, epochs, seconds = args.pack
        print(json.dumps(pack(url, name, int(epochs), float(seconds))))
        return
    print(f"{MEMBERS} members per pack, {args.epochs} epochs of {args.epoch_seconds:g} s each; server: 2 workers")
    header = ("store", "packs", "failed", "points logged", "found", "log calls", "p50 ms", "p99 ms",
              "last writes s", "runs/min", "server CPU s", "wall s")  # fmt: skip
    print("  ".join(header))
    for store in args.stores:
        for packs in args.packs:
            r = measure(store, packs, args.epochs, args.epoch_seconds)
            row = (r["store"], r["packs"], len(r["failed"]), r["logged"], r["found"], r["calls"], f"{r['p50']:.1f}",
                   f"{r['p99']:.1f}",
                   f"{r['drained']:.2f}", f"{r['runs_per_min']:.0f}", f"{r['cpu']:.1f}",
                   f"{r['wall']:.1f}")  # fmt: skip
            print("  ".join(str(v) for v in row), flush=True)
            for error in dict.fromkeys(r["failed"]):
                print(f"    a pack failed: {error[:300]}", flush=True)


if __name__ == "__main__":
    main()
