"""A single-node SLURM cluster on this machine, as local processes: munged, slurmctld and slurmd, all in one folder.

    python scripts/slurm_cluster.py --data /tmp/lrsweep-slurm          # starts it; Ctrl-C stops it
    export SLURM_CONF=/tmp/lrsweep-slurm/slurm.conf                     # in another shell: sinfo, sbatch, ...
    python train.py -m hydra.launcher.cluster=slurm ...                # each pack one SLURM job

For trying `hydra.launcher.cluster=slurm` and `hydra/launcher=slurm` without a cluster, and for their tests. It
needs Debian's `slurm-wlm` and `munge` (`scripts/setup.sh` installs them). Everything lives in `--data`: the
config (`slurm.conf`, pointed to by SLURM_CONF), a munge key and socket of its own (the system's munged is left
alone), state, spool, logs. One node (this machine, as `NodeName`, reached on 127.0.0.1) with all its CPUs and
90% of its memory, one partition `debug`, ports picked free. Job accounting is off (no slurmdbd): `sacct` answers
"Slurm accounting storage is disabled", so submitit warns on each status check and learns a job ended only from
its result file (a job killed without one is not noticed).
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.tracking_server import free_port  # noqa: E402

DAEMONS = ("munged", "slurmctld", "slurmd")
SLURM_CONF = """# lrsweep (scripts/slurm_cluster.py): one node, this machine
ClusterName=lrsweep
SlurmctldHost={host}(127.0.0.1)
SlurmUser={user}
SlurmdUser={user}
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={data}/munge/munge.socket
StateSaveLocation={data}/state
SlurmdSpoolDir={data}/spool
SlurmctldPidFile={data}/slurmctld.pid
SlurmdPidFile={data}/slurmd.pid
SlurmctldLogFile={data}/log/slurmctld.log
SlurmdLogFile={data}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={data}/log/jobcomp.txt
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


class SetupError(RuntimeError):
    """The cluster cannot start here; says why (the daemon's own words where it gave some)."""


def missing_binaries() -> list[str]:
    """The programs this needs that are not installed."""
    wanted = ["munged", "munge", "slurmctld", "slurmd", "sinfo", "sbatch"]
    return [name for name in wanted if shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin") is None]


class SlurmCluster:
    """munged, slurmctld and slurmd of one node, started in `data`; `env` points SLURM's commands at it."""

    def __init__(self, data: Path):
        self.data = Path(data).resolve()
        self.conf = self.data / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf), "PATH": f"{os.environ.get('PATH', '')}:/usr/sbin"}

    def start(self, timeout: float = 60.0) -> None:
        """Writes the config and the munge key (first start), starts the three daemons, and returns once the node
        is idle: ready for jobs.

        Raises:
            SetupError: a program is missing, or a daemon did not start (with the end of its log).
        """
        if missing := missing_binaries():
            raise SetupError(f"missing {', '.join(missing)}: apt-get install slurm-wlm munge")
        for sub in ("state", "spool", "log", "munge"):
            (self.data / sub).mkdir(parents=True, exist_ok=True)
        (self.data / "munge").chmod(0o700)
        key = self.data / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
            key.chmod(0o400)
        host = socket.gethostname().split(".")[0]
        memory_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.9)
        self.conf.write_text(SLURM_CONF.format(
            host=host, user=pwd.getpwuid(os.getuid()).pw_name, ctld_port=free_port(), d_port=free_port(),
            data=self.data, cpus=os.cpu_count(), memory_mb=memory_mb,
        ))  # fmt: skip
        munge = self.data / "munge"
        self._daemon("munged", [
            "munged", f"--socket={munge / 'munge.socket'}", f"--key-file={key}", f"--pid-file={munge / 'munged.pid'}",
            f"--log-file={self.data / 'log' / 'munged.log'}", f"--seed-file={munge / 'munged.seed'}", "--force",
        ])  # fmt: skip
        self._daemon("slurmctld", ["slurmctld", "-c"])  # -c: a clean start, no state from a run before
        self._daemon("slurmd", ["slurmd", "-N", host])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.run("sinfo", "-h", "-o", "%T", check=False).stdout.strip()
            if state == "idle":
                return
            time.sleep(0.5)
        raise SetupError(f"the SLURM node is {state or 'not listed'} after {timeout:g} s; {self._log_tail('slurmd')}")

    def _daemon(self, name: str, command: list[str]) -> None:
        result = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            said = (result.stderr or result.stdout).strip().splitlines()
            raise SetupError(f"{name} did not start ({said[-1] if said else f'exit {result.returncode}'}); "
                             f"{self._log_tail(name)}")  # fmt: skip

    def _log_tail(self, name: str) -> str:
        log = self.data / "log" / f"{name}.log"
        lines = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
        return f"end of {log}: {' | '.join(lines)}" if lines else f"no log at {log}"

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        """A SLURM command (sinfo, sbatch, squeue, scontrol, ...) against this cluster."""
        return subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=60, check=check)

    def stop(self) -> None:
        """Stops the daemons (SIGTERM, then SIGKILL after 10 s), slurmd first; the folder stays."""
        for name in reversed(DAEMONS):
            pid_file = self.data / ("munge" if name == "munged" else "") / f"{name}.pid"
            try:
                pid = int(pid_file.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            try:
                os.kill(pid, signal.SIGTERM)
                for _ in range(100):
                    os.kill(pid, 0)
                    time.sleep(0.1)
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="slurm-cluster", help="folder for its config, state and logs")
    args = parser.parse_args()
    cluster = SlurmCluster(Path(args.data))
    try:
        cluster.start()
    except SetupError as e:
        cluster.stop()
        sys.exit(f"error: {e}")
    print(f"SLURM is up: export SLURM_CONF={cluster.conf}   (Ctrl-C stops it)", flush=True)
    print(cluster.run("sinfo").stdout, end="", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        signal.pause()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
