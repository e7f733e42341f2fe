"""The live display of long work (``up``, ``run --managed``, ``run --follow``, ``pull``, ``sync``).

On a terminal (stderr a tty, no ``--json``) the :mod:`tether.progress` events a command's core operation reports
are drawn with rich's Live under the sentences it says (which print above it, as they always do): the step of each
row with its elapsed time, items, rate and ETA, money spent and the burn now. Anywhere else (a pipe, a log, cron,
TERM=dumb) the events become plain lines among the sentences, one a line with no terminal control codes: a line at
each step change, and while work lasts a heartbeat at most every ten seconds (:class:`tether.progress.PlainLines`).
With ``--json`` (``enabled`` false) the events are dropped: stderr holds the sentences alone. rich is imported only
here, on the first display.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from tether.cli.common import err, say
from tether.context import Ctx
from tether.progress import Board, Event, PlainLines, Report, ignore

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions, RenderResult

#: How often the display is redrawn (its clocks tick every second).
REFRESH_PER_S = 4.0

#: How often a plain log asks whether a heartbeat is due, in seconds.
TICK_S = 1.0


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


class _Plain:
    """The events as plain lines on stderr (thread-safe): a step change at once, heartbeats from a ticking thread."""

    def __init__(self, lines: PlainLines) -> None:
        self.lines = lines
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def report(self, event: Event) -> None:
        with self.lock:
            self._print(self.lines.apply(event, time.monotonic()))

    def tick(self) -> None:
        while not self.stop.wait(TICK_S):
            with self.lock:
                self._print(self.lines.tick(time.monotonic()))

    @staticmethod
    def _print(lines: list[str]) -> None:
        for line in lines:
            say(line)


@contextmanager
def plain(title: str) -> Iterator[Report]:
    """Plain lines of the events while inside (see :class:`tether.progress.PlainLines`); yields their sink."""
    sink = _Plain(PlainLines(Board(title, time.monotonic())))
    ticker = threading.Thread(target=sink.tick, name="tether-heartbeat", daemon=True)
    ticker.start()
    try:
        yield sink.report
    finally:
        sink.stop.set()
        ticker.join()


@contextmanager
def display(title: str, *, enabled: bool = True) -> Iterator[Report]:
    """A live display titled ``title`` while inside when ``enabled``: drawn on a terminal, plain lines elsewhere;
    yields the sink of its events (:func:`tether.progress.ignore` when not ``enabled``, e.g. with --json)."""
    if not enabled:
        yield ignore
        return
    if not on_terminal():
        with plain(title) as report:
            yield report
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
