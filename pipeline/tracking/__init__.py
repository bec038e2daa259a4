"""Everything MLflow: the store, runs and their lifecycle, what identifies a run, how a
person reads it (names, descriptions, params), parents of sweeps and searches, the registry.

Importing the package sets MLflow's environment first (before any module imports mlflow):
"""

import os

# A bar per artifact download drowns the pipeline's own log.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# MLflow would copy the project's uv.lock into every logged model, and restore the whole
# project from it when serving: our models need only the engine and their requirements.txt.
os.environ.setdefault("MLFLOW_LOG_UV_FILES", "false")
# A tracking server that is down or stalled must fail a command in seconds, not after
# MLflow's default 7 retries with doubling back-off of 120-second requests (~12 minutes).
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
# MLflow prints "View run … at: <tracking URI>", password included; the pipeline prints
# its own links, credentials stripped (pipeline/logs.py).
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
