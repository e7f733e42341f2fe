"""Helpers shared by the CLI commands: output, the context (project + state), and formatting.

Output is shown, never interpreted: both consoles have rich markup off, so text from servers, logs, names and hints
(``[/bold]``, ``[experiments.old]``) prints literally. Colour is added only with :func:`styled`.

rich is imported on the first human output, never for ``--json`` (see :class:`LazyConsole`).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from tether import config
from tether.context import Ctx
from tether.errors import ConfigError
from tether.fmt import bar, duration

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from tether.managed.views import ManagedView
    from tether.state import State


class LazyConsole:
    """A rich Console made (and rich imported) on first use; every attribute is the console's."""

    def __init__(self, *, stderr: bool) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    def console(self) -> Console:
        if self._console is None:
            from rich.console import Console

            if self._stderr:
                self._console = Console(stderr=True, highlight=False, markup=False, soft_wrap=True)
            else:
                # Tables are not cut to 80 columns when stdout is a pipe or a file.
                width = None if sys.stdout.isatty() else 200
                self._console = Console(highlight=False, markup=False, soft_wrap=True, width=width)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.console(), name)


out = LazyConsole(stderr=False)
err = LazyConsole(stderr=True)


def new_table(**options: Any) -> Table:
    """A rich Table without a box or edge padding (the house style); rich is imported here, not before."""
    from rich.table import Table

    return Table(box=None, pad_edge=False, **options)


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")


def finite(doc: Any) -> Any:
    """``doc`` with every number that is not finite (NaN, infinities: not JSON) as null."""
    if isinstance(doc, float) and not math.isfinite(doc):
        return None
    if isinstance(doc, dict):
        return {k: finite(v) for k, v in doc.items()}
    if isinstance(doc, list | tuple):
        return [finite(v) for v in doc]
    return doc


def emit_json(doc: Any) -> None:
    """One JSON document on stdout, always valid JSON: a number that is not finite is written as null."""
    sys.stdout.write(json.dumps(finite(doc), indent=2, default=str, allow_nan=False) + "\n")
    sys.stdout.flush()


def say(message: str) -> None:
    """A human sentence on stderr (never mixed into --json output)."""
    err.print(message)


def parse_every(text: str) -> float:
    """``30m`` → 1800.0; units s, m, h; a bare number is minutes."""
    value = text.strip().lower()
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    try:
        if value and value[-1] in units:
            seconds = float(value[:-1]) * units[value[-1]]
        else:
            seconds = float(value) * 60.0
    except ValueError:
        raise ConfigError(f"'{text}' is not a duration.", "Write it like 30m, 90s or 1h.") from None
    if seconds <= 0:
        raise ConfigError(f"'{text}' is not a positive duration.", "Write it like 30m, 90s or 1h.")
    return seconds


def load_project(ctx: click.Context, needs: str | None = None) -> config.Project:
    """The project of ``--config`` or the nearest tether.toml; outside any project the defaults, unless the command
    ``needs`` a project (e.g. "its [experiments.NAME] tables"): then a ConfigError naming the command and the part.
    The file is validated when first used, and at once when ``needs`` is given."""
    given = ctx.obj.get("config") if ctx.obj else None
    project = config.discover(Path(given) if given is not None else None)
    if needs is not None:
        project.require(ctx.command_path, needs)
    return project


@contextmanager
def state() -> Iterator[State]:
    from tether.state import open_state

    st = open_state()
    try:
        yield st
    finally:
        st.close()


@contextmanager
def context(ctx: click.Context, needs: str | None = None) -> Iterator[Ctx]:
    """The project (see :func:`load_project`), local state and a ``say`` to stderr, for one command."""
    project = load_project(ctx, needs)
    with state() as st:
        yield Ctx(project, st, say=say)


def styled(text: str, style: str) -> Text:
    """``text`` in a colour or style, never parsed for markup."""
    from rich.text import Text

    return Text(text, style=style)


#: The one colour mapping of every state a human table shows, by what the state means: it runs, it is on its way
#: (or waits its turn), it ended well, it was halted on purpose, it waits on someone else, it went wrong, it is gone.
#: It covers run statuses (tether.vocab), server states (providers.base.STATE_MEANINGS), managed run and shard
#: statuses, agent entries and machine outcomes; a test keeps it complete. A state not listed is shown plain.
_STATES_BY_STYLE: dict[str, tuple[str, ...]] = {
    "green": ("running",),
    "cyan": (
        "starting",
        "pending",
        "provisioning",
        "creating",
        "loading",
        "rebooting",
        "restarting",
        "retiring",
        "finishing",
        "releasing",
        "queued",
    ),
    "blue": ("completed", "passed"),
    "yellow": ("stopped", "paused", "cancelled", "frozen"),
    "magenta": ("preempted", "refused", "unready", "unknown"),
    "bold red": ("failed", "dead", "broken", "exited", "lost", "vanished", "unreachable"),
    "dim": ("gone",),
}
STATUS_STYLE: dict[str, str] = {state: style for style, states in _STATES_BY_STYLE.items() for state in states}


def status_text(status: str, note: str = "") -> Text:
    """A table cell: ``status`` in its style (:data:`STATUS_STYLE`), then ``note`` (e.g. " (3m ago)") plain; rich
    drops the colour when stdout is not a terminal or NO_COLOR is set."""
    from rich.text import Text

    return Text.assemble((status, STATUS_STYLE.get(status, "")), note)


def managed_line(view: ManagedView) -> Text:
    """``managed `` and the managed run's one line, its status and each shard's in their style."""
    import re

    text = styled("managed " + view.line(), "")
    for found in re.finditer(r"(?:^managed \S+|· s\d+) ([a-z]+)", text.plain):
        text.stylize(STATUS_STYLE.get(found.group(1), ""), *found.span(1))
    return text


def warn(message: str) -> None:
    from rich.text import Text

    err.print(Text.assemble(("warning:", "yellow"), " ", message))


__all__ = [
    "bar",
    "context",
    "duration",
    "emit_json",
    "err",
    "json_option",
    "load_project",
    "managed_line",
    "new_table",
    "out",
    "say",
    "status_text",
    "styled",
    "warn",
]
