"""Database URLs as the libraries that open them need them, and the check of a tracking URI
before MLflow opens it (no MLflow import at the top: the servers' launchers use this module
before anything heavy)."""

from __future__ import annotations

import difflib
import os
import re
import socket
from importlib.metadata import entry_points
from urllib.parse import urlsplit

from pipeline.logs import redact

# The schemes MLflow 3 tracks to (its tracking-store registry) and the project's word on each.
HTTP_SCHEMES = ("http", "https")
DATABASE_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}  # MLflow's SQL engines
OTHER_SCHEMES = ("sqlite", "databricks", "databricks-uc", "uc")
CONNECT_SECONDS = 5  # to open a connection: a host that drops packets is named in seconds
# MLflow's cheapest call that every tracking server answers with JSON, rights permitting.
PROBE_ENDPOINT = "/api/2.0/mlflow/experiments/search"
FIX = "or unset it for the project's store (mlruns/mlflow.db)"

_checked: set[str] = set()


def sqlalchemy_url(url: str) -> str:
    """postgresql://… as SQLAlchemy needs it for psycopg 3 (the postgres extra's driver);
    any other URL as it is."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    return url


def check_tracking_uri_once(uri: str) -> None:
    """check_tracking_uri(uri), the first time this process asks about uri only (a URI that
    failed is not checked again: the messages that name it afterwards must not fail)."""
    if uri in _checked:
        return
    _checked.add(uri)
    check_tracking_uri(uri)


def check_tracking_uri(uri: str) -> None:
    """Raise PipelineError, one line naming the URI (password redacted) and the fix, unless
    MLflow can track to uri: a SQLite file (sqlite:///path), a tracking server that answers
    as MLflow does, or a database whose driver is installed and whose host answers."""
    from pipeline.errors import PipelineError  # the engine's errors, NumPy with them

    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    shown = f"MLFLOW_TRACKING_URI={redact(uri)}"
    if re.fullmatch(r"[\w.-]+:\d+(/\S*)?", uri):  # host:port, the scheme left out
        raise PipelineError(
            f"{shown} has no scheme: did you mean MLFLOW_TRACKING_URI=http://{redact(uri)}? "
            f"(a tracking server: make server, make ui), {FIX}"
        )
    if uri in ("databricks", "databricks-uc", "uc"):  # MLflow's names of Databricks
        return
    if scheme == "file" or len(scheme) <= 1:  # a path (C:\… included): MLflow's file store
        folder = os.path.abspath(parts.path if scheme == "file" else uri)
        raise PipelineError(
            f"{shown} is a folder (MLflow's file store, which MLflow 3 retires and this "
            f"project does not use): set MLFLOW_TRACKING_URI=sqlite:///{folder}/mlflow.db, {FIX}"
        )
    if scheme == "sqlite":
        if parts.netloc:  # sqlite://name.db: a host, not a path
            raise PipelineError(
                f"{shown} names no file: a SQLite URI is sqlite:/// and a path "
                f"(sqlite:////absolute/folder/mlflow.db), {FIX}"
            )
    elif scheme in HTTP_SCHEMES:
        _check_tracking_server(uri, shown)
    elif (engine := scheme.split("+")[0]) in DATABASE_PORTS:
        _check_database(uri, engine, shown)
    elif scheme not in (*OTHER_SCHEMES, *_plugin_schemes()):
        known = (*HTTP_SCHEMES, "sqlite", *DATABASE_PORTS)
        guess = difflib.get_close_matches(scheme, known, n=1)
        hint = f"did you mean {guess[0]}://? " if guess else ""
        raise PipelineError(
            f"{shown}: MLflow cannot track to {scheme}:// URIs; {hint}use "
            f"http://<host>:<port> (a tracking server: make server) or "
            f"sqlite:///<folder>/mlflow.db, {FIX}"
        )


def _plugin_schemes() -> list[str]:
    """Schemes that installed MLflow plugins add (entry points of mlflow.tracking_store)."""
    return [entry.name for entry in entry_points(group="mlflow.tracking_store")]


def _check_tracking_server(uri: str, shown: str) -> None:
    """One GET of PROBE_ENDPOINT through MLflow's own HTTP client (its credentials, TLS
    settings and retries): PipelineError unless the answer is MLflow's JSON."""
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_TIMEOUT
    from mlflow.exceptions import MlflowException
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    from pipeline.errors import PipelineError

    read_seconds = MLFLOW_HTTP_REQUEST_TIMEOUT.get()
    try:
        # One try: a server that is down refuses at once, one that hangs would hang on
        # every retry (3 × 20 s); MLflow's own calls keep their retries.
        response = http_request(
            get_default_host_creds(uri),
            PROBE_ENDPOINT,
            "GET",
            max_retries=0,
            params={"max_results": 1},
            timeout=(CONNECT_SECONDS, read_seconds),
            raise_on_status=False,
        )
    except MlflowException as e:
        raise PipelineError(
            f"cannot reach the tracking server {redact(uri)}: {_reason(e, read_seconds)}. Is "
            "it running (make server, make ui)? Check MLFLOW_TRACKING_URI"
        ) from None
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if isinstance(answer, dict) and (response.ok or "error_code" in answer):
        return  # MLflow: its answer, or its error (a database down), which MLflow reports
    if response.status_code in (401, 403):
        creds = get_default_host_creds(uri)
        user = creds.username or urlsplit(uri).username
        refused = f"the tracking server {redact(uri)} refused"
        if response.status_code == 403:
            why = f"{refused} {user or 'this login'} (HTTP 403): ask its admin for access"
        elif user or creds.token:
            why = f"{refused} the login of {user or 'MLFLOW_TRACKING_TOKEN'} (HTTP 401): check "
            why += "MLFLOW_TRACKING_PASSWORD" if user else "the token"
        else:
            why = f"{refused} a job without a login (HTTP 401): set MLFLOW_TRACKING_USERNAME "
            why += "and MLFLOW_TRACKING_PASSWORD to an account of it"
        raise PipelineError(why)
    what = [response.headers.get("Content-Type", "no content type").split(";")[0]]
    what += [f"server {response.headers['Server']}"] * ("Server" in response.headers)
    if response.status_code in (502, 503, 504):  # a proxy whose MLflow is down or starting
        raise PipelineError(
            f"the tracking server {redact(uri)} answered HTTP {response.status_code} "
            f"({', '.join(what)}): the MLflow behind it is down or starting? Try again in a "
            "moment, or check its output (make server) and MLFLOW_TRACKING_URI"
        )
    raise PipelineError(
        f"{shown} is not an MLflow tracking server: GET {PROBE_ENDPOINT} answered HTTP "
        f"{response.status_code} ({', '.join(what)}), not MLflow's JSON. Wrong host, port or "
        f"path? Point it at one (make server, make ui print theirs), {FIX}"
    )


def _reason(error: BaseException, read_seconds: float) -> str:
    """What went wrong below the wrappers of an HTTP failure: a timeout, or what the
    operating system said ("[Errno 111] Connection refused"), else the error's type."""
    pending: list[object] = [error]
    seen: set[int] = set()
    while pending:
        link = pending.pop(0)
        if not isinstance(link, BaseException) or id(link) in seen:
            continue
        seen.add(id(link))
        kind = type(link).__name__
        if kind.startswith("ConnectTimeout"):  # requests' and urllib3's
            return f"no connection within {CONNECT_SECONDS} s"
        if kind.startswith("ReadTimeout"):
            return f"no answer within {read_seconds} s (MLFLOW_HTTP_REQUEST_TIMEOUT)"
        if isinstance(link, OSError) and link.errno is not None and link.strerror:
            return redact(f"[Errno {link.errno}] {link.strerror}")
        pending += [link.__cause__, link.__context__, getattr(link, "reason", None), *link.args]
    return type(error.__context__ or error).__name__


def _check_database(uri: str, engine: str, shown: str) -> None:
    """The database's Python driver is installed and its host accepts connections."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    from pipeline.errors import PipelineError

    try:
        url = make_url(uri)
        url.get_dialect().import_dbapi()
    except (ArgumentError, NoSuchModuleError, ValueError) as e:
        raise PipelineError(f"{shown} is not a database URL MLflow can open ({e}), {FIX}") from None
    except ImportError as e:
        extra = " (make install-extras installs psycopg: postgresql://…)" * (engine == "postgresql")
        raise PipelineError(
            f"{shown} needs the database driver {e.name or e}, which is not installed"
            f"{extra}; or track to a tracking server (make server) over that database, {FIX}"
        ) from None
    if not url.host:  # a local socket: the database says the rest
        return
    try:
        socket.create_connection(
            (url.host, url.port or DATABASE_PORTS[engine]), timeout=CONNECT_SECONDS
        ).close()
    except OSError as e:
        raise PipelineError(
            f"cannot reach the database of {shown}: {e.strerror or e}. Is it running? "
            "Check MLFLOW_TRACKING_URI"
        ) from None
