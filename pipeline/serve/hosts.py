"""Which Host headers the project's own web servers answer: MLflow's rule, as `make ui`'s
MLflow server applies it.

A web page elsewhere whose name its DNS rebinds to 127.0.0.1 reaches a server on this
machine with its own name as Host. So `make serve` and `make demo` answer only the names
given to --allowed-hosts (ui.allowed_hosts_value's list: a name also with the port) or,
without it, MLflow's default (localhost, 127.0.0.1, [::1] and private addresses, any
port); health checks answer whatever the Host, as MLflow's server exempts its own.
"""

from __future__ import annotations

HEALTH_PATHS = ("/ping", "/health", "/version")


def allowed(listed: str | None) -> list[str]:
    """MLflow's host patterns for an --allowed-hosts value (None: MLflow's default)."""
    from mlflow.server.security_utils import get_default_allowed_hosts

    return [name for name in (listed or "").split(",") if name] or get_default_allowed_hosts()


def refusal(path: str, host: str, patterns: list[str], command: str) -> str | None:
    """Why a request for `path` with this Host header is refused, naming the fix through
    `command` (e.g. 'make serve'); None if it is served."""
    from mlflow.server.security_utils import is_allowed_host_header

    if path in HEALTH_PATHS or is_allowed_host_header(patterns, host):
        return None
    if not host:
        return "a request without a Host header is not served (a guard against DNS rebinding)"
    host = host if len(host) <= 80 else host[:79] + "…"
    # The name without its port: name:port and [v6]:port lose ":port", [v6] keeps its colons
    name = host.rsplit(":", 1)[0] if host.rfind(":") > host.rfind("]") else host
    return (
        f"Host {host} is not served here (a guard against DNS rebinding): to serve it, start "
        f"the server with --allowed-hosts {name} ({command} ALLOWED_HOSTS={name})"
    )
