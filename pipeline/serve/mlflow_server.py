"""The MLflow tracking server as `make ui` and `make server` run it: MLflow's own app
(mlflow.server.fastapi_app, its page opening on model training: ui_app.py) under uvicorn,
in this one process.

    python -m pipeline.serve.mlflow_server --host H --port P [--backend-store-uri URI]
        [--default-artifact-root URI] [--artifacts-destination URI] [--allowed-hosts LIST]
        [--app-name basic-auth]

`mlflow server` answers its first request 13-22 s after it starts on a quiet 2-core
machine (measured here): its CLI imports MLflow, then hands over to a second process that
imports it again, with four uvicorn workers and a job executor for GenAI features that
this project does not use. Here MLflow is imported once, by the process that serves, with
one worker (MLFLOW_WORKERS for more) and no job executor (MLFLOW_SERVER_ENABLE_JOB_EXECUTION
for it): /health answers in about 5 s. The settings reach the app as `mlflow server`
passes them, through the environment names MLflow defines for it (mlflow.server).
The backend URI may hold a password: give it in MLFLOW_BACKEND_STORE_URI, not the command
line.

--app-name basic-auth serves MLflow's login and permissions (ui_app.create_auth_app) as
`mlflow server --app-name basic-auth` does: its settings come from MLflow's own variables
(MLFLOW_AUTH_CONFIG_PATH, MLFLOW_AUTH_ADMIN_PASSWORD, MLFLOW_FLASK_SERVER_SECRET_KEY), and the
auth database and its admin user are made here, once, before the app is imported. Unlike
`mlflow server`, an admin that exists with another password is given the configured one:
whoever starts the server owns its auth database, and the password given is the one they use.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

# Read by MLflow when the app is imported: set first.
os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
# MLflow's own import, not ours to act on: it would be the first line a user reads.
warnings.filterwarnings("ignore", message="starlette.middleware.wsgi is deprecated")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--backend-store-uri", default=os.environ.get("MLFLOW_BACKEND_STORE_URI"))
    parser.add_argument("--default-artifact-root", default="mlflow-artifacts:/")
    parser.add_argument("--artifacts-destination", required=True)
    parser.add_argument("--allowed-hosts")
    parser.add_argument("--app-name", choices=["basic-auth"])
    args = parser.parse_args(argv)
    if not args.backend_store_uri:
        parser.error("give --backend-store-uri or MLFLOW_BACKEND_STORE_URI")
    from pipeline import interrupts

    interrupts.stop_with_parent()  # ui.py stops it; if ui.py is SIGKILLed, it stops itself

    backend = args.backend_store_uri
    if backend.startswith("sqlite:///"):  # the project's store: built whole first
        from pipeline.errors import user_error
        from pipeline.tracking import store

        try:
            store.initialise_sqlite(backend)
        except Exception as e:
            mistake = user_error(e)
            if mistake is None:
                raise
            print(f"error: {mistake}", file=sys.stderr, flush=True)
            sys.exit(2)

    import mlflow.server as server
    import uvicorn
    from mlflow.server.handlers import initialize_backend_stores

    settings = {  # what `mlflow server` sets for its app (mlflow/server/__init__.py)
        server.BACKEND_STORE_URI_ENV_VAR: backend,
        server.REGISTRY_STORE_URI_ENV_VAR: backend,
        server.ARTIFACT_ROOT_ENV_VAR: args.default_artifact_root,
        server.SERVE_ARTIFACTS_ENV_VAR: "true",
        server.ARTIFACTS_DESTINATION_ENV_VAR: args.artifacts_destination,
    }
    if args.allowed_hosts:
        settings["MLFLOW_SERVER_ALLOWED_HOSTS"] = args.allowed_hosts
    if args.app_name:
        from mlflow.environment_variables import _MLFLOW_SGI_NAME

        # What `mlflow server` sets for uvicorn: the basic-auth app is then a FastAPI one.
        settings[_MLFLOW_SGI_NAME.name] = "uvicorn"
    os.environ.update(settings)
    initialize_backend_stores(backend, backend, args.default_artifact_root)
    if args.app_name:
        from pipeline.errors import user_error

        try:
            bootstrap_basic_auth()
        except Exception as e:
            mistake = user_error(e)
            if mistake is None and type(e).__module__.startswith("mlflow"):
                mistake = str(e).splitlines()[0]  # MLflow's own: it names the setting to fix
            if mistake is None:
                raise
            print(f"error: {mistake}", file=sys.stderr, flush=True)
            sys.exit(2)
    uvicorn.run(
        # MLflow's app (with its login: create_auth_app), its page opening on model training
        "pipeline.serve.ui_app:create_auth_app" if args.app_name else "pipeline.serve.ui_app:app",
        factory=bool(args.app_name),
        host=args.host,
        port=args.port,
        workers=int(os.environ.get("MLFLOW_WORKERS", "1")),
        log_level="warning",
    )


def bootstrap_basic_auth() -> None:
    """What `mlflow server --app-name basic-auth` does before its workers start: check the
    secret key, make the auth database and its admin user; then give that admin the configured
    password if it has another. The app's workers (create_app) then only open the database."""
    from mlflow.environment_variables import _MLFLOW_AUTH_ADMIN_BOOTSTRAPPED
    from mlflow.server.auth import (
        auth_config,
        bootstrap_admin_user,
        get_flask_server_secret_key,
        store,
    )

    get_flask_server_secret_key()
    bootstrap_admin_user()
    admin, password = auth_config.admin_username, auth_config.admin_password
    if admin and password and not store.authenticate_user(admin, password, use_primary=True):
        store.update_user(admin, password=password)
    os.environ[_MLFLOW_AUTH_ADMIN_BOOTSTRAPPED.name] = "true"  # as `mlflow server` tells them


if __name__ == "__main__":
    main()
