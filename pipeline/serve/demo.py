"""`make demo`: draw a digit and watch a tracked network think, in the browser.

    python -m pipeline.serve.demo [--run-id ID] [--model mnist-classifier] [--port 5002]

Serves a page (serve/demo_app.py, demo_page/) on 127.0.0.1 where a person draws a digit
or loads a test image or noise, and sees every layer of one of ours' logged networks
light up, the ten outputs with the answer, and what each first-layer unit looks for;
and switches between the runs of the experiment. The run: --run-id (RUN_ID=), else the
version @champion of --model if it is one of ours, else the newest finished run of ours
with a model; a run the page cannot show (no logged model, stopped early) is refused in one
line, exit 2. Same safety as `make ui`: loopback unless --host says otherwise, the link
printed once the page answers, stopped whole by Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.families import OURS
from pipeline.logs import redact
from pipeline.serve import ui

# The page opens networks of ours (families.OURS); the search of them, shared with the app.
OURS_FINISHED = (
    f"tags.kind = 'training' and tags.model_family = '{OURS}' and attributes.status = 'FINISHED'"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Draw a digit, watch a tracked network think.")
    ui.add_network_options(parser)
    parser.set_defaults(port=os.environ.get("DEMO_PORT", "5002"))  # argparse makes it an int
    parser.add_argument("--run-id", default=os.environ.get("RUN_ID") or None)
    parser.add_argument("--model", default="mnist-classifier", help="whose @champion to open")
    args = parser.parse_args(argv)
    from pipeline.tracking import store, urls  # MLflow with it: after the command line is read

    uri = store.store_uri(args.mlruns)
    try:
        allowed = ui.check_network(args, "make demo DEMO_PORT")
        urls.check_tracking_uri(uri)
        run_id, why = pick_run(uri, args.run_id, args.model)
    except (ui.UsageError, PipelineError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    base = ui.local_url(args.host, args.port)
    print(f"starting the demo of run {run_id} ({why}) on {base}…", flush=True)
    command = [
        sys.executable,
        "-m",
        "pipeline.serve.demo_app",
        "--run-id",
        run_id,
        "--host",
        args.host,
        "--port",
        str(args.port),
        *(["--allowed-hosts", allowed] if allowed else []),
    ]
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    return ui.run_server(
        command,
        env=env,
        ready=(f"{base}/api/health", f"demo: {base}   (draw a digit; Ctrl-C stops it)"),
    )


def pick_run(uri: str, run_id: str | None, model: str) -> tuple[str, str]:
    """(the run to open, why that one); UsageError naming what to do if there is none."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    import mlflow

    client = mlflow.MlflowClient(uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise ui.UsageError(f"no store at {uri}: train a network first (make run)")
    try:
        if run_id:
            run = client.get_run(run_id)
            if run.data.tags.get("model_family") != OURS:
                raise ui.UsageError(
                    f"run {run_id} is not one of ours (family "
                    f"{run.data.tags.get('model_family')}): the page shows our networks' "
                    "layers; pick a run named `ours …`"
                )
            refuse_unshowable(run)
            return run_id, "RUN_ID"
        try:
            champion = client.get_model_version_by_alias(model, "champion").run_id
            if champion and client.get_run(champion).data.tags.get("model_family") == OURS:
                return champion, f"{model} @champion"
        except mlflow.exceptions.MlflowException:
            pass  # no champion yet: the newest run of ours
        found = client.search_runs(
            [e.experiment_id for e in client.search_experiments()],
            OURS_FINISHED,
            max_results=20,
            order_by=["attributes.start_time DESC"],
        )
    except mlflow.exceptions.MlflowException as e:
        raise ui.UsageError(f"cannot read {redact(uri)}: {redact(str(e))[:300]}") from None
    for run in found:
        if showable(run):
            return run.info.run_id, "the newest run of ours"
    raise ui.UsageError(
        "no finished run of ours with a logged model in the store: train one first "
        "(make run), or name one: make demo RUN_ID=<id>"
    )


def refuse_unshowable(run) -> None:
    """PipelineError naming the fix if the page cannot show the run's network."""
    run_id = run.info.run_id
    if run.data.tags.get("stopped"):
        raise PipelineError(
            f"run {run_id} was stopped before its last epoch ({run.data.tags['stopped']}): "
            "the demo shows networks trained to the end; pick another run: make demo "
            "RUN_ID=<id>"
        )
    if not showable(run):
        raise PipelineError(
            f"run {run_id} has no logged model (trained with tracking.log_model=false, or "
            "still training): train one with tracking.log_model=true (make run), or pick "
            "another run: make demo RUN_ID=<id>"
        )


def showable(run) -> bool:
    """A run of ours that trained all its epochs (not pruned) and logged its model (MLflow 3
    keeps it as a logged model of the run)."""
    return (
        run.data.tags.get("model_family") == OURS
        and "stopped" not in run.data.tags
        and bool(run.outputs and run.outputs.model_outputs)
    )


if __name__ == "__main__":
    sys.exit(main())
