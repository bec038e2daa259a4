"""Models logged from code: a pyfunc file, its artifacts and the engine, nothing pickled."""

from __future__ import annotations

import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
from mlflow.models import infer_signature

from pipeline.engine.inputs import DEFAULT_PARAMS
from pipeline.paths import PROJECT_ROOT


def log_model_from_code(
    model_file: str,
    artifact: str,
    save: Callable[[Path], None],
    sample: np.ndarray,
    predict: Callable[[np.ndarray], np.ndarray],
    requirements: list[str],
) -> None:
    """Log a pyfunc "model from code" to the active run as `model`: `model_file` with one
    artifact (written by save(path), path named `artifact`), a signature read off
    predict(sample), and as its only code the package's import-free __init__.py and the
    engine (pipeline/engine: the network and the input check), so it loads with its
    `requirements` alone."""
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        saved = Path(tmp) / artifact
        save(saved)
        # An input example would make MLflow load and run the model again at logging
        # time; the explicit signature already describes the input.
        warnings.filterwarnings("ignore", message=".*input example was not provided")
        package = Path(tmp) / "pipeline"
        package.mkdir()
        shutil.copy(PROJECT_ROOT / "pipeline" / "__init__.py", package)
        shutil.copytree(
            PROJECT_ROOT / "pipeline" / "engine",
            package / "engine",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        mlflow.pyfunc.log_model(
            name="model",
            python_model=model_file,
            artifacts={saved.stem: str(saved)},
            signature=infer_signature(sample, predict(sample), params=DEFAULT_PARAMS),
            code_paths=[str(package)],
            pip_requirements=requirements,
        )
