"""`make ui` / `make server`: the MLflow server over the project's store, on loopback.

    python -m pipeline.serve.ui [--port 5000] [--host 127.0.0.1] [--allowed-hosts NAME,...]

Serves the UI for people and the tracking API for sweep jobs on other machines
(MLFLOW_TRACKING_URI=http://<host>:<port>). It binds to 127.0.0.1 unless `--host` says
otherwise (never because of a HOST environment variable), warns that the server has no
authentication when it binds beyond loopback, and refuses a port that is already taken
with a message instead of a traceback. The server runs in a process group of its own,
and stopping this process (Ctrl-C, SIGTERM, SIGHUP) stops every process of that group.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import ipaddress
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from pipeline import interrupts
from pipeline.paths import from_root
from pipeline.tracking import links

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
GRACE_SECONDS = 10  # for the server to stop on SIGTERM before it gets SIGKILL


class UsageError(Exception):
    """A mistake in the command line: reported as one line, exit status 2."""


def is_loopback(host: str) -> bool:
    """True if binding to host is reachable from this machine only."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


def url_host(host: str) -> str:
    """host as it goes into a URL or a Host header: IPv6 addresses in brackets."""
    return f"[{host}]" if _is_ipv6(host) else host


def local_url(host: str, port: int) -> str:
    """The URL to open on this machine: a wildcard bind is reached through loopback."""
    loopback = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://{url_host(loopback)}:{port}"


def jobs_url(host: str, port: int, allowed_names: str | None) -> str:
    """The URL jobs on other machines use: the first allowed name, else this machine's name."""
    if host in ("0.0.0.0", "::"):
        host = (allowed_names or "").split(",")[0].strip() or socket.gethostname()
    return f"http://{url_host(host)}:{port}"


def check_port(host: str, port: int, retry: str = "make ui PORT") -> None:
    """Raise UsageError unless `mlflow server` could bind host:port right now; a taken
    port's message suggests `{retry}={port + 1}`, the command the user ran.

    Binds a socket of the family the host resolves to (getaddrinfo), so `--host ::` or
    `--host ::1` is checked over IPv6, not wrongly reported as taken by an IPv4 bind.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as e:
        raise UsageError(f"--host {host}: not an address of this machine ({e.strerror})") from e
    with socket.socket(family, kind, proto) as s:
        # As uvicorn does: a port that only has connections in TIME_WAIT is free to serve.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise UsageError(
                    f"port {port} on {host} is already in use (another server?). Stop that "
                    f"server, or pick another port: {retry}={port + 1}"
                ) from e
            raise UsageError(f"cannot serve on {url_host(host)}:{port}: {e.strerror}") from e


def allowed_hosts_value(names: str, port: int) -> str:
    """MLflow's --allowed-hosts list for the names the user gave.

    MLflow compares the whole Host header, and a client of http://gpu-box:5000 sends
    `gpu-box:5000`; so a name given without a port is allowed with this server's port too.
    """
    allowed = []
    for name in (n.strip() for n in names.split(",")):
        if not name:
            continue
        name = url_host(name)
        allowed.append(name)
        has_port = ":" in name.rsplit("]", 1)[-1]
        if "*" not in name and not has_port:
            allowed.append(f"{name}:{port}")
    if not allowed:
        raise UsageError("--allowed-hosts: name at least one host, e.g. --allowed-hosts gpu-box")
    return ",".join(allowed)


def exposure_warning(host: str, port: int, allowed_hosts: str | None) -> str:
    """What a person binding beyond loopback must know: nothing stops anyone who can connect."""
    lines = [
        f"WARNING: the MLflow server listens on {url_host(host)}:{port}, beyond this machine, "
        "and it has NO authentication:",
        f"  anyone who can reach port {port} of this machine can read, change and delete "
        "every run, metric and artifact in the store.",
        "  Expose it only on a network you trust, or serve it with a login: `make server` "
        "(MLflow's basic-auth, on beyond 127.0.0.1 unless AUTH=off),",
        "  or a reverse proxy with auth and TLS (nginx, Caddy) while this server stays on "
        "127.0.0.1.",
    ]
    if allowed_hosts is None:
        lines.append(
            "  Also name the address your jobs use (the host in their "
            "MLFLOW_TRACKING_URI) with --allowed-hosts, e.g."
        )
        lines.append(
            f"  make server HOST={host} ALLOWED_HOSTS=$(hostname): MLflow then "
            "refuses requests for any other Host header."
        )
    else:
        lines.append(
            f"  Host headers accepted: {allowed_hosts} (a guard against DNS "
            "rebinding, not authentication)."
        )
    return "\n".join(lines)


def server_command(
    host: str,
    port: int,
    artifacts: Path,
    allowed_hosts: str | None = None,
    backend: str | None = None,
    default_artifact_root: str | None = None,
) -> list[str]:
    """The MLflow server (mlflow_server.py) on host:port, artifacts in `artifacts`; the
    backend URI on the command line, or (backend None) from MLFLOW_BACKEND_STORE_URI."""
    command = [
        sys.executable,
        "-m",
        "pipeline.serve.mlflow_server",
        "--host",
        host,
        "--port",
        str(port),
        "--artifacts-destination",
        artifacts.as_uri(),
    ]
    if backend:
        command += ["--backend-store-uri", backend]
    if default_artifact_root:
        command += ["--default-artifact-root", default_artifact_root]
    if allowed_hosts:
        command += ["--allowed-hosts", allowed_hosts]
    return command


def _group_alive(pgid: int) -> bool:
    """True while a live (not zombie) process is in process group pgid."""
    if not Path("/proc/self/stat").exists():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # "pid (comm) state ppid pgrp ...": comm may hold spaces, so split after ")"
            state, _ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError, ValueError):
            continue  # the process ended while we looked
        if int(pgrp) == pgid and state not in ("Z", "X"):
            return True
    return False


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def stop_group(pgid: int, grace: float = GRACE_SECONDS) -> None:
    """SIGTERM every process of group pgid, wait up to grace seconds, then SIGKILL the rest."""
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _group_alive(pgid):
        _signal_group(pgid, signal.SIGKILL)


def run_server(
    command: list[str],
    env: dict[str, str] | None = None,
    ready: tuple[str, str] | None = None,
    after_ready: Callable[[], None] | None = None,
) -> int:
    """Run command in a new process group until it exits or we are told to stop.

    `ready` = (url, message): the message is printed once the url answers HTTP 200, so
    that "ready" is never said before it is true; then after_ready() runs (in the
    background).

    Returns the server's exit status, or 0 when a signal asked us to stop. Either way no
    process of its group outlives this function: uvicorn's workers included.
    """
    server: subprocess.Popen | None = None
    stop_requested = False

    def request_stop(_signum, _frame):
        nonlocal stop_requested
        stop_requested = True
        if server is not None:
            _signal_group(server.pid, signal.SIGTERM)

    # Installed before the server starts, so no signal can leave it running unowned.
    for sig in STOP_SIGNALS:
        signal.signal(sig, request_stop)
    interrupts.stop_with_make()
    # A session of its own: the terminal's Ctrl-C reaches us only, and we stop the server.
    server = subprocess.Popen(command, start_new_session=True, env=env)
    if ready is not None:
        threading.Thread(
            target=announce_when_ready, args=(server, *ready, after_ready), daemon=True
        ).start()
    try:
        if stop_requested:
            _signal_group(server.pid, signal.SIGTERM)
        status = server.wait()
    finally:
        stop_group(server.pid)  # its leader is gone; its workers may not be
        server.wait()
    if stop_requested:
        return 0
    return 128 - status if status < 0 else status  # killed by a signal: the shell's convention


def announce_when_ready(
    server: subprocess.Popen, url: str, message: str, then: Callable[[], None] | None = None
) -> None:
    """Print `message` as soon as `url` answers 200, unless the server ends first; then
    run then()."""
    while server.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    print(message, flush=True)
                    if then is not None:
                        then()
                    return
        except OSError:
            pass
        time.sleep(0.5)


def add_network_options(parser: argparse.ArgumentParser) -> None:
    """--port, --host, --allowed-hosts: where a server of ours listens, and for whom."""
    # A string default goes through type=int too: a bad PORT is a usage error, not a traceback.
    parser.add_argument("--port", type=int, default=os.environ.get("PORT", "5000"))
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="the address to bind (default: 127.0.0.1, this machine only; "
        "0.0.0.0 or :: for every network, with no authentication)",
    )
    parser.add_argument(
        "--allowed-hosts",
        metavar="NAME,...",
        help="the only Host headers MLflow accepts: the name or address jobs "
        "use in MLFLOW_TRACKING_URI (default: MLflow's localhost and "
        "private IPs)",
    )
    parser.add_argument("--mlruns", default="mlruns", help="the store folder (default: mlruns/)")


def check_network(args, retry: str = "make ui PORT", warning=None) -> str | None:
    """Check the network options (UsageError if wrong; a taken port's names `retry`, the
    command and its port setting); warn if exposed (`warning(host, port, allowed)`, default
    exposure_warning); return MLflow's --allowed-hosts."""
    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: a port is a number from 1 to 65535")
    allowed = (
        allowed_hosts_value(args.allowed_hosts, args.port)
        if args.allowed_hosts is not None
        else None
    )
    check_port(args.host, args.port, retry)
    if not is_loopback(args.host):
        warn = warning or exposure_warning
        print(warn(args.host, args.port, allowed), file=sys.stderr, flush=True)
    return allowed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The MLflow UI over the project's store.")
    add_network_options(parser)
    args = parser.parse_args(argv)
    try:
        allowed = check_network(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    mlruns = from_root(args.mlruns)
    base = local_url(args.host, args.port)
    print(f"starting the MLflow UI on {base} (its link follows once it answers)", flush=True)
    listed = "".join(
        f"\n  {name}: {url}" for name, url in experiment_links(mlruns / "mlflow.db", base)
    )
    ready = (
        f"MLflow UI: {base}   (tracking URI for jobs elsewhere: "
        f"MLFLOW_TRACKING_URI={jobs_url(args.host, args.port, args.allowed_hosts)}){listed}"
    )
    artifacts = mlruns / "artifacts"
    command = server_command(
        args.host,
        args.port,
        artifacts,
        allowed,
        backend=f"sqlite:///{mlruns / 'mlflow.db'}",
        default_artifact_root=artifacts.as_uri(),
    )
    # The server builds the store whole before it opens it (a store it cannot use: one line,
    # exit 2); once it answers, the links of commands follow it (links.record_server), its
    # experiments get their view and runs left RUNNING by ended processes are closed.
    notes: list[Path] = []

    def when_ready() -> None:
        if note := links.record_server(mlruns, base):
            notes.append(note)
        reap_later(mlruns / "mlflow.db")

    try:
        return run_server(
            command, ready=(health_url(args.host, args.port), ready), after_ready=when_ready
        )
    finally:
        for note in notes:
            note.unlink(missing_ok=True)


def health_url(host: str, port: int) -> str:
    return f"{local_url(host, port)}/health"


def reap_later(db: Path) -> None:
    """Once the server is up (so that MLflow's import here does not slow its start): give
    every experiment the view its links open on (one made by older code has none), and
    close the runs left RUNNING by processes that have ended (killed runs, a killed
    sweep's children): the UI shows no run as running that is not."""
    try:
        from pipeline.tracking import store

        store.mlflow.set_tracking_uri(f"sqlite:///{db}")
        for experiment in store.mlflow.MlflowClient().search_experiments():
            store.set_view(experiment.experiment_id, experiment.tags)
        store.reap_orphans()
    except Exception as e:  # noqa: BLE001 — the UI serves all the same
        print(f"(could not ready the store's runs: {str(e)[:200]})", file=sys.stderr)


def experiment_links(db: Path, base: str) -> list[tuple[str, str]]:
    """A link per experiment that opens its runs table in its view (links.experiment_page).

    MLflow 3.17's UI opens an experiment in its GenAI view unless the URL (or a click on
    'Model training', which the browser remembers) says otherwise; it does not read the
    experiment's mlflow.experimentKind tag, which the pipeline sets all the same.
    """
    if not db.exists():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2) as connection:
            rows = connection.execute(
                "SELECT experiment_id, name FROM experiments WHERE "
                "lifecycle_stage = 'active' AND name != 'Default' "
                "ORDER BY experiment_id"
            ).fetchall()
    except sqlite3.Error:
        return []
    return [(name, base.rstrip("/") + links.experiment_page(str(eid))) for eid, name in rows]


if __name__ == "__main__":
    sys.exit(main())
