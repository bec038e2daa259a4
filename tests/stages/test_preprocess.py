import hashlib
import json

import numpy as np
import pytest
from helpers import run_app

from pipeline.app import run_stages
from pipeline.data import dataset
from pipeline.data.idx import read_idx
from pipeline.errors import PipelineError


def test_tiny_mnist_is_scaled_flattened_and_split_stratified(tiny_mnist, make_cfg):
    cfg = make_cfg(
        f"data.mirrors=[{tiny_mnist}]", "data.validation_size=50", "stages=[download,preprocess]"
    )
    run_stages(cfg)
    data = dataset.load(cfg.data)
    assert data.x("train").shape == (250, 784) and data.x("val").shape == (50, 784)
    assert data.x("test").shape == (100, 784)
    for split in dataset.SPLITS:
        x = data.x(split)
        assert x.dtype == np.float32 and x.min() >= 0.0 and x.max() <= 1.0
    assert np.bincount(data.y("val"), minlength=10).tolist() == [5] * 10
    # The official test set is untouched: same order, pixels / 255.
    raw = read_idx(tiny_mnist / "t10k-images-idx3-ubyte.gz")
    np.testing.assert_array_equal(data.x("test"), raw.reshape(100, 784) / np.float32(255))
    # Train + val together are exactly the official training images.
    train_raw = read_idx(tiny_mnist / "train-images-idx3-ubyte.gz").reshape(300, 784) / np.float32(
        255
    )
    both = np.concatenate([data.x("train"), data.x("val")])
    assert sorted(map(bytes, both)) == sorted(map(bytes, train_raw))


def test_manifest_records_the_sha256_of_every_array(tiny_mnist, make_cfg):
    cfg = make_cfg(
        f"data.mirrors=[{tiny_mnist}]", "data.validation_size=50", "stages=[download,preprocess]"
    )
    run_stages(cfg)
    data = dataset.load(cfg.data)
    assert set(data.digests) == {f"{a}_{s}" for a in "xy" for s in dataset.SPLITS}
    assert data.digests["x_val"] == hashlib.sha256(data.x("val").tobytes()).hexdigest()
    assert len(data.digest) == 64


def test_cache_is_reused_for_the_same_config_and_recomputed_for_a_new_one(
    tiny_mnist, make_cfg, monkeypatch
):
    cfg = make_cfg(
        f"data.mirrors=[{tiny_mnist}]", "data.validation_size=50", "stages=[download,preprocess]"
    )
    run_stages(cfg)
    first = dataset.output_path(cfg.data)
    mtime = first.stat().st_mtime_ns

    def no_recompute(*a):
        raise AssertionError("recomputed a cached result")

    with monkeypatch.context() as m:
        m.setattr(dataset, "_load_raw", no_recompute)
        assert dataset.prepare(cfg.data) == first and first.stat().st_mtime_ns == mtime

    other = make_cfg(
        f"data.mirrors=[{tiny_mnist}]", "data.validation_size=60", "stages=[download,preprocess]"
    )
    assert dataset.output_path(other.data) != first
    run_stages(other)
    assert len(dataset.load(other.data).y("val")) == 60
    reseeded = make_cfg(
        f"data.mirrors=[{tiny_mnist}]", "data.validation_size=50", "data.split_seed=1"
    )
    assert dataset.output_path(reseeded.data) != first


def test_arrays_without_a_manifest_are_not_trusted(tiny_mnist, make_cfg):
    cfg = make_cfg(
        f"data.mirrors=[{tiny_mnist}]", "data.validation_size=50", "stages=[download,preprocess]"
    )
    run_stages(cfg)
    out = dataset.output_path(cfg.data)
    out.with_suffix(".json").unlink()
    out.write_bytes(b"half-written")
    with pytest.raises(PipelineError, match="run the preprocess stage first"):
        dataset.load(cfg.data)
    dataset.prepare(cfg.data)
    assert len(dataset.load(cfg.data).y("train")) == 250
    assert json.loads(out.with_suffix(".json").read_text())["shapes"]["x_train"] == [250, 784]


def test_validation_size_too_large_names_the_key(tiny_mnist, make_cfg):
    cfg = make_cfg(f"data.mirrors=[{tiny_mnist}]", "data.validation_size=299")
    with pytest.raises(PipelineError, match=r"data.validation_size=299 .* from 10 to 290"):
        run_stages(cfg)


def test_missing_raw_files_say_to_download(make_cfg):
    with pytest.raises(PipelineError, match="Run the download stage first"):
        run_stages(make_cfg("stages=[preprocess]"))


def test_digits_dataset_needs_no_download(make_cfg):
    cfg = make_cfg("data=digits", "stages=[download,preprocess]")
    run_stages(cfg)
    data = dataset.load(cfg.data)
    assert [len(data.y(s)) for s in dataset.SPLITS] == [1197, 300, 300]
    assert data.x("train").shape[1] == 64 and data.x("train").max() == 1.0


def _app(*overrides):
    return run_app(*overrides, env={"PIPELINE_DATA_MIRROR": None})


def test_app_rejects_an_unknown_stage_with_exit_code_2(tmp_path):
    result = _app("stages=[download,trian]", f"paths.data_dir={tmp_path}")
    assert result.returncode == 2
    assert "unknown stage(s) ['trian']" in result.stdout + result.stderr


def test_app_without_network_or_mirror_says_what_to_set(tmp_path):
    result = _app("stages=[download]", f"paths.data_dir={tmp_path}", "data.mirrors=[]")
    assert result.returncode == 2
    assert "PIPELINE_DATA_MIRROR" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_real_mnist_download_and_preprocess(real_mnist_mirror, make_cfg, tmp_path):
    cfg = make_cfg(f"data.mirrors=[{real_mnist_mirror}]", "stages=[download,preprocess]")
    run_stages(cfg)
    labels = read_idx(tmp_path / "data" / "raw" / "mnist" / "train-labels-idx1-ubyte.gz")
    assert np.bincount(labels).tolist() == [
        5923,
        6742,
        5958,
        6131,
        5842,
        5421,
        5918,
        6265,
        5851,
        5949,
    ]
    data = dataset.load(cfg.data)
    assert [len(data.y(s)) for s in dataset.SPLITS] == [50000, 10000, 10000]
    assert data.x("train").shape == (50000, 784) and data.x("train").dtype == np.float32
    # Stratified: each class keeps its share of the 60k within one image.
    expected = np.bincount(labels) * 10000 / 60000
    assert np.all(np.abs(np.bincount(data.y("val")) - expected) <= 1)
