"""MLflow's app as `make ui` and `make server` serve it: the same app, with a page whose first
visit opens on model training.

MLflow 3.17's UI keeps two choices in the browser's localStorage and has no server setting
for either: the workflow (GenAI or model training; a fresh browser gets GenAI, so the root
link, a new experiment and the run pages show traces, sessions and judges) and whether its
Assistant panel has opened itself once (on a local server it opens on the first visit and
takes a quarter of the width). This wraps MLflow's ASGI app and adds, to the page it serves
(index.html), a few lines that set those two choices before the UI starts, only where the
browser has made none: a person who picks GenAI or opens the Assistant keeps that choice.
Every request still goes through MLflow's app, Host-header checks included.

`make server` beyond this machine serves create_auth_app() instead: MLflow's basic-auth app as
`mlflow server --app-name basic-auth` builds it under uvicorn (mlflow.server.auth.create_app:
its login and permission checks added to MLflow's Flask app, wrapped in a FastAPI app of its
own with a permission middleware for the routes FastAPI serves), with the same page. A page
that needs a login is answered 401 by MLflow, unchanged.
"""

from __future__ import annotations

import json

from mlflow.server import fastapi_app

# localStorage keys as the UI names them (`<key>_v<version>`, the value as JSON).
FIRST_VISIT = {
    "mlflow.workflowType_v1": "machine_learning",
    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": True,
}
SCRIPT = (
    "<script>(function(){try{var d=" + json.dumps(FIRST_VISIT) + ";"
    "for(var k in d){if(localStorage.getItem(k)===null)"
    "localStorage.setItem(k,JSON.stringify(d[k]));}}catch(e){}})();</script>"
).encode()
PAGES = {"/", "/static-files/index.html"}  # the paths MLflow answers with index.html


def with_first_visit_choices(html: bytes) -> bytes:
    """index.html with SCRIPT first in its <head>, so it runs before MLflow's own script."""
    return html.replace(b"<head>", b"<head>" + SCRIPT, 1)


def with_first_visit_page(mlflow_app):
    """The ASGI app mlflow_app, its page (GET of PAGES) answered with SCRIPT added."""

    async def app(scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "GET" or scope["path"] not in PAGES:
            await mlflow_app(scope, receive, send)
            return
        start: dict = {}
        body = bytearray()

        async def collect(message):
            if message["type"] == "http.response.start":
                start.update(message)
                return
            body.extend(message.get("body", b""))
            if message.get("more_body"):
                return
            headers = [
                (k, v)
                for k, v in start.get("headers", [])
                if k.lower() not in (b"content-length", b"etag")
            ]
            content = bytes(body)
            if start.get("status") == 200 and any(
                k.lower() == b"content-type" and v.startswith(b"text/html") for k, v in headers
            ):
                content = with_first_visit_choices(content)
            headers.append((b"content-length", str(len(content)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": content})

        await mlflow_app(scope, receive, collect)

    return app


def create_auth_app():
    """MLflow's basic-auth app, its page opening on model training. Reads MLflow's auth
    settings (MLFLOW_AUTH_CONFIG_PATH, MLFLOW_FLASK_SERVER_SECRET_KEY, ...) when called."""
    from mlflow.server.auth import create_app

    return with_first_visit_page(create_app())


app = with_first_visit_page(fastapi_app.app)
