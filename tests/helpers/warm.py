"""Warm app processes: `python -m pipeline …` forked from a server that imported the app once.

Nearly all of what an app process costs in a test is its imports: MLflow, scikit-learn,
SciPy, matplotlib, Hydra (8–9 CPU-seconds a process on a 2-core machine; the training in a
test is often under one). A test that runs the app as a process of its own, for its
signals, exit code, store or parallel jobs, pays that on every start. Here a
multiprocessing fork server (one per test worker) imports them once and forks each app
process from itself: the child gets a pid and, for a Popen, a session of its own, the
caller's environment and working directory, sys.argv as `python -m pipeline` sets it, the
exit code and output a cold start gives, and its exit runs the same atexit handlers.

What a fork cannot give, a cold start does (run_app decides): a changed environment
variable that is read at import (BLAS kernel and threads, Python's and matplotlib's
settings, the cache folders) needs a fresh interpreter.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import io
import multiprocessing
import multiprocessing.process
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from multiprocessing import forkserver
from pathlib import Path

from pipeline.paths import PROJECT_ROOT

# What an app process imports, as the fork server imports it once (helpers.warm_preload).
PRELOAD = "helpers.warm_preload"
# Settings read when a library is imported (or by the interpreter at start-up): a process
# whose environment changes one of them starts cold.
IMPORT_TIME_PREFIXES = (
    *("OPENBLAS_", "OMP_", "MKL_", "GOTO", "BLIS_", "PYTHON", "MPL", "XDG_", "HOME", "TMP"),
    *("LANG", "LC_"),
)

_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload([PRELOAD])
_lock = threading.Lock()
_started_in: dict[str, str] | None = None  # the caller's environment when the server started
_server_env: dict[str, str] = {}  # the server's own (tests/ added to PYTHONPATH)
_broken = False  # the server did not import the app: every process starts cold
_live: list[multiprocessing.Process] = []  # killed if still running when this worker ends


def can_run_warm(module: str, environment: dict[str, str]) -> bool:
    """Whether `python -m module` in this environment may be forked from the server: the
    app, and no setting read at import differs from what the server imported with."""
    if module != "pipeline" or _broken:
        return False
    imported_with = _started_in if _started_in is not None else os.environ
    keys = {k for k in (*environment, *imported_with) if k.startswith(IMPORT_TIME_PREFIXES)}
    return all(environment.get(k) == imported_with.get(k) for k in keys)


def _fork(target, args: tuple = ()) -> multiprocessing.Process:
    process = _context.Process(target=target, args=args)
    process.start()
    # Not multiprocessing's child: its exit would wait for a process still running.
    multiprocessing.process._children.discard(process)  # type: ignore[attr-defined]
    return process


def _start_server() -> None:
    """Start the fork server; check that it imported the app (an ImportError in its
    preload is silent, and every child would then import everything itself)."""
    global _started_in, _server_env, _broken
    _started_in = dict(os.environ)
    tests_dir = str(Path(__file__).resolve().parents[1])  # for helpers.warm_preload
    python_path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [tests_dir, python_path]))
    _server_env = dict(os.environ)
    try:
        forkserver.ensure_running()  # type: ignore[attr-defined]
    finally:
        if python_path is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = python_path
    probe = _fork(_has_the_app)
    probe.join()
    if probe.exitcode != 0:
        _broken = True
        warnings.warn(
            f"the warm fork server did not import {PRELOAD} (exit {probe.exitcode}): "
            "every app process in the tests starts cold, ~7 CPU-s slower",
            stacklevel=3,
        )


def _start(target_args: tuple) -> multiprocessing.Process:
    with _lock:
        if _started_in is None:
            _start_server()
        process = _fork(_child, (*target_args, _server_env))
        _live.append(process)
        return process


@atexit.register
def _kill_the_left_running() -> None:
    """A test that failed may leave an app running: this worker's end ends it (and what it
    started, in its session), as the test's own cleanup would have."""
    for process in _live:
        if process.exitcode is None:
            with contextlib.suppress(OSError):
                os.killpg(process.pid, signal.SIGKILL)  # type: ignore[arg-type]
            with contextlib.suppress(OSError):
                os.kill(process.pid, signal.SIGKILL)  # type: ignore[arg-type]


class WarmProcess:
    """The part of subprocess.Popen the tests use, for a warm app process whose stdout and
    stderr go together to the file `output`."""

    def __init__(self, args: list[str], process: multiprocessing.Process, output: Path):
        self.args, self._process, self._output = args, process, output
        self.pid: int = process.pid  # type: ignore[assignment]
        self.stderr = None
        self._stdout: io.TextIOWrapper | None = None

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    @property
    def stdout(self) -> io.TextIOWrapper:
        """What it wrote, read from its output file (all of it, once it has ended)."""
        if self._stdout is None:
            self._stdout = open(self._output, errors="replace")  # noqa: SIM115
        return self._stdout

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout)  # type: ignore[arg-type]
        return self._process.exitcode

    def communicate(self, timeout: float | None = None) -> tuple[str, None]:
        self.wait(timeout)
        return self._output.read_text(errors="replace"), None

    def send_signal(self, sig: int) -> None:
        if self._process.exitcode is None:
            with contextlib.suppress(ProcessLookupError):  # ended, not yet reported
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def popen(args: list[str], env: dict[str, str], log: Path | None) -> WarmProcess:
    """Start `python -m pipeline *args` warm, in a session of its own; its output in the
    file log (a temporary file if None)."""
    if log is None:
        handle, name = tempfile.mkstemp(prefix="warm-app-", suffix=".log")
        os.close(handle)
        log = Path(name)
    log.write_text("")  # as open(log, "w") for a cold start
    process = _start((args, env, str(log), str(log), True))
    # Popen(start_new_session=True) returns once the child is in its session: a signal to
    # the process group must reach it.
    deadline = time.monotonic() + 60
    while process.exitcode is None and time.monotonic() < deadline:
        with contextlib.suppress(ProcessLookupError):
            if os.getpgid(process.pid) == process.pid:  # type: ignore[arg-type]
                break
        time.sleep(0.002)
    return WarmProcess(args, process, log)


def run(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """Run `python -m pipeline *args` warm to its end (at most timeout seconds), its stdout
    and stderr captured apart, as subprocess.run(capture_output=True) does."""
    with tempfile.TemporaryDirectory(prefix="warm-app-") as folder:
        out, err = Path(folder, "stdout"), Path(folder, "stderr")
        process = _start((args, env, str(out), str(err), False))
        process.join(timeout)
        if process.exitcode is None:
            os.kill(process.pid, signal.SIGKILL)  # type: ignore[arg-type]
            process.join()
            raise subprocess.TimeoutExpired(
                args, timeout, out.read_text(errors="replace"), err.read_text(errors="replace")
            )
        return subprocess.CompletedProcess(
            args, process.exitcode, out.read_text(errors="replace"), err.read_text(errors="replace")
        )


# ---- in the forked child ---------------------------------------------------------------------


def _has_the_app() -> None:
    os._exit(0 if "pipeline.app" in sys.modules else 3)


def _open_std(fd: int, path: str, unbuffered: bool, stderr: bool) -> io.TextIOWrapper:
    """fd pointed at the file path, with a text layer made as Python makes sys.stdout or
    sys.stderr for a file (block-buffered stdout, line-buffered stderr, both written through
    under PYTHONUNBUFFERED)."""
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(target, fd)
    os.close(target)
    binary = open(fd, "wb", buffering=0 if unbuffered else -1, closefd=False)  # noqa: SIM115
    return io.TextIOWrapper(
        binary,  # type: ignore[arg-type]
        encoding="utf-8",
        errors="backslashreplace" if stderr else "strict",
        line_buffering=stderr,
        write_through=unbuffered,
    )


def _child(args, env, stdout_path, stderr_path, new_session, server_env) -> None:
    """Be `python -m pipeline *args`: the caller's environment (plus the defaults that the
    app's modules set at import, as a cold start sets them), output, session and exit."""
    if new_session:
        os.setsid()
    # A cold process is its own main process, not a multiprocessing child.
    this = multiprocessing.current_process()
    this._name, this._identity, this._parent_pid = "MainProcess", (), None  # type: ignore[attr-defined]
    multiprocessing.process._parent_process = None  # type: ignore[attr-defined]
    multiprocessing.set_start_method(None, force=True)  # Linux's default (fork), not ours
    set_at_import = {k: v for k, v in os.environ.items() if server_env.get(k) != v}
    os.environ.clear()
    os.environ.update({**set_at_import, **env})
    unbuffered = bool(env.get("PYTHONUNBUFFERED"))
    sys.stdout.flush()
    sys.stderr.flush()
    sys.stdout = sys.__stdout__ = _open_std(1, stdout_path, unbuffered, stderr=False)
    sys.stderr = sys.__stderr__ = _open_std(2, stderr_path, unbuffered, stderr=True)
    os.chdir(PROJECT_ROOT)
    sys.argv = ["pipeline", *args]
    code, interrupted = 0, False
    try:
        runpy.run_module("pipeline", run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            code = stop.code or 0
        else:
            print(stop.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        traceback.print_exc()
        interrupted = True
    except BaseException:
        traceback.print_exc()
        code = 1
    # what the interpreter does at exit: wait for the threads, then the atexit handlers
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    ctypes.CDLL(None).fflush(None)  # C's stdio too (os._exit does not flush it)
    if interrupted:  # an uncaught Ctrl-C ends Python by SIGINT, as the shell expects
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(code)
