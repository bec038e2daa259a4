import gzip

import numpy as np
import pytest

from pipeline.data.idx import IdxFormatError, read_idx, write_idx


def test_images_and_labels_round_trip(tmp_path):
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    labels = np.array([3, 7], dtype=np.uint8)
    write_idx(tmp_path / "i.gz", images)
    write_idx(tmp_path / "l", labels)
    np.testing.assert_array_equal(read_idx(tmp_path / "i.gz"), images)
    np.testing.assert_array_equal(read_idx(tmp_path / "l"), labels)


def test_header_is_big_endian_with_the_mnist_magic(tmp_path):
    write_idx(tmp_path / "i", np.zeros((3, 28, 28), np.uint8))
    raw = (tmp_path / "i").read_bytes()
    assert raw[:16] == bytes.fromhex("00000803000000030000001c0000001c")


def _write_raw(path, raw):
    path.write_bytes(gzip.compress(raw))
    return path


def test_bad_magic_names_the_file(tmp_path):
    path = _write_raw(tmp_path / "bad.gz", bytes.fromhex("00000802 00000001") + b"\x00")
    with pytest.raises(IdxFormatError, match=r"bad\.gz: bad magic number 2050"):
        read_idx(path)


def test_truncated_payload_is_rejected(tmp_path):
    write_idx(tmp_path / "ok", np.zeros((2, 28, 28), np.uint8))
    raw = (tmp_path / "ok").read_bytes()
    path = _write_raw(tmp_path / "short.gz", raw[:-1])
    with pytest.raises(IdxFormatError, match=r"short\.gz: truncated.*1568 data bytes.*has 1567"):
        read_idx(path)


def test_truncated_header_is_rejected(tmp_path):
    path = _write_raw(tmp_path / "hdr.gz", bytes.fromhex("00000803 00000002"))
    with pytest.raises(IdxFormatError, match="truncated header"):
        read_idx(path)


def test_trailing_bytes_are_rejected(tmp_path):
    write_idx(tmp_path / "ok", np.zeros(5, np.uint8))
    path = _write_raw(tmp_path / "long.gz", (tmp_path / "ok").read_bytes() + b"\x01\x02")
    with pytest.raises(IdxFormatError, match=r"long\.gz: 2 trailing bytes"):
        read_idx(path)


def test_a_file_that_is_not_gzip_is_a_clear_error(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(b"<html>not found</html>")
    with pytest.raises(IdxFormatError, match=r"x\.gz: cannot read"):
        read_idx(path)
