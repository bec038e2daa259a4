"""The four canonical MNIST files, fetched into the raw-data cache (the download stage).

Mirrors are tried in order; each may be an https:// or file:// URL or a local directory.
The environment variable PIPELINE_DATA_MIRROR, when set, is tried first (machines without
internet point it at a local copy). Every file is checked against its published MD5 before
it is trusted; it is written to a temp file and renamed into place only once verified, so
an interrupted or corrupt download never leaves a file a later run would trust. A file
already present is verified again on every run, and fetched again if it fails.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from pipeline.errors import PipelineError
from pipeline.paths import (
    DISK_FULL_ERRNOS,
    atomic_write,
    check_writable,
    from_root,
    remove_orphaned_temp_files,
)

log = logging.getLogger(__name__)

# The official distribution (LeCun, Cortes, Burges), byte for byte.
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MIRROR_ENV = "PIPELINE_DATA_MIRROR"
_CHUNK = 1 << 16
READ_TIMEOUT = 30  # seconds a single read may wait for bytes


class DownloadError(PipelineError):
    """No mirror could provide a verified copy of a file."""


class ChecksumMismatch(Exception):
    pass


def fetch_all(data_cfg) -> dict[str, Path]:
    """Make sure every MNIST file is in `data.raw_dir`, verified; return their paths."""
    if data_cfg.name != "mnist":
        log.info("download: data=%s needs no download", data_cfg.name)
        return {}
    dest_dir = from_root(data_cfg.raw_dir)
    for orphan in remove_orphaned_temp_files(dest_dir):
        log.info("download: removed %s, left behind by a killed download", orphan)
    mirrors = mirror_list(data_cfg.mirrors)
    deadline = data_cfg.get("mirror_deadline") or 300.0
    return {name: fetch(name, md5, mirrors, dest_dir, deadline) for name, md5 in MNIST_FILES.items()}


def mirror_list(configured) -> list[str]:
    """The configured mirrors, preceded by $PIPELINE_DATA_MIRROR (made absolute) if set."""
    mirrors = [str(m) for m in configured]
    env = os.environ.get(MIRROR_ENV, "").strip()
    if env:
        if "://" not in env:
            env = str(Path(env).expanduser().resolve())
        mirrors.insert(0, env)
    return mirrors


def md5_of(path: Path) -> str:
    """The MD5 of a file's bytes, as a hex string."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(name: str, md5: str, mirrors: list[str], dest_dir: Path,
          deadline: float = 300.0) -> Path:
    """Return `dest_dir/name` with MD5 `md5`, fetching it from the first mirror that has it
    within `deadline` seconds."""
    dest = dest_dir / name
    if dest.exists():
        if md5_of(dest) == md5:
            log.info("download: %s already present and verified", name)
            return dest
        log.warning("download: %s fails its checksum; deleting it and fetching again", dest)
        dest.unlink()
    check_writable(dest_dir, name, "paths.data_dir")  # not a mirror's fault: say so at once
    failures = []
    for mirror in mirrors:
        try:
            _fetch_from(mirror, name, md5, dest, deadline)
            log.info("download: %s verified (from %s)", name, mirror)
            return dest
        except (OSError, ValueError, ChecksumMismatch) as e:  # URLError is an OSError
            if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS:
                raise  # our disk, not the mirror's: the app names the folder (errors.disk_full)
            log.warning("download: %s from %s failed: %s", name, mirror, e)
            failures.append(f"  - {mirror}: {e}")
    raise DownloadError(
        f"could not get a verified copy of {name} from any mirror:\n"
        + "\n".join(failures or ["  (no mirrors configured)"])
        + f"\nWithout internet, set {MIRROR_ENV} to a folder holding the MNIST .gz files "
        "(here: ../shared/datasets/mnist)."
    )


def _fetch_from(mirror: str, name: str, md5: str, dest: Path, deadline: float) -> None:
    give_up = time.monotonic() + deadline
    source, size = _open(mirror, name, min(READ_TIMEOUT, deadline))
    h = hashlib.md5()
    got = 0
    with source, atomic_write(dest) as out, tqdm(
        total=size, unit="B", unit_scale=True, desc=name, disable=None, leave=False
    ) as bar:
        # read1: what has arrived (read() would wait for a whole chunk of a dripping mirror)
        read = getattr(source, "read1", source.read)
        for chunk in iter(lambda: read(_CHUNK), b""):
            h.update(chunk)
            out.write(chunk)
            got += len(chunk)
            bar.update(len(chunk))
            if time.monotonic() > give_up:
                raise TimeoutError(f"too slow: {got:,} of {size or '?'} bytes in {deadline:g} s "
                                   "(data.mirror_deadline)")
        if h.hexdigest() != md5:
            # Raised inside atomic_write: the temp file is removed, dest is never created.
            raise ChecksumMismatch(f"checksum mismatch (md5 {h.hexdigest()}, expected {md5})")


def _open(mirror: str, name: str, timeout: float) -> tuple[BinaryIO, int | None]:
    """Open `name` at `mirror` for reading; return the stream and its size if known."""
    scheme = urllib.parse.urlsplit(mirror).scheme
    if scheme in ("http", "https"):
        response = urllib.request.urlopen(f"{mirror.rstrip('/')}/{name}", timeout=timeout)
        length = response.headers.get("Content-Length")
        return response, int(length) if length else None
    if scheme == "file":
        path = Path(urllib.request.url2pathname(urllib.parse.urlsplit(mirror).path)) / name
    elif scheme == "":
        path = Path(mirror) / name
    else:
        raise ValueError(f"unsupported mirror scheme {scheme!r} (use https://, file:// or a folder)")
    return open(path, "rb"), path.stat().st_size

