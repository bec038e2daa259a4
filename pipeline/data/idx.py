"""The IDX file format of the MNIST distribution, read and written with NumPy.

An IDX file is a big-endian header followed by raw data:

    magic   int32   0x00000803 (2051) for images, 0x00000801 (2049) for labels;
                    byte 3 is the element type (0x08 = unsigned byte), byte 4 the
                    number of dimensions
    dims    int32 × ndim
    data    uint8 × prod(dims)

Files may be gzip-compressed (the canonical distribution is). Nothing is unpickled.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
_NDIM_FOR_MAGIC = {IMAGES_MAGIC: 3, LABELS_MAGIC: 1}


class IdxFormatError(PipelineError):
    """The bytes of a file are not a well-formed MNIST IDX file."""


class IdxChecksumError(PipelineError):
    """A file's bytes are not those of the file expected (its MD5 differs)."""


def parse_idx(raw: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse the bytes of an uncompressed IDX file into a uint8 array of its dimensions."""
    if len(raw) < 4:
        raise IdxFormatError(f"{name}: {len(raw)} bytes is too short for an IDX header")
    magic = int.from_bytes(raw[:4], "big")
    if magic not in _NDIM_FOR_MAGIC:
        raise IdxFormatError(
            f"{name}: bad magic number {magic} (0x{magic:08x}); MNIST IDX files start with "
            f"{IMAGES_MAGIC} (images) or {LABELS_MAGIC} (labels). The file is corrupt or not "
            "an IDX file: delete it and download again."
        )
    ndim = _NDIM_FOR_MAGIC[magic]
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise IdxFormatError(f"{name}: truncated header ({len(raw)} of {header_len} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64))
    payload = len(raw) - header_len
    if payload < expected:
        raise IdxFormatError(
            f"{name}: truncated: the header promises {expected} data bytes for shape {dims}, "
            f"the file has {payload}. Delete it and download again."
        )
    if payload > expected:
        raise IdxFormatError(
            f"{name}: {payload - expected} trailing bytes after the {expected} data bytes "
            f"of shape {dims}. Delete it and download again."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(dims).copy()


def read_idx(path: str | Path, md5: str | None = None) -> np.ndarray:
    """Read an IDX file (gzip-compressed if its name ends in .gz).

    With `md5`, the file's bytes are checked against it before they are parsed: the
    checksum covers exactly the bytes the array comes from.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise IdxFormatError(f"{path}: cannot read: {e}") from e
    if md5 is not None and (actual := hashlib.md5(raw).hexdigest()) != md5:
        raise IdxChecksumError(
            f"{path} is corrupt or not the expected file: its MD5 is {actual}, expected "
            f"{md5}. Delete it and rerun the download stage (`make data`), which fetches "
            "it again."
        )
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
            raise IdxFormatError(f"{path}: cannot read: {e}") from e
    return parse_idx(raw, name=str(path))


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file: 3-d as images, 1-d as labels (gzip if .gz)."""
    array = np.asarray(array, dtype=np.uint8)
    magic = {3: IMAGES_MAGIC, 1: LABELS_MAGIC}[array.ndim]
    raw = np.array([magic, *array.shape], dtype=">i4").tobytes() + array.tobytes()
    path = Path(path)
    if path.suffix == ".gz":
        # mtime=0 keeps the bytes (and so the checksum) identical from run to run.
        raw = gzip.compress(raw, mtime=0)
    path.write_bytes(raw)
