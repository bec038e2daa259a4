"""The team server has a login: `make server HOST=0.0.0.0` (python -m pipeline.serve.server
bound beyond loopback) runs MLflow's basic-auth app on the project's PostgreSQL cluster.
A job without the password is refused with one line and exit 2; with MLflow's standard
MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD it logs its run.

Needs Debian's postgresql and the postgres extra, as test_cluster.py; skipped where they are
missing, except under CI=true: a failure there.
"""

import secrets
import shutil
import signal
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import free_port, require, run_app, wait_http
from mlflow.server import get_app_client
from mlflow.tracking import MlflowClient

from pipeline.serve import postgres

pytestmark = pytest.mark.slow

ADMIN = "admin"


def _session_command_lines(leader: int) -> list[str]:
    """The command lines of every process in the session of `leader` (what ps shows)."""
    lines = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            session = int(stat.read_text().rsplit(")", 1)[1].split()[3])
            if session == leader:
                lines.append((stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (OSError, IndexError, ValueError):
            continue  # it ended while we looked
    return lines


@pytest.fixture(scope="module")
def server():
    """`make server HOST=0.0.0.0` on free ports, its admin password from the environment."""
    require("PostgreSQL", postgres.bindir)
    require("the postgres extra (psycopg)", lambda: __import__("psycopg"))
    folder = Path(tempfile.mkdtemp(prefix="pipeline-auth-server-"))
    folder.chmod(0o755)  # the postgres user (as root) must reach it
    password = secrets.token_urlsafe(18)
    port, pg_port = free_port(), free_port()
    log = folder / "server.log"
    process = run_app(
        *("--host", "0.0.0.0", "--port", port, "--pg-port", pg_port),
        *("--mlruns", folder / "mlruns"),
        module="pipeline.serve.server",
        env={"PIPELINE_ADMIN_PASSWORD": password},
        popen=True,
        log=log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", process, log=log)
        command_lines = _session_command_lines(process.pid)
        yield SimpleNamespace(
            uri=url, password=password, log=log, folder=folder, command_lines=command_lines
        )
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
    try:
        assert process.returncode == 0, log.read_text()[-3000:]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _job(server, tmp_path, data_dir, experiment="auth-digits", **credentials):
    """`python -m pipeline data=digits` (ours only, 3 epochs, its model logged through the
    server) logging to the server with the given MLFLOW_TRACKING_USERNAME / _PASSWORD."""
    return run_app(
        "data=digits",
        "baseline=none",
        "train.epochs=3",
        f"tracking.experiment={experiment}",
        f"paths.data_dir={data_dir}",
        f"hydra.run.dir={tmp_path / 'out'}",
        env={
            "MLFLOW_TRACKING_URI": server.uri,
            "MLFLOW_TRACKING_USERNAME": credentials.get("username"),
            "MLFLOW_TRACKING_PASSWORD": credentials.get("password"),
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        },
    )


def _assert_refused_in_one_line(done) -> None:
    """Exit 2, no traceback, one error line (the app logs it) that names the fix."""
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    errors = [line for line in output.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1, output[-3000:]
    assert "MLFLOW_TRACKING_PASSWORD" in errors[0], errors[0]


def test_a_job_without_the_password_is_refused_in_one_line(server, tmp_path, digits_prepared):
    _assert_refused_in_one_line(_job(server, tmp_path, digits_prepared))


def test_a_job_with_a_wrong_password_is_refused_in_one_line(server, tmp_path, digits_prepared):
    done = _job(server, tmp_path, digits_prepared, username=ADMIN, password="not-the-password")
    _assert_refused_in_one_line(done)


def test_a_job_with_the_password_logs_its_run(server, tmp_path, digits_prepared, monkeypatch):
    done = _job(server, tmp_path, digits_prepared, username=ADMIN, password=server.password)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", server.password)
    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("auth-digits")
    (run,) = client.search_runs([experiment.experiment_id], "tags.kind = 'training'")
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test_accuracy"] > 0.5
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # through the server


def test_a_user_the_admin_adds_logs_to_an_experiment_of_the_admins(
    server, tmp_path, digits_prepared, monkeypatch
):
    # The admin's credentials for MLflow's own clients (the tracking and the auth one).
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", server.password)
    users = get_app_client("basic-auth", tracking_uri=server.uri)
    alice_password = secrets.token_urlsafe(18)
    users.create_user("alice", alice_password)
    client = MlflowClient(server.uri)
    shared = client.create_experiment("auth-team")  # the admin's: alice has the default, EDIT

    done = _job(
        server,
        tmp_path,
        digits_prepared,
        username="alice",
        password=alice_password,
        experiment="auth-team",
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    (run,) = client.search_runs([shared], "tags.kind = 'training'")
    assert run.info.status == "FINISHED" and run.info.user_id == "alice"


def test_the_server_answers_no_one_without_a_login(server):
    url = f"{server.uri}/api/2.0/mlflow/experiments/search?max_results=5"
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with pytest.raises(urllib.error.HTTPError) as refused:
        direct.open(url, timeout=30)
    assert refused.value.code == 401


def test_the_admin_password_is_on_no_command_line_and_in_no_log(server):
    assert server.command_lines, "no process of the server was found"
    assert not [line for line in server.command_lines if server.password in line]
    assert server.password not in server.log.read_text()
