"""`make server`: a shared MLflow tracking server on PostgreSQL, with proxied artifacts.

    python -m pipeline.serve.server [--port 5000] [--host 127.0.0.1] [--allowed-hosts NAME,...]
                                    [--pg-port 5432] [--auth | --no-auth]
                                    [--admin-password-file FILE] [--default-permission EDIT]
    (PIPELINE_DB=postgresql://user:pw@host/db for an existing database;
     PIPELINE_ADMIN_PASSWORD=... for the admin's password)

Without --db it creates (once) and starts the project's own PostgreSQL cluster in
mlruns/postgres/ (serve/postgres.py) and stops it again when the server stops. Jobs
anywhere log through the server (MLFLOW_TRACKING_URI=http://…), artifacts included
(--serve-artifacts: the server stores them in mlruns/server-artifacts/), so no worker
needs the project's disk; Optuna searches share the cluster's `optuna` database
(OPTUNA_STORAGE, printed at start). The zero-setup default stays `make ui` on SQLite.
Binding, Host-header and signal handling are `make ui`'s (serve/ui.py).

Bound beyond 127.0.0.1 it asks for a login (--no-auth: not; --auth: on loopback too): MLflow's
basic-auth app (users, passwords, per-experiment permissions), its users in a SQLite file
beside the server's artifacts, mlruns/server-auth/basic_auth.db. The auth store is tiny and
written only when users or permissions change; a file of its own works the same with DB= (an
existing database where we may not create another, and whose schema MLflow's auth migrations
should not share), and it is backed up with the artifacts, the server's other local state.
The admin user is `admin`; its password comes from --admin-password-file, else
$PIPELINE_ADMIN_PASSWORD, else the file mlruns/server-auth/admin-password (made with a random
password the first time, readable by its owner only). It is never printed and never on a
command line: it reaches MLflow in its environment (MLFLOW_AUTH_ADMIN_PASSWORD). Jobs log in
with MLflow's MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import secrets
import sys
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.paths import from_root
from pipeline.serve import postgres, ui
from pipeline.tracking import urls


def backend_url(db: str) -> str:
    url = urls.sqlalchemy_url(db)
    if not url.startswith("postgresql+psycopg://"):
        raise ui.UsageError(
            f"--db {db.split('@')[-1]}: give a PostgreSQL URL, "
            "postgresql://user:password@host:port/database"
        )
    return url


ADMIN = "admin"  # MLflow's admin_username
ADMIN_PASSWORD_ENV = "PIPELINE_ADMIN_PASSWORD"
MIN_PASSWORD = 12  # MLflow refuses shorter passwords (mlflow.utils.validation)
AUTH_CACHE_SECONDS = 60
PERMISSIONS = ("READ", "USE", "EDIT", "MANAGE", "NO_PERMISSIONS")  # mlflow.server.auth's


def admin_password(given_file: str | None, folder: Path) -> tuple[str, str]:
    """The admin's password and where it came from (for messages): --admin-password-file,
    else $PIPELINE_ADMIN_PASSWORD, else folder/admin-password, made random if missing."""
    if given_file is None and os.environ.get(ADMIN_PASSWORD_ENV):
        password, source = os.environ[ADMIN_PASSWORD_ENV], f"in ${ADMIN_PASSWORD_ENV}"
        fix = f"set {ADMIN_PASSWORD_ENV} to another"
    else:
        path = Path(given_file) if given_file else folder / "admin-password"
        try:
            if given_file is None and not path.exists():
                path.touch(mode=0o600)  # owner-only before the password is in it
                path.write_text(secrets.token_urlsafe(24) + "\n")
            password = path.read_text().strip()
        except OSError as e:
            raise PipelineError(
                f"cannot read the admin's password from {path} ({e.strerror}): give a file "
                f"holding it (--admin-password-file), or set {ADMIN_PASSWORD_ENV}"
            ) from e
        source, fix = f"in {path}", f"write another to {path}"
    if len(password) < MIN_PASSWORD:
        raise PipelineError(
            f"the admin password {source} is {'empty' if not password else 'too short'}: "
            f"MLflow needs {MIN_PASSWORD} characters or more; {fix}"
        )
    return password, source


def auth_settings(folder: Path, default_permission: str) -> Path:
    """MLflow's basic_auth.ini for this server, written in folder (its users database
    beside it); $MLFLOW_AUTH_CONFIG_PATH, if set, is used instead, as `mlflow server` does."""
    if os.environ.get("MLFLOW_AUTH_CONFIG_PATH"):
        return Path(os.environ["MLFLOW_AUTH_CONFIG_PATH"])
    ini = folder / "basic_auth.ini"
    ini.write_text(
        "# Written by `make server` at each start (pipeline/serve/server.py); to keep your own,\n"
        "# set MLFLOW_AUTH_CONFIG_PATH. The admin's password is not here: see the server's docs.\n"
        "[mlflow]\n"
        f"default_permission = {default_permission}\n"
        f"database_uri = sqlite:///{folder / 'basic_auth.db'}\n"
        f"admin_username = {ADMIN}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "# A password's hash is checked once a minute, not on every request (0.8-2.5 s a\n"
        "# request on a 2-core machine: a 3-epoch job took 2 minutes). Password changes and\n"
        "# deletions through MLflow take effect at once on the worker that made them (one\n"
        "# unless MLFLOW_WORKERS says more), on others within the minute.\n"
        f"auth_cache_ttl_seconds = {AUTH_CACHE_SECONDS}\n"
    )
    return ini


def login_notice(host: str, port: int, allowed_hosts: str | None) -> str:
    """What a person binding a server with a login beyond loopback must still know."""
    return (
        f"note: the MLflow server listens on {ui.url_host(host)}:{port}, beyond this "
        "machine, and asks every request for a login; over plain HTTP the passwords\n"
        "  cross the network readable: use a network you trust, or a reverse proxy with "
        "TLS in front."
        + (
            ""
            if allowed_hosts is not None
            else "\n  Name the address your jobs use with ALLOWED_HOSTS=<name>: MLflow then "
            "refuses requests for any other Host header."
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="An MLflow tracking server on PostgreSQL.")
    ui.add_network_options(parser)
    parser.add_argument(
        "--db",
        default=os.environ.get("PIPELINE_DB"),
        help="an existing PostgreSQL database (default: $PIPELINE_DB, which "
        "keeps a password off the command line; else the project's own "
        "cluster in mlruns/postgres/)",
    )
    parser.add_argument(
        "--pg-port",
        type=int,
        default=5432,
        help="the port of the project's own cluster (default 5432)",
    )
    parser.add_argument(
        "--auth",
        action=argparse.BooleanOptionalAction,
        help="ask for a login (MLflow's basic-auth app); default: on when --host is "
        "beyond 127.0.0.1",
    )
    parser.add_argument(
        "--admin-password-file",
        metavar="FILE",
        help=f"the admin's password (default: ${ADMIN_PASSWORD_ENV}, else "
        "mlruns/server-auth/admin-password, made random the first time)",
    )
    parser.add_argument(
        "--default-permission",
        choices=PERMISSIONS,
        default="EDIT",
        help="what every logged-in user may do in an experiment nobody gave them a "
        "permission on (default EDIT: read and log, not delete or manage)",
    )
    args = parser.parse_args(argv)
    mlruns = from_root(args.mlruns)
    auth = not ui.is_loopback(args.host) if args.auth is None else args.auth
    cluster, started = None, False
    login: dict[str, str] = {}
    try:
        allowed = ui.check_network(
            args, "make server PORT", login_notice if auth else ui.exposure_warning
        )
        if auth:
            if importlib.util.find_spec("flask_wtf") is None:  # MLflow's `auth` extra
                raise PipelineError(
                    "MLflow's login (basic-auth) needs Flask-WTF, which is not installed: "
                    "make install-extras (or pip install 'mlflow[auth]'), or --no-auth"
                )
            folder = mlruns / "server-auth"  # the users' password hashes: owner-only
            try:
                folder.mkdir(parents=True, exist_ok=True)
                folder.chmod(0o700)
            except OSError as e:
                raise PipelineError(
                    f"cannot make {folder} for the server's users ({e.strerror}): run it where "
                    "mlruns/ can be written"
                ) from e
            password, source = admin_password(args.admin_password_file, folder)
            ini = auth_settings(folder, args.default_permission)
            login = {
                "MLFLOW_AUTH_CONFIG_PATH": str(ini),
                "MLFLOW_AUTH_ADMIN_PASSWORD": password,
                # Signs the sign-up form's CSRF token: one key for all workers of this start.
                "MLFLOW_FLASK_SERVER_SECRET_KEY": os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY")
                or secrets.token_hex(32),
            }
        if args.db:
            backend = backend_url(args.db)
        else:
            folder = mlruns / "postgres"
            if postgres.Cluster(folder).port() is None:
                ui.check_port("127.0.0.1", args.pg_port, "make server PG_PORT")
            cluster, pg_port, started = postgres.ensure_running(folder, args.pg_port)
            backend = cluster.url(pg_port, "mlflow")
    except (ui.UsageError, PipelineError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        artifacts = mlruns / "server-artifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        url = ui.jobs_url(args.host, args.port, args.allowed_hosts)
        base = ui.local_url(args.host, args.port)
        print(
            f"starting the MLflow server on {base} (its link follows once it answers)", flush=True
        )
        ready = (
            f"MLflow UI: {base}   backend: PostgreSQL {backend.split('@')[-1]}, artifacts "
            f"proxied to {artifacts}\n  jobs log with MLFLOW_TRACKING_URI={url}"
        )
        if login:
            ready += (
                " MLFLOW_TRACKING_USERNAME=<user> MLFLOW_TRACKING_PASSWORD=<password>"
                f"\n  login required (MLflow basic-auth, its settings: {ini}): user `{ADMIN}`, "
                f"password {source}; more users: {base}/signup as {ADMIN}"
            )
        if cluster is not None:  # the password stays in its file, off screens and logs
            shown = cluster.url(pg_port, "optuna", password=f"$(cat {cluster.secret})")
            ready += (
                f"\n  searches on this machine share the study database (it listens on "
                f'127.0.0.1 only):\n    export OPTUNA_STORAGE="{shown}"'
            )
        # The backend URL and the admin's password: in the environment, not on the command line.
        env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": backend, **login}
        command = ui.server_command(args.host, args.port, artifacts, allowed)
        if login:
            command += ["--app-name", "basic-auth"]
        return ui.run_server(command, env=env, ready=(ui.health_url(args.host, args.port), ready))
    finally:
        if started and cluster is not None:
            try:
                if not cluster.stop():
                    print(
                        f"PostgreSQL in {cluster.data} had stopped already (its log: "
                        f"{cluster.log})",
                        file=sys.stderr,
                        flush=True,
                    )
            except PipelineError as e:
                print(f"error: {e}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
