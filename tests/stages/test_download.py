import hashlib
import os
import subprocess
import sys

import pytest

from pipeline.data import download
from pipeline.data.download import DownloadError, fetch
from pipeline.paths import temp_prefix


def _files(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_fetches_and_verifies_every_file_from_a_folder_mirror(tiny_mnist, make_cfg):
    cfg = make_cfg(f"data.mirrors=[{tiny_mnist}]")
    paths = download.fetch_all(cfg.data)
    assert sorted(p.name for p in paths.values()) == sorted(download.MNIST_FILES)
    for name, path in paths.items():
        assert path.read_bytes() == (tiny_mnist / name).read_bytes()


def test_file_url_mirror(tiny_mnist, tmp_path):
    name, md5 = next(iter(download.MNIST_FILES.items()))
    path = fetch(name, md5, [tiny_mnist.as_uri()], tmp_path / "raw")
    assert path.read_bytes() == (tiny_mnist / name).read_bytes()


def test_checksum_mismatch_deletes_the_file_and_tries_the_next_mirror(tiny_mnist, tmp_path):
    name, md5 = next(iter(download.MNIST_FILES.items()))
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / name).write_bytes(b"not the file")
    dest_dir = tmp_path / "raw"
    path = fetch(name, md5, [str(corrupt), str(tiny_mnist)], dest_dir)
    assert hashlib.md5(path.read_bytes()).hexdigest() == md5
    assert _files(dest_dir) == [name]  # no temp file left behind


def test_a_corrupt_cached_file_is_replaced(tiny_mnist, tmp_path):
    name, md5 = next(iter(download.MNIST_FILES.items()))
    dest_dir = tmp_path / "raw"
    dest_dir.mkdir()
    (dest_dir / name).write_bytes(b"half a file")
    path = fetch(name, md5, [str(tiny_mnist)], dest_dir)
    assert hashlib.md5(path.read_bytes()).hexdigest() == md5


def test_all_mirrors_failing_names_each_mirror_and_why(tiny_mnist, tmp_path):
    name, md5 = next(iter(download.MNIST_FILES.items()))
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / name).write_bytes(b"x")
    mirrors = [str(tmp_path / "nowhere"), str(corrupt), "ftp://example.invalid/mnist"]
    with pytest.raises(DownloadError) as e:
        fetch(name, md5, mirrors, tmp_path / "raw")
    message = str(e.value)
    assert f"{tmp_path / 'nowhere'}: [Errno 2] No such file" in message
    assert f"{corrupt}: checksum mismatch" in message
    assert "ftp://example.invalid/mnist: unsupported mirror scheme 'ftp'" in message
    assert download.MIRROR_ENV in message
    assert _files(tmp_path / "raw") == []


def test_an_interrupted_download_leaves_no_trusted_file(tiny_mnist, tmp_path, monkeypatch):
    name, md5 = next(iter(download.MNIST_FILES.items()))
    real_open = download._open

    class DiesHalfway:
        def __init__(self, stream):
            self.stream, self.reads = stream, 0

        def read(self, n):
            self.reads += 1
            if self.reads == 2:
                raise KeyboardInterrupt  # the user pressing Ctrl-C mid-download
            return self.stream.read(16)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.stream.close()

    monkeypatch.setattr(
        download, "_open", lambda m, n, t: (DiesHalfway(real_open(m, n, t)[0]), None)
    )
    dest_dir = tmp_path / "raw"
    with pytest.raises(KeyboardInterrupt):
        fetch(name, md5, [str(tiny_mnist)], dest_dir)
    assert _files(dest_dir) == []
    monkeypatch.setattr(download, "_open", real_open)
    assert (
        hashlib.md5(fetch(name, md5, [str(tiny_mnist)], dest_dir).read_bytes()).hexdigest() == md5
    )


def test_verified_files_are_not_fetched_again(tiny_mnist, make_cfg, monkeypatch):
    cfg = make_cfg(f"data.mirrors=[{tiny_mnist}]")
    download.fetch_all(cfg.data)

    def no_fetch(*args):
        raise AssertionError("fetched a file that was already present and verified")

    monkeypatch.setattr(download, "_open", no_fetch)
    assert len(download.fetch_all(cfg.data)) == 4


def test_env_mirror_is_tried_first_and_made_absolute(tiny_mnist, monkeypatch):
    monkeypatch.chdir(tiny_mnist.parent)
    monkeypatch.setenv(download.MIRROR_ENV, tiny_mnist.name)
    assert download.mirror_list(["https://a", "https://b"]) == [
        str(tiny_mnist),
        "https://a",
        "https://b",
    ]


def test_a_killed_downloads_temp_file_is_removed_a_live_ones_kept(tiny_mnist, make_cfg, tmp_path):
    cfg = make_cfg(f"data.mirrors=[{tiny_mnist}]")
    dest_dir = tmp_path / "data" / "raw" / "mnist"
    dest_dir.mkdir(parents=True)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # its pid is now of no live process
    name = next(iter(download.MNIST_FILES))
    dead = dest_dir / (temp_prefix(dest_dir / name, child.pid) + "abcd1234.part")
    live = dest_dir / (temp_prefix(dest_dir / name, os.getpid()) + "efgh5678.part")
    dead.write_bytes(b"half a file")
    live.write_bytes(b"a file being written")
    download.fetch_all(cfg.data)
    assert not dead.exists() and live.exists()
