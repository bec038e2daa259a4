"""Stage `preprocess`: raw images to the arrays the network trains on.

Each image becomes a row of floats in [0, 1] (784 for MNIST's 28×28, 64 for the 8×8
digits), each label an integer 0–9. A validation split is carved from the training set,
stratified by label and seeded; MNIST's official 10k test set is left untouched.

The result is cached in `data.processed_dir` under a key that hashes the inputs'
checksums and every config value that changes the output: a rerun with the same inputs
reuses the cache, any change recomputes it. A JSON manifest beside the arrays records each
array's SHA-256, for lineage logging by later stages.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sklearn
from sklearn.model_selection import train_test_split

from pipeline import download
from pipeline.errors import PipelineError
from pipeline.idx import read_idx
from pipeline.paths import atomic_write, from_root

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
_FORMAT_VERSION = 1  # bump when the preprocessing itself changes


@dataclass(frozen=True)
class Dataset:
    """Preprocessed arrays: x_<split> float32 [n, pixels] in [0, 1], y_<split> int64 labels."""

    name: str
    arrays: dict[str, np.ndarray]
    digests: dict[str, str] = field(default_factory=dict)
    path: Path | None = None

    def x(self, split: str) -> np.ndarray:
        return self.arrays[f"x_{split}"]

    def y(self, split: str) -> np.ndarray:
        return self.arrays[f"y_{split}"]

    @property
    def digest(self) -> str:
        """One SHA-256 over every array's digest: the dataset's identity for lineage."""
        joined = "".join(self.digests[k] for k in sorted(self.digests))
        return hashlib.sha256(joined.encode()).hexdigest()


def run(cfg, results: dict | None = None) -> Path:
    """Write (or reuse) the processed arrays for `cfg.data`; return the .npz path."""
    out = output_path(cfg)
    if out.exists() and _manifest_path(out).exists():
        log.info("preprocess: reusing %s", out)
        return out
    x_train, y_train, x_test, y_test = _load_raw(cfg.data)
    x_train, x_val, y_train, y_val = _split(x_train, y_train, cfg.data)
    fraction = float(cfg.data.get("label_shuffle") or 0.0)
    if fraction:  # only the training labels: validation and test keep the truth
        y_train = shuffle_labels(y_train, fraction, np.random.default_rng(int(cfg.data.split_seed)))
    arrays = {"x_train": x_train, "y_train": y_train, "x_val": x_val, "y_val": y_val,
              "x_test": x_test, "y_test": y_test}
    with atomic_write(out) as f:
        np.savez(f, **arrays)
    manifest = {"name": cfg.data.name, "key": _cache_key(cfg.data),
                "shapes": {k: list(v.shape) for k, v in arrays.items()},
                "sha256": {k: _sha256(v) for k, v in arrays.items()}}
    # The manifest is written last: an .npz without one is never trusted.
    with atomic_write(_manifest_path(out), "w") as f:
        json.dump(manifest, f, indent=2)
    log.info("preprocess: wrote %s (train %d, val %d, test %d)", out,
             len(y_train), len(y_val), len(y_test))
    return out


def shuffle_labels(y: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A copy of y in which a random `fraction` of the labels are permuted among themselves.

    fraction=1.0 is the random-label experiment: every image keeps a label, drawn from the
    true label distribution but unrelated to the image.
    """
    y = y.copy()
    chosen = rng.choice(len(y), size=int(round(fraction * len(y))), replace=False)
    y[chosen] = y[rng.permutation(chosen)]
    return y


def output_path(cfg) -> Path:
    """Where `run` writes the arrays for this config (a function of the config alone)."""
    key = _cache_key(cfg.data)
    return from_root(cfg.data.processed_dir) / f"{cfg.data.name}-{key[:16]}.npz"


def load(cfg) -> Dataset:
    """Load the arrays the preprocess stage wrote for this config."""
    path = output_path(cfg)
    if not (path.exists() and _manifest_path(path).exists()):
        raise PipelineError(
            f"no preprocessed data for data={cfg.data.name} at {path}: run the preprocess "
            "stage first, e.g. `python -m pipeline stages=[download,preprocess]`"
        )
    manifest = json.loads(_manifest_path(path).read_text())
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return Dataset(cfg.data.name, arrays, manifest["sha256"], path)


def _manifest_path(npz: Path) -> Path:
    return npz.with_suffix(".json")


def _sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _cache_key(data_cfg) -> str:
    if data_cfg.name == "mnist":
        inputs = download.MNIST_FILES
    elif data_cfg.name == "digits":
        inputs = {"sklearn.datasets.load_digits": sklearn.__version__}
    else:
        raise PipelineError(f"data.name={data_cfg.name!r} is unknown: use mnist or digits")
    settings = {"format": _FORMAT_VERSION, "inputs": inputs, "name": data_cfg.name,
                "validation_size": int(data_cfg.validation_size),
                "test_size": int(data_cfg.get("test_size") or 0),
                "split_seed": int(data_cfg.split_seed),
                "label_shuffle": float(data_cfg.get("label_shuffle") or 0.0)}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _load_raw(data_cfg):
    """(x_train, y_train, x_test, y_test) with x scaled to float32 [0, 1] rows."""
    if data_cfg.name == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = (digits.data / 16.0).astype(np.float32)
        y = digits.target.astype(np.int64)
        # The 8×8 digits have no official test set: carve one, seeded and stratified.
        x_train, x_test, y_train, y_test = train_test_split(
            x, y, test_size=int(data_cfg.test_size), stratify=y,
            random_state=int(data_cfg.split_seed))
        return x_train, y_train, x_test, y_test

    raw_dir = from_root(data_cfg.raw_dir)
    missing = [n for n in download.MNIST_FILES if not (raw_dir / n).exists()]
    if missing:
        raise PipelineError(
            f"MNIST files missing from {raw_dir}: {', '.join(missing)}. Run the download "
            "stage first (`make data`)."
        )
    out = []
    for prefix in ("train", "t10k"):
        images = read_idx(raw_dir / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(raw_dir / f"{prefix}-labels-idx1-ubyte.gz")
        if len(images) != len(labels):
            raise PipelineError(
                f"{raw_dir}: {prefix} has {len(images)} images but {len(labels)} labels; "
                "delete the folder and download again"
            )
        out += [(images.reshape(len(images), -1) / np.float32(255)).astype(np.float32),
                labels.astype(np.int64)]
    return tuple(out)


def _split(x, y, data_cfg):
    n_val = int(data_cfg.validation_size)
    n_classes = len(np.unique(y))
    if not n_classes <= n_val <= len(y) - n_classes:
        raise PipelineError(
            f"data.validation_size={n_val} does not fit a training set of {len(y)} images: "
            f"choose a value from {n_classes} to {len(y) - n_classes}"
        )
    return train_test_split(x, y, test_size=n_val, stratify=y,
                            random_state=int(data_cfg.split_seed))
