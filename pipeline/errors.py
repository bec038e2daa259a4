"""The exception types a user sees as a message rather than a traceback."""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from pipeline.engine.errors import DivergenceError, EngineError
from pipeline.logs import redact
from pipeline.paths import DISK_FULL_ERRNOS


class PipelineError(Exception):
    """A problem the user can act on: the message names what is wrong and how to fix it."""


class RunFailed(Exception):
    """Runs ended FAILED (diverged, collapsed): the rest of the pipeline went on; the app
    exits 1 and names them."""


class RunStopped(Exception):
    """A run stopped on purpose before its end (a search's pruner gave up on it): the run
    ends FINISHED, as the normal end of a run cut short on purpose, tagged `stopped` (its
    label), `stopped_reason` and `stopped_at_epoch`, and its name says so; not FAILED or
    KILLED, which stay for crashes and stop signals. Its numbers are those of its last
    epoch: stopped runs are never a sweep's or a search's best."""

    label = "stopped"  # appended to the run's name, and its tag `stopped`

    def __init__(self, message: str, epoch: int):
        super().__init__(message)
        self.epoch = epoch


class CollapseError(DivergenceError):
    """Training ended at chance: the model gives one answer to every input."""


# What the app reports as one line and exit code 2: the pipeline's and the engine's own.
USER_ERRORS = (PipelineError, EngineError)

_UNREACHABLE = re.compile(
    r"API request to (?P<url>\S+?)/api/\S* failed with exception (?P<why>.*)", re.S
)
_REFUSED = re.compile(
    r"API request to endpoint (?P<endpoint>\S+) failed with error code (?P<code>\d+)"
)
_NOT_WRITABLE = {
    errno.EROFS: "is on a read-only file system",
    errno.EACCES: "is not writable",
    errno.EPERM: "is not writable",
}
SQLITE_FULL = "database or disk is full"  # SQLite's own words (SQLITE_FULL)


def user_error(
    error: BaseException, places: Sequence[tuple[Path, str]] = (), store: Path | None = None
) -> str | None:
    """The one line a user gets for `error` if it is theirs to act on (a bad setting, a
    tracking server down, a folder they cannot write, a full disk), else None: a bug, shown
    in full. `places` are the folders the app writes to, each with the setting that moves
    it, and `store` the SQLite store's file, if any: a full disk is named by them."""
    if isinstance(error, USER_ERRORS):
        return redact(str(error))
    if (full := disk_full(error)) is not None:
        return disk_full_message(full, places, store)
    if store is not None and (damage := _sqlite_damage(error)):
        return unreadable_store(store, damage)
    text = str(error)
    if type(error).__module__.startswith(("mlflow", "requests", "urllib3")):
        if match := _UNREACHABLE.search(text):
            why = re.sub(r"\s+", " ", match["why"])
            why = (
                re.search(r"\[Errno \d+\] [^\"')]+", why)
                or re.search(r"[A-Za-z]*Error\S*", why)
                or [why[:200]]
            )[0]
            return (
                f"cannot reach the tracking server {redact(match['url'])}: {why}. Is it "
                "running (make server, make ui)? Check MLFLOW_TRACKING_URI"
            )
        if match := _REFUSED.search(text):
            if match["code"] == "401":
                return (
                    "the tracking server refused the login (HTTP 401): set "
                    "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to a user of it "
                    "(make server says where its admin's password is)"
                )
            if match["code"] == "403":
                return (
                    f"the tracking server refused {match['endpoint']} to user "
                    f"{os.environ.get('MLFLOW_TRACKING_USERNAME', '(none)')} (HTTP 403): ask "
                    "its admin for EDIT on the experiment, or log to another "
                    "(tracking.experiment=<name>)"
                )
            return (
                f"the tracking server failed a request ({match['endpoint']}: HTTP "
                f"{match['code']}); is its database up? Check `make server`'s output"
            )
    if isinstance(error, OSError) and error.errno in _NOT_WRITABLE and error.filename:
        where = str(error.filename)
        return (
            f"cannot write {where}: it {_NOT_WRITABLE[error.errno]} ({error.strerror}). Make "
            "it writable, or point paths.data_dir / paths.mlruns_dir at "
            "another folder"
        )
    return None


def _chain(error: BaseException) -> Iterator[BaseException]:
    """`error`, then what caused it and what it was raised while handling, nearest first."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        link = pending.pop(0)
        if link is None or id(link) in seen:
            continue
        seen.add(id(link))
        yield link
        pending += [link.__cause__, link.__context__]


def unreadable_store(db: Path | str, damage: str) -> str:
    """The one line for a store SQLite cannot read: what is wrong, that nothing was
    changed, and the three ways out."""
    return (
        f"the MLflow store {db} cannot be read: {damage}; nothing was changed. Restore it "
        f"from a backup, or recover what SQLite can (sqlite3 {db} .recover | sqlite3 "
        f"{db}.recovered, then move that into place), or move it aside yourself "
        f"(mv {db} {db}.damaged) to start an empty store"
    )


_SQLITE_DAMAGE = ("database disk image is malformed", "file is not a database")


def _sqlite_damage(error: BaseException) -> str | None:
    """SQLite's words for a damaged file, anywhere in `error`'s chain (as MLflow and
    SQLAlchemy wrap them), met while using a store the start-up check found whole (damage
    deeper than a store above its quick_check size, or damage done since)."""
    for link in _chain(error):
        text = str(link)
        for words in _SQLITE_DAMAGE:
            if words in text:
                return f"SQLite met damage while using it ({words})"
    return None


def disk_full(error: BaseException) -> BaseException | None:
    """The exception in `error`'s chain that says a disk is full (ENOSPC, a quota, SQLite's
    "database or disk is full", also as MLflow or SQLAlchemy wrap it), else None."""
    for link in _chain(error):
        if isinstance(link, OSError) and link.errno in DISK_FULL_ERRNOS:
            return link
        try:
            text = str(link)
        except Exception:  # noqa: BLE001 — a broken __str__ must not hide the error itself
            continue
        if SQLITE_FULL in text:
            return link
    return None


def disk_full_message(
    full: BaseException, places: Sequence[tuple[Path, str]] = (), store: Path | None = None
) -> str:
    """One line for a full disk: the folder written to (the error's file, else the SQLite
    store's for SQLite's error, else the place with the least space left) and the setting
    that moves it elsewhere. SQLite's error without a local `store` is a tracking server's."""
    if isinstance(full, OSError):
        written = full.filename2 or full.filename  # a copy names its destination second
        why = full.strerror or os.strerror(full.errno or errno.ENOSPC)
    elif store is None:  # a tracking server's own database: not a folder of ours
        return (
            f"the tracking server's store has no space left ({SQLITE_FULL}): free space on "
            "its disk, or point MLFLOW_TRACKING_URI at another store"
        )
    else:
        written, why = store, SQLITE_FULL
    folder = Path(os.fsdecode(written)).parent if written else _least_space(places)
    if folder is None:
        return f"no space left on a disk the run writes to ({why}): free space and run again"
    settings = _settings_for(folder, places)
    move = f", or point {settings} at a folder on another disk" if settings else ""
    return f"no space left on the disk holding {folder} ({why}): free space there{move}"


def _existing(folder: Path) -> Path:
    """`folder`, or its nearest ancestor that exists."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _least_space(places: Sequence[tuple[Path, str]]) -> Path | None:
    """The place whose disk has the fewest bytes free (the full one, most likely)."""

    def free(folder: Path) -> float:
        try:
            stats = os.statvfs(_existing(folder))
        except OSError:
            return float("inf")
        return stats.f_bavail * stats.f_frsize

    return min((folder for folder, _ in places), key=free, default=None)


def _settings_for(folder: Path, places: Sequence[tuple[Path, str]]) -> str:
    """The setting of the innermost place holding `folder`; else those of the places on
    the same disk; "" if none."""
    holding = [(p, key) for p, key in places if folder == p or p in folder.parents]
    if holding:
        return max(holding, key=lambda place: len(place[0].parts))[1]
    try:
        device = os.stat(_existing(folder)).st_dev
        same = [key for p, key in places if os.stat(_existing(p)).st_dev == device]
    except OSError:
        return ""
    return " / ".join(dict.fromkeys(same))
