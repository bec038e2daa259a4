"""`make ui` / `make server`: the MLflow server over the project's store, on loopback.

    python -m pipeline.ui [--port 5000] [--host 127.0.0.1]

Serves the UI for people and the tracking API for sweep jobs on other machines
(MLFLOW_TRACKING_URI=http://<host>:<port>). It binds to 127.0.0.1 unless told otherwise,
and refuses a port that is already taken with a message instead of a traceback.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from pipeline.paths import from_root


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def server_command(host: str, port: int, mlruns: Path) -> list[str]:
    mlflow = Path(sys.executable).with_name("mlflow")
    return [str(mlflow), "server", "--host", host, "--port", str(port),
            "--backend-store-uri", f"sqlite:///{mlruns / 'mlflow.db'}",
            "--default-artifact-root", (mlruns / "artifacts").as_uri(),
            "--artifacts-destination", (mlruns / "artifacts").as_uri()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The MLflow UI over the project's store.")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", 5000)))
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--mlruns", default="mlruns", help="the store folder (default: mlruns/)")
    args = parser.parse_args(argv)
    if not port_is_free(args.host, args.port):
        print(f"error: port {args.port} on {args.host} is already in use (another `make ui`?). "
              f"Stop that server, or pick another port: make ui PORT={args.port + 1}",
              file=sys.stderr)
        return 2
    mlruns = from_root(args.mlruns)
    mlruns.mkdir(parents=True, exist_ok=True)
    url = f"http://{args.host}:{args.port}"
    print(f"MLflow UI: {url}   (tracking URI for jobs elsewhere: MLFLOW_TRACKING_URI={url})",
          flush=True)
    command = server_command(args.host, args.port, mlruns)
    os.execv(command[0], command)  # the server replaces this process: Ctrl-C stops it


if __name__ == "__main__":
    sys.exit(main())
