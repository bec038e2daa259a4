"""`python -m pipeline.serve.ui`: a server that binds where it is told, and is safe to expose.

Each test runs the real ui.py (and so the real `mlflow server`) as a subprocess on a free
port, waits a bounded time, and always stops it and every process it started. Requests go
to 127.0.0.1 or ::1 only, even when the server binds 0.0.0.0.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from helpers import free_port, run_app, wait_for, wait_http
from helpers.ui import (
    descendants,
    groups,
    health_url,
    serving_ui,
    start_ui,
    stop_ui,
    survivors,
    ui_env,
)


def _has_ipv6_loopback() -> bool:
    try:
        free_port(socket.AF_INET6, "::1")
    except OSError:
        return False
    return True


def _get(host: str, port: int, path: str, host_header: str | None = None) -> int:
    """The status of GET path from the server at host:port (a loopback address)."""
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        headers = {"Host": host_header} if host_header else {}
        connection.request("GET", path, headers=headers)
        return connection.getresponse().status
    finally:
        connection.close()


def _listening_addresses(port: int) -> set[str]:
    """The local addresses (hex, as /proc/net/tcp* writes them) listening on port."""
    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                addresses.add(address)
    return addresses


@pytest.mark.slow
def test_the_host_environment_variable_is_ignored_and_the_server_binds_to_loopback(tmp_path):
    with serving_ui([], tmp_path, ui_env(HOST="0.0.0.0")) as (process, port):
        assert _listening_addresses(port) == {"0100007F"}  # 127.0.0.1, and nothing wider


@pytest.mark.slow
@pytest.mark.skipif(not _has_ipv6_loopback(), reason="this machine has no IPv6 loopback")
def test_an_ipv6_host_starts_and_answers(tmp_path):
    port = free_port(socket.AF_INET6, "::1")
    with serving_ui(["--host", "::1"], tmp_path, ui_env(), host="::1", port=port) as (process, _):
        assert _get("::1", port, "/api/2.0/mlflow/experiments/search?max_results=1") == 200


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """ui.py run to its end: for the command lines it refuses before starting a server."""
    return run_app("--mlruns", tmp_path / "mlruns", *args, module="pipeline.serve.ui", env=ui_env())


def _wait_until_it_starts_the_server(process: subprocess.Popen, tmp_path: Path) -> str:
    """ui.py's output once it has checked the port and starts the MLflow server."""
    log = tmp_path / "ui.log"

    def started() -> str:
        output = log.read_text()
        return output if "starting the MLflow UI on" in output else ""

    return wait_for("`starting the MLflow UI` line from ui.py", started, process, log=log)


@pytest.mark.parametrize(
    "family, host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")], ids=["ipv4", "ipv6"]
)
def test_a_taken_port_is_one_line_of_error_and_a_non_zero_exit(tmp_path, family, host):
    if family == socket.AF_INET6 and not _has_ipv6_loopback():
        pytest.skip("this machine has no IPv6 loopback")
    with socket.socket(family) as taken:
        taken.bind((host, 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run(["--host", host, "--port", str(port)], tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"error: port {port} on {host} is already in use (another server?). "
        f"Stop that server, or pick another port: make ui PORT={port + 1}"
    ]


@pytest.mark.parametrize(
    "module, retry",
    [
        ("pipeline.serve.model", "make serve SERVE_PORT"),
        ("pipeline.serve.demo", "make demo DEMO_PORT"),
    ],
)
def test_a_taken_port_names_the_command_that_was_run(tmp_path, module, retry):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_app("--port", port, "--mlruns", tmp_path / "mlruns", module=module)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith(f"pick another port: {retry}={port + 1}")


def test_an_address_of_another_machine_is_one_line_of_error_not_a_taken_port(tmp_path):
    # 192.0.2.1 is TEST-NET-1 (RFC 5737), never an address of this machine; nothing is sent.
    result = _run(["--host", "192.0.2.1", "--port", str(free_port())], tmp_path)
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: cannot serve on 192.0.2.1:")
    assert "already in use" not in result.stderr


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="this machine has no IPv6 loopback")
def test_the_port_check_uses_the_address_family_of_the_host(tmp_path):
    # The port is taken on 127.0.0.1 only: on ::1 it is free, and ui.py must go on to serve.
    with socket.socket(socket.AF_INET) as taken_on_ipv4:
        taken_on_ipv4.bind(("127.0.0.1", 0))
        taken_on_ipv4.listen()
        port = taken_on_ipv4.getsockname()[1]
        process = start_ui(["--host", "::1", "--port", str(port)], tmp_path, ui_env())
        try:
            output = _wait_until_it_starts_the_server(process, tmp_path)
        finally:
            stop_ui(process)
    assert f"starting the MLflow UI on http://[::1]:{port}" in output


def test_binding_beyond_loopback_warns_that_there_is_no_authentication(tmp_path):
    # The warning comes before the server starts: read it, then stop ui.py at once, so
    # nothing stays reachable from the network for longer than it takes to start.
    process = start_ui(["--host", "0.0.0.0", "--port", str(free_port())], tmp_path, ui_env())
    try:
        warning = _wait_until_it_starts_the_server(process, tmp_path)
    finally:
        stop_ui(process)
    assert "NO authentication" in warning
    assert "basic-auth" in warning and "reverse proxy" in warning
    assert "--allowed-hosts" in warning


@pytest.mark.slow
def test_allowed_hosts_accepts_the_named_host_and_refuses_a_spoofed_one(tmp_path):
    search = "/api/2.0/mlflow/experiments/search?max_results=1"
    with serving_ui(["--allowed-hosts", "mlflow-box.test"], tmp_path, ui_env()) as (_, port):
        assert _get("127.0.0.1", port, search, host_header=f"mlflow-box.test:{port}") == 200
        assert _get("127.0.0.1", port, search, host_header="mlflow-box.test") == 200
        assert _get("127.0.0.1", port, search, host_header="localhost") == 403
        assert _get("127.0.0.1", port, search, host_header=f"evil.test:{port}") == 403


@pytest.mark.slow
def test_sigterm_stops_every_process_the_server_started(tmp_path):
    # Two uvicorn workers and MLflow's job runner: the children that used to outlive ui.py.
    env = ui_env(MLFLOW_WORKERS="2", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="true")
    port = free_port()
    process = start_ui(["--port", str(port)], tmp_path, env)
    pids, pgids = set(), set()
    try:
        wait_http(health_url("127.0.0.1", port), process, log=tmp_path / "ui.log")
        pids |= descendants(process.pid)
        pgids |= groups(pids)
        assert len(pids) >= 3, "expected the server, uvicorn's supervisor and its workers"
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        assert process.returncode == 0
        assert survivors(pids, pgids) == {}
    finally:
        stop_ui(process, frozenset(pids), frozenset(pgids))


def test_a_make_ui_killed_by_sigkill_leaves_no_server_behind(tmp_path):
    """SIGKILL (the OOM killer, kill -9) cannot be passed on: the MLflow server that ui.py
    started in a session of its own must notice that ui.py is gone and stop itself."""
    port = free_port()
    process = start_ui(["--port", str(port)], tmp_path, ui_env())
    pids: set[int] = set()
    try:
        wait_http(health_url("127.0.0.1", port), process, log=tmp_path / "ui.log")
        pids = descendants(process.pid)
        assert pids, "expected the MLflow server under ui.py"
        os.killpg(process.pid, signal.SIGKILL)  # ui.py's own group: not the server's session
        process.wait(timeout=60)
        wait_for(
            f"the end of the servers ui.py left ({sorted(pids)})",
            lambda: not survivors(pids, set()),
            seconds=120,
            every=0.5,
        )
    finally:
        stop_ui(process, frozenset(pids))


def test_the_link_is_printed_once_the_server_answers_and_not_before(tmp_path):
    """`make ui` says its link when /health answers: the first request after the line
    succeeds at once (it used to come 27-155 s before the server was up)."""
    port = free_port()
    process = start_ui(["--port", str(port)], tmp_path, ui_env())
    log = tmp_path / "ui.log"
    try:
        wait_for(
            "the UI's link",
            lambda: "MLflow UI: http://127.0.0.1" in log.read_text(),
            process,
            log=log,
        )
        assert _get("127.0.0.1", port, "/health") == 200
        output = log.read_text()
        assert output.index("starting the MLflow UI on") < output.index("MLflow UI: http")
    finally:
        stop_ui(process)
