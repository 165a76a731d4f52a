"""Claims: a configuration trains in one live process at a time, however many sweeps run on one store at once.

A claim is an exclusive POSIX record lock (`fcntl.lockf`) on one byte of the store's claims file, at an offset
given by the experiment and the configuration's hash (`Claim`). The kernel drops it when its process exits,
SIGKILL included, so a claim never outlives its process and there is nothing to clean up; and it names its
holder's pid (`holder`). All of a process's claims on a store share one file descriptor, so a sweep of 1,000 jobs
holds 1,000 claims with one; a process never conflicts with itself (taking a claim it holds succeeds), and a
forked child inherits none. The descriptor stays open for the life of the process: closing any descriptor of the
file would drop every claim on it, so no other code opens it.

The claims file is `<the SQLite store's folder>/.lrsweep-claims`. For any other store (a tracking server) it is
a file per URI in a per-user folder of this machine, `~/.cache/lrsweep/claims/`: claims then keep apart the
sweeps of one user on one machine only, not those on other machines or of other users sharing the server.
Where the file cannot be opened or locked (a read-only home, a filesystem without locks), claims are off, with a
warning: every claim is taken, as before claims existed.

A sweep takes the claims of the jobs it will train (`take`, never waiting) and leaves the configurations another
process holds for last; `held` then holds a pack's claims while it trains, waiting (one line per holder) for any
held elsewhere and asking which of those finished meanwhile, to be reused rather than trained.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from lrsweep.core import interrupts
from lrsweep.tracking import store

log = logging.getLogger(__name__)

T = TypeVar("T")

FILE_NAME = ".lrsweep-claims"
POLL_SECONDS = 0.2  # how often a process waiting for a claim tries again (and checks for Ctrl-C)
_FLOCK = "hhqqi4x"  # Linux's struct flock: l_type, l_whence, l_start, l_len, l_pid (padded to 32 bytes)
_files: dict[Path, int | None] = {}  # claims file -> this process's descriptor of it (None: claims are off there)
_held: set[Claim] = set()


@dataclass(frozen=True)
class Claim:
    """The right to train one configuration (`config_hash`) of one experiment of one store (`uri`)."""

    uri: str
    experiment: str
    config_hash: str

    @property
    def file(self) -> Path:
        path = store.sqlite_path(self.uri)
        if path is not None:
            return path.resolve().parent / FILE_NAME
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        return cache / "lrsweep" / "claims" / hashlib.sha256(self.uri.rstrip("/").encode()).hexdigest()[:16]

    @property
    def offset(self) -> int:
        """The byte locked: 56 bits of a hash, well within `off_t`; two claims on one byte only wait for each other."""
        return int.from_bytes(hashlib.sha256(f"{self.experiment}\0{self.config_hash}".encode()).digest()[:7], "big")


def _descriptor(file: Path) -> int | None:
    if file not in _files:
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            _files[file] = os.open(file, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            _off(file, e)
    return _files[file]


def _off(file: Path, error: OSError) -> None:
    log.warning(
        "Cannot lock %s (%s): sweeps started together on this store may each train the same configuration.",
        file, os.strerror(error.errno) if error.errno else error,
    )  # fmt: skip
    _files[file] = None


def take(claim: Claim) -> bool:
    """Takes the claim unless another live process holds it; never waits. True when this process holds it."""
    if claim in _held:
        return True
    fd = _descriptor(claim.file)
    if fd is None:
        return True
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, claim.offset)
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EAGAIN):
            return False
        _off(claim.file, e)
        return True
    _held.add(claim)
    return True


def release(claim: Claim) -> None:
    """Releases the claim if this process holds it."""
    if claim in _held:
        _held.discard(claim)
        fd = _files.get(claim.file)
        if fd is not None:
            fcntl.lockf(fd, fcntl.LOCK_UN, 1, claim.offset)


def release_all() -> None:
    """Releases every claim this process holds (before handing its jobs to other processes: `lrsweep.run.remote`)."""
    for claim in list(_held):
        release(claim)


def holds(claim: Claim) -> bool:
    """Whether this process holds the claim."""
    return claim in _held


def holder(claim: Claim) -> int | None:
    """The pid of the other live process that holds the claim (0: one in another pid namespace), or None."""
    fd = _descriptor(claim.file)
    if fd is None or claim in _held:
        return None
    try:
        reply = fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, claim.offset, 1, 0))
        kind, _, _, _, pid = struct.unpack(_FLOCK, reply)
    except (OSError, struct.error):
        return None
    return None if kind == fcntl.F_UNLCK else pid


@contextlib.contextmanager
def held(claims: Sequence[Claim], finished: Callable[[int, bool], T | None], then: str) -> Iterator[dict[int, T]]:
    """Holds every claim while the block trains their configurations, then releases them all.

    Claims this process holds already (taken by `take` when the sweep was planned) are kept. The others are taken
    in one order shared by every process (so two never wait for each other), waiting for those another live
    process holds: one line per holder says so (`then` ends it: what happens after), and Ctrl-C or SIGTERM stops
    the wait (`lrsweep.core.interrupts`).

    Args:
        claims: one per job, in the caller's order.
        finished: called with the index and whether it was waited for, for each claim taken here (not held
            before): the result of a run of that configuration that FINISHED meanwhile, or None to train it.
        then: what follows the wait, for the line, e.g. "then reusing their results".

    Yields:
        By index, what `finished` returned for the configurations not to train.
    """
    fresh = sorted((k for k, claim in enumerate(claims) if claim not in _held), key=lambda k: claims[k].offset)
    waited: set[int] = set()
    try:
        for k in fresh:
            if not take(claims[k]):
                waited |= _announce(claims, [j for j in fresh if j not in waited and not holds(claims[j])], then)
                waited.add(k)
                _wait(claims[k])
        yield {k: value for k in sorted(fresh) if (value := finished(k, k in waited)) is not None}
    finally:
        for claim in claims:
            release(claim)


def _announce(claims: Sequence[Claim], pending: Sequence[int], then: str) -> set[int]:
    """Says, one line per holder, which of the pending claims other live processes hold; returns those."""
    by_holder: dict[int, list[int]] = {}
    for k in pending:
        if (pid := holder(claims[k])) is not None:
            by_holder.setdefault(pid, []).append(k)
    for pid, ks in by_holder.items():
        count = f"{len(ks)} configurations are" if len(ks) > 1 else "1 configuration is"
        log.warning("%s being trained by another live process (pid %d): waiting for it, %s",
                    count, pid, then)  # fmt: skip
    return {k for ks in by_holder.values() for k in ks}


def _wait(claim: Claim) -> None:
    """Waits until this process holds the claim; Ctrl-C or SIGTERM (or the sweep's stop file) stops it."""
    while True:
        interrupts.check()
        if take(claim):
            return
        time.sleep(POLL_SECONDS)
