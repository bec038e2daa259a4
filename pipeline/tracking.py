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
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import time
import warnings
from contextlib import closing, contextmanager
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
# A tracking server that is down or stalled must fail a command in seconds, not after
# MLflow's default 7 retries with doubling back-off of 120-second requests (~12 minutes).
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
# MLflow prints "View run … at: <tracking URI>", password included; the pipeline prints
# its own links, credentials stripped (pipeline/logs.py).
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
import mlflow  # noqa: E402

from pipeline import describe, interrupts
from pipeline.engine import DivergenceError
from pipeline.errors import PipelineError, RunStopped
from pipeline.environment import environment_tags, lock_digest
from pipeline.logs import redact
from pipeline.paths import (PROJECT_ROOT, from_root, process_alive, process_start,
                            remove_orphaned_temp_files, temp_prefix)

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
_REAPED_STORES: set[str] = set()
INTERRUPTED_RUNS: list[str] = []  # the runs of this process a stop signal ended KILLED


def setup(cfg) -> str:
    """Point MLflow at the store, create the experiment if needed, close the runs whose
    process is gone (reap_orphans, once per process); return the experiment's id."""
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
    if uri not in _REAPED_STORES:
        reap_orphans()
        _REAPED_STORES.add(uri)
    return experiment_id


def initialise_sqlite(uri: str) -> None:
    """Make sure a SQLite store is whole before MLflow opens it; once per process.

    MLflow builds a new store in steps (the tables, then some 60 migrations), and a
    process stopped half-way left a file every later run failed on ('duplicate column
    name: step'). So a new store is built in a temp file beside it and renamed into place
    once whole, under a file lock (two first runs at once build it once). An existing
    store must be at MLflow's schema version: a half-made one without runs (older code,
    a killed build) is moved aside and built again; one with runs is named, with the fix.
    """
    if uri in _READY_STORES:
        return
    db = Path(uri.removeprefix("sqlite:///"))
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(f"{db}.lock", timeout=600)
        lock.acquire()
    except OSError as e:
        raise PipelineError(f"cannot create the MLflow store in {db.parent}: {e.strerror or e}. "
                            "Set paths.mlruns_dir to a writable folder (or MLFLOW_TRACKING_URI "
                            "to a tracking server)") from None
    try:
        remove_orphaned_temp_files(db.parent)  # a build killed half-way
        if not db.exists() or db.stat().st_size == 0:
            _build_sqlite_store(db)
        elif problem := _schema_problem(db):
            if _holds_runs(db):
                raise PipelineError(
                    f"the MLflow store {db} is not usable ({problem}). Back it up, then "
                    f"upgrade it: mlflow db upgrade sqlite:///{db} (or set paths.mlruns_dir "
                    "to a new folder)")
            aside = db.with_name(f"{db.name}.half-made-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(db, aside)
            log.warning("the MLflow store %s was half-made (%s) and held no runs: moved aside "
                        "to %s and built again", db, problem, aside.name)
            _build_sqlite_store(db)
    finally:
        lock.release()
    _READY_STORES.add(uri)


def _build_sqlite_store(db: Path) -> None:
    """MLflow's schema, built in a temp file and renamed onto `db` once complete."""
    import sqlalchemy
    from mlflow.store.db.utils import _initialize_tables  # what MLflow runs on an empty store

    fd, tmp = tempfile.mkstemp(dir=db.parent, prefix=temp_prefix(db), suffix=".part")
    os.close(fd)
    try:
        engine = sqlalchemy.create_engine(f"sqlite:///{tmp}")
        try:
            _initialize_tables(engine)
        finally:
            engine.dispose()
        os.replace(tmp, db)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _schema_problem(db: Path) -> str | None:
    """Why MLflow cannot use the store at `db`, or None if its schema is MLflow's current one."""
    from mlflow.store.db.utils import _get_latest_schema_revision

    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=60)) as connection:
            row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error as e:
        return f"no schema version: {e}"
    head = _get_latest_schema_revision()
    if not row or row[0] != head:
        return f"schema version {row[0] if row else 'none'}, this MLflow needs {head}"
    return None


def _holds_runs(db: Path) -> bool:
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=60)) as connection:
            return connection.execute("SELECT 1 FROM runs LIMIT 1").fetchone() is not None
    except sqlite3.Error:
        return False


# ---- run lifecycle: a RUNNING run must have a live process behind it ---------------------

def process_tags() -> dict[str, str]:
    """Who runs this run: host, pid and the process's start time (pids get reused)."""
    return {"host": socket.gethostname(), "pid": str(os.getpid()),
            "pid_started": process_start(os.getpid())}


def _running_runs():
    """Every RUNNING run of the store's active experiments."""
    client = mlflow.MlflowClient()
    ids = [e.experiment_id for e in client.search_experiments()]
    token = None
    while ids:
        page = client.search_runs(ids, "attributes.status = 'RUNNING'", max_results=1000,
                                  page_token=token)
        yield from page
        token = page.token
        if not token:
            break


def reap_orphans() -> list[str]:
    """Mark KILLED the RUNNING runs, anywhere in the store, of this host whose process has
    ended (kill -9, power loss); return their ids. Runs of live processes and of other
    hosts are left alone."""
    client = mlflow.MlflowClient()
    host = socket.gethostname()
    reaped = []
    for run in _running_runs():
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


def running_pids(parent_run_id: str | None) -> list[int]:
    """The processes, on this host, of the RUNNING children of a parent run."""
    if not parent_run_id:
        return []
    host = socket.gethostname()
    try:
        runs = mlflow.MlflowClient().search_runs(
            [mlflow.MlflowClient().get_run(parent_run_id).info.experiment_id],
            f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = 'RUNNING'",
            max_results=1000)
    except Exception as e:  # noqa: BLE001 — called while stopping: stop them all at once
        log.warning("could not list the runs of parent %s: %s", parent_run_id, redact(str(e))[:200])
        return []
    return [int(r.data.tags["pid"]) for r in runs
            if r.data.tags.get("host") == host and r.data.tags.get("pid", "").isdigit()]


def store_in_use() -> bool:
    """Has this process set up a store (so that MLflow points at ours, not its default)?"""
    return bool(_REAPED_STORES)


def close_own_runs(reason: str) -> list[str]:
    """End KILLED, with `reason`, every run still RUNNING that this process opened (a
    sweep's or search's parent, a run a signal caught between two calls); return their ids."""
    client = mlflow.MlflowClient()
    mine = process_tags()
    closed = []
    for run in _running_runs():
        if all(run.data.tags.get(k) == v for k, v in mine.items()):
            client.set_tag(run.info.run_id, "failure_reason", reason)
            client.set_terminated(run.info.run_id, "KILLED")
            closed.append(run.info.run_id)
    return closed


@contextmanager
def run(cfg, *, run_name: str | None = None, run_id: str | None = None,
        tags: dict | None = None):
    """An MLflow run that ends FINISHED, or FAILED with the reason as tag `failure_reason`,
    or KILLED: stopped by a signal (interrupts.Interrupted, Ctrl-C) with that reason as
    `failure_reason`, or on purpose (errors.RunStopped) with tag `stopped_reason`.

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
            _end(active, "KILLED", {"stopped_reason": str(e)[:5000],  # and the name says it
                                    "mlflow.runName": f"{active.info.run_name} · {e.label}"})
            raise
        except KeyboardInterrupt as e:  # interrupts.Interrupted: a stop signal
            _end(active, "KILLED", {"failure_reason": interrupts.reason(e)})
            INTERRUPTED_RUNS.append(active.info.run_id)
            raise
        except BaseException as e:
            _end(active, "FAILED", {"failure_reason": redact(f"{type(e).__name__}: {e}")[:5000]})
            raise


def _end(active, status: str, tags: dict[str, str]) -> None:
    """Tag the active run and end it with `status`. A store that refuses (a full disk, a
    server gone) is logged; the run then stays RUNNING in the store until the next process
    on this machine closes it (reap_orphans), but this process has let go of it."""
    try:
        mlflow.set_tags(tags)
    except Exception as e:  # noqa: BLE001 — the original error is what the user must see
        log.warning("could not record why run %s ended: %s", active.info.run_id, redact(str(e))[:300])
    try:
        mlflow.end_run(status)
    except Exception as e:  # noqa: BLE001
        log.warning("could not mark run %s %s: %s", active.info.run_id, status, redact(str(e))[:300])


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


def log_model_from_code(model_file: str, artifacts: dict[str, str], signature,
                        requirements: list[str]) -> None:
    """Log a pyfunc "model from code" (`model_file` and its artifacts) to the active run
    as `model`, shipping as its only code the package's import-free __init__.py and the
    engine (pipeline/engine: the network and the input check), so it loads with its
    `requirements` alone."""
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # An input example would make MLflow load and run the model again at logging
        # time; the explicit signature already describes the input.
        warnings.filterwarnings("ignore", message=".*input example was not provided")
        package = Path(tmp) / "pipeline"
        package.mkdir()
        shutil.copy(PROJECT_ROOT / "pipeline" / "__init__.py", package)
        shutil.copytree(PROJECT_ROOT / "pipeline" / "engine", package / "engine",
                        ignore=shutil.ignore_patterns("__pycache__"))
        mlflow.pyfunc.log_model(name="model", python_model=model_file, artifacts=artifacts,
                                signature=signature, code_paths=[str(package)],
                                pip_requirements=requirements)
