"""Stop signals end runs honestly: KILLED with the reason, never FINISHED, never left RUNNING.

Ctrl-C (SIGINT), `kill`/`timeout`/a container stop (SIGTERM) and a closed terminal (SIGHUP)
raise `Interrupted` in the main thread, a KeyboardInterrupt that knows its signal: Ray
lets only a KeyboardInterrupt out of a waiting `ray.get`, and Optuna marks a trial FAIL for
one. scikit-learn's MLPClassifier catches it inside `partial_fit`, warns and returns a
half-trained epoch as if it were whole: the baseline re-raises it (`received`). The first
signal raises; later ones are ignored while the runs are being closed, so a second Ctrl-C
cannot leave a run RUNNING. The app exits 128 + the signal's number (130 for Ctrl-C, 143
for SIGTERM), as a shell does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable

from pipeline.paths import process_alive, process_start

log = logging.getLogger(__name__)

STOP_SIGNALS: dict[int, str] = {
    signal.SIGINT: "SIGINT (Ctrl-C)",
    signal.SIGTERM: "SIGTERM (kill, timeout or a container stop)",
    signal.SIGHUP: "SIGHUP (its terminal closed)",
}
GRACE_SECONDS = 20  # for the processes a launcher started to close their runs and exit
# Why this process signalled itself, where the signal's name alone would mislead.
_CAUSES: dict[int, str] = {}
# A sweep's launcher, for the jobs it starts on this machine: host:pid:start time.
LAUNCHER_ENV = "PIPELINE_SWEEP_LAUNCHER"


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived: the runs open in this process end KILLED with `reason`."""

    def __init__(self, signum: int):
        self.signum = signum
        told = _CAUSES.get(signum) or STOP_SIGNALS.get(signum, signal.Signals(signum).name)
        super().__init__(f"interrupted by {told}")

    @property
    def reason(self) -> str:
        return str(self)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def reason(error: BaseException) -> str:
    """The failure reason a run records for an interruption. A plain KeyboardInterrupt is
    the signal this process received (a library raised its own in place of ours: Ray does)
    or, with none received, Ctrl-C where our handler was not installed (a notebook)."""
    if not isinstance(error, Interrupted):
        error = received() or Interrupted(signal.SIGINT)
    return error.reason


def exit_code(error: BaseException) -> int:
    if not isinstance(error, Interrupted):
        error = received() or Interrupted(signal.SIGINT)
    return error.exit_code


_stopping: list[int] = []
_installed: list[bool] = []


def install(before_raising: Callable[[int], object] | None = None) -> None:
    """From now on the first stop signal raises Interrupted; `before_raising(signum)`, if
    given, runs first (a launcher stops the processes it started). Main thread only."""

    def handler(signum, frame):
        if _stopping:
            log.warning(
                "%s again: still closing the runs (SIGKILL abandons them RUNNING "
                "until the next run on this machine closes them)",
                signal.Signals(signum).name,
            )
            return
        if in_database_code(frame):  # raised there, it could leave a transaction (and a
            # SQLite store's write lock) open: this process, and every other writer, would
            # then wait in vain to close its runs. Deliver it again when out of there.
            threading.Timer(0.02, os.kill, (os.getpid(), signum)).start()
            return
        _stopping.append(signum)
        if before_raising is not None:
            before_raising(signum)
        raise Interrupted(signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)
    if not _installed:
        stop_with_make()
    _installed.append(True)


def stop_with_make() -> None:
    """If this process runs a make recipe, SIGTERM it when make is gone. GNU make does not
    pass SIGTERM (kill, timeout, a container stop) on to its recipe: it dies alone, and
    `make serve` or `make run` went on serving or training, orphaned."""
    parent = os.getppid()
    try:
        with open(f"/proc/{parent}/comm") as f:
            if f.read().strip() not in ("make", "gmake"):
                return
    except OSError:
        return
    _stop_when_orphaned(parent, "stop-with-make")


def stop_with_parent() -> None:
    """SIGTERM this process when the process that started it is gone. The servers that
    `make ui` and `make demo` run (in a session of their own, so that Ctrl-C reaches only
    the parent, which stops them) must not outlive a parent killed by SIGKILL, which it
    cannot pass on."""
    _stop_when_orphaned(os.getppid(), "stop-with-parent")


def _stop_when_orphaned(parent: int, name: str) -> None:
    _stop_when(lambda: os.getppid() != parent, name)


def name_as_launcher() -> None:
    """Name this process, in the environment of the processes it starts from now on, as the
    sweep's launcher that they must not outlive (stop_with_launcher)."""
    pid = os.getpid()
    os.environ[LAUNCHER_ENV] = f"{socket.gethostname()}:{pid}:{process_start(pid)}"


def stop_with_launcher(busy: Callable[[], bool]) -> None:
    """In a sweep's job: once the launcher that name_as_launcher named is gone, SIGTERM this
    process while busy() (a job running: its run ends KILLED, saying why), SIGKILL it
    GRACE_SECONDS later if it is still there; SIGKILL it at once while idle (a loky worker
    waiting for its next job has nothing to close, and does not end on SIGTERM). A launcher
    killed by SIGKILL cannot stop its workers (loky's, submitit's): they trained on to the
    end, then idled for minutes. Watched by its pid, not as this process's parent:
    submitit's job is the launcher's grandchild. Once per process (a loky worker runs job
    after job); not where the job runs in the launcher itself, nor on another machine
    (SLURM passes the environment on)."""
    host, _, launcher = os.environ.get(LAUNCHER_ENV, "").partition(":")
    pid, _, started = launcher.partition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return
    if _watched_launchers:
        return
    _watched_launchers.append(int(pid))
    _stop_when(
        lambda: not process_alive(int(pid), started),
        "stop-with-launcher",
        cause=f"SIGTERM (its sweep's launcher, pid {pid}, ended)",
        kill_after=GRACE_SECONDS,
        busy=busy,
    )


_watched_launchers: list[int] = []


def _stop_when(
    gone: Callable[[], bool],
    name: str,
    cause: str = "",
    kill_after: float | None = None,
    busy: Callable[[], bool] | None = None,
) -> None:
    """Watch, in a thread, until gone() says so; then SIGTERM this process (the reason its
    runs record is `cause`, if given), and SIGKILL it `kill_after` seconds later if it is
    still there; SIGKILL it at once if busy() says it has nothing to close."""

    def watch():
        while not gone():
            time.sleep(0.5)
        if busy is not None and not busy():
            os.kill(os.getpid(), signal.SIGKILL)
        if cause:
            _CAUSES[signal.SIGTERM] = cause
        os.kill(os.getpid(), signal.SIGTERM)
        if kill_after is not None:
            time.sleep(kill_after)
            log.warning("did not stop within %.0f s of SIGTERM: killed", kill_after)
            os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name=name, daemon=True).start()


# Code that an exception must not interrupt half-way: a database transaction.
_DATABASE_CODE = tuple(
    f"{os.sep}{name}{os.sep}" for name in ("sqlalchemy", "sqlite3", "alembic", "psycopg")
)


def in_database_code(frame) -> bool:
    """Is the main thread, at `frame`, inside a database library (a write in progress)?"""
    while frame is not None:
        if any(part in frame.f_code.co_filename for part in _DATABASE_CODE):
            return True
        frame = frame.f_back
    return False


def received() -> Interrupted | None:
    """The stop signal this process received, as the exception to raise again (after a
    library swallowed it), or None."""
    return Interrupted(_stopping[0]) if _stopping else None


def installed() -> bool:
    """Has this process installed the handler (has the app's own code started)?"""
    return bool(_installed)


# ---- a launcher's processes ---------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children, grandchildren, ...), from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for stat in os.scandir("/proc"):
        if not stat.name.isdigit():
            continue
        try:
            with open(f"/proc/{stat.name}/stat") as f:
                state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
        except (OSError, IndexError, ValueError):
            continue  # ended while we looked
        if state not in ("Z", "X"):
            children.setdefault(int(ppid), []).append(int(stat.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def stop_descendants(
    signum: int = signal.SIGTERM, first: Iterable[int] = (), grace: float = GRACE_SECONDS
) -> list[int]:
    """Pass `signum` on to every process this one started (joblib/loky workers, submitit
    jobs, a local Ray cluster's), SIGTERM to those that ignore it, so that each closes its
    runs KILLED with the same reason; SIGKILL what is left after `grace` seconds. The
    processes `first` (those that hold runs) go first and are waited for before the rest:
    a Ray raylet stopped with its workers kills them before they close their runs.
    Returns the pids signalled."""
    pids = descendants(os.getpid())
    holders = [p for p in pids if p in set(first)]
    _stop(holders, signum, grace)
    _stop([p for p in pids if p not in holders], signum, grace)
    return pids


def _stop(pids: list[int], signum: int, grace: float) -> None:
    deaf = []  # e.g. loky's resource tracker: it ends with us
    for pid in reversed(pids):  # the deepest first: a job before the pool that runs it
        if not _ignores(pid, signum):
            _signal(pid, signum)
        elif not _ignores(pid, signal.SIGTERM):
            _signal(pid, signal.SIGTERM)
        else:
            deaf.append(pid)
    deadline = time.monotonic() + grace
    while (
        alive := [p for p in pids if p not in deaf and process_alive(p)]
    ) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in alive:
        log.warning("process %d did not stop within %.0f s: killed", pid, grace)
    for pid in alive + deaf:
        _signal(pid, signal.SIGKILL)


def _ignores(pid: int, sig: int) -> bool:
    """Does process `pid` ignore signal `sig` (SigIgn in /proc/<pid>/status)?"""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigIgn:"):
                    return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)
