"""The context every core operation runs in: the project, local state, the clock and where to say things.

Core functions take one :class:`Ctx` instead of ``(project, state)`` in varying orders. The CLI builds it once per
command (:func:`tether.cli.common.context`); tests and benchmarks build it with their own clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tether.config import Project
    from tether.progress import Report
    from tether.state import State

Say = Callable[[str], None]


def quiet(_message: str) -> None:
    """A :data:`Say` that says nothing."""
    return None


def unreported(_event: object) -> None:
    """A :data:`tether.progress.Report` that drops every event (tether.progress is imported only where one is
    reported, not on every command's start)."""
    return None


@dataclass
class Ctx:
    project: Project
    state: State
    clock: Callable[[], float] = field(default=time.time)
    say: Say = field(default=quiet)
    """Human progress sentences (the CLI sends them to stderr; never part of --json output)."""
    report: Report = field(default=unreported)
    """What the operation is doing now, as :mod:`tether.progress` events (the CLI draws them live on a terminal)."""

    def now(self) -> float:
        return self.clock()
