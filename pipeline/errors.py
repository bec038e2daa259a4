"""The exception types a user sees as a message rather than a traceback."""

from __future__ import annotations

import errno
import re

from pipeline.engine.errors import DivergenceError, EngineError
from pipeline.logs import redact


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
    errno.ENOSPC: "has no space left",
}


def user_error(error: BaseException) -> str | None:
    """The one line a user gets for `error` if it is theirs to act on (a bad setting, a
    tracking server down, a folder they cannot write), else None: a bug, shown in full."""
    if isinstance(error, USER_ERRORS):
        return redact(str(error))
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
            return (
                f"the tracking server failed a request ({match['endpoint']}: HTTP "
                f"{match['code']}); is its database up? Check `make server`'s output"
            )
    if isinstance(error, OSError) and error.errno in _NOT_WRITABLE and error.filename:
        where = str(error.filename)
        return (
            f"cannot write {where}: it {_NOT_WRITABLE[error.errno]} ({error.strerror}). Make "
            "it writable (or free space), or point paths.data_dir / paths.mlruns_dir at "
            "another folder"
        )
    return None
