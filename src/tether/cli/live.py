"""The live display of long work (``up``, ``run --managed``, ``run --follow``, ``pull``, ``sync``).

On a terminal (stderr a tty, no ``--json``) the :mod:`tether.progress` events a command's core operation reports
are drawn with rich's Live under the sentences it says (which print above it, as they always do): the step of each
row with its elapsed time, items, rate and ETA, money spent and the burn now. Anywhere else the events are dropped
and only the sentences are printed, one a line, with no terminal control codes. rich is imported only here, on the
first display.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from tether.cli.common import err
from tether.context import Ctx
from tether.progress import Board, Event, Report, ignore

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions, RenderResult

#: How often the display is redrawn (its clocks tick every second).
REFRESH_PER_S = 4.0


def on_terminal() -> bool:
    """Whether a live display can be drawn: stderr is a terminal that can move its cursor (not TERM=dumb)."""
    if os.environ.get("TERM", "") in ("dumb", "unknown"):
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class _Frame:
    """The board as rich draws it, at the time of each refresh (thread-safe: events come from worker threads)."""

    def __init__(self, board: Board) -> None:
        self.board = board
        self.lock = threading.Lock()

    def report(self, event: Event) -> None:
        with self.lock:
            self.board.apply(event, time.monotonic())

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        from rich.text import Text

        with self.lock:
            lines = self.board.lines(time.monotonic())
        yield Text(lines[0], style="bold", no_wrap=True, overflow="ellipsis")
        for line in lines[1:]:
            yield Text(line, no_wrap=True, overflow="ellipsis")


@contextmanager
def display(title: str, *, enabled: bool = True) -> Iterator[Report]:
    """A live display titled ``title`` while inside, on a terminal when ``enabled``; yields the sink of its events
    (:func:`tether.progress.ignore` when there is no display)."""
    if not enabled or not on_terminal():
        yield ignore
        return
    from rich.live import Live

    frame = _Frame(Board(title, time.monotonic()))
    console = err.console()
    # stdout is left alone (it may be a pipe that takes the command's answer); stderr's lines print above the display.
    with Live(frame, console=console, refresh_per_second=REFRESH_PER_S, transient=True, redirect_stdout=False):
        yield frame.report


@contextmanager
def shown(c: Ctx, title: str, *, enabled: bool = True) -> Iterator[Ctx]:
    """``c`` reporting to a live display titled ``title`` while inside (see :func:`display`)."""
    before = c.report
    with display(title, enabled=enabled) as report:
        c.report = report
        try:
            yield c
        finally:
            c.report = before
