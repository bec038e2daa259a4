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
import sys
import time
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from pipeline.paths import PROJECT_ROOT

START_SECONDS = 240  # mlflow server creates its tables and starts uvicorn: slow on a busy box


def _free_port(family: int = socket.AF_INET, host: str = "127.0.0.1") -> int:
    with socket.socket(family) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _has_ipv6_loopback() -> bool:
    try:
        _free_port(socket.AF_INET6, "::1")
    except OSError:
        return False
    return True


def _env(**extra: str) -> dict[str, str]:
    """The test's environment for ui.py: one uvicorn worker and no job runner, for speed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_SERVER_")}
    env.pop("MLFLOW_TRACKING_URI", None)
    return {**env, "MLFLOW_WORKERS": "1", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **extra}


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgrp) of a process, or None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1]), int(fields[2])


def _live_processes() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, pgrp) of every process that is not a zombie."""
    live = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _proc_stat(int(entry.name))) and stat[0] != "Z":
            live[int(entry.name)] = stat[1:]
    return live


def _descendants(pid: int) -> set[int]:
    live = _live_processes()
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, (ppid, _) in live.items() if ppid in frontier} - found
        found |= frontier
    return found


def _groups(pids: set[int]) -> set[int]:
    return {stat[2] for p in pids if (stat := _proc_stat(p))}


def _survivors(pids: set[int], pgids: set[int]) -> dict[int, str]:
    """The processes still alive among pids, or in one of the process groups pgids."""
    return {
        p: Path(f"/proc/{p}/cmdline").read_text().replace("\0", " ")[:120]
        for p, (_, pgrp) in _live_processes().items()
        if (p in pids or pgrp in pgids) and Path(f"/proc/{p}/cmdline").exists()
    }


def _get(host: str, port: int, path: str, host_header: str | None = None) -> int:
    """The status of GET path from the server at host:port (a loopback address)."""
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        headers = {"Host": host_header} if host_header else {}
        connection.request("GET", path, headers=headers)
        return connection.getresponse().status
    finally:
        connection.close()


def _wait_for_health(process: subprocess.Popen, host: str, port: int) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        assert process.poll() is None, f"ui.py exited with {process.returncode}"
        try:
            if _get(host, port, "/health") == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"the server on {host}:{port} did not answer in {START_SECONDS} s")


def _start(args: list[str], tmp_path: Path, env: dict[str, str]) -> subprocess.Popen:
    """ui.py in a session of its own, its output (and the server's) in tmp_path/ui.log."""
    # A file, not a pipe: nobody reads while the server runs, and a full pipe would block it.
    with open(tmp_path / "ui.log", "w") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipeline.serve.ui",
                "--mlruns",
                str(tmp_path / "mlruns"),
                *args,
            ],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop(
    process: subprocess.Popen,
    pids: frozenset[int] = frozenset(),
    pgids: frozenset[int] = frozenset(),
) -> None:
    """SIGTERM ui.py and make sure that it and everything it started end, whatever ui.py does.

    pids and pgids: processes seen earlier, which an exited ui.py no longer leads us to.
    """
    pids = pids | _descendants(process.pid) | {process.pid}
    # _start gave ui.py a session of its own, so its pid is its process group's id.
    pgids = (pgids | _groups(pids) | {process.pid}) - {os.getpgid(0)}
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    for pid in _survivors(pids, pgids):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextmanager
def _serving(
    args: list[str],
    tmp_path: Path,
    env: dict[str, str],
    host: str = "127.0.0.1",
    port: int | None = None,
):
    """ui.py serving on a free port, answering on host (a loopback address), then stopped."""
    port = port or _free_port()
    process = _start(["--port", str(port), *args], tmp_path, env)
    try:
        _wait_for_health(process, host, port)
        yield process, port
    finally:
        _stop(process)


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
    with _serving([], tmp_path, _env(HOST="0.0.0.0")) as (process, port):
        assert _listening_addresses(port) == {"0100007F"}  # 127.0.0.1, and nothing wider


@pytest.mark.slow
@pytest.mark.skipif(not _has_ipv6_loopback(), reason="this machine has no IPv6 loopback")
def test_an_ipv6_host_starts_and_answers(tmp_path):
    port = _free_port(socket.AF_INET6, "::1")
    with _serving(["--host", "::1"], tmp_path, _env(), host="::1", port=port) as (process, _):
        assert _get("::1", port, "/api/2.0/mlflow/experiments/search?max_results=1") == 200


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """ui.py run to its end: for the command lines it refuses before starting a server."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline.serve.ui", "--mlruns", str(tmp_path / "mlruns"), *args],
        cwd=PROJECT_ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _wait_until_it_starts_the_server(process: subprocess.Popen, tmp_path: Path) -> str:
    """ui.py's output once it has checked the port and launches `mlflow server`."""
    deadline = time.monotonic() + 60
    while "MLflow UI:" not in (output := (tmp_path / "ui.log").read_text()):
        assert process.poll() is None, f"ui.py exited with {process.returncode}:\n{output}"
        assert time.monotonic() < deadline, output
        time.sleep(0.1)
    return output


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
        f"error: port {port} on {host} is already in use (another `make ui`?). "
        f"Stop that server, or pick another port: make ui PORT={port + 1}"
    ]


def test_an_address_of_another_machine_is_one_line_of_error_not_a_taken_port(tmp_path):
    # 192.0.2.1 is TEST-NET-1 (RFC 5737), never an address of this machine; nothing is sent.
    result = _run(["--host", "192.0.2.1", "--port", str(_free_port())], tmp_path)
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
        process = _start(["--host", "::1", "--port", str(port)], tmp_path, _env())
        try:
            output = _wait_until_it_starts_the_server(process, tmp_path)
        finally:
            _stop(process)
    assert f"MLflow UI: http://[::1]:{port}" in output


def test_binding_beyond_loopback_warns_that_there_is_no_authentication(tmp_path):
    # The warning comes before the server starts: read it, then stop ui.py at once, so
    # nothing stays reachable from the network for longer than it takes to start.
    process = _start(["--host", "0.0.0.0", "--port", str(_free_port())], tmp_path, _env())
    try:
        warning = _wait_until_it_starts_the_server(process, tmp_path)
    finally:
        _stop(process)
    assert "NO authentication" in warning
    assert "basic-auth" in warning and "reverse proxy" in warning
    assert "--allowed-hosts" in warning


@pytest.mark.slow
def test_allowed_hosts_accepts_the_named_host_and_refuses_a_spoofed_one(tmp_path):
    search = "/api/2.0/mlflow/experiments/search?max_results=1"
    with _serving(["--allowed-hosts", "mlflow-box.test"], tmp_path, _env()) as (_, port):
        assert _get("127.0.0.1", port, search, host_header=f"mlflow-box.test:{port}") == 200
        assert _get("127.0.0.1", port, search, host_header="mlflow-box.test") == 200
        assert _get("127.0.0.1", port, search, host_header="localhost") == 403
        assert _get("127.0.0.1", port, search, host_header=f"evil.test:{port}") == 403


@pytest.mark.slow
def test_sigterm_stops_every_process_the_server_started(tmp_path):
    # Two uvicorn workers and MLflow's job runner: the children that used to outlive ui.py.
    env = _env(MLFLOW_WORKERS="2", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="true")
    port = _free_port()
    process = _start(["--port", str(port)], tmp_path, env)
    pids, pgids = set(), set()
    try:
        _wait_for_health(process, "127.0.0.1", port)
        pids |= _descendants(process.pid)
        pgids |= _groups(pids)
        assert len(pids) >= 3, "expected the mlflow CLI, uvicorn and its workers"
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        assert process.returncode == 0
        assert _survivors(pids, pgids) == {}
    finally:
        _stop(process, frozenset(pids), frozenset(pgids))
