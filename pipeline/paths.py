"""Where the project lives, so that relative paths in the config never depend on the cwd."""

from __future__ import annotations

import errno
import os
import re
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
_UMASK = os.umask(0)
os.umask(_UMASK)
# Temp files are named .<dest>.<pid>@<host>.<random>.part: the writer is known, so a later
# run can tell an orphan (its writer died) from a file still being written.
_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname().split(".")[0]) or "localhost"
_PART = re.compile(r"^\..+\.(?P<pid>\d+)@(?P<host>[A-Za-z0-9_-]+)\.[^.]+\.part$")
ORPHAN_AGE = 3600  # seconds: a temp file of unknown writer untouched this long is abandoned
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)  # no space left; over quota


def from_root(path: str | os.PathLike) -> Path:
    """An absolute path: `path` itself if absolute, else taken relative to the project root."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


def temp_prefix(dest: Path, pid: int | None = None) -> str:
    """The name prefix of `atomic_write`'s temp files for `dest`, written by process `pid`."""
    return f".{dest.name}.{os.getpid() if pid is None else pid}@{_HOST}."


@contextmanager
def atomic_write(dest: Path, mode: str = "wb"):
    """Open a temp file beside `dest`; rename it onto `dest` only if the block succeeds.

    A crash or error inside the block leaves no file at `dest` (and removes the temp file),
    so a later run never trusts a half-written output. A process killed outright leaves
    its temp file behind, named after its pid: `remove_orphaned_temp_files` collects it.
    A full disk is raised as an OSError naming `dest` (a write to the temp file names none).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=temp_prefix(dest), suffix=".part")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual mode
        os.replace(tmp, dest)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS and e.filename is None:
            raise OSError(e.errno, e.strerror, str(dest)) from e
        raise


def remove_orphaned_temp_files(folder: Path, max_age: float = ORPHAN_AGE) -> list[Path]:
    """Delete the `.part` files in `folder` whose writer is gone; return what was deleted.

    A writer is gone if its pid (from the name) is not alive on this host. A temp file of
    another host, or without a pid in its name, goes only once untouched for `max_age`
    seconds (a live writer keeps its file's mtime fresh).
    """
    removed = []
    for path in folder.glob(".*.part") if folder.is_dir() else ():
        match = _PART.match(path.name)
        try:
            if match and match["host"] == _HOST:
                orphan = not process_alive(int(match["pid"]))
            else:
                orphan = time.time() - path.stat().st_mtime > max_age
            if orphan:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:  # its writer renamed or removed it meanwhile
            pass
        except OSError:  # a read-only folder: nothing can be cleaned, and nothing written
            break
    return removed


def check_writable(folder: Path, what: str, key: str) -> None:
    """PipelineError unless `folder` exists or can be made and a file can be written in it;
    the message names the folder, what goes there and the setting `key` that moves it."""
    from pipeline.errors import PipelineError

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise PipelineError(
            f"cannot write {what} in {folder} ({e.strerror or e}): make it "
            f"writable, or point {key} at a writable folder"
        ) from None


def process_alive(pid: int, started: str = "") -> bool:
    """Is process `pid` of this host still running — and, if its start time `started` (from
    process_start) is given, still the same process, not a later one reusing the pid?"""
    if os.name != "posix" or pid <= 0:
        return True  # no safe liveness probe (on Windows, signal 0 is Ctrl-C): assume alive
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # no such process (or no such pid at all)
        return False
    except PermissionError:  # alive, but another user's
        return True
    if _state(pid) in ("Z", "X"):  # ended; only its parent has not collected it yet
        return False
    return not started or process_start(pid) in ("", started)


def _state(pid: int) -> str:
    """Linux: the state letter of /proc/<pid>/stat (R, S, D, Z, ...); "" where unreadable."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def process_start(pid: int) -> str:
    """The start time of process `pid` (Linux: field 22 of /proc/<pid>/stat, clock ticks
    since boot); "" where it cannot be read."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""
