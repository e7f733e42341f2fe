"""Live progress: the events core operations report while they work, and the board that shows them (pure).

A core operation reports to ``ctx.report`` (:class:`tether.context.Ctx`) what it is doing, beside the sentences it
says: :class:`Step` (a row of the display is now at this step; its clock restarts when the step changes),
:class:`Count` (a row's items, files or bytes done, of how many; the rate and ETA when the source knows them),
:class:`Money` (spent so far and the burn now) and :class:`End` (the row is finished). The default sink,
:func:`ignore`, drops them; the CLI draws them live on a terminal (``tether.cli.live``) and drops them otherwise,
where :class:`PlainLines` decides which plain lines to print instead.

:class:`Board` is what a display shows, built from the events alone with an injected clock: the rows, each with its
step and elapsed time, the rate (the source's, or from the counts of the last minute), the ETA, and one header with
the money. Its :meth:`Board.lines` is plain text; the renderer only adds the terminal.

:class:`PlainLines` is what a log shows instead (stderr not a terminal): a line at each step change, and while work
lasts a heartbeat (each row's step, elapsed time, counts, rate, ETA, and the money) no more often than every
:data:`HEARTBEAT_S` seconds after the last line, so a log is never silent for long and never flooded.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from tether.fmt import bar, duration, elapsed, size

#: How far back the counts of a row are used for its rate, in seconds.
RATE_WINDOW_S = 60.0

#: A plain log's heartbeat comes this long after its last line, never sooner (agents read these logs: no flood).
HEARTBEAT_S = 10.0

#: The most rows one heartbeat names (the rest are counted in its last line).
HEARTBEAT_ROWS = 8


@dataclass(frozen=True)
class Step:
    """Row ``row`` is now at ``text`` (e.g. ``waiting for instance 17 to run: loading``). Reporting the same text
    again keeps the row's clock; a new text restarts it. ``idle``: the row waits on purpose (e.g. the pause between
    two pulls the user asked for), not working: a plain log says the step once, with no heartbeat."""

    row: str
    text: str
    idle: bool = False


@dataclass(frozen=True)
class Count:
    """Row ``row`` has ``done`` of ``total`` (None: unknown) ``unit``; ``rate_per_s`` and ``eta_s`` when the source
    knows them (a run's own progress), else the board works them out from the counts. ``nbytes``: bytes moved."""

    row: str
    done: int
    total: int | None = None
    unit: str = "items"
    rate_per_s: float | None = None
    eta_s: float | None = None
    nbytes: int | None = None


@dataclass(frozen=True)
class Money:
    """What the operation has spent so far, and what it burns now ($/hr)."""

    spent_usd: float
    burn_usd_per_hr: float


@dataclass(frozen=True)
class End:
    """Row ``row`` is finished: it leaves the display."""

    row: str


Event = Step | Count | Money | End
Report = Callable[[Event], None]


def ignore(_event: Event) -> None:
    """A :data:`Report` that drops every event (the default: no display)."""
    return None


def bind(report: Report, row: str) -> Callable[[str], None]:
    """A sink of step texts for one row (for code that knows nothing of rows, e.g. :mod:`tether.renting`)."""

    def step(text: str) -> None:
        report(Step(row, text))

    return step


# ------------------------------------------------------------------------------------------ pure figures


def rate(samples: list[tuple[float, int]]) -> float | None:
    """Items per second over ``samples`` ((time, done), oldest first); None until two samples a moment apart."""
    if len(samples) < 2:
        return None
    (t0, d0), (t1, d1) = samples[0], samples[-1]
    if t1 - t0 <= 0:
        return None
    return max(0.0, (d1 - d0) / (t1 - t0))


def eta(done: int, total: int | None, per_s: float | None) -> float | None:
    """Seconds until ``total`` at ``per_s``; 0 when done; None when it cannot be told (no total, no rate)."""
    if total is None:
        return None
    left = total - done
    if left <= 0:
        return 0.0
    if not per_s:
        return None
    return left / per_s


SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


def spinner(now: float) -> str:
    """The spinner's frame at ``now`` (ten frames a second)."""
    return SPINNER[int(now * 10) % len(SPINNER)]


def per_second(per_s: float, unit: str) -> str:
    """``2.1 items/s``, or ``3 items/min`` below a tenth a second."""
    return f"{per_s:.3g} {unit}/s" if per_s >= 0.1 else f"{per_s * 60:.3g} {unit}/min"


# ------------------------------------------------------------------------------------------ the board


@dataclass
class Row:
    name: str
    text: str = ""
    since: float = 0.0
    done: int | None = None
    total: int | None = None
    unit: str = "items"
    nbytes: int | None = None
    given_rate: float | None = None
    given_eta: float | None = None
    samples: deque[tuple[float, int]] = field(default_factory=deque)

    def rate(self) -> float | None:
        return self.given_rate if self.given_rate is not None else rate(list(self.samples))

    def eta(self) -> float | None:
        if self.given_eta is not None:
            return self.given_eta
        if self.done is None:
            return None
        return eta(self.done, self.total, self.rate())


def figures(row: Row) -> list[str]:
    """A row's counts as words: done (of total) units, the rate and ETA (when there is a total or the source's
    rate), and the bytes moved."""
    parts: list[str] = []
    if row.done is not None:
        of = f"/{row.total}" if row.total is not None else ""
        parts.append(f"{row.done}{of} {row.unit}")
        per_s = row.rate() if row.total is not None or row.given_rate is not None else None
        if per_s is not None:
            parts.append(per_second(per_s, row.unit))
        if row.total is not None:
            parts.append(f"ETA {duration(row.eta())}")
    if row.nbytes is not None:
        parts.append(size(row.nbytes))
    return parts


@dataclass
class Board:
    """What a live display shows, from the events it was given (``apply``) and the time now (``lines``)."""

    title: str
    started: float
    rows: dict[str, Row] = field(default_factory=dict)
    spent_usd: float | None = None
    burn_usd_per_hr: float | None = None

    def apply(self, event: Event, now: float) -> None:
        if isinstance(event, Money):
            self.spent_usd, self.burn_usd_per_hr = event.spent_usd, event.burn_usd_per_hr
            return
        if isinstance(event, End):
            self.rows.pop(event.row, None)
            return
        row = self.rows.get(event.row)
        if row is None:
            row = self.rows[event.row] = Row(event.row, since=now)
        if isinstance(event, Step):
            if event.text != row.text:
                row.text, row.since = event.text, now
            return
        if row.done is not None and event.done < row.done:
            row.samples.clear()  # counted again from less (a restarted shard): the old rate says nothing now
        row.done, row.total, row.unit, row.nbytes = event.done, event.total, event.unit, event.nbytes
        row.given_rate, row.given_eta = event.rate_per_s, event.eta_s
        row.samples.append((now, event.done))
        while len(row.samples) > 2 and now - row.samples[0][0] > RATE_WINDOW_S:
            row.samples.popleft()

    def eta(self) -> float | None:
        """When every counted row is done: the longest of their ETAs (rows work side by side); None if one
        cannot be told."""
        counted = [r for r in self.rows.values() if r.done is not None]
        if not counted:
            return None
        etas = [r.eta() for r in counted]
        if any(e is None for e in etas):
            return None
        return max(e for e in etas if e is not None)

    def header(self, now: float) -> str:
        parts = [f"{spinner(now)} {self.title}", elapsed(now - self.started)]
        if self.spent_usd is not None:
            parts.append(f"spent ${self.spent_usd:.4f}")
        if self.burn_usd_per_hr is not None:
            parts.append(f"burn ${self.burn_usd_per_hr:.4f}/hr")
        counted = [r for r in self.rows.values() if r.done is not None]
        if len(counted) > 1:
            total_done = sum(r.done or 0 for r in counted)
            totals = [r.total for r in counted]
            of = f"/{sum(t for t in totals if t is not None)}" if all(t is not None for t in totals) else ""
            parts.append(f"{total_done}{of} {counted[0].unit}")
            parts.append(f"ETA {duration(self.eta())}")
        return " · ".join(parts)

    def line(self, row: Row, now: float) -> str:
        parts = [row.name]
        if row.text:
            parts.append(row.text)
        if row.done is not None and row.total:
            parts.append(bar(row.done, row.total, 12))
        parts += figures(row)
        parts.append(elapsed(now - row.since))
        return "  ".join(parts)

    def lines(self, now: float) -> list[str]:
        """The header, then one line per row in the order rows first reported."""
        return [self.header(now), *("  " + self.line(row, now) for row in self.rows.values())]


# ------------------------------------------------------------------------------------------ a plain log


@dataclass
class PlainLines:
    """Which plain lines a log shows, and when: :meth:`apply` gives the line of a step change (at once), :meth:`tick`
    the heartbeat once :data:`HEARTBEAT_S` (``interval``) has passed since the last line and some row is at work;
    never a heartbeat sooner. A heartbeat is one line per row (its step, elapsed time and figures), after a line for
    the whole (elapsed, the rows' items, rate and ETA, the money) when there is money or more than one row."""

    board: Board
    interval: float = HEARTBEAT_S
    last: float | None = None
    said: dict[str, str] = field(default_factory=dict)
    idle: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.last is None:
            self.last = self.board.started

    def apply(self, event: Event, now: float) -> list[str]:
        """Take ``event``; the lines to print now (a step that changed)."""
        self.board.apply(event, now)
        if isinstance(event, End):
            self.said.pop(event.row, None)
            self.idle.discard(event.row)
            return []
        if not isinstance(event, Step):
            return []
        if event.idle:
            self.idle.add(event.row)
        else:
            self.idle.discard(event.row)
        if self.said.get(event.row) == event.text:
            return []
        self.said[event.row] = event.text
        self.last = now
        return [f"{event.row}: {event.text}"]

    def tick(self, now: float) -> list[str]:
        """The heartbeat's lines when one is due at ``now`` (else none)."""
        working = [r for r in self.board.rows.values() if r.name not in self.idle]
        if not working or self.last is None or now - self.last < self.interval:
            return []
        self.last = now
        lines: list[str] = []
        if self.board.spent_usd is not None or len(working) > 1:
            lines.append(self.whole(working, now))
        for row in working[:HEARTBEAT_ROWS]:
            text = f"{row.name}: {row.text}, " if row.text else f"{row.name}: "
            lines.append(text + ", ".join([f"for {elapsed(now - row.since)}", *figures(row)]))
        if len(working) > HEARTBEAT_ROWS:
            lines.append(f"{self.board.title}: and {len(working) - HEARTBEAT_ROWS} more rows at work")
        return lines

    def whole(self, working: list[Row], now: float) -> str:
        parts = [f"for {elapsed(now - self.board.started)}"]
        counted = [r for r in working if r.done is not None]
        if len(counted) > 1 and len({r.unit for r in counted}) == 1:
            totals = [r.total for r in counted]
            of = f"/{sum(t for t in totals if t is not None)}" if all(t is not None for t in totals) else ""
            parts.append(f"{sum(r.done or 0 for r in counted)}{of} {counted[0].unit}")
            rates = [r.rate() for r in counted]
            if all(r is not None for r in rates):
                parts.append(per_second(sum(r for r in rates if r is not None), counted[0].unit))
            parts.append(f"ETA {duration(self.board.eta())}")
        if self.board.spent_usd is not None:
            parts.append(f"${self.board.spent_usd:.4f} spent")
        if self.board.burn_usd_per_hr is not None:
            parts.append(f"${self.board.burn_usd_per_hr:.4f}/hr")
        return f"{self.board.title}: " + ", ".join(parts)
