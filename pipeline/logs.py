"""What the pipeline prints and logs never holds a password.

A tracking URI may carry credentials (http://user:password@host, postgresql://user:pw@host):
MLflow prints such URLs, Hydra writes every log line to a file, error messages quote them.
`redact` strips the password from every URL in a text; `RedactingFilter`, put on every
logging handler once Hydra has made them, does it to every record, ours and the libraries'.
"""

from __future__ import annotations

import logging
import os
import re

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
    """Put RedactingFilter on every handler of every logger there is now (Hydra's console
    and file handlers, MLflow's own), once."""
    loggers = [
        logging.getLogger(),
        *(logging.getLogger(name) for name in logging.root.manager.loggerDict),
    ]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())
