"""Money, pure: the cost ledger's integral and the stop/destroy policies (budgets: :mod:`tether.ledger`).

Nothing here reads a file, a clock or the network: every function takes the recorded facts and ``now``.

**The ledger.** ``instance_events`` rows (as :meth:`tether.state.State.events` returns them: ``name``, ``ts``,
``state``, ``dph_total``, ``storage_dph``, and ``seq``) are read per instance in the order they were recorded
(``seq``; the input order when there is none). Each event starts a piece that lasts until the next event of the same
instance (or ``now``) and costs, per hour:

- ``running``, ``rebooting``, ``frozen``: ``dph_total`` (GPU and storage: the GPU is held; Vast.ai's docs say a
  frozen instance bills GPU time);
- ``creating``, ``loading``, ``queued``, ``stopped``, ``preempted``, ``exited``, ``unknown``: ``storage_dph`` only
  (what Vast.ai bills);
- ``gone``, ``destroyed``: nothing.

Faults never crash the ledger and never make money negative; each is said in ``warnings``:

- an event without prices uses the last prices known for that instance ("prices missing for X between T1 and
  T2; assumed last known"); with none known at all, the piece counts $0 and says so;
- a clock that jumped backwards (an event older than the one recorded before it, or ``now`` before the last event)
  is clamped: time never runs backwards inside the ledger, so the backwards stretch costs nothing.

**The policies** (:func:`decide`) follow the runbook's decision tree, with two timers (stop soon, destroy later):

1. never act on an instance with a live run or a registered agent;
2. a running instance idle (no live run, no agent) for ``idle_stop_minutes``: if more experiments are planned for it
   within ``more_work_within_hours`` → **stop** (a stopped instance keeps its disk for a few cents an hour); else →
   **destroy**. Both need a pull first (``needs_pull``): a stopped instance cannot be read, and a destroyed one is
   gone. The caller pulls and verifies, and must not stop or destroy if that fails;
3. idle (running) or stopped for ``destroy_after_idle_hours`` → **destroy**, planned work or not: by then storage
   fees outweigh the few minutes a re-creation costs. A running instance is pulled first. A stopped one cannot be
   pulled without starting it (which costs the full rate, and may hang if its GPU was rented meanwhile), so it is
   destroyed only when its results are known to be home (``unsynced is False``, the normal case since every stop is
   preceded by a pull); otherwise nothing is done and the reason says what to do by hand;
4. a clock that reads earlier than the instance's last recorded change does nothing until it catches up.

**Learned idle timers.** Rules 2 and 3 use fixed timers only while the instance has no history. Once runs on it have
left gaps between them (:func:`run_gaps`, the last ``gap_history``), an idle gap that began when a run ended is
priced instead: :func:`expected_rest` estimates how much longer it lasts (the mean rest of the past gaps longer than
this one so far; as long again when it already outlasts them all; at least ``more_work_within_hours`` when no more
work is planned), and :func:`idle_costs` prices, in hours of the full rate, staying up (that rest at the full rate),
stopping or staying stopped (that rest at the storage rate, plus ``restart_cost_minutes``) and destroying
(``recreate_cost_minutes``). :func:`cheapest_idle_action` takes the cheapest, staying as it is on a tie. A running
instance brought up since its last run keeps the fixed ``idle_stop_minutes`` (it was brought up for a run about to
start). The safety rules hold unchanged: rule 1 first, every stop or destroy of a running instance asks for a
verified pull, a stopped one is destroyed only with ``unsynced is False``, and ``destroy_after_idle_hours`` caps
every timer.

:func:`refuse_destroy` is the guard of ``tether destroy``: it raises :class:`~tether.errors.PolicyRefusal`
(exit 3) while a run is alive, or while results are unsynced or unknown unless ``--discard-unsynced``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any, Literal, Protocol

from tether import vocab
from tether.config import PolicyConfig
from tether.errors import PolicyRefusal
from tether.providers.base import STATE_MEANINGS

__all__ = [
    "Decision",
    "IdleCosts",
    "InstanceCost",
    "InstanceView",
    "Ledger",
    "Segment",
    "accrued",
    "cheapest_idle_action",
    "cost_by_experiment",
    "decide",
    "decide_all",
    "expected_rest",
    "idle_costs",
    "idle_gaps",
    "ledger",
    "rate_kind",
    "refuse_destroy",
    "run_activity",
    "run_gaps",
    "segments",
    "storage_share",
]

IDLE = "(idle)"


def _billed(rate: str) -> frozenset[str]:
    return frozenset(state for state, (_, billed) in STATE_MEANINGS.items() if billed == rate)


# The one table of what each state costs is the providers' (STATE_MEANINGS, also behind Instance.hourly_cost).
#: States billed at the full ``dph_total``.
FULL_RATE_STATES = _billed("full")
#: States billed at the storage part only.
STORAGE_STATES = _billed("storage")
#: States that cost nothing.
FREE_STATES = _billed("none")

RateKind = Literal["full", "storage", "none"]


def rate_kind(state: str) -> RateKind:
    """Which price applies in ``state``: the full ``dph_total``, the storage part, or nothing."""
    if state in FULL_RATE_STATES:
        return "full"
    if state in FREE_STATES:
        return "none"
    return "storage"


def _fmt_ts(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def _num(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    if math.isnan(out) or math.isinf(out) or out < 0:
        return None
    return out


# ------------------------------------------------------------------------------------------ integration


@dataclass(frozen=True)
class Segment:
    """A stretch of time ``[start, end)`` during which instance ``name`` stayed in ``state`` at ``rate`` $/hr."""

    name: str
    state: str
    start: float
    end: float
    rate: float
    assumed_price: bool = False

    @property
    def hours(self) -> float:
        return max(0.0, self.end - self.start) / 3600.0

    @property
    def cost(self) -> float:
        return self.rate * self.hours


@dataclass
class _Track:
    """Integration state of one instance while its events are read."""

    name: str
    cursor: float | None = None
    state: str | None = None
    rate: float = 0.0
    assumed: bool = False
    dph_total: float | None = None
    storage_dph: float | None = None
    segments: list[Segment] = field(default_factory=list)
    unpriced: set[str] = field(default_factory=set)


def _group(events: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    by_name: dict[str, list[tuple[int, int, Mapping[str, Any]]]] = {}
    for index, event in enumerate(events):
        name = str(event.get("name", ""))
        seq_raw = event.get("seq")
        seq = int(seq_raw) if isinstance(seq_raw, int) and not isinstance(seq_raw, bool) else index
        by_name.setdefault(name, []).append((seq, index, event))
    return {name: [e for _, _, e in sorted(rows, key=lambda r: (r[0], r[1]))] for name, rows in by_name.items()}


def _rate(track: _Track, state: str, event: Mapping[str, Any], warnings: list[str]) -> tuple[float, bool]:
    """The $/hr of ``state`` for this event, falling back on the last known prices (and whether it did)."""
    dph = _num(event.get("dph_total"))
    storage = _num(event.get("storage_dph"))
    if dph is not None:
        track.dph_total = dph
    if storage is not None:
        track.storage_dph = storage
    kind = rate_kind(state)
    if kind == "none":
        return 0.0, False
    own = dph if kind == "full" else storage
    if own is not None:
        return own, False
    known = track.dph_total if kind == "full" else track.storage_dph
    if known is None:
        if kind not in track.unpriced:
            track.unpriced.add(kind)
            what = "price" if kind == "full" else "storage price"
            warnings.append(
                f"no {what} was ever recorded for {track.name} (first needed for state {state} at "
                f"{_fmt_ts(float(event.get('ts') or 0.0))}); counted as $0."
            )
        return 0.0, False
    return known, True


def segments(events: Iterable[Mapping[str, Any]], now: float) -> tuple[list[Segment], list[str]]:
    """Every instance's history as priced segments up to ``now``, and the warnings met on the way."""
    segs, warnings, _ = _integrate(events, now)
    return segs, warnings


@dataclass(frozen=True)
class _Final:
    state: str
    rate: float
    first_ts: float
    last_ts: float


def _integrate(events: Iterable[Mapping[str, Any]], now: float) -> tuple[list[Segment], list[str], dict[str, _Final]]:
    warnings: list[str] = []
    out: list[Segment] = []
    finals: dict[str, _Final] = {}
    for name, rows in _group(events).items():
        track = _Track(name)
        first: float | None = None
        for event in rows:
            ts_raw = _num(event.get("ts"))
            ts = ts_raw if ts_raw is not None else (track.cursor if track.cursor is not None else now)
            state = str(event.get("state") or "unknown")
            if track.cursor is not None and ts < track.cursor:
                warnings.append(
                    f"the clock went backwards for {name}: an event at {_fmt_ts(ts)} was recorded after one at "
                    f"{_fmt_ts(track.cursor)}; the gap is counted as zero time."
                )
                ts = track.cursor
            _close(track, ts)
            rate, assumed = _rate(track, state, event, warnings)
            track.cursor, track.state, track.rate, track.assumed = ts, state, rate, assumed
            first = ts if first is None else first
        if track.cursor is not None and now < track.cursor:
            warnings.append(
                f"the clock reads {_fmt_ts(now)}, before {name}'s last event at {_fmt_ts(track.cursor)}; "
                "nothing is counted past that event."
            )
        _close(track, max(now, track.cursor if track.cursor is not None else now))
        warnings.extend(_assumed_warnings(track.segments))
        out.extend(track.segments)
        if track.state is not None and track.cursor is not None and first is not None:
            finals[name] = _Final(track.state, track.rate, first, track.cursor)
    return out, list(dict.fromkeys(warnings)), finals


def _close(track: _Track, end: float) -> None:
    if track.cursor is None or track.state is None:
        return
    if end > track.cursor:
        track.segments.append(Segment(track.name, track.state, track.cursor, end, track.rate, track.assumed))


def _assumed_warnings(segs: Sequence[Segment]) -> list[str]:
    """One warning per run of consecutive segments priced from last known prices."""
    out: list[str] = []
    start: Segment | None = None
    for i, seg in enumerate(segs):
        if seg.assumed_price and start is None:
            start = seg
        last = i == len(segs) - 1 or not segs[i + 1].assumed_price
        if start is not None and last:
            out.append(
                f"prices missing for {seg.name} between {_fmt_ts(start.start)} and {_fmt_ts(seg.end)}; "
                "assumed last known."
            )
            start = None
    return out


def _clip(seg: Segment, since: float | None) -> Segment | None:
    if since is None or seg.start >= since:
        return seg
    if seg.end <= since:
        return None
    return Segment(seg.name, seg.state, since, seg.end, seg.rate, seg.assumed_price)


def _split_days(seg: Segment) -> Iterable[tuple[str, float]]:
    """(UTC day, dollars) for each day the segment touches."""
    start = seg.start
    while start < seg.end:
        day_start = datetime.fromtimestamp(start, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        next_midnight = day_start.timestamp() + 86400.0
        end = min(seg.end, next_midnight)
        yield _day(start), seg.rate * (end - start) / 3600.0
        start = end


@dataclass(frozen=True)
class InstanceCost:
    """One instance in the ledger."""

    name: str
    total_usd: float
    state: str
    burn_dph: float
    running_hours: float
    billed_idle_hours: float
    """Hours in a storage-billed state (stopped, loading, exited...)."""
    first_ts: float
    last_ts: float

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "total_usd": round(self.total_usd, 6),
            "state": self.state,
            "burn_dph": round(self.burn_dph, 6),
            "running_hours": round(self.running_hours, 4),
            "billed_idle_hours": round(self.billed_idle_hours, 4),
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
        }


@dataclass(frozen=True)
class Ledger:
    """What was spent (since ``since``), per instance and per UTC day, what burns now, the next 24 h."""

    now: float
    since: float | None
    total_usd: float
    by_instance: dict[str, InstanceCost]
    by_day: dict[str, float]
    burn_dph: float
    projected_24h_usd: float
    warnings: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "now": self.now,
            "since": self.since,
            "total_usd": round(self.total_usd, 6),
            "burn_dph": round(self.burn_dph, 6),
            "projected_24h_usd": round(self.projected_24h_usd, 6),
            "by_instance": [c.to_json() for c in self.by_instance.values()],
            "by_day": {day: round(usd, 6) for day, usd in sorted(self.by_day.items())},
            "warnings": list(self.warnings),
        }


def ledger(events: Iterable[Mapping[str, Any]], now: float, since: float | None = None) -> Ledger:
    """Integrate the events up to ``now`` (counting only from ``since`` if given); see the module docstring.

    ``burn_dph`` is what every instance costs per hour in its last recorded state, and ``projected_24h_usd`` that
    burn held for 24 hours (what happens if nothing changes; the policies usually do better).
    """
    segs, warnings, finals = _integrate(events, now)
    by_name: dict[str, list[Segment]] = {}
    for seg in segs:
        by_name.setdefault(seg.name, []).append(seg)
    by_instance: dict[str, InstanceCost] = {}
    by_day: dict[str, float] = {}
    for name, final in finals.items():
        total = running = idle = 0.0
        for seg in by_name.get(name, []):
            part = _clip(seg, since)
            if part is None:
                continue
            total += part.cost
            if rate_kind(part.state) == "full":
                running += part.hours
            elif rate_kind(part.state) == "storage":
                idle += part.hours
            for day, usd in _split_days(part):
                by_day[day] = by_day.get(day, 0.0) + usd
        by_instance[name] = InstanceCost(
            name=name,
            total_usd=total,
            state=final.state,
            burn_dph=final.rate,
            running_hours=running,
            billed_idle_hours=idle,
            first_ts=final.first_ts,
            last_ts=final.last_ts,
        )
    burn = sum(c.burn_dph for c in by_instance.values())
    return Ledger(
        now=now,
        since=since,
        total_usd=sum(c.total_usd for c in by_instance.values()),
        by_instance=by_instance,
        by_day=by_day,
        burn_dph=burn,
        projected_24h_usd=burn * 24.0,
        warnings=warnings,
    )


def accrued(events: Iterable[Mapping[str, Any]], now: float, since: float | None = None) -> float:
    """Dollars spent by every instance in the events up to ``now`` (from ``since`` if given)."""
    return ledger(events, now, since).total_usd


class RunLike(Protocol):
    """What cost attribution needs of a run (a :class:`tether.state.RunRecord` has it)."""

    @property
    def experiment(self) -> str: ...

    @property
    def host(self) -> str: ...

    @property
    def started(self) -> float: ...

    @property
    def ended(self) -> float | None: ...


class StatusRunLike(RunLike, Protocol):
    @property
    def status(self) -> str: ...


#: Run statuses that count as live (a run in them keeps its instance from being stopped or destroyed).


def run_activity(runs: Iterable[StatusRunLike], host: str) -> tuple[int, float | None]:
    """For building an :class:`InstanceView`: how many runs are live on ``host`` and the last time one was (the
    latest start of a live run, or end of a finished one; None when no run ever ran there)."""
    live = 0
    last: float | None = None
    for run in runs:
        if run.host != host:
            continue
        alive = vocab.is_live(run.status) and run.ended is None
        live += int(alive)
        moment = run.started if alive or run.ended is None else run.ended
        last = moment if last is None else max(last, moment)
    return live, last


def cost_by_experiment(
    events: Iterable[Mapping[str, Any]], runs: Sequence[RunLike], now: float, since: float | None = None
) -> dict[str, float]:
    """Each instance's cost attributed to the experiments whose runs were live on it (run ``host`` = instance
    name), split evenly among concurrent runs; time with no live run goes to ``"(idle)"``. A run not ended is
    live until ``now``."""
    out: dict[str, float] = {}
    for per_exp in cost_by_instance_and_experiment(events, runs, now, since).values():
        for exp, usd in per_exp.items():
            out[exp] = out.get(exp, 0.0) + usd
    return out


def idle_by_instance(
    events: Iterable[Mapping[str, Any]], runs: Sequence[RunLike], now: float, since: float | None = None
) -> dict[str, float]:
    """What each instance cost while no run was live on it: its share of :func:`cost_by_experiment`'s
    ``"(idle)"`` (the two add up to the same)."""
    by_instance = cost_by_instance_and_experiment(events, runs, now, since)
    return {name: per_exp.get(IDLE, 0.0) for name, per_exp in by_instance.items()}


def cost_by_instance_and_experiment(
    events: Iterable[Mapping[str, Any]], runs: Sequence[RunLike], now: float, since: float | None = None
) -> dict[str, dict[str, float]]:
    """:func:`cost_by_experiment` for each instance apart: instance -> experiment (or ``"(idle)"``) -> dollars."""
    segs, _ = segments(events, now)
    by_host: dict[str, list[tuple[float, float, str]]] = {}
    for run in runs:
        end = run.ended if run.ended is not None else now
        if end > run.started:
            by_host.setdefault(run.host, []).append((run.started, end, run.experiment))
    out: dict[str, dict[str, float]] = {}
    for seg in segs:
        part = _clip(seg, since)
        if part is None or part.rate == 0.0:
            continue
        mine = out.setdefault(part.name, {})
        live = [(max(a, part.start), min(b, part.end), e) for a, b, e in by_host.get(part.name, [])]
        live = [(a, b, e) for a, b, e in live if b > a]
        cuts = sorted({part.start, part.end, *(a for a, _, _ in live), *(b for _, b, _ in live)})
        for lo, hi in pairwise(cuts):
            usd = part.rate * (hi - lo) / 3600.0
            names = [e for a, b, e in live if a <= lo and b >= hi]
            if not names:
                mine[IDLE] = mine.get(IDLE, 0.0) + usd
                continue
            for exp in names:
                mine[exp] = mine.get(exp, 0.0) + usd / len(names)
    return out


# ------------------------------------------------------------------------------------------ policies

Action = vocab.Action  # the one type of what a controller decides (the idle policies use none, stop, destroy)


@dataclass(frozen=True)
class InstanceView:
    """What the policies know of one instance at one moment (built by the caller from state and the server)."""

    name: str
    state: str
    since: float
    """When the instance entered ``state``."""
    last_activity: float | None = None
    """The last time a run was live on it or an agent registered (None: never)."""
    live_runs: int = 0
    live_agents: int = 0
    unsynced: bool | None = None
    """Whether the server holds results newer than the last verified pull (None: unknown)."""
    last_verified_pull: float | None = None
    more_work_within_h: bool = False
    """Whether more experiments are planned for it within ``more_work_within_hours``."""
    dph_total: float | None = None
    """What it costs per hour while running (None: unknown)."""
    storage_dph: float | None = None
    """What it costs per hour while stopped, the storage part (None: unknown)."""
    idle_gaps: tuple[float, ...] = ()
    """Recent gaps between runs on it, in seconds, oldest first (:func:`run_gaps`; empty: no history)."""


@dataclass(frozen=True)
class Decision:
    """What to do with one instance and why. ``needs_pull``: pull and verify first; on failure do nothing."""

    action: Action
    reason: str
    needs_pull: bool = False
    name: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "action": self.action,
            "reason": self.reason,
            "needs_pull": self.needs_pull,
        }


def _dur(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def idle_gaps(busy: Iterable[tuple[float, float | None]], limit: int) -> tuple[float, ...]:
    """The gaps (seconds) between the busy stretches of one server: the most recent ``limit``, oldest first.

    ``busy`` holds each run's (start, end), end None while it is live (busy from its start on). Overlapping runs
    make one stretch; a run recorded as ending before it started (the clock went backwards) is an instant at its
    start; a start or end that is not a finite number is skipped (the run) or taken as live (the end).
    """
    spans: list[tuple[float, float]] = []
    for start, end in busy:
        if not math.isfinite(start):
            continue
        stop = math.inf if end is None or math.isnan(end) else max(start, end)
        spans.append((start, stop))
    spans.sort()
    gaps: list[float] = []
    reach: float | None = None
    for start, stop in spans:
        if reach is not None and start > reach:
            gaps.append(start - reach)
        reach = stop if reach is None else max(reach, stop)
    return tuple(gaps[-limit:]) if limit > 0 else ()


def run_gaps(runs: Iterable[StatusRunLike], host: str, limit: int) -> tuple[float, ...]:
    """For building an :class:`InstanceView`: :func:`idle_gaps` of the runs on ``host`` (a live run is busy from
    its start on; one that is neither live nor ended, e.g. dead, is an instant at its start)."""
    busy: list[tuple[float, float | None]] = []
    for run in runs:
        if run.host != host:
            continue
        alive = vocab.is_live(run.status) and run.ended is None
        busy.append((run.started, None if alive else (run.ended if run.ended is not None else run.started)))
    return idle_gaps(busy, limit)


def expected_rest(gaps: Sequence[float], idle: float) -> float | None:
    """How much longer (seconds) the current gap between runs should last, given that it has lasted ``idle``.

    The mean of ``g - idle`` over the learned gaps ``g`` longer than ``idle``. When none is longer (this gap already
    outlasts every one seen), it is taken to last as long again: ``idle``. None when there is no history (gaps that
    are not positive finite numbers do not count).
    """
    known = [g for g in gaps if math.isfinite(g) and g > 0]
    if not known:
        return None
    idle = max(0.0, idle)
    longer = [g - idle for g in known if g > idle]
    return sum(longer) / len(longer) if longer else idle


def storage_share(view: InstanceView) -> float:
    """The stopped rate as a share of the running rate (0..1); 0 when either is unknown or running is free."""
    if view.dph_total is None or view.storage_dph is None or view.dph_total <= 0:
        return 0.0
    return min(1.0, max(0.0, view.storage_dph / view.dph_total))


@dataclass(frozen=True)
class IdleCosts:
    """The expected cost of each choice over the rest of an idle gap, in hours of the server's full rate."""

    rest_s: float
    """The expected rest of the gap (:func:`expected_rest`)."""
    keep: float
    """Staying up: the full rate for the rest of the gap."""
    stop: float
    """Stopping (or staying stopped): storage for the rest of the gap, plus ``restart_cost_minutes``."""
    destroy: float
    """Destroying: ``recreate_cost_minutes`` (a re-rental when work comes back); nothing bills meanwhile."""

    def text(self) -> str:
        return (
            f"the expected cost in hours of the full rate is {self.keep:.2f} up, {self.stop:.2f} stopped, "
            f"{self.destroy:.2f} destroyed"
        )


def idle_costs(
    gaps: Sequence[float], idle: float, share: float, policy: PolicyConfig, more_work: bool = True
) -> IdleCosts | None:
    """The expected costs of keeping, stopping and destroying a server idle for ``idle`` seconds, from its
    learned ``gaps`` (the last ``gap_history``) and its ``share`` (:func:`storage_share`); None without history.

    With no more work planned (``more_work`` False) the rest of the gap is at least ``more_work_within_hours``.
    """
    if policy.gap_history <= 0:
        return None
    rest = expected_rest(gaps[-policy.gap_history :], idle)
    if rest is None:
        return None
    if not more_work:
        rest = max(rest, policy.more_work_within_hours * 3600.0)
    rest_h = rest / 3600.0
    return IdleCosts(
        rest_s=rest,
        keep=rest_h,
        stop=share * rest_h + policy.restart_cost_minutes / 60.0,
        destroy=policy.recreate_cost_minutes / 60.0,
    )


def cheapest_idle_action(costs: IdleCosts, state: str) -> Action:
    """The learned choice: the cheapest of what may be done, ``"none"`` on a tie (the least drastic wins ties,
    then stop before destroy). A ``"running"`` server may stay up, be stopped or be destroyed; a stopped one may
    stay stopped or be destroyed."""
    if state == "running":
        options: list[tuple[float, Action]] = [(costs.keep, "none"), (costs.stop, "stop"), (costs.destroy, "destroy")]
    else:
        options = [(costs.stop, "none"), (costs.destroy, "destroy")]
    best = options[0]
    for option in options[1:]:
        if option[0] < best[0]:
            best = option
    return best[1]


def decide(view: InstanceView, now: float, policy: PolicyConfig) -> Decision:
    """The runbook's decision for one instance at ``now`` (see the module docstring for the rules)."""
    name = view.name

    def out(action: Action, reason: str, needs_pull: bool = False) -> Decision:
        return Decision(action, reason, needs_pull, name)

    if view.state in FREE_STATES:
        return out("none", f"{name} is already gone; nothing bills.")
    if view.live_runs > 0 or view.live_agents > 0:
        return out(
            "none",
            f"a run is still alive on {name} ({view.live_runs} live run(s), {view.live_agents} agent(s)); "
            "never stopped or destroyed while in use.",
        )
    latest = max(view.since, view.last_activity if view.last_activity is not None else view.since)
    if now < latest:
        return out(
            "none",
            f"the clock reads {_fmt_ts(now)}, before {name}'s last recorded change at {_fmt_ts(latest)}; "
            "doing nothing until the clock catches up.",
        )
    stop_after = policy.idle_stop_minutes * 60.0
    destroy_after = policy.destroy_after_idle_hours * 3600.0
    share = storage_share(view)
    if view.state == "running":
        idle = now - latest
        if idle >= destroy_after:
            return out(
                "destroy",
                f"{name} has been idle {_dur(idle)}, past destroy_after_idle_hours "
                f"({policy.destroy_after_idle_hours:g} h): pull and verify its results, then destroy it.",
                True,
            )
        # Learned only for a gap that began when a run ended: a server brought up since its last run was brought
        # up for a run about to begin, and waits the fixed timer.
        after_run = view.last_activity is not None and view.last_activity >= view.since
        costs = idle_costs(view.idle_gaps, idle, share, policy, view.more_work_within_h) if after_run else None
        if costs is not None:
            learned = _learned(view, idle, costs, policy)
            action = cheapest_idle_action(costs, "running")
            if action == "none":
                return out("none", f"{learned}: staying up is cheapest.")
            if action == "stop":
                return out("stop", f"{learned}: stopping is cheapest; pull its results, then stop it.", True)
            work = "more work is planned" if view.more_work_within_h else "no more experiments are planned"
            return out(
                "destroy",
                f"{learned}, and {work}: destroying is cheapest; pull and verify its results, then destroy it.",
                True,
            )
        if idle < stop_after:
            return out(
                "none",
                f"{name} has been idle {_dur(idle)}, under idle_stop_minutes ({policy.idle_stop_minutes:g} min).",
            )
        return _runbook_tree(view, policy, f"{name} has been idle {_dur(idle)}")
    if view.state in ("stopped", "preempted", "exited"):
        held = now - view.since
        if held < destroy_after:
            gap = now - (view.last_activity if view.last_activity is not None else view.since)
            costs = idle_costs(view.idle_gaps, gap, share, policy, view.more_work_within_h)
            if costs is None:
                return out(
                    "none",
                    f"{name} has been {view.state} {_dur(held)}, under destroy_after_idle_hours "
                    f"({policy.destroy_after_idle_hours:g} h).",
                )
            learned = _learned(view, gap, costs, policy)
            if cheapest_idle_action(costs, view.state) == "none":
                return out("none", f"{learned}: staying {view.state} is cheapest.")
            why = f"{learned}: destroying is cheapest"
        else:
            why = (
                f"{name} has been {view.state} {_dur(held)}, past destroy_after_idle_hours "
                f"({policy.destroy_after_idle_hours:g} h)"
            )
        if view.unsynced is False:
            return out("destroy", f"{why}, and its results are verified home: destroy it.")
        what = "not verified home" if view.unsynced else "of unknown sync state"
        return out(
            "none",
            f"{why}, but its results are {what}: start it and pull (`tether down {name}`), or destroy it with "
            "--discard-unsynced.",
        )
    return out("none", f"{name} is {view.state}; waiting for it to settle before deciding.")


def _runbook_tree(view: InstanceView, policy: PolicyConfig, why: str) -> Decision:
    """The runbook's tree for a running server that may be acted on: more work within ``more_work_within_hours``
    → pull, stop (storage only); else → pull, verify, destroy. ``why`` starts the reason."""
    within = f"{policy.more_work_within_hours:g} h"
    if view.more_work_within_h:
        return Decision(
            "stop",
            f"{why} and more experiments are planned within {within}: pull its results, then stop it (storage only).",
            True,
            view.name,
        )
    return Decision(
        "destroy",
        f"{why} and no more experiments are planned within {within}: pull and verify its results, then destroy it.",
        True,
        view.name,
    )


def decide_now(view: InstanceView, policy: PolicyConfig) -> Decision:
    """``tether down``: the same tree as :func:`decide` with every idle timer taken as run out (the user asks now).

    A live run or agent still means ``none`` (the caller refuses); a stopped server is destroyed only when no more
    work is planned, and the destroy guard (:func:`refuse_destroy`) still decides whether its results are home.
    """
    name = view.name
    if view.state in FREE_STATES:
        return Decision("none", f"{name} is destroyed already.", False, name)
    if view.live_runs > 0 or view.live_agents > 0:
        return Decision(
            "none",
            f"a run is still alive on {name} ({view.live_runs} live run(s), {view.live_agents} agent(s)).",
            False,
            name,
        )
    if view.state == "running":
        return _runbook_tree(view, policy, f"{name} was taken down by hand")
    if view.state in ("stopped", "preempted", "exited"):
        if view.more_work_within_h:
            return Decision("none", f"{name} is {view.state} already.", False, name)
        return Decision(
            "destroy",
            f"{name} is {view.state} and no more work is planned within {policy.more_work_within_hours:g} h.",
            False,
            name,
        )
    return Decision(
        "none", f"{name} is {view.state}; wait for it to settle, then run `tether down` again.", False, name
    )


def _learned(view: InstanceView, idle: float, costs: IdleCosts, policy: PolicyConfig) -> str:
    count = len([g for g in view.idle_gaps[-policy.gap_history :] if math.isfinite(g) and g > 0])
    return (
        f"{view.name} has been idle {_dur(idle)}; from its last {count} gap(s) between runs the rest of this one "
        f"should last ~{_dur(costs.rest_s)}, so {costs.text()}"
    )


def decide_all(views: Iterable[InstanceView], now: float, policy: PolicyConfig) -> dict[str, Decision]:
    """:func:`decide` for every view, keyed by instance name, in the order given."""
    return {view.name: decide(view, now, policy) for view in views}


def refuse_destroy(view: InstanceView, discard_unsynced: bool) -> None:
    """The guard of ``tether destroy``: raise ``PolicyRefusal`` (exit 3) unless destroying loses nothing."""
    if view.live_runs > 0 or view.live_agents > 0:
        raise PolicyRefusal(
            f"A run is still alive on {view.name} ({view.live_runs} live run(s), {view.live_agents} agent(s)).",
            "Wait for it to finish (`tether progress`) or stop it, then destroy.",
        )
    if discard_unsynced or view.state in FREE_STATES:
        return
    if view.unsynced is None:
        raise PolicyRefusal(
            f"tether cannot tell whether {view.name}'s results are home: no verified pull is known.",
            f"Pull first (`tether pull {view.name}`, or `tether down {view.name}` which pulls, verifies and "
            "destroys), or pass --discard-unsynced to lose them.",
        )
    if view.unsynced:
        since = (
            f" since the last verified pull at {_fmt_ts(view.last_verified_pull)}"
            if view.last_verified_pull is not None
            else ""
        )
        raise PolicyRefusal(
            f"{view.name} holds results not yet brought home{since}.",
            f"Pull first (`tether pull {view.name}`, or `tether down {view.name}`), or pass --discard-unsynced "
            "to lose them.",
        )
