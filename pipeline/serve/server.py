"""`make server`: a shared MLflow tracking server on PostgreSQL, with proxied artifacts.

    python -m pipeline.serve.server [--port 5000] [--host 127.0.0.1] [--allowed-hosts NAME,...]
                                    [--pg-port 5432]
    (PIPELINE_DB=postgresql://user:pw@host/db for an existing database)

Without --db it creates (once) and starts the project's own PostgreSQL cluster in
mlruns/postgres/ (serve/postgres.py) and stops it again when the server stops. Jobs
anywhere log through the server (MLFLOW_TRACKING_URI=http://…), artifacts included
(--serve-artifacts: the server stores them in mlruns/server-artifacts/), so no worker
needs the project's disk; Optuna searches share the cluster's `optuna` database
(OPTUNA_STORAGE, printed at start). The zero-setup default stays `make ui` on SQLite.
Binding, Host-header and signal handling are `make ui`'s (serve/ui.py).
"""

from __future__ import annotations

import argparse
import os
import sys

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
    args = parser.parse_args(argv)
    mlruns = from_root(args.mlruns)
    cluster, started = None, False
    try:
        allowed = ui.check_network(args, "make server PORT")
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
        if cluster is not None:  # the password stays in its file, off screens and logs
            shown = cluster.url(pg_port, "optuna", password=f"$(cat {cluster.secret})")
            ready += (
                f"\n  searches on this machine share the study database (it listens on "
                f'127.0.0.1 only):\n    export OPTUNA_STORAGE="{shown}"'
            )
        # The backend URL holds a password: given in the environment, not on the command line.
        env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": backend}
        command = ui.server_command(args.host, args.port, artifacts, allowed)
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
