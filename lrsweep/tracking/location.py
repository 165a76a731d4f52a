"""Where a SQLite store lives: its database file from the URI, and whether a database can be there at all.

Checked with the filesystem before SQLite or MLflow touch the path, so that a path where no store can exist is one
line naming the value and the fix, in milliseconds, instead of MLflow's engine retries ending in "unable to open
database file": a folder that cannot be created or written, a file in the way, or a kernel filesystem such as
`/proc` or `/sys`, where no file can ever be created (and where root's `os.access` still says "writable").
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

from lrsweep.core.errors import StoreError

SQLITE = "sqlite:///"
# Filesystems the kernel makes up, where a program cannot create an ordinary file (procfs, sysfs, cgroups, ...).
VIRTUAL_FILESYSTEMS = frozenset({
    "proc", "sysfs", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs", "configfs", "pstore", "bpf",
    "efivarfs", "fusectl", "binfmt_misc", "devpts", "mqueue", "autofs", "nsfs", "rpc_pipefs", "selinuxfs",
})  # fmt: skip
MOUNTS = Path("/proc/self/mountinfo")
FIX = "Set `tracking.uri` to a writable path, e.g. tracking.uri=sqlite:///mlruns/mlflow.db."


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (absolute, `~` expanded, any `?query` dropped), else None."""
    if not uri.startswith(SQLITE):
        return None
    path = uri[len(SQLITE) :].split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path).expanduser().absolute()


def filesystem(path: Path) -> tuple[Path, str] | None:
    """The mount point and filesystem type an existing `path` is on, from `/proc/self/mountinfo`; None elsewhere."""
    try:
        lines = MOUNTS.read_text().splitlines()
    except OSError:
        return None
    path = path.resolve()
    found: tuple[Path, str] | None = None
    for line in lines:  # "<id> <parent> <dev> <root> <mount point> <options> [<optional>...] - <type> <source> ..."
        fields = line.split()
        if "-" not in fields or len(fields) < 5:
            continue
        mount = Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4]))  # "\040" is a space
        fstype = fields[fields.index("-") + 1]
        if (path == mount or mount in path.parents) and (found is None or len(mount.parts) >= len(found[0].parts)):
            found = (mount, fstype)  # the deepest mount point holding `path`; a later mount over it wins
    return found


def check_location(uri: str, path: Path) -> bool:
    """Checks, creating nothing, that the database file can be read and written or its folder created.

    Returns:
        Whether the database file exists with some content (False: a fresh store, to be created).

    Raises:
        StoreError: naming the value, the path that is in the way and the fix.
    """
    folder = path.parent
    ancestor = folder
    while not ancestor.exists():  # the nearest existing folder: the one the missing folders are created in
        ancestor = ancestor.parent
    mounted = filesystem(ancestor)
    if mounted is not None and mounted[1] in VIRTUAL_FILESYSTEMS:
        mount, kind = mounted
        where = f"{folder} is not a folder lrsweep can create" if ancestor != folder else f"no store can be in {folder}"
        raise StoreError(
            f"`tracking.uri={uri}`: {where} ({mount} is the kernel's {kind} filesystem, where no file can be created). "
            + FIX
        )
    if path.exists():
        if not path.is_file():
            raise StoreError(
                f"The MLflow store tracking.uri={uri} is not a database file: {path} is a folder. "
                "Point `tracking.uri` at a file inside it, e.g. sqlite:///" + str(path / "mlflow.db") + "."
            )
        if not os.access(path, os.R_OK | os.W_OK):
            raise StoreError(
                f"The MLflow store tracking.uri={uri} is not writable: no read/write permission on {path}. "
                f"Make it writable (`chmod u+rw {path}`) or choose another `tracking.uri`."
            )
    if not ancestor.is_dir():
        raise StoreError(
            f"Cannot create the MLflow store tracking.uri={uri}: {ancestor} is a file, not a folder. "
            "Choose another `tracking.uri`, or move that file away."
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        what = "write to the folder" if ancestor == folder else f"create the folder {folder} in"
        raise StoreError(
            f"Cannot write the MLflow store tracking.uri={uri}: no permission to {what} {ancestor} (SQLite also "
            f"writes a journal beside the database). Make it writable (`chmod u+w {ancestor}`) or choose another "
            "`tracking.uri`."
        )
    return path.is_file() and path.stat().st_size > 0


def make_folder(uri: str, path: Path) -> None:
    """Creates the database's folder and makes sure a file can be created in it (a probe, removed at once).

    `os.access` can say yes where the filesystem says no (ACLs, root squash, a FUSE or network mount): SQLite would
    then fail with "unable to open database file" after MLflow's engine retries.

    Raises:
        StoreError: naming the value, the folder and the fix.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(
            f"`tracking.uri={uri}`: {path.parent} is not a folder lrsweep can create ({e.strerror or e}). {FIX}"
        ) from e
    if path.exists():
        return
    probe = path.parent / f".lrsweep-probe-{os.getpid()}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        return
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return  # a full disk is said when a write fails, with the free space (`disk_full`)
        raise StoreError(
            f"`tracking.uri={uri}`: no file can be created in {path.parent} ({e.strerror or e}), so the store "
            f"cannot be made there. {FIX}"
        ) from e
    probe.unlink(missing_ok=True)
