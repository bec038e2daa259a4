"""A logged model works outside this repo: in a clean virtualenv built from its own
requirements.txt (no Hydra, no pipeline), loaded with mlflow.pyfunc and served with
`mlflow models serve`, it scores exactly what its run logged."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from helpers import ask_served_model, free_port
from mlflow.tracking import MlflowClient

from pipeline.app import run_stages
from pipeline.data import dataset

UV = Path(sys.executable).parent / "uv"

SCORE = """
import sys
import mlflow.pyfunc
import numpy as np
model = mlflow.pyfunc.load_model(sys.argv[1])
x, y = np.load("x_test.npy"), np.load("y_test.npy")
print(float(np.mean(np.asarray(model.predict(x)) == y)))
"""


@pytest.mark.slow
def test_logged_model_loads_scores_and_serves_in_a_clean_virtualenv(make_cfg, tmp_path):
    cfg = make_cfg("data=digits", "train.epochs=5", "baseline=none", "stages=[preprocess,train]")
    (run_id,) = run_stages(cfg)["train"]
    logged = MlflowClient().get_run(run_id).data.metrics["test_accuracy"]

    outside = tmp_path / "outside"  # far from the repo: nothing of it on sys.path
    outside.mkdir()
    model = Path(
        mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model", dst_path=str(outside))
    )
    shipped = sorted(
        p.relative_to(model / "code").as_posix() for p in (model / "code").rglob("*.py")
    )
    assert shipped and all(
        p.startswith("pipeline/engine/") or p == "pipeline/__init__.py" for p in shipped
    ), shipped
    data = dataset.load(cfg.data)
    np.save(outside / "x_test.npy", data.x("test"))
    np.save(outside / "y_test.npy", data.y("test"))
    (outside / "score.py").write_text(SCORE)

    venv = tmp_path / "venv"
    subprocess.run([str(UV), "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [
            str(UV),
            "pip",
            "install",
            "--quiet",
            "--python",
            str(python),
            "-r",
            str(model / "requirements.txt"),
        ],
        check=True,
        timeout=900,
    )
    probe = subprocess.run([str(python), "-c", "import hydra"], capture_output=True, text=True)
    assert probe.returncode != 0, "the clean virtualenv has Hydra: it is not clean"

    score = subprocess.run(
        [str(python), "-I", "score.py", str(model)],
        cwd=outside,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert score.returncode == 0, score.stderr[-3000:]
    assert float(score.stdout.strip().splitlines()[-1]) == logged

    port = free_port()
    server = subprocess.Popen(
        [
            str(venv / "bin" / "mlflow"),
            "models",
            "serve",
            "-m",
            str(model),
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=outside,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"},
    )  # activated
    try:
        digit = int(
            np.flatnonzero(
                np.asarray(mlflow.pyfunc.load_model(str(model)).predict(data.x("test")))
                == data.y("test")
            )[0]
        )
        answer = ask_served_model(port, data.x("test")[digit : digit + 1], server)
        assert answer == {"predictions": [int(data.y("test")[digit])]}
        # Asked for them, each digit's probability: as the logged model computes them.
        rows = data.x("test")[:3]
        asked = {"output": "probabilities"}
        answer = ask_served_model(port, rows, server, params=asked)
        expected = mlflow.pyfunc.load_model(str(model)).predict(rows, params=asked)
        probabilities = np.asarray(answer["predictions"])
        assert probabilities.shape == (3, 10)
        np.testing.assert_allclose(probabilities, expected, rtol=1e-6)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-6)
    finally:
        server.terminate()
        server.wait(timeout=30)
