"""Users misbehave: Ctrl-C, `kill`, a stray run, a malformed request, a slow mirror, a
password in a URI. Each probe here failed on the code before it (issue 21) and holds now:
no wreckage (no run left RUNNING, no store left unusable, no process left behind), no
silently wrong answer, no leaked secret; one clear line and a telling exit code.

Signals go to real processes (the app, a sweep launcher and its joblib workers) in a
process group of their own; stores are real SQLite files; servers are real.
"""

from __future__ import annotations

import http.server
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
from helpers import TRAIN_ONCE, WAIT, free_port, group_alive, run_app, sqlite_rows, wait_for
from helpers.ui import serving_ui, ui_env
from mlflow.tracking import MlflowClient

from pipeline import interrupts
from pipeline.app import run_stages
from pipeline.data import download
from pipeline.errors import PipelineError
from pipeline.tracking import parents, registry
from pipeline.tracking import store as tracking_store


def _app(tmp_path, store: str | None, *overrides, popen=False, env=None, data="data=digits"):
    """`python -m pipeline` on the digits, its data under tmp_path, logging to store (or,
    if None, to where the config says); a session of its own when popen (so that a signal
    can go to its whole process group)."""
    return run_app(
        *([data] if data else []),
        f"paths.data_dir={tmp_path / 'data'}",
        f"hydra.run.dir={tmp_path / 'hydra'}",
        *overrides,
        env={**(env or {}), "MLFLOW_TRACKING_URI": store or None},
        popen=popen,
    )


def _runs(db: Path) -> list[tuple[str, str, dict]]:
    """(name, status, tags) of every run in a SQLite store, read-only; [] while it is made."""
    rows = sqlite_rows(db, "SELECT run_uuid, name, status FROM runs")
    tags = sqlite_rows(db, "SELECT run_uuid, key, value FROM tags")
    steps = sqlite_rows(
        db, "SELECT run_uuid, COUNT(*) FROM metrics WHERE key = 'val_accuracy' GROUP BY run_uuid"
    )
    by_run: dict[str, dict] = {}
    for run_id, key, value in tags:
        by_run.setdefault(run_id, {})[key] = value
    for run_id, count in steps:
        by_run.setdefault(run_id, {})["(epochs logged)"] = count
    return [(name, status, by_run.get(run_id, {})) for run_id, name, status in rows]


def _stopped(process: subprocess.Popen, seconds: int = WAIT) -> str:
    try:
        output, _ = process.communicate(timeout=seconds)
    finally:
        for pid in group_alive(process.pid):
            os.kill(pid, signal.SIGKILL)
    return output


# ---- signals end runs honestly ------------------------------------------------------------


def test_ctrl_c_during_the_baseline_ends_its_run_killed_not_finished(tmp_path):
    db = tmp_path / "s.db"
    # A wide net on the 8×8 digits: scikit-learn's epochs take ~1 s, so the signal lands
    # inside partial_fit, where MLPClassifier used to swallow it and return as if done.
    app = _app(
        tmp_path,
        f"sqlite:///{db}",
        "stages=[preprocess,train]",
        "train.epochs=40",
        "train.learning_rate=0.1",
        "model.hidden_sizes=[1000,1000]",
        "tracking.log_model=false",
        "baseline.side_by_side=false",  # ours first, then the baseline (side by side: below)
        popen=True,
    )
    wait_for(
        "a scikit-learn epoch",
        lambda: any(
            tags.get("model_family") == "sklearn_mlp" and tags.get("(epochs logged)", 0) >= 1
            for _, _, tags in _runs(db)
        ),
        app,
    )
    os.killpg(app.pid, signal.SIGINT)
    output = _stopped(app)
    assert app.returncode == 130, output[-3000:]
    assert "Traceback" not in output and "interrupted by SIGINT (Ctrl-C): stopped" in output
    runs = {tags["model_family"]: (status, tags) for _, status, tags in _runs(db)}
    assert runs["numpy_mlp"][0] == "FINISHED"
    assert runs["sklearn_mlp"][0] == "KILLED"
    assert runs["sklearn_mlp"][1]["failure_reason"] == "interrupted by SIGINT (Ctrl-C)"


@pytest.mark.parametrize("side_by_side", ["false", "true"])
def test_a_keyboard_interrupt_that_scikit_learn_swallows_still_ends_the_run_killed(
    make_cfg, monkeypatch, side_by_side
):
    """Ctrl-C in a process without the app's handler (a notebook): MLPClassifier catches
    the KeyboardInterrupt mid-epoch; the run must not end FINISHED half-trained."""
    from sklearn.neural_network import MLPClassifier

    real_backprop, calls = MLPClassifier._backprop, []

    def interrupted_on_the_fifth_batch(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_backprop(self, *args, **kwargs)

    monkeypatch.setattr(MLPClassifier, "_backprop", interrupted_on_the_fifth_batch)
    cfg = make_cfg(
        "data=digits",
        "stages=[preprocess,train]",
        "train.epochs=2",
        "tracking.log_model=false",
        f"baseline.side_by_side={side_by_side}",  # true: in its own process, which says so
    )
    with pytest.raises(KeyboardInterrupt):
        run_stages(cfg)
    runs = {
        r.data.tags["model_family"]: r
        for r in MlflowClient().search_runs(
            [MlflowClient().get_experiment_by_name("digits").experiment_id]
        )
    }
    assert runs["sklearn_mlp"].info.status == "KILLED"
    assert runs["sklearn_mlp"].data.tags["failure_reason"] == "interrupted by SIGINT (Ctrl-C)"
    assert "val_accuracy" not in runs["sklearn_mlp"].data.metrics  # no epoch passed as whole


def test_sigterm_during_training_ends_the_run_killed_and_exits_143(tmp_path):
    db = tmp_path / "s.db"
    app = _app(
        tmp_path,
        f"sqlite:///{db}",
        "stages=[preprocess,train]",
        "baseline=none",
        "train.epochs=100000",
        popen=True,
    )
    wait_for(
        "a training epoch", lambda: any(t.get("(epochs logged)", 0) for _, _, t in _runs(db)), app
    )
    app.send_signal(signal.SIGTERM)  # `kill <pid>`, as timeout(1) or a container stop does
    output = _stopped(app)
    assert app.returncode == 143, output[-3000:]
    assert "Traceback" not in output
    ((name, status, tags),) = _runs(db)
    assert status == "KILLED" and tags["failure_reason"].startswith("interrupted by SIGTERM")


def _two_training(db: Path) -> bool:
    """Both families' runs RUNNING with an epoch logged."""
    return {
        tags.get("model_family")
        for _, status, tags in _runs(db)
        if status == "RUNNING" and tags.get("(epochs logged)", 0)
    } == {"numpy_mlp", "sklearn_mlp"}


def _training_side_by_side(tmp_path, db):
    """The app training both families side by side for as long as it is let, started."""
    return _app(
        tmp_path,
        f"sqlite:///{db}",
        "stages=[preprocess,train]",
        "train.epochs=100000",
        "baseline.side_by_side=true",
        popen=True,
    )


@pytest.mark.parametrize(
    "signum,group,code",
    [
        (signal.SIGINT, True, 130),  # Ctrl-C: the terminal signals the whole process group
        (signal.SIGTERM, False, 143),  # `kill <pid>`: the app alone, which passes it on
    ],
)
def test_a_stop_signal_while_both_train_side_by_side_ends_both_runs_killed(
    tmp_path, signum, group, code
):
    db = tmp_path / "s.db"
    app = _training_side_by_side(tmp_path, db)
    wait_for("both families training", lambda: _two_training(db), app)
    if group:
        os.killpg(app.pid, signum)
    else:
        app.send_signal(signum)
    try:
        output, _ = app.communicate(timeout=WAIT)
        # its processes ended with it: none left training, orphaned
        assert not group_alive(app.pid), group_alive(app.pid)
    finally:
        _stopped(app)
    assert app.returncode == code, output[-3000:]
    reason = interrupts.STOP_SIGNALS[signum]
    assert "Traceback" not in output and f"interrupted by {reason}: stopped; run(s)" in output
    assert "again: still closing" not in output  # one Ctrl-C, though it reaches them twice
    runs = {tags["model_family"]: (status, tags) for _, status, tags in _runs(db)}
    for family, (status, tags) in runs.items():
        assert status == "KILLED" and tags["failure_reason"] == f"interrupted by {reason}", family
        assert tags["pid"] != str(app.pid)  # trained in a process of its own
    assert len(runs) == 2


def test_a_side_by_side_app_killed_by_sigkill_leaves_no_worker_and_no_run_running(tmp_path):
    """SIGKILL cannot be passed on: each worker notices its parent gone and stops itself."""
    db = tmp_path / "s.db"
    app = _training_side_by_side(tmp_path, db)
    try:
        wait_for("both families training", lambda: _two_training(db), app)
        app.send_signal(signal.SIGKILL)
        app.wait()
        wait_for("the workers to end", lambda: not group_alive(app.pid), seconds=60)
    finally:
        _stopped(app)
    statuses = [(s, t.get("failure_reason", "")) for _, s, t in _runs(db)]
    assert len(statuses) == 2 and all(s == "KILLED" and why for s, why in statuses), statuses


def _sweep(tmp_path, db: Path, launcher: str = "joblib"):
    return _app(
        tmp_path,
        f"sqlite:///{db}",
        "sweep=smoke",
        "train.epochs=100000",
        f"hydra/launcher={launcher}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        data=None,
        popen=True,
        env={"RAY_ADDRESS": None},
    )


def _two_children_training(db: Path):
    return lambda: (
        sum(
            1
            for _, s, t in _runs(db)
            if t.get("kind") == "training" and s == "RUNNING" and t.get("(epochs logged)", 0)
        )
        == 2
    )


@pytest.mark.slow
def test_ctrl_c_to_a_sweep_ends_the_parent_and_every_child_killed(tmp_path):
    db = tmp_path / "s.db"
    launcher = _sweep(tmp_path, db)
    wait_for("two children training", _two_children_training(db), launcher)
    os.killpg(launcher.pid, signal.SIGINT)  # the terminal's Ctrl-C: the whole group
    output = _stopped(launcher)
    assert launcher.returncode == 130, output[-3000:]
    statuses = {(t.get("kind"), s, t.get("failure_reason")) for _, s, t in _runs(db)}
    assert statuses == {
        ("sweep", "KILLED", "interrupted by SIGINT (Ctrl-C)"),
        ("training", "KILLED", "interrupted by SIGINT (Ctrl-C)"),
    }, statuses


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["joblib", "submitit_local", "ray_cluster"])
def test_sigterm_to_a_sweep_launcher_stops_its_workers_and_closes_every_run(tmp_path, kind):
    if kind == "ray_cluster" and os.environ.get("CI") != "true":
        pytest.importorskip("ray", reason="the ray extra is not installed (make install-extras)")
    db = tmp_path / "s.db"
    launcher = _sweep(tmp_path, db, kind)
    wait_for("two children training", _two_children_training(db), launcher)
    launcher.send_signal(signal.SIGTERM)  # the launcher alone: it must stop its workers
    start = time.monotonic()
    output, _ = launcher.communicate(timeout=WAIT)
    # Its joblib workers are gone with it, not training on, orphaned.
    wait_for("the workers to end", lambda: not group_alive(launcher.pid), seconds=30)
    assert launcher.returncode == 143, output[-3000:]
    # (a local Ray cluster's own servers ignore SIGTERM for the 20 s they are given)
    assert time.monotonic() - start < 90, "the workers' runs took long to close"
    runs = [(t.get("kind"), s, t.get("failure_reason", "")) for _, s, t in _runs(db)]
    assert len(runs) == 3 and all(s == "KILLED" and "SIGTERM" in why for _, s, why in runs), runs


# ---- the store survives -------------------------------------------------------------------


def test_ctrl_c_while_the_first_run_makes_the_store_leaves_a_store_that_works(
    tmp_path, digits_prepared
):
    mlruns = tmp_path / "mlruns"
    # Making the store takes a second or two: its first tables, then ~60 migrations. Before,
    # a Ctrl-C 0.5 s or later into it left a store every later run failed on. The run
    # interrupted has a cache of its own, empty: with the cached empty store it would copy
    # (tracking/store.py), the store is made in milliseconds and the Ctrl-C would land later.
    for delay in (0.5, 1.0, 1.5):
        app = _app(
            tmp_path,
            None,
            "stages=[train]",
            "baseline=none",
            "train.epochs=1",
            f"paths.mlruns_dir={mlruns}",
            popen=True,
            env={"XDG_CACHE_HOME": str(tmp_path / f"empty-cache-{delay}")},
        )
        # its first tables are written (in the store itself, or in the temp file it is made in)
        wait_for("the store's first tables", lambda: _being_written(mlruns), app)
        time.sleep(delay)  # into the migrations (not a wait for readiness)
        os.killpg(app.pid, signal.SIGINT)
        _stopped(app)
        after = _app(
            tmp_path,
            None,
            *TRAIN_ONCE,
            f"paths.mlruns_dir={mlruns}",
        )
        assert after.returncode == 0, (
            f"Ctrl-C after {delay} s: {(after.stdout + after.stderr)[-3000:]}"
        )
        assert not list(mlruns.glob(".*.part"))
        for stale in mlruns.glob("mlflow.db*"):  # the next attempt makes a new store
            stale.unlink()


def _being_written(mlruns: Path) -> bool:
    """Has the store's file (or the temp file it is made in) got its first bytes?"""
    for path in [*mlruns.glob("mlflow.db"), *mlruns.glob(".mlflow.db.*.part")]:
        try:
            if path.stat().st_size > 0:
                return True
        except FileNotFoundError:  # renamed into place meanwhile
            pass
    return False


def _half_made_store(db: Path) -> None:
    """What an interrupted first run of MLflow's own store creation leaves: the initial
    tables and the first migration's column, without the migration recorded."""
    import sqlalchemy
    from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase

    engine = sqlalchemy.create_engine(f"sqlite:///{db}")
    InitialBase.metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(
            sqlalchemy.text("ALTER TABLE metrics ADD COLUMN step BIGINT DEFAULT '0' NOT NULL")
        )
    engine.dispose()


def test_a_store_with_runs_at_another_schema_is_named_with_the_fix(make_cfg, tmp_path, monkeypatch):
    db = tmp_path / "mlruns" / "mlflow.db"
    db.parent.mkdir()
    _half_made_store(db)
    with sqlite3.connect(db) as connection:
        # what an older MLflow leaves: its schema version recorded, an older one
        connection.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        connection.execute("INSERT INTO alembic_version VALUES ('451aebb31d03')")
        connection.execute(
            "INSERT INTO experiments (experiment_id, name, lifecycle_stage) "
            "VALUES (1, 'x', 'active')"
        )
        connection.execute(
            "INSERT INTO runs (run_uuid, experiment_id, status, lifecycle_stage) "
            "VALUES ('r', 1, 'FINISHED', 'active')"
        )
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    cfg = make_cfg("data=digits", "stages=[compare]", f"paths.mlruns_dir={db.parent}")
    with pytest.raises(PipelineError, match=f"mlflow db upgrade sqlite:///{db}"):
        run_stages(cfg)


def _orphan(store: str, experiment: str) -> str:
    """A RUNNING run of a process that has ended (as kill -9 leaves it)."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    client = MlflowClient(store)
    experiment_id = client.create_experiment(experiment)
    run = client.create_run(
        experiment_id, tags={"host": socket.gethostname(), "pid": str(gone.pid)}
    )
    return run.info.run_id


def test_the_reaper_closes_orphans_in_every_experiment_of_the_store(make_cfg, tmp_path):
    store = os.environ["MLFLOW_TRACKING_URI"]
    tracking_store.initialise_sqlite(store)
    orphan = _orphan(store, "another-experiment")
    run_stages(
        make_cfg(
            "data=digits",
            "stages=[preprocess,train]",
            "baseline=none",
            "train.epochs=1",
            "tracking.log_model=false",
        )
    )
    run = MlflowClient(store).get_run(orphan)
    assert (
        run.info.status == "KILLED"
        and "ended without closing the run" in run.data.tags["failure_reason"]
    )


@pytest.mark.slow
def test_make_ui_closes_the_runs_left_running_by_ended_processes(tmp_path):
    db = tmp_path / "mlruns" / "mlflow.db"
    tracking_store.initialise_sqlite(f"sqlite:///{db}")
    orphan = _orphan(f"sqlite:///{db}", "killed-elsewhere")
    with serving_ui([], tmp_path, ui_env()):
        wait_for(
            "the orphan to be closed",
            lambda: MlflowClient(f"sqlite:///{db}").get_run(orphan).info.status == "KILLED",
            seconds=120,
        )


# ---- models serve only what they were trained for ------------------------------------------


@pytest.fixture
def digits_run(make_cfg):
    cfg = make_cfg("data=digits", "stages=[preprocess,train]", "baseline=none", "train.epochs=2")
    (run_id,) = run_stages(cfg)["train"]
    return cfg, run_id


def test_a_digits_run_is_refused_as_the_mnist_model_and_registered_as_the_digits_one(
    digits_run, make_cfg
):
    _, run_id = digits_run
    # make register RUN_ID=<a digits run>, with the default data (mnist) in the config
    with pytest.raises(PipelineError, match="trained on digits, and mnist-classifier serves mnist"):
        run_stages(
            make_cfg(
                "stages=[register]",
                f"register.run_id={run_id}",
                "register.model_name=mnist-classifier",
            )
        )
    version = run_stages(make_cfg("stages=[register]", f"register.run_id={run_id}"))["register"]
    client = MlflowClient()
    assert client.get_model_version_by_alias("digits-classifier", "champion").version == version
    assert client.get_registered_model("digits-classifier").tags["dataset"] == "digits"
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_registered_model("mnist-classifier")


def test_the_champion_gate_compares_only_on_the_same_validation_split(make_cfg):
    def trained(*overrides):
        cfg = make_cfg("data=digits", "stages=[preprocess,train]", "baseline=none", *overrides)
        return cfg, run_stages(cfg)["train"][0]

    _, tiny_split_run = trained("data.validation_size=10", "train.epochs=1")
    client = MlflowClient()  # after the first run: MLflow's URI is this test's store now
    registry.register(tiny_split_run)  # val on 10 images: say 1.0
    cfg, better = trained("train.epochs=6")  # the usual 300-image split
    parent = client.create_run(client.get_run(better).info.experiment_id).info.run_id
    table = parents.results_table(
        mlflow.search_runs(filter_string=f"attributes.run_id = '{better}'")
    )
    assert parents.register_best(cfg, parent, table) is None
    gate = client.get_run(parent).data.tags["champion_gate"]
    assert gate.startswith("not compared") and "10 images" in gate and "300 images" in gate
    assert f"make register RUN_ID={better}" in gate

    _, worse = trained("train.epochs=1")  # a champion on the same split as `better`
    registry.register(worse)
    assert parents.register_best(cfg, parent, table) is not None
    gate = client.get_run(parent).data.tags["champion_gate"]
    assert gate.startswith("registered") and "300 images" in gate
    assert (
        client.get_model_version_by_alias("digits-classifier", "champion").tags["run_id"] == better
    )


BAD_INPUTS = {  # what a request may hold, and (a regex of) what the refusal says
    "NaN": (lambda x: np.where(np.arange(x.shape[1]) == 3, np.nan, x), "must be finite"),
    "infinity": (lambda x: np.where(np.arange(x.shape[1]) == 3, np.inf, x), "must be finite"),
    "0..255 pixels": (lambda x: x * 255, r"in \[0, 1\].*divide 0..255 pixels by 255"),
    "negative pixels": (lambda x: x - 1, r"must be in \[0, 1\]"),
    "a row too short": (lambda x: x[:, :-1], "expected rows of 64 pixel values|expected shape"),
}


@pytest.mark.parametrize("family", ["numpy_mlp", "sklearn_mlp"])
def test_a_logged_model_refuses_input_it_was_not_trained_for(make_cfg, family):
    cfg = make_cfg("data=digits", "stages=[preprocess,train]", "train.epochs=1")
    runs = {
        MlflowClient().get_run(r).data.tags["model_family"]: r for r in run_stages(cfg)["train"]
    }
    model = mlflow.pyfunc.load_model(f"runs:/{runs[family]}/model")
    good = np.full((2, 64), 0.5, dtype=np.float32)
    assert len(model.predict(good)) == 2
    for spoil, message in BAD_INPUTS.values():
        with pytest.raises(mlflow.exceptions.MlflowException, match=message):
            model.predict(spoil(good).astype(np.float32))


# ---- every bad override: one line, exit 2, nothing written ------------------------------------

BAD_OVERRIDES = {
    "+train.foo=1": "train.foo: not a setting",
    "foo=1": "foo: not a setting",
    "seed=4294967296": "seed=4294967296: must be a number in [0, 4294967296)",
    "paths.mlruns_dir=/proc/nope": "cannot write the MLflow store in /proc/nope",
    "train=5": "train=5: train takes the name of a preset in conf/train/: sgd",
    "model=nope": "model=nope: model takes the name of a preset",
    "train.epochs=abc": "Value 'abc' of type 'str' could not be converted to Integer",
    "model.hidden_sizes=[100000,100000]": "weights and biases; training it needs about",
    "evaluate.misclassified=-1": "evaluate.misclassified=-1: must be a number ≥ 0",
    "model.hidden_sizes=16,16": "a list is written in brackets: 'model.hidden_sizes=[16,16]'",
}


def test_every_bad_override_is_one_line_exit_2_and_writes_nothing(tmp_path):
    started = {}
    for override in BAD_OVERRIDES:  # all at once: each pays the app's start-up alone
        folder = tmp_path / str(len(started))
        folder.mkdir()
        started[override] = (
            folder,
            _app(
                folder,
                None,
                override,
                f"paths.mlruns_dir={folder / 'mlruns'}"
                if "mlruns_dir" not in override
                else "stages=[train]",
                popen=True,
            ),
        )
    for override, (folder, app) in started.items():
        output = _stopped(app)
        assert app.returncode == 2, f"{override}: {output[-2000:]}"
        assert BAD_OVERRIDES[override] in output, f"{override}: {output[-2000:]}"
        assert "Traceback" not in output, f"{override}: {output[-2000:]}"
        assert not (folder / "data").exists() and not (folder / "mlruns" / "mlflow.db").exists(), (
            override
        )


# ---- bounded waits ----------------------------------------------------------------------------


class _Drip(http.server.BaseHTTPRequestHandler):
    """A mirror that answers, then sends a byte every second: no single read times out."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        try:
            for _ in range(600):
                self.wfile.write(b"\0")
                self.wfile.flush()
                time.sleep(1)
        except OSError:
            pass

    def log_message(self, *args):
        pass


def test_a_dripping_mirror_is_abandoned_at_its_deadline_for_the_next(tiny_mnist, tmp_path, caplog):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Drip)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    drip = f"http://127.0.0.1:{server.server_address[1]}"
    name, md5 = next(iter(download.MNIST_FILES.items()))
    start = time.monotonic()
    try:
        path = download.fetch(name, md5, [drip, str(tiny_mnist)], tmp_path / "raw", deadline=3)
    finally:
        server.shutdown()
    assert path.read_bytes() == (tiny_mnist / name).read_bytes()
    assert time.monotonic() - start < 30
    assert f"{name} from {drip} failed: too slow" in caplog.text


def test_registering_with_the_tracking_server_down_is_one_line_within_seconds(tmp_path):
    start = time.monotonic()
    result = _app(
        tmp_path,
        f"http://127.0.0.1:{free_port()}",
        "stages=[register]",
        f"register.run_id={'0' * 32}",
        data=None,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-2000:]
    assert (
        "cannot reach the tracking server http://127.0.0.1:" in output and "Traceback" not in output
    )
    assert time.monotonic() - start < 90  # MLflow's own retries took ~4 minutes


@pytest.mark.slow
def test_a_password_in_the_tracking_uri_is_never_shown_and_losing_the_server_is_one_line(
    tmp_path, digits_prepared
):
    """A server behind basic auth is reached as http://user:password@host: the password
    must reach no screen and no log file. Losing that server mid-run ends the command in
    seconds with one line; the run it left RUNNING is closed by the next run."""
    secret = "s3cr3t-pa55"
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    port = free_port()
    store = f"http://alice:{secret}@127.0.0.1:{port}"
    with serving_ui([], server_dir, ui_env(), port=port) as (server, _):
        done = _app(tmp_path, store, "stages=[train,evaluate]", "train.epochs=2")
        assert done.returncode == 0, done.stderr[-3000:]
        shown = (
            done.stdout
            + done.stderr
            + "".join(p.read_text() for p in (tmp_path / "hydra").rglob("*.log"))
        )
        assert secret not in shown and "alice:***@127.0.0.1" in shown

        app = _app(
            tmp_path, store, "stages=[train]", "baseline=none", "train.epochs=100000", popen=True
        )
        client = MlflowClient(f"http://127.0.0.1:{port}")
        wait_for(
            "a run training",
            lambda: client.search_runs(
                [client.get_experiment_by_name("digits").experiment_id],
                "attributes.status = 'RUNNING'",
            ),
            app,
        )
        os.killpg(server.pid, signal.SIGKILL)  # the server dies, its workers with it
    lost = time.monotonic()
    output = _stopped(app)
    assert time.monotonic() - lost < 120, "training stalled on a lost server"
    assert app.returncode == 2 and "cannot reach the tracking server" in output, output[-3000:]
    assert secret not in output and "Traceback" not in output

    with serving_ui([], server_dir, ui_env(), port=port):  # back: the next run closes the orphan
        assert _app(tmp_path, store, *TRAIN_ONCE).returncode == 0
        statuses = [
            r.info.status
            for r in client.search_runs(
                [client.get_experiment_by_name("digits").experiment_id], "tags.kind = 'training'"
            )
        ]
        assert "RUNNING" not in statuses and "KILLED" in statuses


# ---- a folder the user cannot write ----------------------------------------------------------


def _read_only_folder(tmp_path) -> Path:
    """A read-only file system (as root: a read-only tmpfs); else a folder without write
    permission, which root would ignore."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() == 0:
        made = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True
        )
        if made.returncode == 0:
            return folder
        pytest.skip(f"cannot mount a read-only tmpfs here: {made.stderr.decode()[:200]}")
    folder.chmod(0o555)
    return folder


def test_a_read_only_data_folder_is_one_line_naming_it(tmp_path):
    folder = _read_only_folder(tmp_path)
    try:
        result = run_app(
            f"paths.data_dir={folder}",
            "stages=[download]",
            f"data.mirrors=[{tmp_path}]",
            env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 's.db'}"},
        )
        output = result.stdout + result.stderr
        assert result.returncode == 2, output[-2000:]
        assert f"cannot write train-images-idx3-ubyte.gz in {folder}/raw/mnist" in output
        assert "paths.data_dir" in output and "Traceback" not in output
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)
