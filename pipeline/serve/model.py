"""`make serve`: a registered model over HTTP (`mlflow models serve`), on loopback.

    python -m pipeline.serve.model [--model mnist-classifier] [--alias champion] [--port 5001]

Serves models:/<model>@<alias> from the project's store (or MLFLOW_TRACKING_URI) on
127.0.0.1 unless --host says otherwise. The model checks each request (pixels in [0, 1],
the right width) and answers 400 with the reason otherwise. The server runs in a process
group of its own that stopping this process (Ctrl-C, SIGTERM from `kill` or from make)
ends whole, uvicorn's workers included; "ready" is printed once it answers.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipeline.logs import redact
from pipeline.serve import ui


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve a registered model of the project.")
    ui.add_network_options(parser)
    parser.set_defaults(port=os.environ.get("SERVE_PORT", "5001"))  # argparse makes it an int
    parser.add_argument("--model", default="mnist-classifier", help="the registered model")
    parser.add_argument("--alias", default="champion", help="which of its versions")
    args = parser.parse_args(argv)
    from pipeline.tracking import store  # MLflow with it: after the command line is read

    uri = store.store_uri(args.mlruns)
    try:
        ui.check_network(args)
        version = champion(uri, args.model, args.alias)
    except ui.UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model_uri = f"models:/{args.model}@{args.alias}"
    base = ui.local_url(args.host, args.port)
    print(f"serving {model_uri} (version {version}) on {base}: starting…", flush=True)
    command = [
        str(Path(sys.executable).with_name("mlflow")),
        "models",
        "serve",
        "-m",
        model_uri,
        "--env-manager",
        "local",
        "--host",
        args.host,
        "--port",
        str(args.port),
    ]
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    return ui.run_server(
        command,
        env=env,
        ready=(
            f"{base}/ping",
            f"ready: POST rows of pixels to {base}/invocations "
            "(python -m pipeline.serve.request 0 > digit.json makes one)",
        ),
    )


def champion(uri: str, model: str, alias: str) -> str:
    """The version `alias` points at; UsageError naming what to do if there is none."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    import mlflow

    try:
        return mlflow.MlflowClient(uri).get_model_version_by_alias(model, alias).version
    except mlflow.exceptions.MlflowException as e:
        if "RESOURCE_DOES_NOT_EXIST" in str(e.error_code) or "not found" in str(e).lower():
            raise ui.UsageError(
                f"{model} has no version @{alias} in {redact(uri)}: train and "
                "register one first (make run, then make register RUN_ID=<id>; "
                "or make sweep)"
            ) from None
        raise ui.UsageError(
            f"cannot read {model} @{alias} from {redact(uri)}: {redact(str(e))[:300]}"
        ) from None


if __name__ == "__main__":
    sys.exit(main())
