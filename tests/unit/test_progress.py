"""Log lines printed while a progress bar is shown go above it, whole, never into it."""

from __future__ import annotations

import io
import logging
import os
import sys

import pytest
from tqdm import tqdm

from pipeline import progress


class Terminal(io.StringIO):
    """What a terminal was sent (a bar is drawn on terminals only)."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def terminal_log():
    """A logger writing to a Terminal, as Hydra's console handler writes to stdout."""
    terminal = Terminal()
    handler = logging.StreamHandler(terminal)
    log = logging.getLogger("tests.progress")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    yield log, terminal, handler
    log.removeHandler(handler)


def test_a_line_logged_under_this_process_bar_goes_above_it(terminal_log):
    log, terminal, handler = terminal_log
    progress.logs_above_bars()
    assert isinstance(handler.stream, progress.AboveBars)
    files = logging.StreamHandler(io.StringIO())  # not a terminal: left as it is
    logging.getLogger("tests.progress.file").addHandler(files)
    progress.logs_above_bars()
    logging.getLogger("tests.progress.file").removeHandler(files)
    assert not isinstance(files.stream, progress.AboveBars)

    with tqdm(total=3, desc="sweep", unit="job", file=terminal) as bar:  # progress.bar's
        bar.update()
        drawn = terminal.getvalue()
        log.info("stage train")
        after = terminal.getvalue()[len(drawn) :]
    before, line, redrawn = after.partition("stage train\n")
    assert line, after
    assert before.endswith("\r") and "sweep" not in before  # the bar cleared, not written after
    assert "sweep" in redrawn and "1/3" in redrawn  # and drawn again below the line


def test_a_line_from_a_process_under_its_parents_bar_erases_the_bar_line_first(
    terminal_log, monkeypatch
):
    log, terminal, handler = terminal_log
    monkeypatch.setenv(progress.BAR_SHOWN, "1")  # set by the parent's Watch
    progress.logs_above_bars()
    log.info("stage preprocess")
    assert terminal.getvalue() == progress.ERASE_LINE + "stage preprocess\n"

    # print() writes a line's text and its newline apart: one line still, erased once.
    handler.stream.write("a")
    handler.stream.write("b")
    handler.stream.write("\n")
    assert terminal.getvalue().endswith("\n" + progress.ERASE_LINE + "ab\n")


def test_with_no_bar_anywhere_lines_pass_through_unchanged(terminal_log, monkeypatch):
    log, terminal, _ = terminal_log
    monkeypatch.delenv(progress.BAR_SHOWN, raising=False)
    progress.logs_above_bars()
    log.info("stage train")
    assert terminal.getvalue() == "stage train\n"


def test_a_watch_shows_its_bar_to_the_processes_it_starts_and_then_stops(monkeypatch):
    monkeypatch.delenv(progress.BAR_SHOWN, raising=False)
    terminal, stdout = Terminal(), sys.stdout
    with progress.Watch(tqdm(total=2, desc="search", file=terminal), lambda: (1, "")):
        assert isinstance(sys.stdout, progress.AboveBars) and sys.stdout.stream is stdout
        assert os.environ[progress.BAR_SHOWN] == "1"  # a worker started now sees it
    assert sys.stdout is stdout and progress.BAR_SHOWN not in os.environ
