"""What the pipeline prints and logs never holds a password.

A tracking URI may carry credentials (http://user:password@host, postgresql://user:pw@host):
MLflow prints such URLs, Hydra writes every log line to a file, error messages quote them.
`redact` strips the password from every URL in a text; `RedactingFilter`, put on every
logging handler once Hydra has made them, does it to every record, ours and the libraries'.

A full disk is said once, by the app (errors.disk_full_message): `FullDiskFilter` drops
the libraries' tracebacks of it and the SQL SQLAlchemy quotes with it, and a log file on
a full disk stops being written (`guard_file_handlers`) instead of printing a traceback
for every record.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys

from pipeline.paths import DISK_FULL_ERRNOS

# scheme://user:password@  →  scheme://user:***@   (a user name alone is no secret)
_CREDENTIALS = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@/\s]+)@"
)


def redact(text: str) -> str:
    """`text` with the password of every URL in it replaced by ***."""
    return _CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


class RedactingFilter(logging.Filter):
    """Rewrites a record's message with its passwords redacted (the record is formatted once
    here, so its arguments cannot bring a password back)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_text is None and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


# What SQLAlchemy adds to an error's text: the statement, its values, a link, a hint.
_SQL_NOISE = ("[SQL:", "[parameters:", "(Background on this error at:", "(raised as a result of")


class FullDiskFilter(logging.Filter):
    """Records about a full disk: a library's traceback of it is dropped (the app names the
    disk once, in one line), and SQLAlchemy's statement dump is cut from the others."""

    def filter(self, record: logging.LogRecord) -> bool:
        from pipeline.errors import SQLITE_FULL, disk_full

        error = record.exc_info[1] if record.exc_info else None
        if error is not None and disk_full(error) is not None:
            return record.name.startswith("pipeline")
        message = record.getMessage()
        if SQLITE_FULL in message:
            kept = [line for line in message.splitlines() if not line.startswith(_SQL_NOISE)]
            record.msg, record.args = " ".join(kept), None
        return True


# Log files whose disk filled up: (the file, the error); the app ends with exit code 2.
UNWRITTEN_LOGS: list[tuple[str, OSError]] = []


def guard_file_handlers() -> None:
    """Every file handler there is now stops at its first full-disk error (recorded in
    UNWRITTEN_LOGS) instead of printing '--- Logging error ---' and a traceback for each
    record after it; the console goes on."""
    UNWRITTEN_LOGS.clear()
    for handler in _all_handlers():
        if isinstance(handler, logging.FileHandler) and "handleError" not in vars(handler):
            handler.handleError = _stop_on_full_disk(handler)  # type: ignore[method-assign]


def _stop_on_full_disk(handler: logging.FileHandler):
    def handle_error(record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        if not (isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS):
            logging.FileHandler.handleError(handler, record)
            return
        UNWRITTEN_LOGS.append(
            (handler.baseFilename, OSError(error.errno, error.strerror, handler.baseFilename))
        )
        # emit does nothing more (the handler stays in its loggers' lists: removing it while
        # a logger iterates them would skip the next handler)
        handler.emit = lambda record: None  # type: ignore[method-assign]
        with contextlib.suppress(OSError):  # its buffer cannot be flushed either
            handler.close()

    return handle_error


# Libraries whose INFO lines repeat what the pipeline says, or say what a user cannot act
# on ("Detected uv project", "Creating a new version of this model..."): WARNING and up only
# unless verbose=true.
CHATTY = ("mlflow", "alembic", "optuna", "httpx", "urllib3")


def quiet_libraries(verbose: bool) -> None:
    """The CHATTY libraries' loggers at WARNING, or (verbose) left as they are."""
    if verbose:
        return
    # MLflow sets its loggers' level when it is imported, from this variable (INFO unset);
    # the processes this one starts (sweep workers, servers) inherit it.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.WARNING)


def redact_all_handlers() -> None:
    """Put RedactingFilter and FullDiskFilter on every handler of every logger there is now
    (Hydra's console and file handlers, MLflow's own), once."""
    for handler in _all_handlers():
        for kind in (FullDiskFilter, RedactingFilter):
            if not any(isinstance(f, kind) for f in handler.filters):
                handler.addFilter(kind())


def _all_handlers() -> list[logging.Handler]:
    """The handlers of every logger there is now."""
    loggers = [
        logging.getLogger(),
        *(logging.getLogger(name) for name in logging.root.manager.loggerDict),
    ]
    return [handler for logger in loggers for handler in getattr(logger, "handlers", [])]
