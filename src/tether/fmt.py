"""Plain-text formatting shared by the core's messages and the CLI's tables (pure)."""

from __future__ import annotations

from collections.abc import Iterable


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


def iso(ts: float | None) -> str:
    """``2026-01-02T03:04:05Z`` (UTC), or ``-``."""
    if ts is None:
        return "-"
    from datetime import UTC, datetime

    return datetime.fromtimestamp(float(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def close_matches(word: str, choices: Iterable[str]) -> str:
    """``'x'``, ``'x' or 'y'``, ``'x', 'y' or 'z'``: the choices close to ``word``, closest first; empty when none
    is."""
    import difflib

    close = [repr(c) for c in difflib.get_close_matches(word, sorted(set(choices)), n=3, cutoff=0.75)]
    return (", ".join(close[:-1]) + " or " if len(close) > 1 else "") + close[-1] if close else ""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` Did you mean 'x'?`` for the choices close to ``word`` (:func:`close_matches`); empty when none is."""
    close = close_matches(word, choices)
    return f" Did you mean {close}?" if close else ""


def elapsed(seconds: float) -> str:
    """A running clock: ``0:07``, ``12:34``, ``1:02:03``."""
    whole = int(max(0.0, seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def size(nbytes: float) -> str:
    """``812 B``, ``3.4 kB``, ``12 MB``, ``1.25 GB``, ``2.5e+03 GB`` (decimal units, three figures)."""
    value = float(nbytes)
    if abs(value) < 1000:
        return f"{value:.0f} B"
    for unit in ("kB", "MB"):
        value /= 1000
        if abs(value) < 999.5:
            return f"{value:.3g} {unit}"
    return f"{value / 1000:.3g} GB"


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``1 file``, ``0 files``, ``3 files`` (``plural`` when adding an s is wrong)."""
    return f"{n} {noun if n == 1 else (plural or noun + 's')}"
