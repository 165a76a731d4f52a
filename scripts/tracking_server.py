"""A tracking server for many writers: PostgreSQL behind `mlflow server`, artifacts proxied, on 127.0.0.1.

    bash scripts/tracking_server.sh                       # PostgreSQL + mlflow server on 127.0.0.1:5000
    bash scripts/tracking_server.sh --port 5001 --data /var/lib/lrsweep-tracking
    MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD=... bash scripts/tracking_server.sh --host 0.0.0.0 --auth
    python train.py -m ... tracking.uri=http://127.0.0.1:5000

SQLite takes one writer at a time; PostgreSQL takes many. Everything lives in `--data` (default
`tracking-server/`): the database cluster (`postgres/`, made by `initdb` on the first start), its socket and log,
and the artifacts (`artifacts/`), which the server proxies (`--artifacts-destination`), so `config.yaml`, the report
and `report.html` reach it from any machine that reaches the server. A second start reuses all of it.

Who gets in:
- PostgreSQL listens on no TCP port, only on a Unix socket in `--data/postgres-socket` (mode 0700): the server on this
  machine is its only client. It logs in as the role `mlflow`, which owns the database `mlflow` and nothing else (no
  superuser, no new databases or roles), with a password (scram-sha-256) made on the first start and kept in
  `--data/postgres-credentials` (mode 0600, beside the superuser's): handed over in the environment, in no URI.
- `mlflow server` binds to 127.0.0.1 unless `--host` says otherwise, and another `--host` needs `--auth`: MLflow's
  basic-auth app, whose admin is named by MLflow's client credentials where the script runs
  (`MLFLOW_TRACKING_USERNAME`/`MLFLOW_TRACKING_PASSWORD`, or `~/.mlflow/credentials`); every client then sends its
  own the same way. A password in `tracking.uri` works too, but the environment or the file keeps it off command
  lines; lrsweep redacts it from everything it writes either way (`lrsweep.core.secrets`).

PostgreSQL refuses to run as root; run as root, this script runs it as the `postgres` system user (Debian's
`postgresql` package makes it), which must be able to reach `--data`.

Ctrl-C (or SIGTERM) stops the MLflow server, then PostgreSQL (`pg_ctl stop -m fast`: committed data is kept).
Tests start the same pieces from here (`Postgres`, `mlflow_server`), with a PostgreSQL of their own.
"""

from __future__ import annotations

import argparse
import functools
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

DATABASE = "mlflow"
DB_USER = "lrsweep"  # the cluster's superuser: makes the database and the role, reads for tests and backups
DB_ROLE = "mlflow"  # what the MLflow server logs in as: owns the database `mlflow`, nothing more
# Both log in with a password (scram-sha-256, on the socket only), made on the first start and kept in
# `--data/postgres-credentials` (mode 0600): handed to PostgreSQL's clients in their environment (PGPASSWORD), never
# in a URI or a command line.
PG_HBA = """# lrsweep (scripts/tracking_server.py): the Unix socket only (no TCP), a password for every role
local all all scram-sha-256
"""
# The MLflow server's own settings: no GenAI job runners (8 processes it would start otherwise).
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class SetupError(RuntimeError):
    """A one-line reason the server cannot start, with the fix."""


def postgres_binary(name: str) -> str:
    """The path of PostgreSQL's `name` (initdb, pg_ctl, psql, ...): Debian keeps them out of PATH."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    path = found[-1] if found else shutil.which(name)
    if not path:
        raise SetupError(f"PostgreSQL's {name} was not found: install it with `apt-get install -y postgresql`")
    return path


class Postgres:
    """A PostgreSQL cluster in `folder` (made on the first `start`), reached through a Unix socket only.

    Args:
        folder: holds `postgres/` (the cluster, its log in `postgres/server.log`) and `postgres-socket/`.
        port: the number in the socket's name (`.s.PGSQL.<port>`); no TCP port is opened.
        os_user: the system user that runs PostgreSQL: this process's own, or `postgres` when that is root.
    """

    def __init__(self, folder: Path, port: int = 5432, os_user: str | None = None):
        self.folder = Path(folder).resolve()
        self.port = port
        self.os_user = os_user or ("postgres" if os.getuid() == 0 else pwd.getpwuid(os.getuid()).pw_name)
        self.cluster = self.folder / "postgres"
        self.socket_dir = self.folder / "postgres-socket"
        self.log = self.cluster / "server.log"

    @property
    def uri(self) -> str:
        """The SQLAlchemy URI of the MLflow database for its role, over the socket (its password: `server_env`)."""
        return f"postgresql+psycopg2://{DB_ROLE}@/{DATABASE}?host={self.socket_dir}&port={self.port}"

    @property
    def server_env(self) -> dict[str, str]:
        """What the MLflow server's environment needs to log in as `DB_ROLE` (libpq reads PGPASSWORD)."""
        return {"PGPASSWORD": self._passwords[DB_ROLE]}

    @functools.cached_property
    def _passwords(self) -> dict[str, str]:
        """The roles' passwords, made on the first use and kept in a file only this user reads."""
        import json
        import secrets

        path = self.folder / "postgres-credentials"
        if not path.exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({DB_USER: secrets.token_urlsafe(24), DB_ROLE: secrets.token_urlsafe(24)}, f)
        return json.loads(path.read_text())

    @property
    def _as_other_user(self) -> bool:
        return self.os_user != pwd.getpwuid(os.getuid()).pw_name

    def _run(self, *command: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        full = ("runuser", "-u", self.os_user, "--", *command) if self._as_other_user else command
        result = subprocess.run(full, capture_output=True, text=True, env={**os.environ, **(env or {})})
        if check and result.returncode != 0:
            lines = (result.stderr or result.stdout).strip().splitlines() or ["(no output)"]
            raise SetupError(f"{Path(command[0]).name} failed: {lines[-1]}")
        return result

    def _give(self, path: Path) -> None:
        """Makes PostgreSQL's user the owner of `path` (when that is another user than this process's)."""
        if self._as_other_user:
            entry = pwd.getpwnam(self.os_user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _own(self, path: Path) -> None:
        """Makes `path` a folder only PostgreSQL's user can open."""
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._give(path)
        path.chmod(0o700)

    def start(self) -> Postgres:
        """Makes the cluster and the database if they are missing, then starts PostgreSQL and waits for it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if self._as_other_user:  # it enters `folder` (0711: it cannot list it) to reach its own folders inside
            self.folder.chmod(self.folder.stat().st_mode | 0o711)
            if self._run("test", "-x", str(self.folder), check=False).returncode != 0:
                raise SetupError(f"the {self.os_user} user cannot reach {self.folder}: choose a --data folder "
                                 f"whose parent folders it can enter (e.g. /var/lib/lrsweep-tracking)")  # fmt: skip
        self._own(self.socket_dir)
        if not (self.cluster / "PG_VERSION").exists():
            self._own(self.cluster)
            # trust until `_secure` has set the passwords: the socket's folder (0700) lets no other user (but root) in
            self._run(postgres_binary("initdb"), "-D", str(self.cluster), "-U", DB_USER, "--auth=trust",
                      "--encoding=UTF8", "--no-instructions")  # fmt: skip
        options = f"-p {self.port} -k {self.socket_dir} -c listen_addresses=''"
        self._run(postgres_binary("pg_ctl"), "-D", str(self.cluster), "-l", str(self.log), "-o", options, "-w",
                  "-t", "60", "start")  # fmt: skip
        if (self.cluster / "pg_hba.conf").read_text() != PG_HBA:
            self._secure()
        return self

    def _secure(self) -> None:
        """Makes the database and its role if missing, gives both roles their passwords and lets none in without.

        Idempotent, and the way a cluster made by an earlier lrsweep (trust, the superuser owning everything) is
        brought here: its tables (with their sequences), views and types move to the role."""
        passwords = self._passwords
        self.sql(f"ALTER ROLE {DB_USER} PASSWORD '{passwords[DB_USER]}'", database="postgres")
        if self.sql(f"SELECT 1 FROM pg_roles WHERE rolname = '{DB_ROLE}'", database="postgres") != "1":
            self.sql(f"CREATE ROLE {DB_ROLE} LOGIN", database="postgres")  # no superuser, createdb or createrole
        self.sql(f"ALTER ROLE {DB_ROLE} PASSWORD '{passwords[DB_ROLE]}'", database="postgres")
        if self.sql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'", database="postgres") != "1":
            self.sql(f"CREATE DATABASE {DATABASE} OWNER {DB_ROLE}", database="postgres")
        self.sql(f"ALTER DATABASE {DATABASE} OWNER TO {DB_ROLE}", database="postgres")
        self.sql(f"REVOKE ALL ON DATABASE {DATABASE} FROM PUBLIC", database="postgres")
        self.sql(
            "DO $$ DECLARE r record; BEGIN "
            "FOR r IN SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            f"WHERE n.nspname = 'public' AND c.relkind IN ('r', 'v') AND pg_get_userbyid(c.relowner) = '{DB_USER}' "
            "LOOP EXECUTE format('ALTER %s public.%I OWNER TO " + DB_ROLE + "', "  # a table's sequences go with it
            "CASE r.relkind WHEN 'v' THEN 'VIEW' ELSE 'TABLE' END, r.relname); END LOOP; "
            "FOR r IN SELECT t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
            f"WHERE n.nspname = 'public' AND t.typtype = 'e' AND pg_get_userbyid(t.typowner) = '{DB_USER}' "
            "LOOP EXECUTE format('ALTER TYPE public.%I OWNER TO " + DB_ROLE + "', r.typname); END LOOP; END $$"
        )  # fmt: skip
        hba = self.cluster / "pg_hba.conf"
        hba.write_text(PG_HBA)
        self._give(hba)
        self._run(postgres_binary("pg_ctl"), "-D", str(self.cluster), "reload")

    def sql(self, statement: str, database: str = DATABASE) -> str:
        """Runs one SQL statement with psql as the superuser; returns its output, unaligned, without headers."""
        return self._as_superuser("psql", "-d", database, "-tAc", statement).strip()

    def dump(self, database: str = DATABASE) -> str:
        """The whole database as SQL text (`pg_dump`): a backup, or something to search."""
        return self._as_superuser("pg_dump", database)

    def _as_superuser(self, client: str, *args: str) -> str:
        """The output of PostgreSQL's `client` (psql, pg_dump) logged in as the superuser, over the socket."""
        result = self._run(postgres_binary(client), "-h", str(self.socket_dir), "-p", str(self.port), "-U", DB_USER,
                           *args, env={"PGPASSWORD": self._passwords[DB_USER]})  # fmt: skip
        return result.stdout

    def running(self) -> bool:
        return self._run(postgres_binary("pg_ctl"), "-D", str(self.cluster), "status", check=False).returncode == 0

    def stop(self, mode: str = "fast") -> None:
        """Stops PostgreSQL (`fast`: rolls back open transactions, keeps what was committed; `immediate`: a crash)."""
        if self.running():
            self._run(postgres_binary("pg_ctl"), "-D", str(self.cluster), "-m", mode, "-w", "stop")


def basic_auth(data: Path) -> dict[str, str]:
    """The settings (environment variables) of MLflow's basic-auth app for a server whose data is in `data`.

    Its admin is whoever MLflow's client credentials name where this runs: `MLFLOW_TRACKING_USERNAME` and
    `MLFLOW_TRACKING_PASSWORD`, else `~/.mlflow/credentials` (a file only its owner reads). Users are kept in
    `data/basic_auth.db`; anyone else gets no permission until the admin grants one (MLflow's auth REST API or
    `mlflow.server.get_app_client("basic-auth")`). No password is written to disk here: the admin's is handed to the
    server in its environment, which creates the admin on its first start.

    Raises:
        SetupError: no credentials to make the admin from.
    """
    import secrets

    from mlflow.utils.credentials import read_mlflow_creds

    creds = read_mlflow_creds()
    if not (creds.username and creds.password):
        raise SetupError(
            "--auth needs the admin's credentials: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or put "
            "them in ~/.mlflow/credentials ([mlflow] mlflow_tracking_username = ..., mlflow_tracking_password = ...)"
        )
    if len(creds.password) < 12:  # MLflow's own rule: its server would exit on it, after PostgreSQL started
        raise SetupError("MLflow's basic-auth app wants an admin password of 12 characters or more: choose a longer "
                         "MLFLOW_TRACKING_PASSWORD")  # fmt: skip
    data.mkdir(parents=True, exist_ok=True)
    config = data / "basic_auth.ini"
    config.write_text(
        "[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{(data / 'basic_auth.db').resolve()}\nadmin_username = {creds.username}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    config.chmod(0o600)
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(config.resolve()),
        "MLFLOW_AUTH_ADMIN_USERNAME": creds.username,
        "MLFLOW_AUTH_ADMIN_PASSWORD": creds.password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32),  # CSRF protection of the auth app's forms
    }


def mlflow_server(
    backend_uri: str, artifacts: Path, host: str = "127.0.0.1", port: int = 5000, workers: int = 2,
    auth: dict[str, str] | None = None, backend_env: dict[str, str] | None = None, **popen,
) -> subprocess.Popen:  # fmt: skip
    """Starts `mlflow server` over `backend_uri` with artifacts proxied to `artifacts`, in a session of its own;
    behind MLflow's basic-auth app with `auth` (`basic_auth`'s settings); `backend_env`: what the store needs in the
    environment (`Postgres.server_env`)."""
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri,
               "--artifacts-destination", str(artifacts), "--host", host, "--port", str(port),
               "--workers", str(workers), *(["--app-name", "basic-auth"] if auth else [])]  # fmt: skip
    env = {**os.environ, **SERVER_ENV, **(auth or {}), **(backend_env or {})}
    return subprocess.Popen(command, env=env, start_new_session=True, **popen)


def wait_healthy(url: str, server: subprocess.Popen, timeout: float = 180.0) -> None:
    """Returns once `url`/health answers; raises if the server exits or does not answer within `timeout`."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SetupError(f"mlflow server exited with status {server.returncode} before it answered at {url}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise SetupError(f"mlflow server did not answer at {url} within {timeout:.0f} s")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a server of a test or a benchmark)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(host: str, port: int) -> None:
    """Raises SetupError if something listens on host:port already (its /health would look like ours)."""
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise SetupError(f"{host}:{port} is taken ({e.strerror}): choose another --port") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("tracking-server"), help="where everything is kept")
    parser.add_argument("--host", default="127.0.0.1", help="the address the MLflow server binds (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5000, help="the MLflow server's port (default 5000)")
    parser.add_argument("--workers", type=int, default=2, help="the MLflow server's worker processes (default 2)")
    parser.add_argument("--postgres-port", type=int, default=5432, help="the number of PostgreSQL's socket")
    parser.add_argument("--auth", action="store_true", help="MLflow's basic-auth app; its admin: MLflow's client "
                        "credentials here (MLFLOW_TRACKING_USERNAME/PASSWORD or ~/.mlflow/credentials)")  # fmt: skip
    args = parser.parse_args(argv)
    database = Postgres(args.data, args.postgres_port)
    try:
        if not (args.auth or args.host in LOOPBACK):
            raise SetupError(f"--host {args.host} lets other machines in: add --auth (MLflow's basic-auth app)")
        auth = basic_auth(args.data) if args.auth else None
        port_free(args.host, args.port)
        database.start()
    except SetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    server = mlflow_server(database.uri, (args.data / "artifacts").resolve(), args.host, args.port, args.workers, auth,
                           database.server_env)  # fmt: skip
    url = f"http://{args.host}:{args.port}"
    stopping = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda s, _: stopping.append(s))
    try:
        wait_healthy(url, server)
        print(f"MLflow tracking server on {url} (PostgreSQL in {database.cluster}); train with tracking.uri={url}")
        print("Ctrl-C stops it.", flush=True)
        while server.poll() is None and not stopping:
            time.sleep(0.5)
    except SetupError as e:
        print(f"error: {e}", file=sys.stderr)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
        database.stop()
    return 0 if stopping else 1


if __name__ == "__main__":
    sys.exit(main())
