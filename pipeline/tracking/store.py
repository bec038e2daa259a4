"""The store: where it is, that it is whole, and that its RUNNING runs are running.

The default store is a SQLite database at mlruns/mlflow.db with artifacts under
mlruns/artifacts/, both absolute paths from the project root, so Hydra's output folders
never scatter stores. MLFLOW_TRACKING_URI overrides the database, as MLflow users
expect (a SQLite one keeps its artifacts beside it).
A run records its process (host, pid, start time); a RUNNING run whose process has ended
is closed KILLED by the next process on that host that opens the store (reap_orphans).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import socket
import sqlite3
import stat
from contextlib import closing
from pathlib import Path

import mlflow
from filelock import FileLock

from pipeline.errors import PipelineError, unreadable_store
from pipeline.logs import redact
from pipeline.paths import (
    from_root,
    process_alive,
    process_start,
    remove_orphaned_temp_files,
    temp_prefix,
)
from pipeline.tracking import describe, links

log = logging.getLogger(__name__)


def tracking_uri(cfg) -> str:
    """The store's URI (store_uri), checked the first time this process asks: a mistaken
    MLFLOW_TRACKING_URI is one line (urls.check_tracking_uri) before MLflow opens anything."""
    from pipeline.tracking import urls

    uri = store_uri(cfg.paths.mlruns_dir)
    urls.check_tracking_uri_once(uri)
    return uri


def store_uri(mlruns_dir: str) -> str:
    """MLFLOW_TRACKING_URI as MLflow users expect, else the SQLite store in mlruns_dir
    (the app's paths.mlruns_dir; the servers' --mlruns)."""
    return (
        os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{from_root(mlruns_dir) / 'mlflow.db'}"
    )


def artifact_root(sqlite_uri: str) -> str:
    """Where a local SQLite store keeps its artifacts: artifacts/ beside the database
    (mlruns/artifacts/ for the default store), so one store is one folder."""
    database = Path(sqlite_uri.removeprefix("sqlite:///")).resolve()
    return (database.parent / "artifacts").as_uri()


_READY_STORES: set[str] = set()


_REAPED_STORES: set[str] = set()


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
        # Beside a local SQLite store, artifacts go to artifacts/ next to it; a tracking
        # server (http, postgresql, ...) chooses its own artifact store.
        location = f"{artifact_root(uri)}/{name}" if uri.startswith("sqlite:///") else None
        try:
            experiment_id = mlflow.create_experiment(name, artifact_location=location)
        except mlflow.exceptions.MlflowException:  # created meanwhile by a parallel job
            experiment = mlflow.get_experiment_by_name(name)
            if experiment is None:
                raise
            experiment_id = experiment.experiment_id
    else:
        experiment_id = experiment.experiment_id
    tags = experiment.tags if experiment is not None else {}
    if "mlflow.experimentKind" not in tags:
        # Open in the UI's model-training view (not the GenAI one), with a description.
        mlflow.MlflowClient().set_experiment_tag(
            experiment_id, "mlflow.experimentKind", "custom_model_development"
        )
        mlflow.MlflowClient().set_experiment_tag(
            experiment_id, "mlflow.note.content", describe.experiment_note(cfg.data.name)
        )
    set_view(experiment_id, tags)
    mlflow.set_experiment(experiment_id=experiment_id)
    if uri not in _REAPED_STORES:
        reap_orphans()
        _REAPED_STORES.add(uri)
    return experiment_id


def set_view(experiment_id: str, tags: dict[str, str] | None = None) -> None:
    """Give an experiment the runs-table view its links open on (links.view_tags), unless
    its tags (when known) have it already."""
    if tags is None:
        tags = mlflow.MlflowClient().get_experiment(experiment_id).tags
    for key, value in links.view_tags().items():
        if tags.get(key) == value:
            continue
        try:
            mlflow.MlflowClient().set_experiment_tag(experiment_id, key, value)
        except mlflow.exceptions.MlflowException as e:
            # Two first runs at once: both insert the tag, the later loses (SQLite: "UNIQUE
            # constraint failed"; PostgreSQL: "violates unique constraint"); the winner's
            # value is the same view.
            if "unique constraint" not in str(e).lower():
                raise


def initialise_sqlite(uri: str) -> None:
    """Make sure a SQLite store is whole before MLflow opens it; once per process.

    MLflow builds a new store in steps (the tables, then some 60 migrations), and a
    process stopped half-way left a file every later run failed on ('duplicate column
    name: step'). So a new store is built in a temp file beside it and renamed into place
    once whole, under a file lock (two first runs at once build it once). Only a missing
    or empty (0-byte) file is built over: an existing store the pipeline cannot use
    (damaged, not SQLite, another schema) is never moved or rebuilt, since nobody can tell
    what it held; it is named, with what is wrong and the fix, and left as it is.
    """
    if uri in _READY_STORES:
        return
    db = Path(uri.removeprefix("sqlite:///"))
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(f"{db}.lock", timeout=600)
        lock.acquire()
    except OSError as e:
        raise PipelineError(
            f"cannot create the MLflow store in {db.parent}: {e.strerror or e}. "
            "Set paths.mlruns_dir to a writable folder (or MLFLOW_TRACKING_URI "
            "to a tracking server)"
        ) from None
    try:
        remove_orphaned_temp_files(db.parent)  # a build killed half-way
        built = not db.exists() or db.stat().st_size == 0
        if built:
            _build_sqlite_store(db)
    finally:
        lock.release()
    # Checked outside the lock: a store in place is whole or not whatever others do, and
    # parallel jobs need not wait for each other's reading of it.
    if not built:
        _check_usable(db)
    _READY_STORES.add(uri)


def _check_usable(db: Path) -> None:
    """PipelineError naming what is wrong with the store at `db` and the fix, if MLflow
    cannot use it as it is."""
    if damage := _damage(db):
        raise PipelineError(unreadable_store(db, damage))
    problem = _schema_problem(db)
    if problem == NO_SCHEMA:
        raise PipelineError(
            f"the MLflow store {db} {problem}: it is not an MLflow store, or one whose "
            "making was stopped; nothing was changed. Point paths.mlruns_dir (or "
            "MLFLOW_TRACKING_URI) at another store or, if it holds nothing you need, "
            f"move it aside (mv {db} {db}.old)"
        )
    if problem:
        raise PipelineError(
            f"the MLflow store {db} is not usable ({problem}); nothing was changed. "
            f"Back it up, then upgrade it: mlflow db upgrade sqlite:///{db} (or set "
            "paths.mlruns_dir to a new folder)"
        )


def _build_sqlite_store(db: Path) -> None:
    """MLflow's schema, built in a temp file and renamed onto `db` once complete, with the
    mode of any new file of the store (the umask's, never world-writable).

    MLflow's migrations take 3-4 s; the empty store they make holds nothing of its path
    (tables and a schema version only), so it is kept once per schema version in the
    user's cache (empty_store) and a new store is a copy of it, checked whole before it
    is used: a damaged cached copy is built again."""
    tmp = db.with_name(f"{temp_prefix(db)}{secrets.token_hex(4)}.part")
    # O_EXCL with the usual 0o666: the umask applies, as to every other file of the store.
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        os.chmod(tmp, tmp.stat().st_mode & ~stat.S_IWOTH)  # never writable by anyone
        template = empty_store()
        copied = False
        if template is not None and template.exists():
            shutil.copyfile(template, tmp)
            copied = _damage(tmp) is None and _schema_problem(tmp) is None
            if not copied:
                log.info("the cached empty store %s is damaged: building it again", template)
                template.unlink(missing_ok=True)
                os.truncate(tmp, 0)
        if not copied:
            _initialize(tmp)
            if template is not None:
                _keep_as_template(tmp, template)
        os.replace(tmp, db)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _initialize(db: Path) -> None:
    import sqlalchemy
    from mlflow.store.db.utils import _initialize_tables  # what MLflow runs on an empty store

    engine = sqlalchemy.create_engine(f"sqlite:///{db}")
    try:
        _initialize_tables(engine)
    finally:
        engine.dispose()


def empty_store() -> Path | None:
    """Where the empty store of this MLflow's schema version is kept ($XDG_CACHE_HOME or
    ~/.cache, mnist-pipeline/); None where there is no home to keep it in."""
    from mlflow.store.db.utils import _get_latest_schema_revision

    cache = os.environ.get("XDG_CACHE_HOME") or (
        str(Path.home() / ".cache") if Path.home() != Path("/") else ""
    )
    if not cache:
        return None
    return Path(cache) / "mnist-pipeline" / f"empty-mlflow-store-{_get_latest_schema_revision()}.db"


def _keep_as_template(built: Path, template: Path) -> None:
    """A copy of a freshly built empty store, whole or not at all (a cache: a failure to
    write it costs the next store 3-4 s, nothing else)."""
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        part = template.with_name(f"{template.name}.{os.getpid()}.part")
        shutil.copyfile(built, part)
        os.replace(part, template)
    except OSError:
        pass


_SQLITE_HEADER = b"SQLite format 3\x00"
# SQLite's quick_check reads every page (~2.5 ms per MB): above this size a store is
# checked by its header and length only, and damage deeper in is named when met.
_QUICK_CHECK_LIMIT = 512 * 2**20


def _damage(db: Path) -> str | None:
    """Why SQLite cannot read the file at `db` (not SQLite, cut short, pages damaged), or
    None if it reads whole. Opened read-write, as MLflow will: a transaction a killed
    writer left half-done (a hot journal) is rolled back, which a read-only look cannot."""
    try:
        with open(db, "rb") as f:
            header = f.read(100)
        size = db.stat().st_size
    except OSError as e:
        return f"cannot open it ({e.strerror or e})"
    if not header.startswith(_SQLITE_HEADER):
        return "it is not an SQLite database (its first bytes are not SQLite's header)"
    if len(header) == 100 and not Path(f"{db}-wal").exists():
        page_size = int.from_bytes(header[16:18], "big")
        page_size = 65536 if page_size == 1 else page_size
        pages = int.from_bytes(header[28:32], "big")
        if header[24:28] == header[92:96] and size < pages * page_size:  # the count is valid
            return f"it is cut short ({size} bytes of the {pages * page_size} its header declares)"
    try:
        with closing(sqlite3.connect(db, timeout=60)) as connection:
            if size <= _QUICK_CHECK_LIMIT:
                (verdict,) = connection.execute("PRAGMA quick_check(1)").fetchone()
                if verdict != "ok":
                    found = " ".join(verdict.replace("*** in database main ***", "").split())
                    return f"SQLite finds it damaged ({found})"
            else:
                connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError as e:
        if "locked" in str(e):
            return None  # busy for a minute: another process is writing to it, so it reads
        return f"SQLite cannot read it ({e})"
    except sqlite3.DatabaseError as e:
        return f"SQLite cannot read it ({e})"
    return None


NO_SCHEMA = "holds no MLflow schema version"


def _schema_problem(db: Path) -> str | None:
    """Why MLflow cannot use the store at `db`, or None if its schema is MLflow's current one."""
    from mlflow.store.db.utils import _get_latest_schema_revision

    try:
        with closing(sqlite3.connect(db, timeout=60)) as connection:
            row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error:  # no alembic_version table
        return NO_SCHEMA
    head = _get_latest_schema_revision()
    if not row or row[0] != head:
        return f"schema version {row[0] if row else 'none'}, this MLflow needs {head}"
    return None


# ---- a RUNNING run must have a live process behind it -----------------------------------


def process_tags() -> dict[str, str]:
    """Who runs this run: host, pid and the process's start time (pids get reused)."""
    return {
        "host": socket.gethostname(),
        "pid": str(os.getpid()),
        "pid_started": process_start(os.getpid()),
    }


def _running_runs():
    """Every RUNNING run of the store's active experiments."""
    client = mlflow.MlflowClient()
    ids = [e.experiment_id for e in client.search_experiments()]
    token = None
    while ids:
        page = client.search_runs(
            ids, "attributes.status = 'RUNNING'", max_results=1000, page_token=token
        )
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
        client.set_tag(
            run.info.run_id,
            "failure_reason",
            f"interrupted: its process (pid {tags['pid']} on {host}) ended without closing the run",
        )
        client.set_terminated(run.info.run_id, "KILLED")
        reaped.append(run.info.run_id)
    if reaped:
        log.warning(
            "closed %d run(s) left RUNNING by ended processes as KILLED: %s",
            len(reaped),
            ", ".join(reaped),
        )
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
            max_results=1000,
        )
    except Exception as e:  # noqa: BLE001 — called while stopping: stop them all at once
        log.warning("could not list the runs of parent %s: %s", parent_run_id, redact(str(e))[:200])
        return []
    return [
        int(r.data.tags["pid"])
        for r in runs
        if r.data.tags.get("host") == host and r.data.tags.get("pid", "").isdigit()
    ]


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
