"""Helpers shared by the CLI commands: output, the project and state, and run-time formatting."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from tether import config
from tether.state import State, open_state

# Tables are not cut to 80 columns when stdout is a pipe or a file.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True)

json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")


def emit_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")
    sys.stdout.flush()


def say(message: str) -> None:
    """A human sentence on stderr (never mixed into --json output)."""
    err.print(message)


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


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def bar(done: int, total: int | None, width: int = 20) -> str:
    if not total:
        return " " * width
    filled = int(width * min(1.0, done / total))
    return "█" * filled + "░" * (width - filled)
