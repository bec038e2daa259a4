"""Helpers shared by the tests: the one way to run the app (or another of the project's
modules) as a subprocess, and bounded waits for what such a process does.

pytest puts tests/ on sys.path (its conftest.py is the rootdir's), so `from helpers import …`
works from every folder below it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from helpers import warm
from pipeline.paths import PROJECT_ROOT

WAIT = 300  # seconds: generous, for a loaded CI machine; every wait ends as soon as it can

# The analyze stage cut down to seconds on the 8×8 digits (test_analyze, test_e2e_ui).
SMALL_ANALYSIS = [
    "analyze.memorize_subset=300",
    "analyze.memorize_wide_epochs=40",
    "analyze.memorize_epochs=10",
    "analyze.lr_epochs=5",
    "analyze.seeds=3",
    "analyze.noise_images=200",
]

# One quick training run of ours alone, on data prepared before: one epoch, no model logged.
TRAIN_ONCE = ["stages=[train]", "baseline=none", "train.epochs=1", "tracking.log_model=false"]

T = TypeVar("T")


def compose_config(data_dir: Path | str, *overrides: str) -> DictConfig:
    """conf/config.yaml composed with overrides, as the app composes it; data in data_dir."""
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[f"paths.data_dir={data_dir}", *overrides])


def free_port(family: int = socket.AF_INET, host: str = "127.0.0.1") -> int:
    """A TCP port on host (127.0.0.1 unless told) that nothing listens on right now."""
    with socket.socket(family) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def tracking_server_down(port: int | None = None) -> dict[str, str]:
    """Changes to the environment that point MLflow at http://127.0.0.1:port, where nothing
    listens (a free port unless told), and make it give up at once instead of retrying."""
    return {
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port or free_port()}",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    }


def run_app(
    *args: Any,
    env: dict[str, str | None] | None = None,
    popen: bool = False,
    timeout: float = WAIT,
    module: str = "pipeline",
    log: Path | None = None,
    cold: bool = False,
):
    """`python -m <module> <args>` from the project's root, as a user runs it.

    env: changes to this process's environment; a value of None removes that variable.
    popen: start it and return the Popen, in a session of its own (so that a signal can go
    to its whole process group), its stdout and stderr together in a pipe, or in the file
    `log` (a pipe nobody reads while a server runs would fill and block it).
    Otherwise: run it to its end (at most timeout seconds), its output captured.

    The app itself (module pipeline) is forked warm from a server that imported it once
    (helpers/warm.py: the same process but for its imports, ~7 CPU-s fewer); cold=True, or
    a changed setting that is read at import, starts a fresh interpreter.
    """
    command = [sys.executable, "-m", module, *map(str, args)]
    environment = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
    if not cold and warm.can_run_warm(module, environment):
        argv = list(map(str, args))
        return warm.popen(argv, environment, log) if popen else warm.run(argv, environment, timeout)
    if popen:
        with open(log, "w") if log is not None else contextlib.nullcontext() as output:
            return subprocess.Popen(
                command,
                cwd=PROJECT_ROOT,
                env=environment,
                stdout=subprocess.PIPE if output is None else output,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
    return subprocess.run(
        command, cwd=PROJECT_ROOT, env=environment, capture_output=True, text=True, timeout=timeout
    )


def _tail(process: subprocess.Popen | None, log: Path | None) -> str:
    """The end of what a process wrote: its pipe (once it has ended) or else its log file."""
    if process is not None and process.poll() is not None:
        for pipe in (process.stdout, process.stderr):
            if pipe is not None and not pipe.closed:
                return pipe.read()[-3000:]
    if log is not None and log.exists():
        return log.read_text(errors="replace")[-3000:]
    return ""


def wait_for(
    what: str,
    check: Callable[[], T],
    process: subprocess.Popen | None = None,
    seconds: float = WAIT,
    every: float = 0.2,
    log: Path | None = None,
) -> T:
    """Poll check() until it returns something truthy, and return that. Fails with what the
    process wrote (its pipe, or the file log) if it ends first, and at the deadline."""
    deadline = time.monotonic() + seconds
    while not (found := check()):
        if process is not None and process.poll() is not None:
            pytest.fail(
                f"the process ended ({process.returncode}) before {what}:\n{_tail(process, log)}"
            )
        if time.monotonic() >= deadline:
            tail = _tail(None, log)
            pytest.fail(f"no {what} within {seconds} s" + (f":\n{tail}" if tail else ""))
        time.sleep(every)
    return found


# Loopback servers only: no proxy from the environment may come between.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def wait_http(
    url: str,
    process: subprocess.Popen | None = None,
    seconds: float = WAIT,
    log: Path | None = None,
) -> None:
    """Wait until GET url answers 200; fail (with the tail of log) if process ends first."""

    def answers() -> bool:
        try:
            with _DIRECT.open(url, timeout=10) as response:
                return response.status == 200
        except OSError:
            return False

    wait_for(f"answer from {url}", answers, process, seconds, every=0.5, log=log)


def sqlite_rows(db: Path, sql: str, params: tuple = ()) -> list[tuple]:
    """The rows of a query on a SQLite file opened read-only (an MlflowClient would race the
    app to create the tables); [] while the file or its tables do not exist yet, or while it
    is locked for a moment."""
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as connection:
            return connection.execute(sql, params).fetchall()
    except sqlite3.Error:
        return []


def running_training_runs(db: Path) -> int:
    """How many training runs of the SQLite store db are RUNNING (0 while it is made)."""
    rows = sqlite_rows(
        db,
        "SELECT COUNT(*) FROM runs JOIN tags ON runs.run_uuid = tags.run_uuid WHERE "
        "tags.key = 'kind' AND tags.value = 'training' AND runs.status = 'RUNNING'",
    )
    return rows[0][0] if rows else 0


def ask_served_model(
    port: int, rows, server: subprocess.Popen, seconds: float = WAIT, params: dict | None = None
):
    """POST rows (and params, if any) to a starting `mlflow models serve` on
    127.0.0.1:port until it answers; return the decoded answer. Fails at once with the
    server's output if it dies."""
    body = json.dumps({"inputs": rows.tolist(), **({"params": params} if params else {})}).encode()

    def answer():
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"}
        )
        try:
            with _DIRECT.open(request, timeout=10) as response:
                return json.loads(response.read())
        except OSError:
            return None

    return wait_for(f"answer from the model server on port {port}", answer, server, seconds, 1)


def real_mnist_or_skip(mirror: str | None = None) -> Path:
    """The folder of the four real MNIST files (mirror, else ../shared/datasets/mnist).

    Skips the test where absent, except under CI=true, where missing real data is a failure.
    """
    from pipeline.data import download

    candidates = [Path(mirror)] if mirror else []
    candidates.append(PROJECT_ROOT.parent / "shared" / "datasets" / "mnist")
    for folder in candidates:
        if all((folder / name).exists() for name in download.MNIST_FILES):
            return folder.resolve()
    message = f"real MNIST not found: set {download.MIRROR_ENV} to a folder with the four .gz files"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


# What a sweep parent's summary/results_by_config.json shows (test_sweep, test_e2e_ui).
RESULTS_BY_CONFIG_COLUMNS = [
    "config",
    "ours val",
    "ours test",
    "sklearn val",
    "sklearn test",
    "ours − sklearn (test)",
    "seeds",
]


def group_alive(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group pgid."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError, ValueError):
            continue
        if int(pgrp) == pgid and state not in ("Z", "X"):
            alive.append(int(stat.parent.name))
    return alive


def require(what: str, check: Callable[[], Any]) -> None:
    """Skip the test if check() finds `what` (an extra, a server binary) missing; in CI,
    where everything is installed, fail it instead."""
    from pipeline.errors import PipelineError

    try:
        check()
    except (ImportError, PipelineError) as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{what} is missing in CI: {e}")
        pytest.skip(f"{what} is not installed here: {e}")
