"""Where the project lives, so that relative paths in the config never depend on the cwd."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
_UMASK = os.umask(0)
os.umask(_UMASK)


def from_root(path: str | os.PathLike) -> Path:
    """An absolute path: `path` itself if absolute, else taken relative to the project root."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


@contextmanager
def atomic_write(dest: Path, mode: str = "wb"):
    """Open a temp file beside `dest`; rename it onto `dest` only if the block succeeds.

    A crash or error inside the block leaves no file at `dest` (and removes the temp file),
    so a later run never trusts a half-written output.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual mode
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
