"""Shared fixtures: the real configs composed with Hydra, tiny IDX data, the real MNIST."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import compose_config, real_mnist_or_skip

from pipeline import config as _config  # noqa: F401 — registers the schema with Hydra
from pipeline.data import download
from pipeline.data.idx import write_idx

# The shared helpers assert too: their failures are to read as well as a test's own.
pytest.register_assert_rewrite("helpers")

# Captured before the autouse fixture below hides it from every test.
_REAL_MIRROR = os.environ.get(download.MIRROR_ENV)


@pytest.fixture(scope="session")
def _session_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch, tmp_path, _session_cache):
    """Tests name their mirrors explicitly (the developer's or CI's must not leak in), and
    log to a store of their own, never to the project's mlruns/. The empty MLflow store a
    new store is copied from (tracking/store.py) is the session's, not the user's."""
    monkeypatch.delenv(download.MIRROR_ENV, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'test-mlflow.db'}")
    monkeypatch.setenv("XDG_CACHE_HOME", str(_session_cache))


@pytest.fixture
def make_cfg(tmp_path):
    """Compose conf/config.yaml with overrides, data kept under this test's tmp_path."""

    def make(*overrides: str):
        return compose_config(tmp_path / "data", *overrides)

    return make


def tiny_digit_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n 28×28 uint8 images, class k a bright bar at a class-specific place plus noise."""
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(n, 28, 28), dtype=np.uint8)
    for i, k in enumerate(labels):
        images[i, 2 + 2 * k : 5 + 2 * k, 4:24] = 255
    return images, labels.astype(np.uint8)


@pytest.fixture
def tiny_mnist(tmp_path, monkeypatch) -> Path:
    """A mirror folder with four tiny, well-formed MNIST-named IDX files (300 train, 100 test).

    download.MNIST_FILES is patched to their checksums, so the real download and
    preprocess code runs on them unchanged.
    """
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 300), ("t10k", 100)):
        images, labels = tiny_digit_images(n, rng)
        write_idx(mirror / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(mirror / f"{prefix}-labels-idx1-ubyte.gz", labels)
    md5s = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in mirror.iterdir()}
    monkeypatch.setattr(download, "MNIST_FILES", md5s)
    return mirror


@pytest.fixture
def digits_prepared(make_cfg, tmp_path) -> Path:
    """The 8×8 digits preprocessed under tmp_path/data (what `stages=[preprocess]` makes),
    in this process: the subprocesses a test starts then only train."""
    from pipeline.app import run_stages

    run_stages(make_cfg("data=digits", "stages=[preprocess]"))
    return tmp_path / "data"


@pytest.fixture
def real_mnist_mirror() -> Path:
    """The folder of the four real MNIST files ($PIPELINE_DATA_MIRROR or ../shared/...).

    Skipped where absent, except under CI=true, where missing real data is a failure.
    """
    return real_mnist_or_skip(_REAL_MIRROR)
