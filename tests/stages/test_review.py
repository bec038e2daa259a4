"""What a reviewer sees in MLflow: readable runs, family params, best-epoch weights, the
champion registered with its lineage and served, the analysis of the right run."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
from helpers import ask_served_model, free_port, wait_for
from mlflow.tracking import MlflowClient

from pipeline.app import run_stages
from pipeline.data import dataset
from pipeline.errors import PipelineError
from pipeline.paths import PROJECT_ROOT
from pipeline.serve import model_app
from pipeline.stages import analyze
from pipeline.tracking import runs as tracking_runs
from pipeline.tracking import store as tracking_store


@pytest.fixture
def trained(make_cfg):
    cfg = make_cfg("data=digits", "train.epochs=4", "stages=[preprocess,train]")
    ours, theirs = run_stages(cfg)["train"]
    return cfg, MlflowClient().get_run(ours), MlflowClient().get_run(theirs)


def test_the_experiment_opens_in_the_model_training_view_with_a_description(trained):
    _, ours, _ = trained
    experiment = MlflowClient().get_experiment(ours.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "MLPClassifier" in experiment.tags["mlflow.note.content"]
    # each dataset its own experiment, its description true to the data
    assert experiment.name == "digits"
    assert "8×8 = 64 pixels in" in experiment.tags["mlflow.note.content"]
    # the runs view its links open on: both accuracies first, the best run first
    view = json.loads(experiment.tags["mlflow.sharedViewState.review"])
    assert view["orderByKey"] == "metrics.`test_accuracy`" and not view["orderByAsc"]


def test_runs_are_named_and_described_for_a_person(trained):
    _, ours, theirs = trained
    # The family first, then the recipe: the names show whole in the runs view.
    assert ours.info.run_name == "ours classic 16-16 sigmoid η=3 m=10"
    assert theirs.info.run_name == "sklearn classic 16-16 sigmoid η=3 m=10"
    assert "NumPy network 64-16-16-10" in ours.data.tags["mlflow.note.content"]
    assert "MLPClassifier 64-16-16-10" in theirs.data.tags["mlflow.note.content"]
    # the pair first, in the first screen of each run's page
    a, b = ours.data.metrics["test_accuracy"], theirs.data.metrics["test_accuracy"]
    pair = f"**ours {a:.4f} · sklearn {b:.4f} · {100 * (a - b):+.2f} pt**"
    for run in (ours, theirs):
        assert run.data.tags["mlflow.note.content"].startswith(pair), run.data.tags
        assert "[compare them](#/compare-runs?runs=" in run.data.tags["mlflow.note.content"]
    assert "final epoch's weights" in ours.data.tags["mlflow.note.content"]
    assert "MLPClassifier" in theirs.data.tags["mlflow.note.content"]


def test_params_describe_the_run_and_nothing_else(trained):
    _, ours, theirs = trained
    for run in (ours, theirs):
        assert not [
            k
            for k in run.data.params
            if k.startswith(
                ("analyze.", "paths.", "evaluate.", "tracking.", "reproduce.", "stages")
            )
        ]
        assert {
            "seed",
            "model.hidden_sizes",
            "train.learning_rate",
            "data.name",
            "data.validation_size",
        } <= set(run.data.params)
    # One vocabulary: both name every setting a reviewer compares, each with its own truth.
    shared = set(ours.data.params) - {"train.keep"}
    assert shared <= set(theirs.data.params)
    assert {"model.cost", "model.init", "train.schedule", "train.dtype", "family"} <= shared
    assert (ours.data.params["family"], theirs.data.params["family"]) == (
        "numpy_mlp",
        "sklearn_mlp",
    )
    assert ours.data.params["model.cost"] == "quadratic"
    assert theirs.data.params["model.cost"] == "cross_entropy"  # softmax + log loss
    assert theirs.data.params["model.init"] == "glorot_uniform"
    assert theirs.data.params["train.schedule"] == "constant"
    assert theirs.data.params["sklearn.hidden_layer_sizes"] == "(16, 16)"
    assert len(ours.data.params) <= 20


def test_the_baselines_fixed_settings_are_what_mlpclassifier_does(make_cfg):
    """Checked against the fitted estimator itself, not against our description of it."""
    from sklearn.neural_network import MLPClassifier

    from pipeline.families import sklearn_mlp

    cfg = make_cfg("data=digits", "train.epochs=1")
    dataset.prepare(cfg.data)
    data = dataset.load(cfg.data)
    x, y = data.x("train"), data.y("train")
    clf = sklearn_mlp.FAMILY.build(cfg, x)
    assert isinstance(clf, MLPClassifier)
    initial = []
    original = clf._init_coef

    def recording(fan_in, fan_out, dtype):  # the first weights it draws, per layer
        coef, intercept = original(fan_in, fan_out, dtype)
        initial.append((fan_in, fan_out, coef.copy()))  # training updates it in place
        return coef, intercept

    clf._init_coef = recording
    sklearn_mlp.FAMILY.fit(clf, cfg, x, y, lambda *a: None)
    fixed = sklearn_mlp.FAMILY.fixed
    assert (clf.out_activation_, clf.loss) == ("softmax", "log_loss")
    assert fixed["model.cost"] == "cross_entropy"
    assert clf.coefs_[0].dtype.name == fixed["train.dtype"]
    assert clf.learning_rate == fixed["train.schedule"]
    for fan_in, fan_out, coef in initial:  # Glorot's uniform, k = 2 for logistic units
        bound = np.sqrt(2 / (fan_in + fan_out))
        assert np.abs(coef).max() <= bound and np.abs(coef).max() > 0.9 * bound


def test_keep_best_ends_with_the_best_validation_epochs_weights(make_cfg):
    cfg = make_cfg(
        "data=digits",
        "model=modern",
        "train.epochs=12",
        "train.learning_rate=0.3",
        "baseline=none",
        "stages=[preprocess,train]",
    )
    (run_id,) = run_stages(cfg)["train"]
    client = MlflowClient()
    run = client.get_run(run_id)
    history = [m.value for m in client.get_metric_history(run_id, "val_accuracy")]
    best_epoch = int(np.argmax(history)) + 1
    assert run.data.metrics["best_epoch"] == best_epoch == run.data.metrics["kept_epoch"]
    assert run.data.metrics["best_val_accuracy"] == max(history)
    assert run.data.metrics["val_accuracy"] == max(history)  # the kept weights', for selection
    assert run.data.tags["kept_epoch"] == f"best (epoch {best_epoch} of 12)"
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")  # the kept weights
    data = dataset.load(cfg.data)
    assert np.mean(model.predict(data.x("val")) == data.y("val")) == max(history)


def test_register_points_the_champion_alias_at_the_run_with_its_lineage(trained, make_cfg):
    cfg, ours, _ = trained
    version = run_stages(
        make_cfg("data=digits", "stages=[register]", f"register.run_id={ours.info.run_id}")
    )["register"]
    client = MlflowClient()
    champion = client.get_model_version_by_alias("digits-classifier", "champion")
    assert champion.version == version and champion.run_id == ours.info.run_id
    data = dataset.load(cfg.data)
    assert (
        champion.tags["train_data_digest"]
        == data.digests["x_train"][:12] + data.digests["y_train"][:12]
    )
    assert champion.tags["config_hash"] == ours.data.tags["config_hash"]
    assert champion.tags["test_accuracy"] == f"{ours.data.metrics['test_accuracy']:.4f}"
    with pytest.raises(PipelineError, match="register.run_id=.*must be a run id"):
        run_stages(make_cfg("data=digits", "stages=[register]", "register.run_id=nope"))


def test_analysis_takes_the_newest_top_level_run_never_a_sweep_child(trained, make_cfg):
    cfg, ours, _ = trained
    experiment_id = tracking_store.setup(cfg)
    with tracking_runs.run(cfg, run_name="a sweep"):  # a newer child of a sweep, same recipe
        parent = mlflow.active_run().info.run_id
    child = MlflowClient().create_run(
        experiment_id,
        tags={
            "mlflow.parentRunId": parent,
            "kind": "training",
            "model_family": "numpy_mlp",
            "model_name": "classic",
        },
    )
    MlflowClient().set_terminated(child.info.run_id, "FINISHED")
    assert analyze.latest_run_id(experiment_id, "classic") == ours.info.run_id


@pytest.mark.slow
def test_make_serve_serves_the_champion_refuses_garbage_and_stops_whole(trained, make_cfg):
    cfg, ours, _ = trained
    run_stages(make_cfg("data=digits", "stages=[register]", f"register.run_id={ours.info.run_id}"))
    port = free_port()
    server = subprocess.Popen(
        ["make", "-s", "serve", "MODEL=digits-classifier", f"SERVE_PORT={port}"],
        cwd=PROJECT_ROOT,
        env=dict(os.environ),
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    data = dataset.load(cfg.data)
    model = mlflow.pyfunc.load_model(f"runs:/{ours.info.run_id}/model")
    index = int(np.flatnonzero(model.predict(data.x("test")) == data.y("test"))[0])
    image = data.x("test")[index : index + 1]
    try:
        answer = ask_served_model(port, image, server)
        assert answer == {"predictions": [int(data.y("test")[index])]}
        asked = {"output": "probabilities"}
        (probabilities,) = ask_served_model(port, image, server, params=asked)["predictions"]
        assert np.argmax(probabilities) == answer["predictions"][0]
        np.testing.assert_allclose(probabilities, model.predict(image, params=asked)[0], rtol=1e-6)
        # garbage gets a 400 that says why first, in a few hundred bytes
        reasons = [
            check_refusal(*post(port, body, kind), why) for body, kind, why in bad_requests(image)
        ]
        # make passes SIGTERM (kill, a container stop) on to its recipe, which must end the
        # server whole: mlflow's uvicorn workers used to go on serving
        make = server.pid
        served = {p for p in _group(make) if p != make}
        os.kill(make, signal.SIGTERM)
        server.wait(timeout=60)
        wait_for(
            f"end after SIGTERM to make of the processes it served ({sorted(served)})",
            lambda: not [p for p in served if _alive(p)],
            seconds=60,
            every=0.5,
        )
        with pytest.raises(OSError):
            post(port, json.dumps({"inputs": image.tolist()}))
        log, _ = server.communicate(timeout=30)  # the server has ended: all it printed
        for reason in reasons:  # the server's line for each request names the reason
            assert f'"POST /invocations HTTP/1.1" 400 Bad Request: {reason}\n' in log, log[-3000:]
    finally:
        for pid in _group(server.pid):
            os.kill(pid, signal.SIGKILL)
        server.wait(timeout=30)


JSON = "application/json"


def bad_requests(image: np.ndarray) -> list[tuple[str, str, str]]:
    """Requests a served digits model refuses, made from a 64-pixel `image`: (body, its
    content type, a regex of the reason its answer must begin with)."""
    return [
        ('{"inputs": [[NaN' + ", 0.5" * 63 + "]]}", JSON, "pixel values must be finite"),
        ('{"inputs": [[Infinity' + ", 0.5" * 63 + "]]}", JSON, "pixel values must be finite"),
        (
            json.dumps({"inputs": (image * 255).tolist()}),
            JSON,
            r"pixel values must be in \[0, 1\].*\(divide 0\.\.255 pixels by 255\)",
        ),
        (json.dumps({"inputs": (image - 1).tolist()}), JSON, r"pixel values must be in \[0, 1\]"),
        (  # MLflow's check of the signature comes before ours
            json.dumps({"inputs": np.hstack([image, image]).tolist()}),
            JSON,
            r"(Shape of input \(1, 128\)|expected rows of 64).*64",
        ),
        (
            json.dumps({"inputs": image.tolist(), "params": {"output": "logits"}}),
            JSON,
            "params.output must be one of label, probabilities",
        ),
        (  # MLflow reads a tensor input from JSON only
            ",".join(f"p{i}" for i in range(64)) + "\n" + ",".join(map(str, image[0])) + "\n",
            "text/csv",
            r"a CSV body cannot be read by this model.*application/json",
        ),
    ]


def check_refusal(status: int, text: str, reason: str) -> str:
    """Assert that an answer is a 400 of a few hundred bytes that begins with the reason
    (the regex `reason`), with neither the input nor a traceback; return the reason."""
    assert status == 400, (status, text[:500])
    assert len(text.encode()) <= 500, f"{len(text.encode())} bytes: {text[:500]}…"
    assert "stack_trace" not in text and "Traceback" not in text, text[:500]
    assert len(re.findall(r"\d\.\d", text)) <= 2, f"echoes the input: {text[:500]}"
    assert text.startswith('{"message": "'), text[:500]
    message = json.loads(text)["message"]
    assert re.match(reason, message), (reason, message)
    return message


def test_a_served_models_refusal_says_why_first_in_a_few_hundred_bytes(
    trained, monkeypatch, caplog
):
    """MLflow's scoring app as make serve runs it (serve/model_app.py), in this process."""
    cfg, ours, _ = trained
    model = mlflow.pyfunc.load_model(f"runs:/{ours.info.run_id}/model")
    monkeypatch.delenv("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", raising=False)  # init sets it
    app = model_app.build(model)
    image = dataset.load(cfg.data).x("test")[:1]
    server_log = logging.getLogger("uvicorn.error")  # uvicorn's: it may not propagate
    server_log.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger=server_log.name):
            for body, kind, why in bad_requests(image):
                caplog.clear()
                reason = check_refusal(*asgi_post(app, body, kind), why)
                assert f'"POST /invocations HTTP/1.1" 400 Bad Request: {reason}' in caplog.text
            status, text = asgi_post(app, json.dumps({"inputs": image.tolist()}), JSON)
    finally:
        server_log.removeHandler(caplog.handler)
    assert status == 200 and json.loads(text)["predictions"] == model.predict(image).tolist()


def asgi_post(app, body: str, content_type: str) -> tuple[int, str]:
    """POST body to an ASGI app's /invocations in this process: (status, answer)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/invocations",
        "raw_path": b"/invocations",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1"), (b"content-type", content_type.encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 5001),
    }
    request = [{"type": "http.request", "body": body.encode(), "more_body": False}]
    sent: list[dict] = []

    async def receive():
        if request:
            return request.pop()
        await asyncio.Event().wait()  # a client that stays connected until answered

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:]).decode()


def post(port: int, body: str, content_type: str = JSON) -> tuple[int, str]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations", body.encode(), {"Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _group(pgid: int) -> list[int]:
    return [
        int(p.parent.name)
        for p in Path("/proc").glob("[0-9]*/stat")
        if _stat(int(p.parent.name)) and _stat(int(p.parent.name))[1] == pgid
    ]


def _stat(pid: int):
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[2])


def _alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")
