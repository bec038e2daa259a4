"""`make serve`: a registered model over HTTP (MLflow's scoring server), on loopback.

    python -m pipeline.serve.model [--model mnist-classifier] [--alias champion] [--port 5001]
        [--host 127.0.0.1] [--allowed-hosts NAME,...]

Serves models:/<model>@<alias> from the project's store (or MLFLOW_TRACKING_URI) on
127.0.0.1 unless --host says otherwise, with the app `mlflow models serve` runs
(serve/model_app.py), whose error answers say the reason first in a few hundred bytes
where MLflow's echo the whole input. The model checks each request (pixels in [0, 1],
the right width) and answers 400 with the reason otherwise; the server's log line for
the request names it too. As `make ui`, it answers only requests whose Host header it was
told about (--allowed-hosts, ui.py's option; default: MLflow's localhost and private
addresses); another gets 403 naming the fix. The server runs in a process group of its
own that stopping this process (Ctrl-C, SIGTERM from `kill` or from make) ends whole;
"ready" is printed once it answers.
"""

from __future__ import annotations

import argparse
import os
import sys

from pipeline.errors import PipelineError
from pipeline.logs import redact
from pipeline.serve import ui


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve a registered model of the project.")
    ui.add_network_options(parser)
    parser.set_defaults(port=os.environ.get("SERVE_PORT", "5001"))  # argparse makes it an int
    parser.add_argument("--model", default="mnist-classifier", help="the registered model")
    parser.add_argument("--alias", default="champion", help="which of its versions")
    args = parser.parse_args(argv)
    from pipeline.tracking import store, urls  # MLflow with it: after the command line is read

    uri = store.store_uri(args.mlruns)
    try:
        allowed = ui.check_network(args, "make serve SERVE_PORT")
        urls.check_tracking_uri(uri)
        version = champion(uri, args.model, args.alias)
    except (ui.UsageError, PipelineError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model_uri = f"models:/{args.model}@{args.alias}"
    base = ui.local_url(args.host, args.port)
    print(f"serving {model_uri} (version {version}) on {base}: starting…", flush=True)
    # MLflow's scoring app, as `mlflow models serve -m <uri> --env-manager local` runs it,
    # but for its error answers: MLflow's begin with the whole input, 4-16 KB (model_app.py)
    command = [
        sys.executable,
        "-m",
        "pipeline.serve.model_app",
        "--model-uri",
        model_uri,
        "--host",
        args.host,
        "--port",
        str(args.port),
        *(["--allowed-hosts", allowed] if allowed else []),
    ]
    return ui.run_server(
        command,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri},
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
