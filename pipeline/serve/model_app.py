"""The server of `make serve`: MLflow's scoring server for one model, its refusals short.

    python -m pipeline.serve.model_app --model-uri models:/NAME@ALIAS [--host] [--port]
        [--allowed-hosts LIST]

Run by `make serve` (serve/model.py), which checks the command line and says "ready". The
app is the one `mlflow models serve` runs (mlflow.pyfunc.scoring_server.init on the model,
loaded as its app.py loads it): the same endpoints (/invocations, /ping, /health,
/version), request formats and answers, but for an error's. MLflow answers a refused
request by echoing the whole input first ("Failed to predict data '[[0.5 0.5 …]]'. Error:
…", 4–16 KB for an MNIST row), adds a traceback to a CSV body's answer, and logs only
"400 Bad Request". Here an error's answer is {"message": <the reason>, "error_code": …},
a few hundred bytes at most, and the request's line in the server's log ends with the
reason. A traceback, if MLflow made one, goes to the server's log only.

Host headers are checked as `make ui`'s MLflow server checks them (DNS rebinding: a page
elsewhere whose name resolves to this machine), with MLflow's own check
(mlflow.server.security_utils): the names in --allowed-hosts (ui.allowed_hosts_value's
list: a name also with the port) or, without it, MLflow's default (localhost, 127.0.0.1,
[::1] and private addresses, any port); the health checks (/ping, /health, /version)
answer whatever the Host, as MLflow's do. Any other request gets 403 with the fix.
"""

from __future__ import annotations

import argparse
import http
import json
import logging

from pipeline import interrupts
from pipeline.serve import hosts

MAX_REASON = 300  # characters: enough for any reason, never for an echoed input

# uvicorn's own log (its format, "INFO:     …"): the request lines below replace its access
# log, which cannot say why a request was refused.
log = logging.getLogger("uvicorn.error")

# How MLflow 3 wraps a reason in an echo of the input: (the message's start, the marker
# that ends the echo). A model's refusal is "Failed to predict data '<input>'. \nError:
# <reason>"; a row of the wrong width fails MLflow's schema check inside it, "Failed to
# enforce schema of data '<input>' with schema '<schema>'. Error: <reason>". The reason is
# code's, the input the caller's: the reason follows the echo's last marker.
ECHOES = (
    ("Failed to predict data '", "'. \nError: "),
    ("Failed to enforce schema of data '", "'. Error: "),
)


def reason(message: str) -> str:
    """What an error message of MLflow's scoring server says is wrong, without the input it
    echoes: one line of at most MAX_REASON characters."""
    for start, marker in ECHOES:
        if message.startswith(start):
            message = message.rpartition(marker)[2]
    # A body that is not JSON: "… Error: 'JSONDecodeError(…)'\nInput: \n<the body>"; a JSON
    # object without "inputs": "…. IMPORTANT: The MLflow Model scoring protocol has changed
    # in MLflow version 2.0 …", 900 characters of history.
    message = message.partition("\nInput:")[0].partition(" IMPORTANT: ")[0]
    message = " ".join(message.split())
    return message if len(message) <= MAX_REASON else message[: MAX_REASON - 1] + "…"


def csv_reason(input_schema) -> str | None:
    """Why a CSV body is refused, for a model whose input is a tensor (ours: rows of
    pixels): MLflow reads a tensor from JSON only, and its error says "TensorSpec only
    supports numpy types" with a traceback. None for a model that reads CSV."""
    if input_schema is None or not input_schema.is_tensor_spec():
        return None
    width = input_schema.inputs[0].shape[-1]
    return (
        "a CSV body cannot be read by this model (MLflow reads its tensor input from JSON "
        f'only): POST {{"inputs": [[{width} pixel values in [0, 1]], ...]}} with '
        "Content-Type: application/json"
    )


def short_answer(body: bytes, status: int, csv_refused: str | None) -> tuple[dict, str | None]:
    """MLflow's error answer `body` as {"message": <reason>, "error_code": …} (the reason
    first), and the traceback it held, if any, for the server's log."""
    text = body.decode("utf-8", "replace")
    try:  # MLflow's {"error_code", "message", …}, or FastAPI's {"detail"} (405)
        error = json.loads(text)
        message = str(error.get("message") or error.get("detail") or text)
        code, trace = str(error.get("error_code", "")), error.get("stack_trace")
    except (ValueError, AttributeError):  # a plain-text answer (415, 504)
        message, code, trace = text, "", None
    if csv_refused:
        message, trace = csv_refused, None  # MLflow failing to read CSV: no news in its trace
    return {"message": reason(message), "error_code": code or http.HTTPStatus(status).name}, trace


def build(model, allowed_hosts: list[str] | None = None):
    """MLflow's scoring app for `model` (a loaded pyfunc), with short error answers and a log
    line per request that ends with the reason of a refusal; a request whose Host header is
    not in allowed_hosts (MLflow's patterns; None: MLflow's default) is refused, 403."""
    from fastapi import Request
    from fastapi.responses import Response
    from mlflow.pyfunc import scoring_server

    app = scoring_server.init(model)
    for_csv = csv_reason(model.metadata.get_input_schema())
    patterns = allowed_hosts or hosts.allowed(None)

    @app.middleware("http")  # added last, so it sees MLflow's answer (and its timeout's)
    async def say_why(request: Request, call_next):
        host = request.headers.get("host", "")
        if refused := hosts.refusal(request.url.path, host, patterns, "make serve"):
            answer = {"message": refused, "error_code": "FORBIDDEN"}
            log_request(request, 403, answer["message"])
            return Response(json.dumps(answer), 403, media_type="application/json")
        response = await call_next(request)
        status, why, trace = response.status_code, None, None
        if status >= 400 and request.url.path == "/invocations":
            body = b"".join([chunk async for chunk in response.body_iterator])
            media = request.headers.get("content-type", "").split(";")[0].strip().lower()
            csv_refused = for_csv if media == scoring_server.CONTENT_TYPE_CSV else None
            answer, trace = short_answer(body, status, csv_refused)
            response = Response(json.dumps(answer), status, media_type="application/json")
            why = answer["message"]
        log_request(request, status, why)
        if trace:
            log.warning("the traceback MLflow answered with:\n%s", trace.rstrip())
        return response

    return app


def log_request(request, status: int, why: str | None) -> None:
    """The request's line in the server's log, as uvicorn's access log writes it, ending
    with the reason of a refusal."""
    client = f"{request.client.host}:{request.client.port}" if request.client else "-"
    log.info(
        '%s - "%s %s HTTP/%s" %d %s%s',
        client,
        request.method,
        request.url.path,
        request.scope.get("http_version", "1.1"),
        status,
        http.HTTPStatus(status).phrase,
        f": {why}" if why else "",
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-uri", required=True, help="e.g. models:/mnist-classifier@champion")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument(
        "--allowed-hosts", help="the only Host headers served (default: MLflow's, as make ui)"
    )
    args = parser.parse_args(argv)
    interrupts.stop_with_parent()  # model.py stops it; if model.py is killed, so is it
    import uvicorn
    from mlflow.pyfunc import scoring_server

    # As `mlflow models serve` loads it (its SERVING_MODEL_CONFIG included)
    model = scoring_server.load_model_with_mlflow_config(args.model_uri)
    uvicorn.run(
        build(model, hosts.allowed(args.allowed_hosts)),
        host=args.host,
        port=args.port,
        access_log=False,
    )


if __name__ == "__main__":
    main()
