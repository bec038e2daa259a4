"""A full disk (ENOSPC, SQLite's "database or disk is full") is one line naming the folder
and the setting that moves it, exit code 2, never a traceback; the run it hit ends FAILED
with the reason where the store can still record it; nothing half-written is left for a
rerun to trust; and a rerun once there is space succeeds (issue 34).

Each disk is a real tmpfs of a few kilobytes (as root; skipped otherwise), filled by the
app itself or by a filler file, and always unmounted at the end.
"""

from __future__ import annotations

import os
import re
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import TRAIN_ONCE, run_app, sqlite_rows


@contextmanager
def small_disk(folder: Path, size: str):
    """`folder` as a tmpfs of `size` (e.g. "100k"), unmounted at the end."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode()[:200]}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def resize(folder: Path, size: str) -> None:
    """Give the tmpfs at `folder` a new size (it keeps its files)."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True)


def used_kib(folder: Path) -> int:
    stats = os.statvfs(folder)
    return (stats.f_blocks - stats.f_bfree) * stats.f_frsize // 1024


def fill(folder: Path) -> None:
    """Write zeros into folder/filler until its disk is full."""
    with open(folder / "filler", "wb", buffering=0) as f:
        try:
            while f.write(b"\0" * 4096):
                pass
        except OSError:  # ENOSPC: full
            pass


def app(tmp_path: Path, *overrides: str, store: Path, data_dir: Path | None = None):
    """`python -m pipeline` on the digits logging to the SQLite store `store`: given as
    MLFLOW_TRACKING_URI, or as paths.mlruns_dir if it is the default store's mlflow.db."""
    if store.name == "mlflow.db":
        where, env = [f"paths.mlruns_dir={store.parent}"], {"MLFLOW_TRACKING_URI": None}
    else:
        where, env = [], {"MLFLOW_TRACKING_URI": f"sqlite:///{store}"}
    return run_app(
        "data=digits",
        f"paths.data_dir={data_dir or tmp_path / 'data'}",
        f"hydra.run.dir={tmp_path / 'hydra'}",
        *where,
        *overrides,
        env=env,
    )


def one_line_naming(result, folder: Path, setting: str) -> str:
    """The one error line of a run that hit a full disk: it names `folder` and `setting`;
    there is no traceback and no other error line."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "Traceback" not in output and "Logging error" not in output, output[-3000:]
    assert "[SQL:" not in output, output[-3000:]
    errors = [line for line in output.splitlines() if "ERROR" in line or "error:" in line]
    assert len(errors) == 1, output[-3000:]
    assert str(folder) in errors[0] and setting in errors[0], errors[0]
    assert "no space left" in errors[0], errors[0]
    return errors[0]


def half_written(folder: Path) -> list[Path]:
    """Temp files left in or below `folder` (what a killed or failed write leaves)."""
    return [p for p in folder.rglob("*") if p.name.endswith((".part", ".tmp"))]


def runs(db: Path) -> dict[str, tuple[str, dict]]:
    """run id → (status, tags) of every run in a SQLite store."""
    found = {
        run_id: (status, {})
        for run_id, status in sqlite_rows(db, "SELECT run_uuid, status FROM runs")
    }
    for run_id, key, value in sqlite_rows(db, "SELECT run_uuid, key, value FROM tags"):
        found[run_id][1][key] = value
    return found


def test_a_data_folder_too_small_to_preprocess_is_one_line_and_leaves_no_cache(tmp_path):
    with small_disk(tmp_path / "small", "100k") as data_dir:
        store = tmp_path / "s.db"
        result = app(tmp_path, "stages=[preprocess]", store=store, data_dir=data_dir)
        one_line_naming(result, data_dir / "processed", "paths.data_dir")
        assert half_written(data_dir) == []
        assert list((data_dir / "processed").glob("*.npz")) == []  # nothing a rerun would trust

        resize(data_dir, "10m")
        again = app(tmp_path, "stages=[preprocess]", store=store, data_dir=data_dir)
        assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
        assert len(list((data_dir / "processed").glob("*.npz"))) == 1


@pytest.mark.slow
def test_a_full_artifact_folder_ends_the_run_failed_with_the_reason(tmp_path, digits_prepared):
    """The store has room, its artifacts' disk none: the run is recorded FAILED, its reason
    the full disk, and the command is one line."""
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    store = store_dir / "s.db"
    with small_disk(store_dir / "artifacts", "64k") as artifacts:
        fill(artifacts)
        result = app(tmp_path, *TRAIN_ONCE, store=store)
        line = one_line_naming(result, artifacts, "MLFLOW_TRACKING_URI")
        (status, tags), *others = runs(store).values()
        assert others == [] and status == "FAILED", runs(store)
        assert "No space left on device" in tags["failure_reason"], tags

        (artifacts / "filler").unlink()
        again = app(tmp_path, *TRAIN_ONCE, store=store)
        assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
        assert sorted(s for s, _ in runs(store).values()) == ["FAILED", "FINISHED"], line


@pytest.mark.slow
def test_a_store_filling_up_mid_run_is_one_line_and_a_rerun_closes_its_run(
    tmp_path, digits_prepared
):
    """The SQLite store's own disk fills up while both families train and log their
    models: one line naming the store's folder; the store cannot record anything more, so
    the runs cut short are closed by the next run once there is space (best effort), and
    none of them is FINISHED."""
    with small_disk(tmp_path / "mlruns", "20m") as store_dir:
        store = store_dir / "mlflow.db"  # the default store, in paths.mlruns_dir
        first = app(tmp_path, *TRAIN_ONCE, store=store)  # makes the store, with room
        assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
        # Room for a few more pages, not for two runs with their models and metrics.
        resize(store_dir, f"{used_kib(store_dir) + 64}k")
        result = app(tmp_path, "stages=[train]", "train.epochs=5", store=store)
        one_line_naming(result, store_dir, "paths.mlruns_dir")
        cut_short = {run_id for run_id, (status, _) in runs(store).items() if status != "FINISHED"}
        assert cut_short and len(runs(store)) == 3, runs(store)
        assert half_written(store_dir) == []

        resize(store_dir, "40m")
        again = app(tmp_path, *TRAIN_ONCE, store=store)
        assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
        after = runs(store)
        assert {after[run_id][0] for run_id in cut_short} <= {"FAILED", "KILLED"}, after
        for run_id in cut_short:  # recorded FAILED where the store still took the reason
            status, tags = after[run_id]
            reason = tags.get("failure_reason", "")
            assert status == "KILLED" or "disk is full" in reason or "No space left" in reason
        assert sum(status == "FINISHED" for status, _ in after.values()) == 2, after


def test_a_full_hydra_output_folder_is_one_line_naming_hydra_run_dir(tmp_path):
    with small_disk(tmp_path / "outputs", "8k") as outputs:
        fill(outputs)
        result = run_app(
            "data=digits",
            "stages=[preprocess]",
            f"paths.data_dir={tmp_path / 'data'}",
            f"hydra.run.dir={outputs / 'run'}",
        )
        one_line_naming(result, outputs / "run", "hydra.run.dir")


def test_a_log_file_filling_up_mid_run_is_one_line_not_a_traceback_per_record(tmp_path):
    """Room for Hydra's three config files, none for the log: one line, not a
    '--- Logging error ---' traceback for every line logged."""
    with small_disk(tmp_path / "outputs", "12k") as outputs:
        result = run_app(
            "data=digits",
            "stages=[preprocess]",
            f"paths.data_dir={tmp_path / 'data'}",
            f"hydra.run.dir={outputs / 'run'}",
        )
        one_line_naming(result, outputs / "run", "hydra.run.dir")
        assert re.search(r"preprocess: wrote", result.stdout + result.stderr)
