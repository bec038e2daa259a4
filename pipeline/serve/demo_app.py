"""The page of `make demo` and what it asks: a tracked network's activations for one image.

    python -m pipeline.serve.demo_app --run-id ID [--host 127.0.0.1] [--port 5002]

Run by `make demo` (serve/demo.py), which checks the command line, picks the run and says
the link once /api/health answers. A FastAPI app (FastAPI and uvicorn come with MLflow)
under uvicorn, serving demo_page/ and a small JSON API:

    GET  /api/runs                    ours' finished runs with a model, in the run's experiment
    GET  /api/runs/{id}               one run: name, accuracies, layer sizes, link to the UI
    GET  /api/runs/{id}/weights?units=0,3   first hidden layer: each unit's incoming weights
    GET  /api/runs/{id}/sample?kind=test|noise   a test image (and its label) or noise
    POST /api/runs/{id}/predict       {"pixels": [...]} or {"drawing": [[...], ...]}

A model is loaded as serving loads it, mlflow.pyfunc.load_model("runs:/<id>/model") (the
network rebuilt by the engine, numpy only); predict answers every layer's activations
(Network.activations) with the digit. Bad input gets 4xx with the reason: the image check
is the served model's (engine/inputs.py).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
from pathlib import Path

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from pipeline.data import drawing
from pipeline.engine.inputs import InputError, check_pixels
from pipeline.serve.demo import has_model

PAGE = Path(__file__).with_name("demo_page")
MAX_BODY = 2_000_000  # bytes: a 280×280 drawing as JSON is ~0.6 MB
MAX_DRAWING_SIDE = 280
SHOWN_UNITS = 16  # a hidden layer wider than this: the most active units are drawn

app = FastAPI(title="Watch the network think", docs_url=None, redoc_url=None)
app.mount("/static", StaticFiles(directory=PAGE), name="static")
STATE: dict = {"run_id": None}


def client():
    import mlflow

    return mlflow.MlflowClient()


@functools.lru_cache(maxsize=8)
def network(run_id: str):
    """The run's logged model, loaded as `mlflow models serve` loads it: its Network."""
    import mlflow

    try:
        model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
        return model.unwrap_python_model().net
    except Exception as e:  # no such run, no model, or a scikit-learn one
        raise HTTPException(404, f"run {run_id} has no model of ours to show ({e})"[:400]) from e


def _run(run_id: str):
    import mlflow

    try:
        return client().get_run(run_id)
    except mlflow.exceptions.MlflowException as e:
        raise HTTPException(404, f"no run {run_id} in this store") from e


def describe(run) -> dict:
    """What the page shows of a run."""
    params, metrics = run.data.params, run.data.metrics
    tracking = os.environ.get("PIPELINE_UI_URL", "http://127.0.0.1:5000")
    experiment = run.info.experiment_id
    return {
        "id": run.info.run_id,
        "name": run.info.run_name,
        "val_accuracy": metrics.get("val_accuracy"),
        "test_accuracy": metrics.get("test_accuracy"),
        "config": {
            key: params[key]
            for key in (
                "data.name",
                "model.hidden_sizes",
                "model.activation",
                "model.cost",
                "train.learning_rate",
                "train.batch_size",
                "train.epochs",
            )
            if key in params
        },
        "link": f"{tracking}/#/experiments/{experiment}/runs/{run.info.run_id}",
    }


@app.get("/", include_in_schema=False)
def page():
    return FileResponse(PAGE / "index.html")


@app.get("/favicon.ico", include_in_schema=False)
def no_icon():
    return Response(status_code=204)


@app.get("/api/health")
def health():
    return {"ok": True, "run_id": STATE["run_id"]}


@app.get("/api/runs")
def runs():
    """Ours' finished training runs in the experiment of the demo's run, newest first."""
    first = _run(STATE["run_id"])
    found = client().search_runs(
        [first.info.experiment_id],
        "tags.kind = 'training' and tags.model_family = 'numpy_mlp' "
        "and attributes.status = 'FINISHED'",
        max_results=100,
        order_by=["attributes.start_time DESC"],
    )
    shown = [describe(r) for r in found if "stopped" not in r.data.tags and has_model(r)]
    return {"current": STATE["run_id"], "runs": shown}


@app.get("/api/runs/{run_id}")
def run_info(run_id: str):
    info = describe(_run(run_id))
    net = network(run_id)
    info |= {"sizes": net.sizes, "activation": net.activation, "cost": net.cost}
    return info


@app.get("/api/runs/{run_id}/weights")
def weights(run_id: str, units: str = ""):
    """The incoming weights of first-hidden-layer units (what each unit "looks for"), as
    images of the input's side: {"units": [...], "weights": [[side² values], ...], "scale"}
    with scale the largest |w| of the layer (to colour them alike)."""
    net = network(run_id)
    w = net.weights[0]  # (n_in, n_out): column j is unit j's incoming weights
    try:
        chosen = [int(u) for u in units.split(",") if u] or list(range(min(w.shape[1], 16)))
    except ValueError:
        raise HTTPException(400, "units: unit numbers separated by commas, e.g. 0,3,7") from None
    if any(not 0 <= u < w.shape[1] for u in chosen) or len(chosen) > 64:
        raise HTTPException(400, f"units: up to 64 numbers from 0 to {w.shape[1] - 1}")
    return {
        "units": chosen,
        "weights": [np.round(w[:, u], 4).tolist() for u in chosen],
        "scale": float(np.abs(w).max()),
    }


@app.get("/api/runs/{run_id}/sample")
def sample(run_id: str, kind: str = "test", index: int | None = None, seed: int | None = None):
    """A test image of the run's dataset (random unless index) with its label, or an image
    of uniform noise in [0, 1]."""
    net = network(run_id)
    rng = np.random.default_rng(seed)
    if kind == "noise":
        return {"pixels": rng.random(net.sizes[0]).round(4).tolist(), "label": None}
    if kind != "test":
        raise HTTPException(400, f"kind={kind}: test or noise")
    x, y = test_split(run_id)
    i = int(rng.integers(len(y))) if index is None else index
    if not 0 <= i < len(y):
        raise HTTPException(400, f"index {i}: the test set has images 0 to {len(y) - 1}")
    return {"pixels": x[i].tolist(), "label": int(y[i]), "index": i}


@functools.lru_cache(maxsize=2)
def test_split(run_id: str) -> tuple[np.ndarray, np.ndarray]:
    """The run's test images, from its own config (its config.yaml artifact)."""
    from omegaconf import OmegaConf

    from pipeline import config as _config  # noqa: F401 — registers the schema
    from pipeline.data import dataset
    from pipeline.errors import PipelineError

    try:
        path = client().download_artifacts(run_id, "config.yaml")
        data = dataset.load(OmegaConf.load(path).data)
    except (PipelineError, OSError) as e:
        raise HTTPException(404, f"the test images of run {run_id} are not here: {e}") from e
    return data.x("test"), data.y("test")


@app.post("/api/runs/{run_id}/predict")
async def predict(run_id: str, request: Request):
    """Every layer's activations for one image: {"pixels": side² values in [0, 1]}, or
    {"drawing": rows of ink in [0, 1]} made into a training image first (data/drawing.py)."""
    body = await request.body()
    if len(body) > MAX_BODY:
        raise HTTPException(413, f"the request is {len(body)} bytes; at most {MAX_BODY}")
    try:
        sent = json.loads(body)
    except ValueError:
        raise HTTPException(
            400, 'send JSON: {"pixels": [...]} or {"drawing": [[...], ...]}'
        ) from None
    if not isinstance(sent, dict) or not ({"pixels", "drawing"} & set(sent)):
        raise HTTPException(400, 'send {"pixels": [...]} or {"drawing": [[...], ...]}')
    net = network(run_id)
    width = net.sizes[0]
    try:
        if "drawing" in sent:
            ink = check_pixels(sent["drawing"], len(sent["drawing"][0]), np.float64)
            if not 8 <= ink.shape[1] <= MAX_DRAWING_SIDE or len(ink) > MAX_DRAWING_SIDE:
                raise InputError(f"a drawing is 8 to {MAX_DRAWING_SIDE} pixels on each side")
            pixels = drawing.as_training_image(ink, side=int(round(np.sqrt(width))))
        else:
            pixels = check_pixels(sent["pixels"], width, net.dtype)[0]
    except (InputError, TypeError, IndexError, KeyError) as e:
        raise HTTPException(400, str(e) or "expected rows of pixel values in [0, 1]") from None
    layers = [a[0] for a in net.activations(pixels[None, :])]
    hidden = []
    for a in layers[1:-1]:
        top = np.argsort(-a, kind="stable")[:SHOWN_UNITS]
        hidden.append({"size": len(a), "units": a.round(4).tolist(), "top": top.tolist()})
    outputs = layers[-1]
    return {
        "input": np.round(layers[0], 4).tolist(),
        "hidden": hidden,
        "outputs": outputs.tolist(),
        "prediction": int(np.argmax(outputs)),
    }


@app.exception_handler(HTTPException)
async def as_json(_request, e: HTTPException):
    return JSONResponse({"error": e.detail}, status_code=e.status_code)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5002)
    args = parser.parse_args(argv)
    import uvicorn

    STATE["run_id"] = args.run_id
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
