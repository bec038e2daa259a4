"""MLflow helpers: where the store is, how runs are opened and closed, what identifies a run.

The default store is a SQLite database at mlruns/mlflow.db with artifacts under
mlruns/artifacts/, both absolute paths from the project root, so Hydra's output folders
never scatter stores. MLFLOW_TRACKING_URI overrides the database, as MLflow users expect.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import socket
import subprocess
import warnings
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError
from threadpoolctl import threadpool_limits

# A bar per artifact download drowns the pipeline's own log.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# MLflow would copy the project's uv.lock into every logged model, and restore the whole
# project from it when serving: our models need only the engine and their requirements.txt.
os.environ.setdefault("MLFLOW_LOG_UV_FILES", "false")
import mlflow  # noqa: E402

from pipeline import describe
from pipeline.engine import DivergenceError
from pipeline.errors import PipelineError, RunStopped
from pipeline.environment import environment_tags, lock_digest
from pipeline.paths import PROJECT_ROOT, from_root, process_alive, process_start

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


_READY_STORES: set[str] = set()


def setup(cfg) -> str:
    """Point MLflow at the store, create the experiment if needed, close the runs whose
    process is gone (reap_orphans); return the experiment's id."""
    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:///"):
        initialise_sqlite(uri)
    mlflow.set_tracking_uri(uri)
    name = cfg.tracking.experiment
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        # Beside a local SQLite store, artifacts go to mlruns/artifacts/; a tracking server
        # (http, postgresql, ...) chooses its own artifact store.
        location = f"{artifact_root(cfg)}/{name}" if uri.startswith("sqlite:") else None
        try:
            experiment_id = mlflow.create_experiment(name, artifact_location=location)
        except mlflow.exceptions.MlflowException:  # created meanwhile by a parallel job
            experiment = mlflow.get_experiment_by_name(name)
            if experiment is None:
                raise
            experiment_id = experiment.experiment_id
    else:
        experiment_id = experiment.experiment_id
    if experiment is None or "mlflow.experimentKind" not in experiment.tags:
        # Open in the UI's model-training view (not the GenAI one), with a description.
        client = mlflow.MlflowClient()
        client.set_experiment_tag(experiment_id, "mlflow.experimentKind", "custom_model_development")
        client.set_experiment_tag(experiment_id, "mlflow.note.content", describe.EXPERIMENT_NOTE)
    mlflow.set_experiment(experiment_id=experiment_id)
    reap_orphans(experiment_id)
    return experiment_id


def initialise_sqlite(uri: str) -> None:
    """Create or upgrade a SQLite store's schema once, under a file lock beside it.

    MLflow creates the tables and runs its migrations when a process first opens a store;
    two processes doing so at once on a fresh file crash ('table ... already exists'). The
    lock makes the first one build the schema and the others find it built.
    """
    if uri in _READY_STORES:
        return
    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{db}.lock", timeout=600):
        mlflow.MlflowClient(uri).search_experiments(max_results=1)
    _READY_STORES.add(uri)


# ---- run lifecycle: a RUNNING run must have a live process behind it ---------------------

def process_tags() -> dict[str, str]:
    """Who runs this run: host, pid and the process's start time (pids get reused)."""
    return {"host": socket.gethostname(), "pid": str(os.getpid()),
            "pid_started": process_start(os.getpid())}


def reap_orphans(experiment_id: str) -> list[str]:
    """Mark KILLED the RUNNING runs of this host whose process has ended (kill -9, power
    loss); return their ids. Runs of live processes and of other hosts are left alone."""
    client = mlflow.MlflowClient()
    host = socket.gethostname()
    reaped = []
    for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'",
                                  max_results=1000):
        tags = run.data.tags
        if tags.get("host") != host or not tags.get("pid", "").isdigit():
            continue
        if process_alive(int(tags["pid"]), tags.get("pid_started", "")):
            continue
        client.set_tag(run.info.run_id, "failure_reason",
                       f"interrupted: its process (pid {tags['pid']} on {host}) ended "
                       "without closing the run")
        client.set_terminated(run.info.run_id, "KILLED")
        reaped.append(run.info.run_id)
    if reaped:
        log.warning("closed %d run(s) left RUNNING by ended processes as KILLED: %s",
                    len(reaped), ", ".join(reaped))
    return reaped


@contextmanager
def run(cfg, *, run_name: str | None = None, run_id: str | None = None,
        tags: dict | None = None):
    """An MLflow run that ends FINISHED, or FAILED with the reason as tag `failure_reason`
    (KILLED with tag `stopped_reason` if it was stopped on purpose: errors.RunStopped).

    A new run is tagged with its process (host, pid), so that if the process dies without
    closing it, the next process on the store marks it KILLED (reap_orphans).
    """
    experiment_id = setup(cfg)
    parent = None if run_id else cfg.tracking.get("parent_run_id")
    if run_id is None:
        tags = {**(tags or {}), **process_tags()}
    with mlflow.start_run(run_id=run_id, run_name=run_name, experiment_id=experiment_id,
                          tags=tags, parent_run_id=parent) as active:
        try:
            yield active
        except RunStopped as e:
            mlflow.set_tags({"stopped_reason": str(e)[:5000],  # and the name says it
                             "mlflow.runName": f"{active.info.run_name} · {e.label}"})
            mlflow.end_run("KILLED")
            raise
        except BaseException as e:
            reason = f"{type(e).__name__}: {e}"
            try:  # a full disk may refuse the tag too: the run must still end FAILED
                mlflow.set_tag("failure_reason", reason[:5000])
            except Exception as tag_error:  # noqa: BLE001
                log.warning("could not record the failure reason: %s", tag_error)
            raise


def log_metrics(values: dict[str, float], step: int | None = None) -> None:
    """mlflow.log_metrics, refusing NaN and ±inf: a non-finite metric fails the run instead
    of being stored as ±1.8e308."""
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        where = f" in epoch {step}" if step is not None else ""
        raise DivergenceError(f"non-finite metric(s){where}: " +
                              ", ".join(f"{k}={v}" for k, v in bad.items()))
    mlflow.log_metrics(values, step=step)


@contextmanager
def training_run(cfg, data, family: str):
    """A training run with what every training run logs: a readable name and description,
    the params of its family (describe.py), tags, the full config.yaml, dataset inputs."""
    tags = {"model_family": family, "kind": "training", "git_commit": git_commit(),
            "config_hash": config_hash(cfg), "resume_key": resume_key(cfg),
            "model_name": cfg.model.name, **environment_tags(),
            "mlflow.note.content": describe.run_note(cfg, family, len(data.y("train")))}
    if cfg.tracking.get("tags"):
        tags.update(OmegaConf.to_container(cfg.tracking.tags, resolve=True))
    # One BLAS thread for the training and every evaluation in the run: OpenBLAS splits a
    # matmul by thread count, which changes the last bits (a test_log_loss rerun on 2
    # threads differed by 4e-9 from the original's on 1).
    with run(cfg, run_name=describe.run_name(cfg, family), tags=tags) as active, \
            threadpool_limits(limits=1, user_api="blas"):
        mlflow.log_params(describe.run_params(cfg, family))
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
                # (SQLite: "UNIQUE constraint failed"; PostgreSQL: "violates unique constraint")
                if "unique constraint" not in str(e).lower() or attempt == 4:
                    raise


def finished_run_id(cfg, family: str) -> str | None:
    """A FINISHED training run of this model family with the same resume key — the same
    config, code and locked packages — if there is one (a resumed sweep reuses it)."""
    experiment_id = setup(cfg)  # first: it points MLflow at the store the client will use
    runs = mlflow.MlflowClient().search_runs(
        [experiment_id], f"tags.resume_key = '{resume_key(cfg)}' and tags.model_family = '{family}' "
                      "and attributes.status = 'FINISHED'", max_results=1)
    return runs[0].info.run_id if runs else None


def config_hash(cfg) -> str:
    """A short hash of what a training run computes (seed included, paths excluded)."""
    picked = {key: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
              for key in _HASHED_KEYS if (v := OmegaConf.select(cfg, key)) is not None}
    return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]


def code_digest() -> str:
    """SHA-256 over the pipeline's code (every .py file of the package) and the lock file."""
    code = hashlib.sha256()
    for source in sorted((PROJECT_ROOT / "pipeline").rglob("*.py")):
        code.update(source.relative_to(PROJECT_ROOT).as_posix().encode())
        code.update(source.read_bytes())
    return hashlib.sha256(f"{code.hexdigest()}|{lock_digest()}".encode()).hexdigest()[:16]


def resume_key(cfg) -> str:
    """config_hash plus what else decides a run's numbers: the code and the locked package
    versions. A rerun after a code change or a new lock trains again instead of reusing
    the old results."""
    return hashlib.sha256(f"{config_hash(cfg)}|{code_digest()}".encode()).hexdigest()[:16]


def logged_config(cfg, run_id: str):
    """A run's logged config.yaml over the current schema (so settings added since have
    their defaults), with this machine's paths (cfg's) for its data."""
    from pipeline.config import Config  # the schema; tracking is imported by config's users

    logged = OmegaConf.create(mlflow.artifacts.load_text(f"runs:/{run_id}/config.yaml"))
    try:
        run_cfg = OmegaConf.merge(OmegaConf.structured(Config), logged)
    except (ConfigKeyError, ValidationError) as e:  # a setting dropped, renamed or retyped since
        commit = mlflow.MlflowClient().get_run(run_id).data.tags.get("git_commit", "unknown")
        dirty = " (its tree had uncommitted changes too)" if commit.endswith("-dirty") else ""
        raise PipelineError(
            f"run {run_id} was logged with {e.full_key}={OmegaConf.select(logged, e.full_key)!r}, "
            f"a setting this code does not know or types differently (dropped, renamed or "
            f"changed since). Rerun it on the code that logged it: git checkout "
            f"{commit.removesuffix('-dirty')}{dirty}") from None
    run_cfg.paths.data_dir = str(cfg.paths.data_dir)
    run_cfg.paths.mlruns_dir = str(cfg.paths.mlruns_dir)
    run_cfg.data.processed_dir = f"{cfg.paths.data_dir}/processed"
    if run_cfg.data.get("raw_dir"):
        run_cfg.data.raw_dir = f"{cfg.paths.data_dir}/raw/{run_cfg.data.name}"
    return run_cfg


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
