"""Raw images to the arrays a network trains on, cached and verified (the preprocess stage).

Each image becomes a row of floats in [0, 1] (784 for MNIST's 28×28, 64 for the 8×8
digits), each label an integer 0–9. A validation split is carved from the training set,
stratified by label and seeded; MNIST's official 10k test set is left untouched.

The result is cached in `data.processed_dir` under a key that hashes the checksums of the
inputs actually on disk and every config value that changes the output: a rerun with the
same inputs reuses the cache, any change recomputes it. A JSON manifest beside the arrays
records each array's SHA-256. Every load recomputes them: a cache that does not match its
manifest (or cannot be read at all) is rebuilt from the raw files, never trusted, and the
digests a run logs are those of the arrays it actually loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.data import download
from pipeline.data.idx import read_idx
from pipeline.errors import PipelineError
from pipeline.paths import atomic_write, from_root, remove_orphaned_temp_files

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
ARRAYS = tuple(f"{a}_{s}" for s in SPLITS for a in "xy")
_DTYPES = {"x": np.float32, "y": np.int64}
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


def prepare(data_cfg) -> Path:
    """Write (or reuse, if it verifies) the arrays for data.*; return the .npz path."""
    key = _cache_key(data_cfg)
    out = _output_path(data_cfg, key)
    for orphan in remove_orphaned_temp_files(out.parent):
        log.info("preprocess: removed %s, left behind by a killed run", orphan)
    if out.exists() and _manifest_path(out).exists():
        try:
            _read_verified(data_cfg.name, out, key)
            log.info("preprocess: reusing %s (verified)", out)
            return out
        except _BadCache as e:
            log.warning("preprocess: %s is unusable (%s); rebuilding it from the raw data", out, e)
    _build(data_cfg, key, out)
    return out


def _build(data_cfg, key: str, out: Path) -> Dataset:
    """Compute the arrays from the raw data, write them and their manifest to `out`."""
    x_train, y_train, x_test, y_test = _load_raw(data_cfg)
    x_train, x_val, y_train, y_val = _split(x_train, y_train, data_cfg)
    fraction = float(data_cfg.get("label_shuffle") or 0.0)
    if fraction:  # only the training labels: validation and test keep the truth
        y_train = shuffle_labels(y_train, fraction, np.random.default_rng(int(data_cfg.split_seed)))
    arrays = {"x_train": x_train, "y_train": y_train, "x_val": x_val, "y_val": y_val,
              "x_test": x_test, "y_test": y_test}
    with atomic_write(out) as f:
        np.savez(f, **arrays)
    digests = {k: _sha256(v) for k, v in arrays.items()}
    manifest = {"name": data_cfg.name, "key": key, "inputs": _input_digests(data_cfg),
                "shapes": {k: list(v.shape) for k, v in arrays.items()}, "sha256": digests}
    # The manifest is written last: an .npz without one is never trusted.
    with atomic_write(_manifest_path(out), "w") as f:
        json.dump(manifest, f, indent=2)
    log.info("preprocess: wrote %s (train %d, val %d, test %d)", out,
             len(y_train), len(y_val), len(y_test))
    return Dataset(data_cfg.name, arrays, digests, out)


def shuffle_labels(y: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A copy of y in which a random `fraction` of the labels are permuted among themselves.

    fraction=1.0 is the random-label experiment: every image keeps a label, drawn from the
    true label distribution but unrelated to the image.
    """
    y = y.copy()
    chosen = rng.choice(len(y), size=int(round(fraction * len(y))), replace=False)
    y[chosen] = y[rng.permutation(chosen)]
    return y


def output_path(data_cfg) -> Path:
    """Where `run` writes the arrays for this config and the raw inputs now on disk."""
    return _output_path(data_cfg, _cache_key(data_cfg))


def _output_path(data_cfg, key: str) -> Path:
    return from_root(data_cfg.processed_dir) / f"{data_cfg.name}-{key[:16]}.npz"


def load(data_cfg) -> Dataset:
    """Load the arrays the preprocess stage wrote for this config, verified against the manifest.

    A cache that fails verification is rebuilt from the raw data (with a warning); the
    digests returned are recomputed from the arrays returned.
    """
    key = _cache_key(data_cfg)
    path = _output_path(data_cfg, key)
    if not (path.exists() and _manifest_path(path).exists()):
        raise PipelineError(
            f"no preprocessed data for data={data_cfg.name} at {path}: run the preprocess "
            "stage first, e.g. `python -m pipeline stages=[download,preprocess]`"
        )
    try:
        return _read_verified(data_cfg.name, path, key)
    except _BadCache as e:
        log.warning("preprocess: %s is unusable (%s); rebuilding it from the raw data", path, e)
    return _build(data_cfg, key, path)


class _BadCache(Exception):
    """A cached .npz or its manifest is unreadable or does not match."""


# What reading a damaged .npz or manifest raises: corrupt zip or JSON, a missing array
# (KeyError), a malformed .npy header (ValueError), a cut-off file (EOFError, OSError).
_READ_ERRORS = (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError,
                zipfile.BadZipFile, zlib.error)


def _read_verified(name: str, path: Path, key: str) -> Dataset:
    """The arrays at `path` with their recomputed SHA-256s, if they match the manifest.

    Raises _BadCache naming the first problem: unreadable files, a manifest for another
    key, missing or extra arrays, wrong shapes or dtypes, or a digest that differs.
    """
    try:
        manifest = json.loads(_manifest_path(path).read_text())
        if manifest["key"] != key:
            raise _BadCache(f"the manifest is for key {manifest['key'][:16]}, not {key[:16]}")
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        if sorted(arrays) != sorted(ARRAYS) or sorted(manifest["sha256"]) != sorted(ARRAYS):
            raise _BadCache(f"arrays {sorted(arrays)}, manifest {sorted(manifest['sha256'])}, "
                            f"expected {sorted(ARRAYS)}")
        digests = {}
        for k, a in arrays.items():
            if list(a.shape) != list(manifest["shapes"][k]) or a.dtype != _DTYPES[k[0]]:
                raise _BadCache(f"{k} is {a.dtype} {list(a.shape)}, the manifest says "
                                f"{_DTYPES[k[0]].__name__} {manifest['shapes'][k]}")
            digests[k] = _sha256(a)
            if digests[k] != manifest["sha256"][k]:
                raise _BadCache(f"{k} has SHA-256 {digests[k][:16]}…, the manifest "
                                f"{str(manifest['sha256'][k])[:16]}…")
    except _READ_ERRORS as e:
        raise _BadCache(f"{type(e).__name__}: {e}") from e
    return Dataset(name, arrays, digests, path)


def _manifest_path(npz: Path) -> Path:
    return npz.with_suffix(".json")


def _sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _input_digests(data_cfg) -> dict[str, str]:
    """The checksums of the inputs as they are now: what the cache key is made of.

    MNIST: each raw file's actual MD5 (a file not yet downloaded counts as the official
    one, which is all the download stage will accept). Digits: the SHA-256 of the arrays
    scikit-learn bundles.
    """
    if data_cfg.name == "mnist":
        raw_dir = from_root(data_cfg.raw_dir)
        return {n: download.md5_of(raw_dir / n) if (raw_dir / n).exists() else md5
                for n, md5 in download.MNIST_FILES.items()}
    if data_cfg.name == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        return {"sklearn.datasets.load_digits": _sha256(digits.data) + _sha256(digits.target)}
    raise PipelineError(f"data.name={data_cfg.name!r} is unknown: use mnist or digits")


def _cache_key(data_cfg) -> str:
    settings = {"format": _FORMAT_VERSION, "inputs": _input_digests(data_cfg),
                "name": data_cfg.name,
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
        x_train, x_test, y_train, y_test = _stratified_split(
            x, y, int(data_cfg.test_size), int(data_cfg.split_seed))
        return x_train, y_train, x_test, y_test

    raw_dir = from_root(data_cfg.raw_dir)
    missing = [n for n in download.MNIST_FILES if not (raw_dir / n).exists()]
    if missing:
        raise PipelineError(
            f"MNIST files missing from {raw_dir}: {', '.join(missing)}. Run the download "
            "stage first (`make data`)."
        )

    def read(name):
        # The MD5 is checked on the very bytes parsed: a corrupt or substituted file (even
        # a well-formed one) stops here rather than training silently on wrong data.
        return read_idx(raw_dir / name, md5=download.MNIST_FILES[name])

    out = []
    for prefix in ("train", "t10k"):
        images = read(f"{prefix}-images-idx3-ubyte.gz")
        labels = read(f"{prefix}-labels-idx1-ubyte.gz")
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
    return _stratified_split(x, y, n_val, int(data_cfg.split_seed))


def _stratified_split(x, y, n_held_out: int, seed: int):
    """(x_kept, x_held_out, y_kept, y_held_out): n_held_out rows drawn per label in
    proportion, seeded."""
    # Imported here: a run that finds its arrays cached (MNIST) needs NumPy alone.
    from sklearn.model_selection import train_test_split

    return train_test_split(x, y, test_size=n_held_out, stratify=y, random_state=seed)
