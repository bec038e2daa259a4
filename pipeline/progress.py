"""Progress where work takes more than a few seconds, the ecosystem's way (tqdm bars).

Bars are drawn on a terminal only: in a log file or CI's output, where a bar would be a
stream of carriage returns, the stage lines and the closing summaries say what happened.
`quiet=true` turns them off on a terminal too. A sweep's jobs and a search's worker
processes draw none (their launcher draws one for all of them).

What is printed while a bar is shown goes above it, never into it. Console log handlers
(Hydra's, Optuna's, MLflow's: logs_above_bars) and, while a Watch shows its bar,
sys.stdout and sys.stderr themselves (the handlers Hydra makes anew in the meantime take
them) write through AboveBars: in the process that draws the bar, a whole line at a time
with the bar cleared and drawn again below it, as tqdm.write does; in a process that
shares the terminal with its parent's bar (a sweep's job, a search's worker: BAR_SHOWN is
in its environment), erasing the bar's line first: the parent draws the bar again below
within REDRAW seconds.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable

from tqdm import tqdm

BAR_SHOWN = "PIPELINE_BAR_SHOWN"  # set while this process shows a Watch's bar, for its children
REDRAW = 0.5  # seconds: how soon a bar a child's line erased is drawn again
ERASE_LINE = "\r\x1b[K"  # to the line's start, and erase it: the parent's bar is there


def bar(total: int | None, desc: str, unit: str, quiet: bool, leave: bool = True) -> tqdm:
    """A bar for `total` units of work (None: unknown), or an inert one when quiet or when
    the output is not a terminal (tqdm's disable=None). Drawn on the terminal itself, not
    through AboveBars; log handlers made since the last bar (by a library a stage
    imported) write above it too."""
    logs_above_bars()
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        disable=True if quiet else None,
        leave=leave,
        file=_unwrapped(sys.stderr),
    )


class AboveBars:
    """A terminal stream whose lines go above the progress bars on that terminal."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self._partial = ""  # the start of a line, held while a bar is shown

    def write(self, text: str) -> int:
        bars = _bars_shown()
        if not bars and not os.environ.get(BAR_SHOWN):
            written, self._partial = self._partial + text, ""
            self.stream.write(written)
            return len(text)
        # A whole line at a time: print() writes a line's text and its newline apart.
        lines, newline, self._partial = (self._partial + text).rpartition("\n")
        if newline and bars:
            with tqdm.get_lock():
                for shown in bars:
                    shown.clear(nolock=True)
                self.stream.write(lines + newline)
                self.stream.flush()  # before the bars are drawn again (on another stream)
                for shown in bars:
                    shown.refresh(nolock=True)
        elif newline:
            self.stream.write(ERASE_LINE + lines + newline)
        return len(text)

    def flush(self) -> None:
        if self._partial and not _bars_shown() and not os.environ.get(BAR_SHOWN):
            self.stream.write(self._partial)
            self._partial = ""
        self.stream.flush()

    def __getattr__(self, name: str):  # fileno, isatty, encoding, buffer: the stream's own
        return getattr(self.stream, name)


def logs_above_bars() -> None:
    """Make every console log handler there is now write to the terminal through
    AboveBars, once; handlers writing to files or pipes are left as they are. Called again
    where Hydra makes a job's handlers and after a stage's imports (app.py). In a process
    started under its parent's bar (BAR_SHOWN), sys.stdout and sys.stderr too: MLflow's
    handler and Python's warnings write to whatever sys.stderr is."""
    if os.environ.get(BAR_SHOWN):
        for name in ("stdout", "stderr"):
            stream = getattr(sys, name)
            if not isinstance(stream, AboveBars) and _is_terminal(stream):
                setattr(sys, name, AboveBars(stream))
    loggers = [
        logging.getLogger(),
        *(logging.getLogger(name) for name in logging.root.manager.loggerDict),
    ]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            stream = getattr(handler, "stream", None)
            if (
                isinstance(handler, logging.StreamHandler)
                and not isinstance(handler, logging.FileHandler)
                and not isinstance(stream, AboveBars)
                and _is_terminal(stream)
            ):
                handler.setStream(AboveBars(stream))


def _bars_shown() -> list[tqdm]:
    """The bars this process shows now (an inert bar is never among tqdm's instances)."""
    return [b for b in list(getattr(tqdm, "_instances", [])) if not b.disable]


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or closed
        return False


def _unwrapped(stream):
    return stream.stream if isinstance(stream, AboveBars) else stream


class Watch:
    """Keeps a bar up to date from outside the work itself: every `every` seconds, poll()
    returns (units done, a short note such as the best result so far). While the bar is
    shown, what this process prints goes above it (sys.stdout and sys.stderr write through
    AboveBars), the processes it starts are told of it (BAR_SHOWN) and the bar is drawn
    again every REDRAW seconds, below what they print."""

    def __init__(self, progress: tqdm, poll: Callable[[], tuple[int, str]], every: float = 2.0):
        self.progress, self.poll, self.every = progress, poll, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._streams: tuple | None = None  # sys.stdout and sys.stderr before the bar

    def __enter__(self) -> Watch:
        if not self.progress.disable:
            logs_above_bars()
            if not isinstance(sys.stdout, AboveBars):  # not already inside another Watch
                self._streams = (sys.stdout, sys.stderr)
                sys.stdout, sys.stderr = AboveBars(sys.stdout), AboveBars(sys.stderr)
                os.environ[BAR_SHOWN] = "1"
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.every + 5)
        if self._streams is not None:
            os.environ.pop(BAR_SHOWN, None)
        self.update()
        self.progress.close()
        if self._streams is not None:
            sys.stdout.flush()  # a line begun while the bar was shown
            sys.stderr.flush()
            sys.stdout, sys.stderr = self._streams
            self._streams = None

    def _run(self) -> None:
        polls = max(1, round(self.every / REDRAW))  # a poll every `every` seconds
        tick = 0
        while not self._stop.wait(REDRAW):
            tick += 1
            if tick % polls == 0:
                self.update()
            else:
                self.progress.refresh()

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
