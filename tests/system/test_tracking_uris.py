"""A mistaken MLFLOW_TRACKING_URI is one line naming it (password redacted) and the fix, exit
code 2, within seconds, before any run is opened: a file store or a plain folder, a web
server that is not MLflow, a server or database nobody answers on, a scheme MLflow cannot
track to, a database whose driver is not installed (pipeline/tracking/urls.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import TRAIN_ONCE, free_port, run_app, wait_http

SECRET = "s3cr3t-pa55"
SECONDS = 60  # the app's start on a loaded 2-core machine included; MLflow's retries took 2 min


def _app(tmp_path: Path, uri: str, *overrides: str):
    """`python -m pipeline` on the digits prepared under tmp_path/data, tracking to uri."""
    return run_app(
        "data=digits",
        f"paths.data_dir={tmp_path / 'data'}",
        f"hydra.run.dir={tmp_path / 'hydra'}",
        *(overrides or TRAIN_ONCE),
        env={"MLFLOW_TRACKING_URI": uri},
    )


def _one_line(result, *expected: str) -> str:
    """The one error line of a run that ended 2 with no traceback, holding every expected
    text and no password; the line."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    problems = [line for line in output.splitlines() if "][WARNING]" in line or "][ERROR]" in line]
    assert len(problems) == 1 and "Traceback" not in output, output[-3000:]
    assert SECRET not in output
    for text in expected:
        assert text in problems[0], problems[0]
    return problems[0]


@pytest.fixture
def web_server(tmp_path):
    """http://127.0.0.1:<port> of `python -m http.server` over a folder of its own: 404 for
    every MLflow API path but the experiment searches, which answer 200 with an HTML page."""
    folder = tmp_path / "site"
    for api in ("search", "get-by-name"):
        page = folder / "api" / "2.0" / "mlflow" / "experiments" / api
        page.mkdir(parents=True)
        (page / "index.html").write_text("<html><body>It works!</body></html>")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/", server, seconds=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


@pytest.mark.parametrize("form", ["file://", "plain path"])
def test_a_file_store_or_a_folder_is_one_line_suggesting_sqlite(tmp_path, digits_prepared, form):
    folder = tmp_path / "runs"
    uri = folder.as_uri() if form == "file://" else str(folder)
    _one_line(
        _app(tmp_path, uri),
        f"MLFLOW_TRACKING_URI={uri} is a folder",
        f"sqlite:///{folder}/mlflow.db",
        "unset it",
    )
    assert not folder.exists()  # no file store was begun


def test_a_web_server_that_is_not_mlflow_is_named_as_such(tmp_path, digits_prepared, web_server):
    uri = web_server.replace("http://", f"http://alice:{SECRET}@")
    start = time.monotonic()
    line = _one_line(
        _app(tmp_path, uri),
        f"MLFLOW_TRACKING_URI={web_server.replace('http://', 'http://alice:***@')} is not an "
        "MLflow tracking server",
        "HTTP 200 (text/html, server SimpleHTTP",
        "make server",
    )
    assert time.monotonic() - start < SECONDS, line


def test_a_web_server_answering_404_is_named_too(tmp_path, digits_prepared, web_server):
    _one_line(
        _app(tmp_path, f"{web_server}/mlflow"),  # a path where the server has nothing
        "is not an MLflow tracking server",
        "HTTP 404",
        "Wrong host, port or path?",
    )


@pytest.mark.parametrize(
    "stage",
    [("stages=[register]", f"register.run_id={'0' * 32}"), ("stages=[compare]",)],
    ids=["register", "compare"],
)
def test_register_and_compare_reach_the_same_check(tmp_path, web_server, stage):
    _one_line(_app(tmp_path, web_server, *stage), "is not an MLflow tracking server")


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("ftp://127.0.0.1/runs", "MLflow cannot track to ftp:// URIs"),
        ("htp://127.0.0.1:5000", "did you mean http://?"),
        (f"postgres://bob:{SECRET}@127.0.0.1/mlflow", "did you mean postgresql://?"),
        ("sqlite://mlflow.db", "a SQLite URI is sqlite:/// and a path"),
        ("localhost:5000", "did you mean MLFLOW_TRACKING_URI=http://localhost:5000?"),
        ("127.0.0.1:5000", "did you mean MLFLOW_TRACKING_URI=http://127.0.0.1:5000?"),
    ],
)
def test_a_scheme_mlflow_cannot_track_to_is_one_line(tmp_path, digits_prepared, uri, expected):
    _one_line(_app(tmp_path, uri), expected, "MLFLOW_TRACKING_URI=")


@pytest.mark.parametrize(
    ("scheme", "driver"), [("postgresql+psycopg2", "psycopg2"), ("mysql", "MySQLdb")]
)
def test_a_database_without_its_driver_is_one_line(tmp_path, digits_prepared, scheme, driver):
    _one_line(
        _app(tmp_path, f"{scheme}://bob:{SECRET}@127.0.0.1:{free_port()}/mlflow"),
        f"{scheme}://bob:***@127.0.0.1",
        f"needs the database driver {driver}, which is not installed",
    )


def test_a_database_nobody_answers_on_is_one_line_within_seconds(tmp_path, digits_prepared):
    start = time.monotonic()
    _one_line(
        _app(tmp_path, f"postgresql://bob:{SECRET}@127.0.0.1:{free_port()}/mlflow"),
        "cannot reach the database of MLFLOW_TRACKING_URI=postgresql://bob:***@127.0.0.1:",
        "Connection refused",
    )
    assert time.monotonic() - start < SECONDS  # MLflow's own retries took ~2 minutes


def test_a_tracking_server_nobody_answers_on_is_one_line_within_seconds(tmp_path, digits_prepared):
    start = time.monotonic()
    _one_line(
        _app(tmp_path, f"http://127.0.0.1:{free_port()}"),  # MLflow's retries were warnings
        "cannot reach the tracking server http://127.0.0.1:",
        "[Errno 111] Connection refused",
    )
    assert time.monotonic() - start < SECONDS


def test_a_tracking_server_that_never_answers_is_one_line_at_its_timeout(tmp_path, digits_prepared):
    with socket.create_server(("127.0.0.1", 0)) as stalled:  # connects, never answers
        port = stalled.getsockname()[1]
        start = time.monotonic()
        result = run_app(
            "data=digits",
            f"paths.data_dir={tmp_path / 'data'}",
            f"hydra.run.dir={tmp_path / 'hydra'}",
            *TRAIN_ONCE,
            env={
                "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}",
                "MLFLOW_HTTP_REQUEST_TIMEOUT": "2",
            },
        )
    _one_line(
        result, f"cannot reach the tracking server http://127.0.0.1:{port}: no answer within 2 s"
    )
    assert time.monotonic() - start < SECONDS
