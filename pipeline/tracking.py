"""MLflow helpers: where the store is, how runs are opened and closed, what identifies a run.

The default store is a SQLite database at mlruns/mlflow.db with artifacts under
mlruns/artifacts/, both absolute paths from the project root, so Hydra's output folders
never scatter stores. MLFLOW_TRACKING_URI overrides the database, as MLflow users expect.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import warnings
from contextlib import contextmanager
from pathlib import Path

from omegaconf import OmegaConf

# A bar per artifact download drowns the pipeline's own log.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# MLflow would copy the project's uv.lock into every logged model, and restore the whole
# project from it when serving: our models need only the engine and their requirements.txt.
os.environ.setdefault("MLFLOW_LOG_UV_FILES", "false")
import mlflow  # noqa: E402

from pipeline.environment import environment_tags
from pipeline.paths import PROJECT_ROOT, from_root

log = logging.getLogger(__name__)

# Keys that change what a training run computes; everything else (paths, stages, tracking)
# does not, and so stays out of the config hash.
_HASHED_KEYS = ("seed", "data.name", "data.validation_size", "data.test_size",
                "data.split_seed", "data.label_shuffle", "model", "train")


def tracking_uri(cfg) -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{from_root(cfg.paths.mlruns_dir) / 'mlflow.db'}"


def artifact_root(cfg) -> str:
    return (from_root(cfg.paths.mlruns_dir) / "artifacts").as_uri()


def setup(cfg) -> str:
    """Point MLflow at the store, create the experiment if needed; return its id."""
    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    name = cfg.tracking.experiment
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        # Beside a local SQLite store, artifacts go to mlruns/artifacts/; a tracking server
        # (http, postgresql, ...) chooses its own artifact store.
        location = f"{artifact_root(cfg)}/{name}" if uri.startswith("sqlite:") else None
        try:
            return mlflow.create_experiment(name, artifact_location=location)
        except mlflow.exceptions.MlflowException:  # created meanwhile by a parallel job
            experiment = mlflow.get_experiment_by_name(name)
            if experiment is None:
                raise
    mlflow.set_experiment(experiment_id=experiment.experiment_id)
    return experiment.experiment_id


@contextmanager
def run(cfg, *, run_name: str | None = None, run_id: str | None = None,
        tags: dict | None = None):
    """An MLflow run that ends FINISHED, or FAILED with the reason as tag `failure_reason`."""
    experiment_id = setup(cfg)
    parent = None if run_id else cfg.tracking.get("parent_run_id")
    with mlflow.start_run(run_id=run_id, run_name=run_name, experiment_id=experiment_id,
                          tags=tags, parent_run_id=parent) as active:
        try:
            yield active
        except BaseException as e:
            reason = f"{type(e).__name__}: {e}"
            mlflow.set_tag("failure_reason", reason[:5000])
            raise


@contextmanager
def training_run(cfg, data, family: str):
    """A training run with what every training run logs: config, tags, dataset inputs.

    Named e.g. classic-16-16-numpy, readable in the MLflow UI's run lists."""
    run_name = "-".join([cfg.model.name, *map(str, cfg.model.hidden_sizes), family.split("_")[0]])
    tags = {"model_family": family, "kind": "training", "git_commit": git_commit(),
            "config_hash": config_hash(cfg), "model_name": cfg.model.name,
            **environment_tags()}
    if cfg.tracking.get("tags"):
        tags.update(OmegaConf.to_container(cfg.tracking.tags, resolve=True))
    with run(cfg, run_name=run_name, tags=tags) as active:
        mlflow.log_params(flat_params(cfg))
        mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
        log_datasets(data)
        yield active


def log_datasets(data) -> None:
    """The splits as MLflow dataset inputs, identified by our SHA-256 digest of the arrays."""
    for split, context in (("train", "training"), ("val", "validation"), ("test", "testing")):
        with warnings.catch_warnings():  # MLflow registers the local-file source twice
            warnings.filterwarnings("ignore", message=".*can be interpreted in multiple ways")
            dataset = mlflow.data.from_numpy(
                data.x(split), targets=data.y(split), source=str(data.path),
                name=f"{data.name}-{split}",
                digest=data.digests[f"x_{split}"][:12] + data.digests[f"y_{split}"][:12])
        for attempt in range(5):
            try:
                mlflow.log_input(dataset, context=context)
                break
            except mlflow.exceptions.MlflowException as e:
                # Two parallel jobs inserting the same dataset: MLflow's get-or-create is not
                # atomic, and the loser hits the unique constraint. Again, it finds the row.
                if "UNIQUE constraint" not in str(e) or attempt == 4:
                    raise


def finished_run_id(cfg, family: str) -> str | None:
    """A FINISHED training run of this config hash and model family, if there is one.

    Runs of the same config left RUNNING (their process was killed) are marked KILLED on
    the way, so that no run stays RUNNING forever.
    """
    client = mlflow.MlflowClient()
    runs = client.search_runs(
        [setup(cfg)], f"tags.config_hash = '{config_hash(cfg)}' and tags.model_family = '{family}'")
    for stale in (r for r in runs if r.info.status == "RUNNING"):
        client.set_tag(stale.info.run_id, "failure_reason", "interrupted: its process ended")
        client.set_terminated(stale.info.run_id, "KILLED")
    finished = [r.info.run_id for r in runs if r.info.status == "FINISHED"]
    return finished[0] if finished else None


def flat_params(cfg) -> dict[str, str]:
    """The resolved config as dotted keys (model.hidden_sizes → '[16, 16]')."""
    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("hydra", None)
    flat: dict[str, str] = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = json.dumps(node) if isinstance(node, list) else str(node)

    walk(container, "")
    return flat


def config_hash(cfg) -> str:
    """A short hash of what a training run computes (seed included, paths excluded)."""
    picked = {key: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
              for key in _HASHED_KEYS if (v := OmegaConf.select(cfg, key)) is not None}
    return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, text=True,
                             capture_output=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=PROJECT_ROOT, text=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if out.returncode:
        return "unknown"
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
