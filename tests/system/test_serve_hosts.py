"""`make serve` answers only requests addressed to it, as `make ui` does: a Host header it
was not told about (a page elsewhere reaching it by DNS rebinding) gets a short 4xx naming
the fix, `--allowed-hosts` names the hosts it serves, and the default is `make ui`'s.

Each test trains and registers a model of ours on the digits with the real app, starts
the real `python -m pipeline.serve.model` (what `make serve` runs) on a free port, and
POSTs a digit to 127.0.0.1 with the Host header of each case.
"""

from __future__ import annotations

import http.client
import json
import os
from pathlib import Path

import pytest
from helpers import free_port, run_app, wait_for
from helpers.ui import stop_ui
from mlflow import MlflowClient

from pipeline.data import dataset

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("digits_prepared")]


@pytest.fixture
def digits_champion(tmp_path, make_cfg):
    """digits-classifier@champion: a run of ours on the digits, registered; and a digit."""
    common = (f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'hydra'}")
    made = run_app(*common, "data=digits", "stages=[train]", "baseline=none", "train.epochs=1")
    assert made.returncode == 0, (made.stdout + made.stderr)[-3000:]
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])  # this test's store (conftest)
    (run,) = client.search_runs([client.get_experiment_by_name("digits").experiment_id])
    registered = run_app(*common, "stages=[register]", f"register.run_id={run.info.run_id}")
    assert registered.returncode == 0, (registered.stdout + registered.stderr)[-3000:]
    return dataset.load(make_cfg("data=digits").data).x("test")[:1]


def _serve(tmp_path: Path, *args: str):
    """model.py serving digits-classifier@champion on a free port, once it says ready."""
    port, log = free_port(), tmp_path / "serve.log"
    process = run_app(
        "--model",
        "digits-classifier",
        "--port",
        port,
        *args,
        module="pipeline.serve.model",
        popen=True,
        log=log,
    )
    try:
        wait_for("ready", lambda: "ready:" in log.read_text(), process, log=log)
    except BaseException:
        stop_ui(process)
        raise
    return process, port, log


def _post(port: int, host_header: str, rows) -> tuple[int, str]:
    """(status, body) of POST /invocations to 127.0.0.1:port with this Host header."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        body = json.dumps({"inputs": rows.tolist()})
        headers = {"Host": host_header, "Content-Type": "application/json"}
        connection.request("POST", "/invocations", body, headers)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def test_a_foreign_host_is_refused_naming_the_fix_and_this_machines_names_are_served(
    tmp_path, digits_champion
):
    process, port, log = _serve(tmp_path)
    try:
        for foreign in ("evil.example", f"evil.example:{port}"):
            status, body = _post(port, foreign, digits_champion)
            assert status == 403, (status, body)
            assert len(body) < 500 and "predictions" not in body, body
            assert "--allowed-hosts evil.example" in body, body  # the fix
            assert "ALLOWED_HOSTS=evil.example" in body, body  # as make serve takes it
        for local in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost"):
            status, body = _post(port, local, digits_champion)
            assert status == 200 and "predictions" in json.loads(body), (local, status, body)
    finally:
        stop_ui(process)
    assert "403 Forbidden" in log.read_text() and "evil.example" in log.read_text()


def test_allowed_hosts_names_the_only_hosts_served_as_make_ui_does(tmp_path, digits_champion):
    """As make ui: a name given is served with or without the port; any other name,
    localhost included, is refused; the readiness check still reaches /ping."""
    process, port, _ = _serve(tmp_path, "--allowed-hosts", "serve-box.test")
    try:
        for named in (f"serve-box.test:{port}", "serve-box.test"):
            status, body = _post(port, named, digits_champion)
            assert status == 200 and "predictions" in json.loads(body), (named, status, body)
        for other in (f"localhost:{port}", f"evil.example:{port}"):
            status, body = _post(port, other, digits_champion)
            assert status == 403, (other, status, body)
    finally:
        stop_ui(process)
