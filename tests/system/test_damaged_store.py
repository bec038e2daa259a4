"""A store the pipeline cannot read is named, never replaced; a store a killed writer left
mid-transaction is simply used; a damaged cached empty store is rebuilt.

Each test runs the app (`python -m pipeline` on the digits) against a real SQLite file,
damaged the way users damage them: garbage over the header, a copy cut short, a half-made
schema from older code, a writer killed with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TRAIN_ONCE, run_app
from mlflow import MlflowClient

pytestmark = pytest.mark.usefixtures("digits_prepared")


def _train(tmp_path: Path, db: Path, *more: str, env: dict | None = None):
    """One quick run of ours on the digits prepared under tmp_path, into the store at db."""
    return run_app(
        "data=digits",
        f"paths.data_dir={tmp_path / 'data'}",
        f"hydra.run.dir={tmp_path / 'hydra'}",
        *TRAIN_ONCE,
        *more,
        env={"MLFLOW_TRACKING_URI": f"sqlite:///{db}", **(env or {})},
    )


@pytest.fixture
def store_with_runs(tmp_path) -> Path:
    """A real store holding two finished runs, grown past its first pages."""
    db = tmp_path / "store" / "mlflow.db"
    for _ in range(2):
        made = _train(tmp_path, db)
        assert made.returncode == 0, made.stderr[-3000:]
    return db


def _garbage_header(db: Path) -> None:
    with open(db, "r+b") as f:
        f.write(os.urandom(100))


def _cut_to_a_third(db: Path) -> None:
    os.truncate(db, db.stat().st_size // 3)


def _garbage_inside(db: Path) -> None:
    """Random bytes over a page in the middle: header and length intact."""
    page = int.from_bytes(db.read_bytes()[16:18], "big")
    with open(db, "r+b") as f:
        f.seek((db.stat().st_size // page // 2) * page)
        f.write(os.urandom(page))


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (_garbage_header, "it is not an SQLite database"),
        (_cut_to_a_third, "it is cut short"),
        (_garbage_inside, "SQLite"),
    ],
)
def test_a_store_that_cannot_be_read_is_named_and_left_as_it_is(
    tmp_path, store_with_runs, damage, named
):
    db = store_with_runs
    damage(db)
    before = sorted(p.name for p in db.parent.iterdir())
    damaged = db.read_bytes()

    result = _train(tmp_path, db)

    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert f"the MLflow store {db} cannot be read: {named}" in output, output[-3000:]
    assert "nothing was changed" in output and ".recover" in output and f"mv {db}" in output
    assert "Traceback" not in output and "held no runs" not in output
    assert db.read_bytes() == damaged, "the damaged store was written to"
    assert sorted(p.name for p in db.parent.iterdir()) == before, "files moved or added"


def test_a_half_made_store_of_older_code_is_named_not_rebuilt(tmp_path):
    """What an interrupted store creation of older code left: MLflow's first tables and a
    migration's column, without a schema version. It may hold runs; it is not replaced."""
    import sqlalchemy
    from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase

    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    engine = sqlalchemy.create_engine(f"sqlite:///{db}")
    InitialBase.metadata.create_all(engine)
    engine.dispose()
    made = db.read_bytes()

    result = _train(tmp_path, db)

    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert f"the MLflow store {db} holds no MLflow schema version" in output, output[-3000:]
    assert f"mv {db} {db}.old" in output and "Traceback" not in output
    assert db.read_bytes() == made and not list(db.parent.glob("mlflow.db.*-*")), "set aside"


def test_a_store_whose_writer_was_killed_mid_transaction_keeps_its_runs(tmp_path, store_with_runs):
    """SIGKILL in the middle of a write transaction leaves a hot journal: SQLite rolls it
    back for the next writer. A read-only look cannot, and the store was once taken for
    half-made and replaced by an empty one: the runs vanished from the UI."""
    db = store_with_runs
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            f"c = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
            "c.execute('BEGIN IMMEDIATE')\n"
            "c.execute('CREATE TABLE filler (x)')\n"
            "for _ in range(20000): c.execute('INSERT INTO filler VALUES (randomblob(200))')\n"
            "c.execute(\"UPDATE runs SET status = 'FAILED'\")\n"
            "print('mid-transaction', flush=True)\n"
            "time.sleep(600)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout.readline().strip() == "mid-transaction"
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    assert Path(f"{db}-journal").exists(), "the writer's journal should be left hot"

    result = _train(tmp_path, db)

    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    statuses = [
        r.info.status
        for r in MlflowClient(f"sqlite:///{db}").search_runs(
            [e.experiment_id for e in MlflowClient(f"sqlite:///{db}").search_experiments()]
        )
    ]
    assert statuses == ["FINISHED"] * 3, statuses  # the two before, the killed write undone
    assert not list(db.parent.glob("mlflow.db.*-*")), "nothing set aside"


def test_a_damaged_cached_empty_store_is_rebuilt_not_copied(tmp_path):
    """The empty store kept in the user's cache is checked whole before it is copied."""
    from pipeline.tracking import store as tracking_store

    cache = tmp_path / "cache"
    first = _train(tmp_path, tmp_path / "a" / "mlflow.db", env={"XDG_CACHE_HOME": str(cache)})
    assert first.returncode == 0, first.stderr[-3000:]
    os.environ["XDG_CACHE_HOME"] = str(cache)  # where empty_store() looks, in this process
    try:
        template = tracking_store.empty_store()
    finally:
        del os.environ["XDG_CACHE_HOME"]
    assert template is not None and template.exists()
    _garbage_inside(template)

    for name in ("b", "c"):  # the first copy rebuilds it; the next copies the rebuilt one
        result = _train(tmp_path, tmp_path / name / "mlflow.db", env={"XDG_CACHE_HOME": str(cache)})
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    with sqlite3.connect(template) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_a_new_store_follows_the_umask_but_is_never_world_writable(tmp_path):
    """mlflow.db was once made 0600 (a temp file renamed into place), which locks a group
    sharing the project folder out of its own store."""
    for umask, mode in ((0o002, 0o664), (0o022, 0o644), (0o000, 0o664)):
        db = tmp_path / f"umask-{umask:03o}" / "mlflow.db"
        previous = os.umask(umask)  # a fresh interpreter (cold) inherits it
        try:
            result = run_app(
                "data=digits",
                f"paths.data_dir={tmp_path / 'data'}",
                f"hydra.run.dir={tmp_path / 'hydra'}",
                *TRAIN_ONCE,
                env={"MLFLOW_TRACKING_URI": f"sqlite:///{db}"},
                cold=True,
            )
        finally:
            os.umask(previous)
        assert result.returncode == 0, result.stderr[-3000:]
        assert db.stat().st_mode & 0o777 == mode, f"umask {umask:03o}: {db.stat().st_mode:o}"


def test_damage_met_while_using_a_store_is_one_line_with_the_fix(tmp_path, store_with_runs):
    """A store above the start-up check's size is checked by header and length only; damage
    deeper in surfaces as SQLite's own error, wrapped by MLflow, in the middle of a run."""
    from mlflow.exceptions import MlflowException

    from pipeline.errors import user_error

    db = store_with_runs
    _garbage_inside(db)
    with pytest.raises(sqlite3.DatabaseError) as met, sqlite3.connect(db) as connection:
        connection.execute("SELECT count(*) FROM metrics WHERE value > -1").fetchall()
        connection.execute("SELECT count(*) FROM tags WHERE value != ''").fetchall()
        connection.execute("PRAGMA integrity_check").fetchall()
        raise AssertionError("the damage was not met")
    try:
        raise MlflowException(f"(sqlite3.DatabaseError) {met.value}") from met.value
    except MlflowException as wrapped:
        line = user_error(wrapped, store=db)
    assert line is not None and line.startswith(f"the MLflow store {db} cannot be read"), line
    assert "\n" not in line and ".recover" in line
