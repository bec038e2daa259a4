"""A sweep's launcher killed by SIGKILL (issue 34): it cannot pass the signal on, so its
workers must notice it is gone and stop, their runs ending KILLED; and a rerun of the same
sweep, whether the first one is gone or still training, trains each config once.

Real sweeps (the joblib launcher, and submitit's local one) on the 8×8 digits, real
signals, a real SQLite store read while they write it.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import pytest
from helpers import WAIT, group_alive, run_app, sqlite_rows, wait_for

from pipeline.paths import process_alive

# Ours alone (scikit-learn's epochs are 50× slower): long enough to be caught training
# (~10 s a config on 2 idle cores), short enough for a rerun to finish.
EPOCHS = 600


def _sweep(tmp_path: Path, db: Path, name: str, launcher: str = "joblib", epochs: int = EPOCHS):
    """The smoke sweep (2 configs) as a user starts it, in a session of its own, logging to
    db, with a sweep folder of its own (the default's are timestamped); output in name.log."""
    return run_app(
        "sweep=smoke",
        "baseline=none",
        f"train.epochs={epochs}",
        f"hydra/launcher={launcher}",
        f"paths.data_dir={tmp_path / 'data'}",
        f"hydra.sweep.dir={tmp_path / name}",
        env={"MLFLOW_TRACKING_URI": f"sqlite:///{db}", "RAY_ADDRESS": None},
        popen=True,
        log=tmp_path / f"{name}.log",
    )


def _training_runs(db: Path) -> dict[str, dict]:
    """Every training run of the store: {run id: its status, tags and epochs logged}."""
    runs: dict[str, dict] = {
        run_id: {"status": status, "epochs": 0}
        for run_id, status in sqlite_rows(db, "SELECT run_uuid, status FROM runs")
    }
    for run_id, key, value in sqlite_rows(db, "SELECT run_uuid, key, value FROM tags"):
        if run_id in runs:
            runs[run_id][key] = value
    for run_id, count in sqlite_rows(
        db, "SELECT run_uuid, COUNT(*) FROM metrics WHERE key = 'val_accuracy' GROUP BY run_uuid"
    ):
        if run_id in runs:
            runs[run_id]["epochs"] = count
    return {run_id: run for run_id, run in runs.items() if run.get("kind") == "training"}


def _both_configs_training(db: Path):
    """The sweep's two runs, once both are RUNNING with an epoch logged (else None)."""

    def check():
        training = {
            i: r for i, r in _training_runs(db).items() if r["status"] == "RUNNING" and r["epochs"]
        }
        return training if len(training) == 2 else None

    return check


def _end(process) -> str:
    """Wait for process to end (at most WAIT s); then SIGKILL what is left of its group (the
    workers it started, if they outlived it); return its output."""
    try:
        output, _ = process.communicate(timeout=WAIT)
    finally:
        for pid in group_alive(process.pid):  # the group of a session the test started
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return output


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["joblib", "submitit_local"])
def test_a_launcher_killed_by_sigkill_takes_its_workers_and_a_rerun_trains_each_config_once(
    tmp_path, digits_prepared, kind
):
    db = tmp_path / "s.db"
    first = _sweep(tmp_path, db, "first", kind)
    try:
        training = wait_for(
            "both configs training", _both_configs_training(db), first, log=tmp_path / "first.log"
        )
        workers = {(int(r["pid"]), r["pid_started"]) for r in training.values()}
        first.send_signal(signal.SIGKILL)  # the launcher alone, which cannot pass it on
        first.wait(WAIT)
        # Before: its workers trained on to the end (and idle ones lingered for minutes).
        wait_for(
            "the workers to end with their launcher",
            lambda: not any(process_alive(pid, started) for pid, started in workers),
            seconds=30,
            log=tmp_path / "first.log",
        )
    finally:
        _end(first)
    rerun = _sweep(tmp_path, db, "rerun", kind)
    output = _end(rerun)
    assert rerun.returncode == 0, output[-3000:]
    runs = _training_runs(db)
    assert {runs[run_id]["status"] for run_id in training} == {"KILLED"}, runs
    assert all("interrupted" in runs[run_id]["failure_reason"] for run_id in training), runs
    finished = [r["config_hash"] for r in runs.values() if r["status"] == "FINISHED"]
    # each config of the first sweep trained once more, to the end; nothing else trained
    assert sorted(finished) == sorted(r["config_hash"] for r in training.values()), runs
    assert len(runs) == 4, runs


@pytest.mark.slow
def test_a_rerun_while_the_sweep_still_trains_waits_for_it_rather_than_train_twice(
    tmp_path, digits_prepared
):
    db = tmp_path / "s.db"
    first = _sweep(tmp_path, db, "first", epochs=100_000)  # training until stopped
    second = None
    try:
        training = wait_for(
            "both configs training", _both_configs_training(db), first, log=tmp_path / "first.log"
        )
        second = _sweep(tmp_path, db, "second", epochs=100_000)
        waiting = [f"being trained by run {run_id}" for run_id in training]
        second_log = tmp_path / "second.log"

        def told_or_training_again():
            said = second_log.read_text(errors="replace")
            return all(line in said for line in waiting) or len(_training_runs(db)) > 2

        wait_for("the rerun to wait or train", told_or_training_again, second, log=second_log)
        # Before: the rerun trained both configs again, beside the first sweep.
        assert sorted(_training_runs(db)) == sorted(training), _training_runs(db)
        second.send_signal(signal.SIGTERM)
        second_output = _end(second)
        first.send_signal(signal.SIGTERM)
        _end(first)
    finally:  # (on a failure above: stop them first)
        for process in (first, second):
            if process is not None:
                process.send_signal(signal.SIGTERM)
                _end(process)
    # It waited, one line per config naming the run that trains it, and trained nothing.
    for line in waiting:
        assert second_output.count(line) == 1, second_output[-3000:]
    runs = _training_runs(db)
    assert sorted(runs) == sorted(training), runs
    assert {r["status"] for r in runs.values()} == {"KILLED"}, runs
