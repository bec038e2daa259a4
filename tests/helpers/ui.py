"""`python -m pipeline.serve.ui` (what `make ui` runs) as the tests start and stop it:
in a session of its own, its output in a file, and always stopped with every process it
started (test_ui, test_misbehaviour)."""

from __future__ import annotations

import os
import signal
import subprocess
from contextlib import contextmanager, suppress
from pathlib import Path

from helpers import free_port, run_app, wait_http


def ui_env(**extra: str) -> dict[str, str | None]:
    """The changes to the environment for ui.py: no tracking URI or server settings from
    outside, one uvicorn worker and no job runner, for speed."""
    outside = {k: None for k in os.environ if k.startswith("MLFLOW_SERVER_")}
    return {
        **outside,
        "MLFLOW_TRACKING_URI": None,
        "MLFLOW_WORKERS": "1",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        **extra,
    }


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgrp) of a process, or None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1]), int(fields[2])


def live_processes() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, pgrp) of every process that is not a zombie."""
    live = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := proc_stat(int(entry.name))) and stat[0] != "Z":
            live[int(entry.name)] = stat[1:]
    return live


def descendants(pid: int) -> set[int]:
    live = live_processes()
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, (ppid, _) in live.items() if ppid in frontier} - found
        found |= frontier
    return found


def groups(pids: set[int]) -> set[int]:
    return {stat[2] for p in pids if (stat := proc_stat(p))}


def survivors(pids: set[int], pgids: set[int]) -> dict[int, str]:
    """The processes still alive among pids, or in one of the process groups pgids."""
    return {
        p: Path(f"/proc/{p}/cmdline").read_text().replace("\0", " ")[:120]
        for p, (_, pgrp) in live_processes().items()
        if (p in pids or pgrp in pgids) and Path(f"/proc/{p}/cmdline").exists()
    }


def start_ui(args: list[str], folder: Path, env: dict[str, str | None]) -> subprocess.Popen:
    """ui.py on the store folder/mlruns, in a session of its own, its output (and the
    server's) in folder/ui.log."""
    # A file, not a pipe: nobody reads while the server runs, and a full pipe would block it.
    return run_app(
        "--mlruns",
        folder / "mlruns",
        *args,
        module="pipeline.serve.ui",
        env=env,
        popen=True,
        log=folder / "ui.log",
    )


def stop_ui(
    process: subprocess.Popen,
    pids: frozenset[int] = frozenset(),
    pgids: frozenset[int] = frozenset(),
) -> None:
    """SIGTERM ui.py and make sure that it and everything it started end, whatever ui.py does.

    pids and pgids: processes seen earlier, which an exited ui.py no longer leads us to.
    """
    pids = pids | descendants(process.pid) | {process.pid}
    # start_ui gave ui.py a session of its own, so its pid is its process group's id.
    pgids = (pgids | groups(pids) | {process.pid}) - {os.getpgid(0)}
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    for pid in survivors(pids, pgids):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def health_url(host: str, port: int) -> str:
    """/health of a server on a loopback address (IPv6 ones in brackets)."""
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/health"


@contextmanager
def serving_ui(
    args: list[str],
    folder: Path,
    env: dict[str, str | None],
    host: str = "127.0.0.1",
    port: int | None = None,
):
    """ui.py serving on a free port, answering on host (a loopback address), then stopped."""
    port = port or free_port()
    process = start_ui(["--port", str(port), *args], folder, env)
    try:
        wait_http(health_url(host, port), process, log=folder / "ui.log")
        yield process, port
    finally:
        stop_ui(process)
