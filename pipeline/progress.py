"""Progress where work takes more than a few seconds, the ecosystem's way (tqdm bars).

Bars are drawn on a terminal only: in a log file or CI's output, where a bar would be a
stream of carriage returns, the stage lines and the closing summaries say what happened.
`quiet=true` turns them off on a terminal too. A sweep's jobs and a search's worker
processes draw none (their launcher draws one for all of them).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from tqdm import tqdm


def bar(total: int | None, desc: str, unit: str, quiet: bool, leave: bool = True) -> tqdm:
    """A bar for `total` units of work (None: unknown), or an inert one when quiet or when
    the output is not a terminal (tqdm's disable=None)."""
    return tqdm(total=total, desc=desc, unit=unit, disable=True if quiet else None, leave=leave)


class Watch:
    """Keeps a bar up to date from outside the work itself: every `every` seconds, poll()
    returns (units done, a short note such as the best result so far)."""

    def __init__(self, progress: tqdm, poll: Callable[[], tuple[int, str]], every: float = 2.0):
        self.progress, self.poll, self.every = progress, poll, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watch:
        if not self.progress.disable:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.every + 5)
        self.update()
        self.progress.close()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.update()

    def update(self) -> None:
        if self.progress.disable:
            return
        try:
            done, note = self.poll()
        except Exception:  # noqa: BLE001 — a store busy or gone for a moment: next time
            return
        self.progress.n = done
        self.progress.set_postfix_str(note, refresh=False)
        self.progress.refresh()
