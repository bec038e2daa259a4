"""A run's status is the truth: killed runs are closed, live ones never; failures end FAILED
with a reason while the rest goes on; many writers share a store; exit codes tell."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
from pathlib import Path

import mlflow
import pytest
from helpers import TRAIN_ONCE, WAIT, run_app, running_training_runs, wait_for
from mlflow.tracking import MlflowClient

from pipeline import paths
from pipeline.app import run_stages
from pipeline.engine import DivergenceError
from pipeline.errors import RunFailed
from pipeline.paths import PROJECT_ROOT
from pipeline.tracking import environment, identity
from pipeline.tracking import runs as tracking_runs
from pipeline.tracking import store as tracking_store


def _pipeline(tmp_path, store, *overrides, popen=False):
    """`python -m pipeline` on the digits, its data under tmp_path, logging to store."""
    return run_app(
        "data=digits",
        f"paths.data_dir={tmp_path / 'data'}",
        *overrides,
        env={"MLFLOW_TRACKING_URI": store},
        popen=popen,
        timeout=600,
    )


def _training_runs(store: str, experiment: str = "digits"):
    client = MlflowClient(store)
    return client.search_runs(
        [client.get_experiment_by_name(experiment).experiment_id], "tags.kind = 'training'"
    )


def test_a_killed_run_is_closed_by_the_next_run_but_a_live_one_never(
    make_cfg, tmp_path, monkeypatch, digits_prepared
):
    db = tmp_path / "store.db"
    store = f"sqlite:///{db}"
    live = _pipeline(
        tmp_path, store, "stages=[train]", "baseline=none", "train.epochs=100000", popen=True
    )
    try:
        wait_for("training run RUNNING", lambda: running_training_runs(db), live, every=0.1)
        cfg = make_cfg("data=digits")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
        tracking_store.setup(cfg)
        assert tracking_store.reap_orphans() == []  # alive: left alone
        (run,) = _training_runs(store)
        assert run.info.status == "RUNNING"
        assert run.data.tags["host"] == socket.gethostname() and run.data.tags["pid"] == str(
            live.pid
        )
    finally:
        live.send_signal(signal.SIGKILL)
        live.wait()
    # the next process to touch the store closes it
    result = _pipeline(tmp_path, store, "stages=[train]", "baseline=none", "train.epochs=1")
    assert result.returncode == 0, result.stderr[-2000:]
    killed = [r for r in _training_runs(store) if r.data.tags["pid"] == str(live.pid)]
    assert [r.info.status for r in killed] == ["KILLED"]
    assert f"pid {live.pid}" in killed[0].data.tags["failure_reason"]


def test_a_reused_pid_does_not_keep_a_dead_run_alive():
    # same pid, another start time: another process
    assert paths.process_alive(os.getpid(), paths.process_start(os.getpid()))
    if paths.process_start(os.getpid()):
        assert not paths.process_alive(os.getpid(), "1")


def test_two_first_runs_at_once_on_a_fresh_store_both_finish(tmp_path, digits_prepared):
    for attempt in range(3):
        store = f"sqlite:///{tmp_path / f'fresh{attempt}.db'}"
        processes = [
            _pipeline(
                tmp_path,
                store,
                *TRAIN_ONCE,
                f"seed={seed}",
                popen=True,
            )
            for seed in range(3)
        ]
        for process in processes:
            output, _ = process.communicate(timeout=WAIT)
            assert process.returncode == 0, f"attempt {attempt}: {output[-2000:]}"
        runs = _training_runs(store)
        assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}


@pytest.fixture
def resumable(make_cfg):
    """One digits run of ours, one epoch, skipped when a run of the same config finished."""
    return make_cfg(
        "data=digits",
        "stages=[preprocess,train]",
        "baseline=none",
        "train.epochs=1",
        "tracking.log_model=false",
        "tracking.skip_finished=true",
    )


def test_resume_reuses_a_run_only_for_the_same_code_and_lock(resumable, tmp_path, monkeypatch):
    cfg = resumable
    first = run_stages(cfg)["train"]
    assert run_stages(cfg)["train"] == first  # same config, code, lock: reused

    code = tmp_path / "code"  # the same package with one changed line
    (code / "pipeline").mkdir(parents=True)
    for source in (PROJECT_ROOT / "pipeline").rglob("*.py"):
        target = code / source.relative_to(PROJECT_ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
    changed = code / "pipeline" / "engine" / "sgd.py"
    changed.write_text(changed.read_text() + "\n# a change\n")
    monkeypatch.setattr(identity, "PROJECT_ROOT", code)
    assert run_stages(cfg)["train"] != first  # trained again

    lock = tmp_path / "uv.lock"
    lock.write_text("another lock")
    monkeypatch.setattr(environment, "LOCK_FILE", lock)
    keys = {identity.resume_key(cfg)}
    lock.write_text("a third lock")
    keys.add(identity.resume_key(cfg))
    assert len(keys) == 2


def _full_filesystem(tmp_path) -> Path | None:
    """A 1 MiB tmpfs, filled: a real full disk (needs root and mount); None if impossible."""
    mount = tmp_path / "full"
    mount.mkdir()
    if os.geteuid() != 0:
        return None
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode:
        return None
    try:
        with open(mount / "filler", "wb") as f:
            f.write(b"\0" * (1 << 20))
    except OSError:
        pass
    return mount


def test_a_full_disk_mid_run_ends_the_run_failed_not_running(make_cfg, tmp_path, monkeypatch):
    mount = _full_filesystem(tmp_path)
    try:
        if mount is None:  # simulated: the model's file cannot be written
            import pipeline.engine.network as network

            def no_space(*args, **kwargs):
                raise OSError(errno.ENOSPC, "No space left on device")

            monkeypatch.setattr(network.np, "savez", no_space)
        else:  # the artifacts go to the full tmpfs; the database is elsewhere
            from pipeline.tracking import store

            monkeypatch.setattr(store, "artifact_root", lambda database: mount.as_uri())
        cfg = make_cfg(
            "data=digits", "stages=[preprocess,train]", "baseline=none", "train.epochs=2"
        )
        with pytest.raises(OSError) as error:
            run_stages(cfg)
        assert error.value.errno == errno.ENOSPC
        (run,) = _training_runs(os.environ["MLFLOW_TRACKING_URI"])
        assert run.info.status == "FAILED"
        assert "No space left" in run.data.tags["failure_reason"]
    finally:
        if mount is not None:
            subprocess.run(["umount", str(mount)], check=False)


def test_a_crash_in_evaluate_cannot_turn_a_finished_run_failed(make_cfg, monkeypatch):
    cfg = make_cfg("data=digits", "stages=[preprocess,train]", "baseline=none", "train.epochs=2")
    (run_id,) = run_stages(cfg)["train"]
    from pipeline.tracking import plots

    def crash(*args, **kwargs):
        raise RuntimeError("plotting crashed")

    monkeypatch.setattr(plots, "digit_grid", crash)
    with pytest.raises(RuntimeError, match="plotting crashed"):
        run_stages(make_cfg("data=digits", "stages=[evaluate]", f"evaluate.run_ids=[{run_id}]"))
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED" and "failure_reason" not in run.data.tags
    assert "evaluated" not in run.data.tags  # so a resumed sweep evaluates it again


def test_a_collapse_to_chance_ends_failed_and_the_baseline_still_trains(make_cfg):
    cfg = make_cfg(
        "data=digits",
        "model=modern",
        "train.learning_rate=1000",
        "train.epochs=3",
        "stages=[preprocess,train,evaluate]",
        "baseline=none",
    )
    with pytest.raises(RunFailed, match="collapsed to chance"):
        run_stages(cfg)
    (run,) = _training_runs(os.environ["MLFLOW_TRACKING_URI"])
    assert run.info.status == "FAILED" and "collapsed to chance" in run.data.tags["failure_reason"]


@pytest.mark.parametrize("side_by_side", ["false", "true"])
def test_a_baseline_divergence_fails_its_run_while_ours_is_still_evaluated(
    make_cfg, monkeypatch, side_by_side
):
    from sklearn.neural_network import MLPClassifier

    def diverge(self, *args, **kwargs):
        raise ValueError("Solver produced non-finite parameter weights.")

    monkeypatch.setattr(MLPClassifier, "partial_fit", diverge)
    cfg = make_cfg(
        "data=digits",
        "train.epochs=3",
        "stages=[preprocess,train,evaluate]",
        f"baseline.side_by_side={side_by_side}",
    )
    with pytest.raises(RunFailed, match="1 run.*sklearn_mlp: MLPClassifier diverged"):
        run_stages(cfg)
    runs = {
        r.data.tags["model_family"]: r for r in _training_runs(os.environ["MLFLOW_TRACKING_URI"])
    }
    assert runs["sklearn_mlp"].info.status == "FAILED"
    assert runs["numpy_mlp"].info.status == "FINISHED"
    assert runs["numpy_mlp"].data.tags.get("evaluated") == "true"


def test_a_non_finite_metric_fails_the_run_instead_of_being_stored(make_cfg):
    cfg = make_cfg("data=digits")
    with (
        pytest.raises(DivergenceError, match="non-finite metric.*test_log_loss=inf"),
        tracking_runs.run(cfg, run_name="probe") as active,
    ):
        tracking_runs.log_metrics({"test_accuracy": 0.5, "test_log_loss": float("inf")})
    run = MlflowClient().get_run(active.info.run_id)
    assert run.info.status == "FAILED" and "test_log_loss" not in run.data.metrics


def test_the_app_exits_1_naming_failed_runs(tmp_path):
    result = _pipeline(
        tmp_path,
        f"sqlite:///{tmp_path / 's.db'}",
        "model=modern",
        "train.learning_rate=1e20",
        "train.epochs=2",
        "baseline=none",
        "stages=[preprocess,train]",
    )
    assert result.returncode == 1
    assert "every run failed: numpy_mlp: training diverged" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "override,message",
    [
        ("seed=-1", "seed=-1: must be a number in [0, 4294967296)"),
        ("stages=[]", "stages=[]: must be a non-empty list"),
        ("train.learning_rate=inf", "train.learning_rate=inf: must be a finite number"),
        ("analyze.run_id=zzz", "analyze.run_id='zzz': must be a run id"),
    ],
)
def test_user_mistakes_exit_2_with_one_clear_line_before_any_work(tmp_path, override, message):
    result = _pipeline(tmp_path, f"sqlite:///{tmp_path / 's.db'}", override)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-2000:]
    assert message in output and "Traceback" not in output
    assert not (tmp_path / "s.db").exists() and not (tmp_path / "data").exists()


def test_resume_finds_the_run_in_the_configured_store_whatever_mlflow_pointed_at_before(
    resumable, tmp_path, monkeypatch
):
    """A fresh process has MLflow pointed at its default store: resume must look in ours."""
    cfg = resumable
    first = run_stages(cfg)["train"]
    ours = os.environ["MLFLOW_TRACKING_URI"]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'elsewhere.db'}")  # MLflow's global...
    monkeypatch.setenv("MLFLOW_TRACKING_URI", ours)  # ...while the config names our store
    assert run_stages(cfg)["train"] == first
