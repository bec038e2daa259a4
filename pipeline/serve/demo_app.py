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

A run is opened once, by the first request that asks for it, however many ask at once:
its model and config.yaml downloaded into a temporary folder removed once they are read;
the test images of its data loaded and verified once for all the runs of that data, and
only they kept.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cachetools.func
import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from pipeline import interrupts
from pipeline.data import drawing
from pipeline.engine.inputs import InputError, check_pixels
from pipeline.engine.network import Network
from pipeline.serve import hosts
from pipeline.serve.demo import OURS_FINISHED, showable
from pipeline.tracking import links

PAGE = Path(__file__).with_name("demo_page")
MAX_BODY = 2_000_000  # bytes: a 280×280 drawing as JSON is ~0.6 MB
MAX_DRAWING_SIDE = 280
SHOWN_UNITS = 16  # a hidden layer wider than this: the most active units are drawn

app = FastAPI(title="Watch the network think", docs_url=None, redoc_url=None)
app.mount("/static", StaticFiles(directory=PAGE), name="static")
STATE: dict = {"run_id": None, "allowed_hosts": None}


def client():
    import mlflow

    return mlflow.MlflowClient()


@dataclass(frozen=True)
class Opened:
    """What the demo keeps of a run it opened: its network, and its data config as YAML
    (the key its test images are shared under by every run of that data; None: the run
    has no config.yaml)."""

    net: Network
    data: str | None


# cachetools' lru_cache, not functools': a run many requests ask for at once is opened by
# the first of them while the others wait for it (functools' would open it once each).
@cachetools.func.lru_cache(maxsize=8)
def opened(run_id: str) -> Opened:
    """The run's logged model, loaded as `mlflow models serve` loads it (its Network), and
    its data config (its config.yaml artifact), downloaded into a temporary folder removed
    once they are read. Only a run of ours that the demo lists: loading a model runs its
    code."""
    import mlflow
    from omegaconf import OmegaConf

    if not showable(_run(run_id)):
        raise HTTPException(404, f"run {run_id} is not a finished run of ours with a model")
    with tempfile.TemporaryDirectory(prefix="demo-") as tmp:
        try:
            model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model", dst_path=tmp)
            net = model.unwrap_python_model().net
        except Exception as e:  # no such run, no model, or a scikit-learn one
            message = f"run {run_id} has no model of ours to show ({e})"
            raise HTTPException(404, message[:400]) from e
        finally:
            # MLflow put the model's code folder first on sys.path: the engine it holds is
            # the one imported already, and the folder is about to go.
            sys.path[:] = [p for p in sys.path if not p.startswith(tmp)]
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path="config.yaml", dst_path=tmp
            )
            data = OmegaConf.to_yaml(OmegaConf.load(path).data, resolve=True)
        except (OSError, mlflow.exceptions.MlflowException):
            data = None  # the network still shows; its test images do not
    print(f"demo: opened run {run_id}", file=sys.stderr, flush=True)
    return Opened(net, data)


def network(run_id: str) -> Network:
    """The run's network (the run opened on first use)."""
    return opened(run_id).net


def _run(run_id: str):
    import mlflow

    try:
        return client().get_run(run_id)
    except mlflow.exceptions.MlflowException as e:
        raise HTTPException(404, f"no run {run_id} in this store") from e


def describe(run) -> dict:
    """What the page shows of a run."""
    params, metrics = run.data.params, run.data.metrics
    # the UI serving the store now (it may start after the demo did); None: no UI runs
    ui = links.ui_base(os.environ.get("MLFLOW_TRACKING_URI", ""))
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
        "link": ui + links.run_page(run.info.experiment_id, run.info.run_id) if ui else None,
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
        OURS_FINISHED,
        max_results=100,
        order_by=["attributes.start_time DESC"],
    )
    shown = [describe(r) for r in found if showable(r)]
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
        shown = range(min(w.shape[1], SHOWN_UNITS))
        chosen = [int(u) for u in units.split(",") if u] or list(shown)
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
def sample(
    run_id: str,
    kind: str = "test",
    index: int | None = None,
    seed: int | None = Query(None, ge=0),
):
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


def test_split(run_id: str) -> tuple[np.ndarray, np.ndarray]:
    """The run's test images and labels, from its own data config."""
    data = opened(run_id).data
    if data is None:
        raise HTTPException(404, f"the test images of run {run_id} are not here: no config.yaml")
    return test_images(data)


@cachetools.func.lru_cache(maxsize=2)
def test_images(data_yaml: str) -> tuple[np.ndarray, np.ndarray]:
    """The test images and labels of a data config (YAML), loaded and verified once for
    every run of that data; only they are kept (MNIST's test set: 31 of its 220 MB)."""
    from omegaconf import OmegaConf

    from pipeline import config as _config  # noqa: F401 — registers the schema
    from pipeline.data import dataset
    from pipeline.errors import PipelineError

    data_cfg = OmegaConf.create(data_yaml)
    try:
        data = dataset.load(data_cfg)
    except (PipelineError, OSError) as e:
        message = f"the test images of data={data_cfg.name} are not here: {e}"
        raise HTTPException(404, message) from e
    print(f"demo: loaded the test images of data={data_cfg.name}", file=sys.stderr, flush=True)
    return data.x("test"), data.y("test")


@app.post("/api/runs/{run_id}/predict")
async def predict(run_id: str, request: Request):
    """Every layer's activations for one image: {"pixels": side² values in [0, 1]}, or
    {"drawing": rows of ink in [0, 1]} made into a training image first (data/drawing.py)."""
    # Read as it arrives, keeping at most MAX_BODY bytes: the sender of a huge body gets a
    # 413 answer (not a reset connection), and memory stays bounded.
    kept, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= MAX_BODY:
            kept.append(chunk)
    if size > MAX_BODY:
        raise HTTPException(413, f"the request is {size} bytes; at most {MAX_BODY}")
    body = b"".join(kept)
    try:
        sent = json.loads(body)
    except (ValueError, RecursionError):
        raise HTTPException(
            400, 'send JSON: {"pixels": [...]} or {"drawing": [[...], ...]}'
        ) from None
    if not isinstance(sent, dict) or len({"pixels", "drawing"} & set(sent)) != 1:
        raise HTTPException(400, 'send {"pixels": [...]} or {"drawing": [[...], ...]}')
    # In a worker thread: opening the run must not stop the event loop (and every request)
    net = await run_in_threadpool(network, run_id)
    width = net.sizes[0]
    try:
        if "drawing" in sent:
            side = int(round(np.sqrt(width)))
            pixels = drawing.as_training_image(drawn(sent["drawing"]), side=side)
        else:
            pixels = check_pixels(one_image(sent["pixels"]), width, net.dtype)[0]
    except InputError as e:
        raise HTTPException(400, str(e)) from None
    layers = [a[0] for a in net.activations(pixels[None, :])]
    hidden = []
    for a in layers[1:-1]:
        top = np.argsort(-a, kind="stable")[:SHOWN_UNITS]
        hidden.append({"size": len(a), "units": a.round(4).tolist(), "top": top.tolist()})
    outputs = layers[-1]
    return {
        "input": layers[0].tolist(),  # exactly what the layers were computed from
        "hidden": hidden,
        "outputs": outputs.tolist(),
        "prediction": int(np.argmax(outputs)),
    }


def numbers(value, what: str) -> np.ndarray:
    """value as an array of floats (lists of numbers only: no strings, no objects)."""
    try:
        array = np.asarray(value)
    except ValueError:  # ragged rows
        raise InputError(f"{what}: rows of equal length") from None
    if array.dtype.kind not in "iuf":  # strings, objects, booleans, empty nesting
        raise InputError(f"{what}: numbers in [0, 1]")
    return array.astype(np.float64)


def one_image(pixels) -> np.ndarray:
    """One image's pixels as a flat list (a single row is accepted too)."""
    image = numbers(pixels, "pixels")
    if image.ndim == 2 and len(image) == 1:
        image = image[0]
    if image.ndim != 1:
        raise InputError(f"pixels: one image as a flat list of numbers, got shape {image.shape}")
    return image


def drawn(rows) -> np.ndarray:
    """A drawing: rows of ink in [0, 1], each side 8 to MAX_DRAWING_SIDE pixels."""
    ink = numbers(rows, "drawing")
    if ink.ndim != 2 or not all(8 <= n <= MAX_DRAWING_SIDE for n in ink.shape):
        raise InputError(
            f"drawing: rows of ink, 8 to {MAX_DRAWING_SIDE} pixels on each side, got shape "
            f"{ink.shape}"
        )
    return check_pixels(ink, ink.shape[1], np.float64)


@app.middleware("http")
async def only_known_hosts(request, call_next):
    """A request whose Host header is not this machine's (or allowed) gets 403 and the fix."""
    host = request.headers.get("host", "")
    patterns = STATE.get("allowed_hosts") or hosts.allowed(None)
    if refused := hosts.refusal(request.url.path, host, patterns, "make demo"):
        return JSONResponse({"error": refused}, status_code=403)
    return await call_next(request)


@app.exception_handler(HTTPException)
async def as_json(_request, e: HTTPException):
    return JSONResponse({"error": e.detail}, status_code=e.status_code)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5002)
    parser.add_argument(
        "--allowed-hosts", help="the only Host headers served (default: MLflow's, as make ui)"
    )
    args = parser.parse_args(argv)
    import uvicorn

    STATE["allowed_hosts"] = hosts.allowed(args.allowed_hosts)  # serve/hosts.py: DNS rebinding
    STATE["run_id"] = args.run_id
    interrupts.stop_with_parent()  # demo.py stops it; if demo.py is killed, so is it
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
