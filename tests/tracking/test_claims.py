"""A configuration's claim belongs to one live process, is free once that process dies (SIGKILL included), and a
wait for it says who holds it and stops on Ctrl-C. Real processes hold the claims here."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lrsweep.tracking import claims
from lrsweep.tracking.claims import Claim
from tests.conftest import ROOT

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
# Takes the claims of argv[3:] (uri argv[1]), says so, then holds them for argv[2] seconds and exits.
HOLD = """
import sys, time
from lrsweep.tracking import claims
held = [claims.take(claims.Claim(sys.argv[1], "lrsweep", h)) for h in sys.argv[3:]]
print("held" if all(held) else f"not held: {held}", flush=True)
time.sleep(float(sys.argv[2]))
"""
# Waits for the claim of configuration "abc" as a sweep does, stopping on Ctrl-C as a sweep does.
WAIT = """
import logging, sys
from lrsweep.core import errors, interrupts
from lrsweep.tracking import claims
logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stdout)
interrupts.install()
with errors.reported(), claims.held([claims.Claim(sys.argv[1], "lrsweep", "abc")], lambda k, w: None, "then x"):
    print("trained", flush=True)
"""


def python(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], env=ENV, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)  # fmt: skip


def hold(uri: str, *hashes: str, seconds: float = 300) -> subprocess.Popen:
    """A process that holds the claims of `hashes`, once it has taken them."""
    process = python(HOLD, uri, str(seconds), *hashes)
    assert process.stdout.readline() == "held\n"
    return process


@pytest.fixture
def uri(tmp_path: Path):
    yield f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"  # no store needed: the claims file sits beside it
    claims.release_all()


def test_a_claim_is_one_live_process_s_and_free_once_it_is_killed(tmp_path, uri):
    holder = hold(uri, "abc")
    try:
        mine = Claim(uri, "lrsweep", "abc")
        assert not claims.take(mine) and not claims.holds(mine)
        assert claims.holder(mine) == holder.pid
        # Another configuration, experiment or store is another claim.
        elsewhere = f"sqlite:///{tmp_path / 'elsewhere' / 'mlflow.db'}"
        for other in (Claim(uri, "lrsweep", "abd"), Claim(uri, "other", "abc"), Claim(elsewhere, "lrsweep", "abc")):
            assert claims.holder(other) is None and claims.take(other) and claims.holds(other)
        holder.kill()  # SIGKILL: no handler, no cleanup; the kernel drops its lock
        assert holder.wait(timeout=30) == -signal.SIGKILL
        assert claims.holder(mine) is None
        assert claims.take(mine) and claims.take(mine)  # free now; and taking a claim it holds succeeds
        assert sorted(p.name for p in (tmp_path / "mlruns").iterdir()) == [".lrsweep-claims"]  # one file, empty
        assert (tmp_path / "mlruns" / ".lrsweep-claims").stat().st_size == 0
    finally:
        holder.kill()
    # This process holds it now: another one cannot take it and sees who holds it.
    probe = subprocess.run(
        [sys.executable, "-c", "import sys; from lrsweep.tracking import claims; c = claims.Claim(sys.argv[1], "
         "'lrsweep', 'abc'); print(claims.take(c), claims.holder(c))", uri],
        env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert probe.stdout.split() == ["False", str(os.getpid())], probe.stderr[-2000:]


def test_held_waits_for_the_holder_then_asks_which_finished(uri, caplog):
    """Claims held already are kept and not asked about; a free one is taken; a busy one is waited for, with one
    line naming its holder; `finished` is asked about each one taken, with whether it was waited for."""
    planned, free, busy = (Claim(uri, "lrsweep", h) for h in ("planned", "free", "busy"))
    assert claims.take(planned)
    holder = hold(uri, "busy", seconds=2)  # then exits, releasing it
    asked = []

    def finished(k: int, waited: bool) -> float | None:
        asked.append((k, waited))
        return 0.5 if waited else None

    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger=claims.__name__):
        with claims.held([planned, free, busy], finished, "then reusing the results") as reused:
            waited = time.monotonic() - started
            assert claims.holds(planned) and claims.holds(free) and claims.holds(busy)
    assert holder.wait(timeout=30) == 0
    assert 1.0 < waited < 10, waited
    assert reused == {2: 0.5} and asked == [(1, False), (2, True)]
    assert [r.getMessage() for r in caplog.records] == [
        f"1 configuration is being trained by another live process (pid {holder.pid}): waiting for it, then "
        "reusing the results"
    ]
    assert not any(claims.holds(c) for c in (planned, free, busy))  # all released when the block ends


def test_a_wait_for_a_claim_stops_at_once_on_ctrl_c(uri):
    assert claims.take(Claim(uri, "lrsweep", "abc"))  # held by this process
    waiter = python(WAIT, uri)
    line = waiter.stdout.readline()
    assert line == f"1 configuration is being trained by another live process (pid {os.getpid()}): waiting for it, " \
                   "then x\n", line  # fmt: skip
    time.sleep(0.5)  # waiting
    signalled = time.monotonic()
    waiter.send_signal(signal.SIGINT)
    output = waiter.communicate(timeout=30)[0]
    assert waiter.returncode == 130 and time.monotonic() - signalled < 3, output
    assert "lrsweep: stopped: received SIGINT" in output and "trained" not in output and "Traceback" not in output
