"""What a run ran on, as MLflow tags a reviewer can filter by (tags.`env.blas_kernel`).

A seed fixes a run bit for bit only together with the same package versions (the lock
file) and the same BLAS kernel: OpenBLAS picks a CPU-specific kernel at start-up (or the
one OPENBLAS_CORETYPE names), and kernels round float sums differently.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
from pathlib import Path

from threadpoolctl import threadpool_info

from pipeline.paths import PROJECT_ROOT

PACKAGES = ("numpy", "scipy", "scikit-learn", "mlflow", "hydra-core", "pandas", "threadpoolctl")
LOCK_FILE = PROJECT_ROOT / "uv.lock"


def environment_tags() -> dict[str, str]:
    """env.* tags: Python, packages, lock digest, BLAS library and kernel, CPU, platform."""
    import numpy  # noqa: F401 — loads the BLAS that threadpoolctl reports

    tags = {
        "env.python": platform.python_version(),
        "env.platform": platform.platform(),
        "env.cpu": cpu_model(),
        "env.lock_sha256": lock_digest(),
        "env.openblas_coretype": os.environ.get("OPENBLAS_CORETYPE", "(unset)"),
    }
    for package in PACKAGES:
        try:
            tags[f"env.{package}"] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            tags[f"env.{package}"] = "(not installed)"
    blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    # NumPy's own BLAS does the network's matmuls; SciPy may load another copy.
    blas.sort(key=lambda i: "numpy" not in str(i.get("filepath", "")))
    if blas:
        tags["env.blas"] = f"{blas[0].get('internal_api')} {blas[0].get('version')}"
        tags["env.blas_kernel"] = str(blas[0].get("architecture"))
    else:
        tags["env.blas"] = tags["env.blas_kernel"] = "(none found)"
    return tags


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def lock_digest() -> str:
    """The first 16 hex digits of uv.lock's SHA-256: runs on the same lock share it."""
    try:
        return hashlib.sha256(LOCK_FILE.read_bytes()).hexdigest()[:16]
    except OSError:
        return "(no uv.lock)"
