"""Plain-text formatting shared by the core's messages and the CLI's tables (pure)."""

from __future__ import annotations


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
