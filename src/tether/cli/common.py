"""Helpers shared by the CLI commands: output, the context (project + state), and formatting.

Output is shown, never interpreted: both consoles have rich markup off, so text from servers, logs, names and hints
(``[/bold]``, ``[experiments.old]``) prints literally. Colour is added only with :func:`styled`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.text import Text

from tether import config
from tether.context import Ctx
from tether.errors import ConfigError
from tether.fmt import bar, duration
from tether.state import State, open_state

# Tables are not cut to 80 columns when stdout is a pipe or a file.
out = Console(highlight=False, markup=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, markup=False, soft_wrap=True)

json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")


def emit_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")
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


def load_project(ctx: click.Context) -> config.Project:
    path: Path | None = ctx.obj.get("config") if ctx.obj else None
    return config.load(path)


@contextmanager
def state() -> Iterator[State]:
    st = open_state()
    try:
        yield st
    finally:
        st.close()


@contextmanager
def context(ctx: click.Context) -> Iterator[Ctx]:
    """The project, local state and a ``say`` to stderr, for one command."""
    project = load_project(ctx)
    with state() as st:
        yield Ctx(project, st, say=say)


def styled(text: str, style: str) -> Text:
    """``text`` in a colour or style, never parsed for markup."""
    return Text(text, style=style)


STATUS_STYLE = {
    "running": "green",
    "starting": "green",
    "completed": "cyan",
    "failed": "red",
    "dead": "red",
    "broken": "red",
    "refused": "yellow",
    "cancelled": "yellow",
    "preempted": "yellow",
}


def status_text(status: str) -> Text:
    return styled(status, STATUS_STYLE.get(status, "white"))


def warn(message: str) -> None:
    err.print(Text.assemble(("warning:", "yellow"), " ", message))


__all__ = ["bar", "context", "duration", "emit_json", "err", "json_option", "out", "say", "styled", "warn"]
