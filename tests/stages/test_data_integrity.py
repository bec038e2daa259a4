"""The data path verified end to end: nothing damaged is trusted, nothing left behind.

Each test damages one thing the way disks, interrupted runs or mistakes do, and checks
that the pipeline notices: a damaged cache is rebuilt, a wrong raw file is named.
"""

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.data import dataset, download
from pipeline.data.idx import read_idx, write_idx
from pipeline.errors import PipelineError
from pipeline.paths import atomic_write, temp_prefix


def _zero_training_labels(npz: Path) -> None:
    """Re-save a valid .npz whose training labels are all 0 (the manifest is left as is)."""
    with np.load(npz) as f:
        arrays = dict(f)
    arrays["y_train"] = np.zeros_like(arrays["y_train"])
    np.savez(npz, **arrays)


def _flip_a_byte(npz: Path) -> None:
    raw = bytearray(npz.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    npz.write_bytes(bytes(raw))


def _truncate_the_manifest(npz: Path) -> None:
    manifest = npz.with_suffix(".json")
    manifest.write_text(manifest.read_text()[:40])


def _drop_a_manifest_key(npz: Path) -> None:
    manifest = npz.with_suffix(".json")
    m = json.loads(manifest.read_text())
    del m["sha256"]["y_test"]
    manifest.write_text(json.dumps(m))


DAMAGE = {
    "zeroed-labels": _zero_training_labels,
    "flipped-byte": _flip_a_byte,
    "truncated-manifest": _truncate_the_manifest,
    "manifest-missing-key": _drop_a_manifest_key,
}


@pytest.fixture
def digits(make_cfg):
    """The digits config, preprocessed once, and its good data."""
    cfg = make_cfg("data=digits")
    dataset.prepare(cfg.data)
    return cfg, dataset.load(cfg.data)


def _same_data(a, b):
    assert a.digests == b.digests and a.digest == b.digest
    for k in b.arrays:
        np.testing.assert_array_equal(a.arrays[k], b.arrays[k])


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_a_damaged_cache_is_rebuilt_on_load(digits, damage, caplog):
    cfg, good = digits
    damage(good.path)
    with caplog.at_level(logging.WARNING, logger="pipeline.preprocess"):
        again = dataset.load(cfg.data)
    _same_data(again, good)  # the true labels, and the good data's digests
    assert "rebuilding it from the raw data" in caplog.text
    # Rebuilt on disk too: the next load verifies without a rebuild.
    caplog.clear()
    _same_data(dataset.load(cfg.data), good)
    assert "rebuilding" not in caplog.text


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_a_damaged_cache_is_rebuilt_by_the_preprocess_stage(digits, damage, caplog):
    cfg, good = digits
    damage(good.path)
    with caplog.at_level(logging.WARNING, logger="pipeline.preprocess"):
        assert dataset.prepare(cfg.data) == good.path
    # The files on disk are the good data again, and their manifest says so.
    with np.load(good.path, allow_pickle=False) as npz:
        for k in good.arrays:
            np.testing.assert_array_equal(npz[k], good.arrays[k])
    assert json.loads(good.path.with_suffix(".json").read_text())["sha256"] == good.digests
    assert "rebuilding it from the raw data" in caplog.text


def test_a_damaged_cache_without_raw_files_says_to_download(tiny_mnist, make_cfg, tmp_path):
    cfg = make_cfg(f"data.mirrors=[{tiny_mnist}]", "data.validation_size=50")
    download.fetch_all(cfg.data)
    dataset.prepare(cfg.data)
    out = dataset.output_path(cfg.data)
    _flip_a_byte(out)
    shutil.rmtree(tmp_path / "data" / "raw")
    with pytest.raises(PipelineError, match=r"missing .* Run the download stage first"):
        dataset.load(cfg.data)


def test_a_poisoned_raw_file_is_named_and_fetched_again(tiny_mnist, make_cfg, tmp_path):
    cfg = make_cfg(f"data.mirrors=[{tiny_mnist}]", "data.validation_size=50")
    download.fetch_all(cfg.data)
    dataset.prepare(cfg.data)
    good = dataset.load(cfg.data)
    # A well-formed labels file with the right count, but other labels: only its MD5 tells.
    labels = tmp_path / "data" / "raw" / "mnist" / "train-labels-idx1-ubyte.gz"
    write_idx(labels, (read_idx(labels) + 1) % 10)
    expected = download.MNIST_FILES[labels.name]
    actual = hashlib.md5(labels.read_bytes()).hexdigest()
    with pytest.raises(PipelineError) as e:
        dataset.prepare(cfg.data)
    message = str(e.value)
    assert str(labels) in message and expected in message and actual in message
    assert "download stage" in message
    # The download stage re-verifies what is there and fetches the bad file again.
    download.fetch_all(cfg.data)
    assert labels.read_bytes() == (tiny_mnist / labels.name).read_bytes()
    dataset.prepare(cfg.data)
    _same_data(dataset.load(cfg.data), good)


def test_the_cache_key_follows_the_raw_files_content(tiny_mnist, make_cfg, tmp_path):
    cfg = make_cfg(f"data.mirrors=[{tiny_mnist}]", "data.validation_size=50")
    download.fetch_all(cfg.data)
    first = dataset.output_path(cfg.data)
    images = tmp_path / "data" / "raw" / "mnist" / "t10k-images-idx3-ubyte.gz"
    original = images.read_bytes()
    write_idx(images, 255 - read_idx(images))
    assert dataset.output_path(cfg.data) != first
    images.write_bytes(original)
    assert dataset.output_path(cfg.data) == first


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_temp_files_carry_the_writers_pid(tmp_path):
    dest = tmp_path / "out.npz"
    with atomic_write(dest) as f:
        f.write(b"x")
        (part,) = [p.name for p in tmp_path.iterdir()]
    assert part.startswith(temp_prefix(dest)) and part.endswith(".part")
    assert f".{os.getpid()}@" in part
    assert [p.name for p in tmp_path.iterdir()] == ["out.npz"]


def test_orphaned_temp_files_are_removed_live_ones_kept(make_cfg, tmp_path):
    cfg = make_cfg("data=digits")
    folder = dataset.output_path(cfg.data).parent
    folder.mkdir(parents=True)
    dest = folder / "digits-0123456789abcdef.npz"
    dead = folder / (temp_prefix(dest, _dead_pid()) + "k2j4h5g6.part")
    live = folder / (temp_prefix(dest, os.getpid()) + "a1b2c3d4.part")
    old_unknown = folder / f".{dest.name}.x7y8z9w0.part"  # no pid in the name, 2 hours old
    new_unknown = folder / f".{dest.name}.q1w2e3r4.part"
    for p in (dead, live, old_unknown, new_unknown):
        p.write_bytes(b"half an array")
    two_hours_ago = time.time() - 7200
    os.utime(old_unknown, (two_hours_ago, two_hours_ago))
    dataset.prepare(cfg.data)
    assert not dead.exists() and not old_unknown.exists()
    assert live.exists() and new_unknown.exists()
