"""The servers' own cost rule as tether sees it (the watchdog itself is :mod:`tether.server.watchdog`).

- :func:`start`: ``tether up`` sends a server's watchdog its settings (through stdin; mode 0600 there) and starts it
  (one per server; the rental's start script starts it again after every restart).
- :func:`learn_stop`: a server tether last saw running and then found stopped, not by tether, is marked
  ``last_stop`` in local state when it is seen (:func:`tether.rentals.record`); once it runs again, its watchdog's
  stop record (``.tether/watchdog-stop.json``) tells when it stopped itself, and that stop goes into the ledger at
  its own time (storage billing only from then), bounded by what tether saw: after the last look that found it
  running and before the look that found it stopped (a server's file never moves money outside that window).
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from tether.context import Ctx
from tether.errors import TetherError
from tether.fmt import iso
from tether.hosts import Target, resolve

if TYPE_CHECKING:
    from tether.config import Project
    from tether.config_models import PolicyConfig

STOP_RECORD = ".tether/watchdog-stop.json"


def idle_stop_seconds(policy: PolicyConfig) -> float | None:
    """``[policy] idle_stop`` in seconds (None: ``"never"``); unset, the policy's stop timer."""
    if policy.idle_stop == "never":
        return None
    minutes = policy.idle_stop if policy.idle_stop is not None else policy.idle_stop_minutes
    return float(minutes) * 60.0


def start(project: Project, target: Target) -> dict[str, Any]:
    """Send the watchdog its settings and start it (a watchdog already there keeps watching with the new settings).
    A rented server stops itself with its own instance key; a server the user owns is never stopped, only
    reported."""
    from tether.providers import api_url

    idle_s = idle_stop_seconds(project.config.policy)
    settings = {
        "idle_stop_s": idle_s,
        "poll_s": max(0.5, min(60.0, (idle_s or 600.0) / 10.0)),
        "provider": "vast" if target.rented else None,
        "api_url": api_url(project) if target.rented else None,
    }
    argv = [*target.server_argv, "watchdog", "--root", target.root, "--settings", "-", "--daemon"]
    target.transport.run(argv, input=json.dumps(settings).encode())
    if idle_s is None:
        does = 'off ([policy] idle_stop = "never")'
    elif target.rented:
        does = f"stops the server after {idle_s / 60:g} min with nothing alive on it (never destroys it)"
    else:
        does = f"reports the server idle after {idle_s / 60:g} min (a server you own is never stopped)"
    return {"idle_stop_s": idle_s, "does": does}


def stop_window(events: list[dict[str, Any]], seen: float) -> tuple[float, float] | None:
    """When a stop seen at ``seen`` can have happened (pure): after the last event before it that found the
    server running, up to ``seen``; None when tether never saw it running before."""
    before = [e for e in events if isinstance(e.get("ts"), (int, float)) and e["ts"] < seen]
    running = [e["ts"] for e in before if e.get("state") == "running"]
    return (max(running), seen) if running else None


def learn_stop(ctx: Ctx, name: str, target: Target | None = None) -> str | None:
    """After a stop tether did not make (``last_stop`` with no cause yet) and a start: read the watchdog's stop
    record from the server; when it falls in the window tether saw, record the stop at its time. The sentence."""
    st = ctx.state
    rec = st.instance(name)
    if rec is None or rec.state != "running" or not rec.instance_id:
        return None
    last = rec.meta.get("last_stop")
    if not isinstance(last, dict) or last.get("by") is not None or not isinstance(last.get("seen"), (int, float)):
        return None
    try:
        target = target or resolve(ctx.project, name, st)
        result = target.transport.run(["cat", f"{target.root}/{STOP_RECORD}"], check=False)
    except TetherError:
        return None
    at = _stop_time(result.text() if result.returncode == 0 else "")
    last_stop, stopped_at = judge(last, [e.to_json() for e in st.events(name)], at)
    st.merge_instance_meta(
        name, {"last_stop": last_stop}, stopped_at=None if stopped_at is None else (stopped_at, "watchdog")
    )
    if stopped_at is None:
        return None
    return (
        f"{name} was stopped by its watchdog at {iso(stopped_at)} (nothing ran on it); storage billing only from then."
    )


def judge(last: dict[str, Any], events: list[dict[str, Any]], at: float | None) -> tuple[dict[str, Any], float | None]:
    """Who stopped the server and when, from what tether saw and what the server says (pure): the watchdog at
    ``at`` when ``at`` falls in the window tether saw; else someone else, and no stop time (no money moves)."""
    window = stop_window(events, float(last["seen"]))
    if at is None or window is None or not window[0] <= at <= window[1]:
        return {**last, "by": "someone else (not tether, not its watchdog)"}, None
    return {**last, "by": "watchdog", "at": at}, at


def _stop_time(text: str) -> float | None:
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    at = doc.get("at") if isinstance(doc, dict) else None
    if isinstance(at, (int, float)) and not isinstance(at, bool) and math.isfinite(at):
        return float(at)
    return None


def describe(meta: dict[str, Any], state: str) -> str | None:
    """What ``ls``/``status`` say of a stopped server that tether did not stop, or None."""
    last = meta.get("last_stop")
    if state != "stopped" or not isinstance(last, dict):
        return None
    if last.get("by") == "watchdog" and isinstance(last.get("at"), (int, float)):
        return f"stopped by its watchdog at {iso(last['at'])}"
    seen = last.get("seen")
    when = iso(seen) if isinstance(seen, (int, float)) else "?"
    return f"stopped, not by tether (its watchdog after idle_stop, or by hand), seen at {when}"
