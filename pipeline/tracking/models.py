"""Models logged from code: a pyfunc file, its artifacts and the engine, nothing pickled."""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path

import mlflow

from pipeline.paths import PROJECT_ROOT


def log_model_from_code(
    model_file: str, artifacts: dict[str, str], signature, requirements: list[str]
) -> None:
    """Log a pyfunc "model from code" (`model_file` and its artifacts) to the active run
    as `model`, shipping as its only code the package's import-free __init__.py and the
    engine (pipeline/engine: the network and the input check), so it loads with its
    `requirements` alone."""
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
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
            artifacts=artifacts,
            signature=signature,
            code_paths=[str(package)],
            pip_requirements=requirements,
        )
