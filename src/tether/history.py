"""Past runs and forgetting their records: ``tether runs`` and ``tether forget``.

A run's record in local state keeps what it ended with, frozen the first time tether saw it end (its status, exit
code, end and its own counts: :func:`tether.runs.refresh`), so the history shows each run as it finished, whatever
later runs of its experiment wrote into the shared results folder. ``forget`` deletes records only: results on this
machine and everything on servers stay where they are; a live run is never forgotten.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from tether import vocab
from tether.errors import ConfigError, PolicyRefusal
from tether.scope import Scope
from tether.state import RunRecord, State


def history(st: State, scope: Scope, *, experiment: str | None = None) -> list[RunRecord]:
    """Runs newest first, in ``scope`` (:class:`tether.scope.Scope`: this project's, or every project's), of one
    experiment if given."""
    return sorted(scope.records(st, experiment), key=lambda r: r.started, reverse=True)


def parse_date(text: str) -> float:
    """``2026-12-01`` or ``2026-12-01T10:00`` (UTC unless it says otherwise) as a timestamp; ConfigError else."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"--finished-before {text!r} is not a date.", "Give an ISO date such as 2026-12-01 or 2026-12-01T10:00."
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def to_forget(
    st: State, refs: Sequence[str], finished_before: float | None, experiments: Sequence[str]
) -> list[RunRecord]:
    """The records ``tether forget`` deletes: the runs named (the one resolver) and those finished before a date;
    a live run refuses the whole command (nothing is forgotten)."""
    if not refs and finished_before is None:
        raise ConfigError("Name the runs to forget, or give --finished-before DATE.", "`tether runs` lists them.")
    chosen: dict[str, RunRecord] = {}
    for ref in refs:
        rec = st.find_run(ref, experiments)
        chosen[rec.id] = rec
    if finished_before is not None:
        for rec in st.runs():
            if rec.ended is not None and rec.ended < finished_before and not vocab.is_live(rec.status):
                chosen[rec.id] = rec
    live = [r.id for r in chosen.values() if vocab.is_live(r.status)]
    if live:
        raise PolicyRefusal(
            f"{', '.join(live)} {'is' if len(live) == 1 else 'are'} still running; nothing was forgotten.",
            "Cancel it first (`tether cancel RUN`), or leave it out.",
        )
    return sorted(chosen.values(), key=lambda r: r.started)
