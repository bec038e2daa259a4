"""A local PostgreSQL cluster in the project's folder, for `make server` when no DB is given.

The cluster lives in mlruns/postgres/ (data/, postgres.log), listens on 127.0.0.1 only (no
Unix socket), and admits one role, `pipeline`, by password (SCRAM); the password is made at
initdb and kept in mlruns/postgres/password, readable by its owner only. It holds two
databases: `mlflow` (the tracking server's backend) and `optuna` (search studies).

PostgreSQL refuses to run as root: run as root, the cluster's files belong to the
`postgres` user of Debian's package and its programs run as that user (runuser).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

from pipeline.errors import PipelineError

ROLE = "pipeline"
DATABASES = ("mlflow", "optuna")
SYSTEM_USER = "postgres"  # the owner of the cluster's files when we run as root


def bindir() -> Path:
    """Where initdb and pg_ctl are: on PATH, else the newest /usr/lib/postgresql/<v>/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if versions:
        return versions[-1].parent
    raise PipelineError(
        "PostgreSQL is not installed: `apt-get install postgresql` (Debian, "
        "Ubuntu), or give an existing database: make server DB=postgresql://…"
    )


def _as_owner(command: list[str]) -> list[str]:
    return ["runuser", "-u", SYSTEM_USER, "--", *command] if os.geteuid() == 0 else command


def _run(command: list[str], what: str) -> str:
    done = subprocess.run(_as_owner(command), capture_output=True, text=True)
    if done.returncode:
        raise PipelineError(
            f"{what} failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-1500:]}"
        )
    return done.stdout


class Cluster:
    def __init__(self, folder: Path):
        self.folder = folder
        self.data = folder / "data"
        self.log = folder / "postgres.log"
        self.secret = folder / "password"

    def url(self, port: int, database: str, password: str | None = None) -> str:
        """The SQLAlchemy URL of one database (psycopg 3), with the password (or the text
        given instead of it, for showing)."""
        password = self.secret.read_text().strip() if password is None else password
        return f"postgresql+psycopg://{ROLE}:{password}@127.0.0.1:{port}/{database}"

    def initialised(self) -> bool:
        """True for a cluster initdb finished (PG_VERSION is written last); a cluster with
        data but no password file is an error, never a reason to start afresh."""
        if not (self.data / "PG_VERSION").exists():
            return False
        if not self.secret.exists():
            raise PipelineError(
                f"the PostgreSQL cluster in {self.data} has no password file "
                f"{self.secret}: restore it (the role is `{ROLE}`), or remove "
                f"{self.folder} to start a new, empty cluster"
            )
        return True

    def initialise(self) -> None:
        """initdb: the role `pipeline` with a new password; host logins by password only."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.data.exists():  # an initdb that died half-way (no PG_VERSION): start again
            shutil.rmtree(self.data)
        password = secrets.token_urlsafe(24)
        pwfile = self.folder / ".initdb-password"
        pwfile.write_text(password)
        os.chmod(pwfile, 0o600)
        if os.geteuid() == 0:
            shutil.chown(self.folder, SYSTEM_USER, SYSTEM_USER)
            shutil.chown(pwfile, SYSTEM_USER, SYSTEM_USER)
        try:
            _run(
                [
                    str(bindir() / "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    ROLE,
                    "--pwfile",
                    str(pwfile),
                    "--auth-host=scram-sha-256",
                    "--auth-local=reject",
                    "-E",
                    "UTF8",
                    "--no-instructions",
                ],
                f"initdb in {self.data}"
                + (
                    f" as user {SYSTEM_USER} (as root, every folder "
                    "above it must let that user in: chmod o+x)"
                    if os.geteuid() == 0
                    else ""
                ),
            )
        finally:
            pwfile.unlink(missing_ok=True)
        self.secret.write_text(password + "\n")
        os.chmod(self.secret, 0o600)

    def port(self) -> int | None:
        """The port of the running postmaster, None if the cluster is not running."""
        done = subprocess.run(
            _as_owner([str(bindir() / "pg_ctl"), "status", "-D", str(self.data)]),
            capture_output=True,
            text=True,
        )
        if done.returncode:
            return None
        try:
            lines = (self.data / "postmaster.pid").read_text().splitlines()
            return int(lines[3])  # postmaster.pid: pid, data dir, start time, port, ...
        except (OSError, IndexError, ValueError):  # it stopped meanwhile
            return None

    def start(self, port: int) -> None:
        _run(
            [
                str(bindir() / "pg_ctl"),
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-o",
                f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories=''",
            ],
            f"starting PostgreSQL on 127.0.0.1:{port} (its log: {self.log})",
        )

    def stop(self) -> bool:
        """Stop the cluster; False if it had stopped already (crashed, killed)."""
        if self.port() is None:
            return False
        _run(
            [str(bindir() / "pg_ctl"), "stop", "-w", "-m", "fast", "-D", str(self.data)],
            "stopping PostgreSQL",
        )
        return True

    def create_databases(self, port: int) -> None:
        import psycopg  # the postgres extra: make server installs it

        url = self.url(port, "postgres").replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(url, autocommit=True) as connection:
            have = {row[0] for row in connection.execute("SELECT datname FROM pg_database")}
            for name in DATABASES:
                if name not in have:
                    connection.execute(f'CREATE DATABASE "{name}"')  # names: our constants


def ensure_running(folder: Path, port: int) -> tuple[Cluster, int, bool]:
    """The project's cluster, initialised and running with its databases; returns it, the
    port it listens on, and whether this call started it (and so should stop it)."""
    cluster = Cluster(folder)
    if not cluster.initialised():
        cluster.initialise()
    running = cluster.port()
    if running is None:
        cluster.start(port)
    cluster.create_databases(running or port)
    return cluster, running or port, running is None
