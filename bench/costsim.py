"""Cost simulation: two weeks of experiments against the Vast emulator's clock under three operators.

Run: ``python bench/costsim.py [--seed N] [--days D] [--seeds 1-20]``. The last line printed is one JSON object
with ``cost_never_stop``, ``cost_daily_manual``, ``cost_autopilot``, ``cost_lower_bound``,
``ratio_autopilot_to_bound`` and ``results_lost`` for ``--seed`` (default 20260211). With ``--seeds`` (ranges and
comma lists: ``1-20``, ``1,4,7``, ``1-5,9``) each of those seeds is run too, a table of its autopilot ratio and
results lost is printed, and the JSON adds ``seeds`` (the list), ``seeds_ratio_median``, ``seeds_ratio_max`` and
``seeds_results_lost`` (the total over those seeds and all three operators).

The workload (fixed seed): experiments of the three kinds arrive as Poisson processes over ``--days`` days, each
needing an instance of its profile (``api``, ``inference``, ``finetune``, the offer chosen as ``tether`` does:
the cheapest that matches the profile's query, quoted for the profile's disk). Durations are log-normal:

=========  ==============  ======================  ===================
kind       arrivals / day  median duration         clipped to
=========  ==============  ======================  ===================
api        3               1 h                     10 min .. 8 h
inference  1.5             2 h                     20 min .. 10 h
finetune   0.6             6 h                     1 h .. 16 h
=========  ==============  ======================  ===================

Experiments of one profile share one instance and run one after another (a queue per profile). Each experiment
is "planned" (written in tether.toml) a day before it starts, so "more experiments planned within 24 h" is known
to the operators. The accounting window is the workload's days plus one day for the queues to drain; every
operator is measured over the same window.

Assumptions: an instance takes 3 minutes from create or start to running (``LOADING_S``; the emulator bills only
storage while loading); a pull takes no simulated time and fails 5 % of the time (seeded), and a failed pull
blocks the stop or destroy that needed it until a later attempt succeeds; results of a finished experiment sit
on its instance until a pull brings them home.

Operators:

- ``never_stop``: rents one instance per profile when first needed and keeps it running to the end;
- ``daily_manual``: the runbook's decision tree applied by hand once a day at 09:00 UTC: an idle running instance
  is pulled and stopped if more work is planned within 24 h, else pulled and destroyed; a stopped one with no
  planned work is destroyed (its results came home when it was stopped);
- ``autopilot``: :func:`tether.cost.decide` with the default policy every 5 simulated minutes, pull-and-verify
  before any stop or destroy that asks for it. Its :class:`~tether.cost.InstanceView` holds what
  :func:`tether.autopilot.gather` reads from state: the instance's prices (from the emulator) and the gaps between
  the runs seen on that profile's instances (:func:`tether.cost.idle_gaps`), so the learned idle timers work as
  they do for real; with no gap yet it uses the fixed timers (stop after 30 idle minutes, destroy after 24 h).
  A re-rental here costs only its 3 loading minutes at the storage rate; the policy still prices one at
  ``recreate_cost_minutes`` (30 min of the full rate), so it destroys less often than this simulation would reward.

``cost_lower_bound``: the same rates (each experiment's instance ``dph_total``) paid only while an experiment runs.
``results_lost``: experiments whose results were on an instance destroyed before a verified pull, over all three
operators (must be 0).

The emulator is driven through its Python API (``search``/``create``/``change``/``destroy``), not over HTTP: the
simulation steps one simulated minute at a time for two weeks and three operators, and an HTTP round trip per step
would take minutes of wall time. The money still comes from the emulator's own per-second accrual
(``account_total()``), and tether's own ledger (:func:`tether.cost.accrued` over the state changes the operators
observed, recorded as ``instance_events`` would be) must agree with it to the cent, or the run fails.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tether.config import PolicyConfig
from tether.cost import InstanceView, accrued, decide, idle_gaps
from tether.emulator.vast import Clock, VastEmulator, load_offer_book, null_host_factory
from tether.profiles import DEFAULT_PROFILES
from tether.providers import search_body

SEED = 20260211
START = datetime(2026, 2, 2, tzinfo=UTC).timestamp()  # a Monday, 00:00 UTC
STEP_S = 60.0
LOADING_S = 180.0
PULL_FAIL_P = 0.05
AUTOPILOT_EVERY_S = 300.0
MANUAL_HOUR_UTC = 9
PLANNED_AHEAD_S = 24 * 3600.0
IMAGE = "pytorch/pytorch:latest"

# kind -> (arrivals per day, median minutes, sigma of log, min minutes, max minutes)
WORKLOAD: dict[str, tuple[float, float, float, float, float]] = {
    "api": (3.0, 60.0, 0.8, 10.0, 480.0),
    "inference": (1.5, 120.0, 0.7, 20.0, 600.0),
    "finetune": (0.6, 360.0, 0.5, 60.0, 960.0),
}


@dataclass(frozen=True)
class Experiment:
    id: int
    profile: str
    arrival: float
    duration_s: float


def make_workload(seed: int, days: float) -> list[Experiment]:
    """Poisson arrivals per kind, log-normal durations (whole minutes), sorted by arrival."""
    rng = random.Random(seed)
    out: list[Experiment] = []
    for kind, (per_day, median, sigma, lo, hi) in WORKLOAD.items():
        t = START
        while True:
            t += rng.expovariate(per_day / 86400.0)
            if t >= START + days * 86400.0:
                break
            minutes = min(hi, max(lo, round(median * math.exp(rng.gauss(0.0, sigma)))))
            arrival = START + math.ceil((t - START) / STEP_S) * STEP_S
            out.append(Experiment(0, kind, arrival, minutes * 60.0))
    out.sort(key=lambda e: (e.arrival, e.profile))
    return [Experiment(i, e.profile, e.arrival, e.duration_s) for i, e in enumerate(out)]


@dataclass
class Slot:
    """The one instance of a profile as an operator sees it."""

    profile: str
    inst_id: int | None = None
    state: str = "none"  # none, loading, running, stopped
    since: float = 0.0
    last_activity: float | None = None
    dph_total: float = 0.0
    current: Experiment | None = None
    current_start: float = 0.0
    current_end: float = 0.0
    busy: list[tuple[float, float]] = field(default_factory=list)  # (start, end) of every finished run on it
    unsynced: list[int] = field(default_factory=list)
    last_verified_pull: float | None = None
    queue: deque[Experiment] = field(default_factory=deque)


@dataclass
class Outcome:
    name: str
    cost: float
    lower_bound: float
    results_lost: int
    finished: int
    counts: dict[str, int]
    idle_running: float
    storage: float
    ledger_total: float


class Sim:
    """One operator's run of the workload against a fresh emulator."""

    def __init__(self, name: str, workload: list[Experiment], seed: int, end: float) -> None:
        self.name = name
        self.workload = workload
        self.end = end
        self.clock = Clock(START)
        self.emu = VastEmulator(
            load_offer_book(), loading_s=LOADING_S, clock=self.clock, host_factory=null_host_factory
        )
        self.rng = random.Random(seed * 7919 + 1)
        self.slots = {p: Slot(p) for p in WORKLOAD}
        self.pending = list(workload)  # planned experiments not yet arrived
        self.events: list[dict[str, Any]] = []  # the cost ledger as tether would record it
        self.lower_bound = 0.0
        self.results_lost = 0
        self.finished = 0
        self.counts = {"create": 0, "start": 0, "stop": 0, "destroy": 0, "pull": 0, "pull_failed": 0}
        self.log: list[str] = []
        self.idle_running = 0.0  # $ of running instances with no experiment (the operators' overhead)
        self.storage = 0.0  # $ of loading and stopped instances

    # --- facts the operators read ---------------------------------------------------------------------------
    def more_work_within(self, slot: Slot, now: float, horizon_s: float = PLANNED_AHEAD_S) -> bool:
        if slot.queue or slot.current is not None:
            return True
        return any(e.profile == slot.profile and now <= e.arrival < now + horizon_s for e in self.pending)

    def view(self, slot: Slot, gap_history: int) -> InstanceView:
        """What :func:`tether.autopilot.gather` builds from state: the same facts, read from the simulation."""
        inst = self.emu.instances[slot.inst_id] if slot.inst_id is not None else None
        live: list[tuple[float, float | None]] = [(slot.current_start, None)] if slot.current is not None else []
        return InstanceView(
            name=slot.profile,
            state=slot.state,
            since=slot.since,
            last_activity=slot.last_activity,
            live_runs=1 if slot.current is not None else 0,
            live_agents=0,
            unsynced=bool(slot.unsynced),
            last_verified_pull=slot.last_verified_pull,
            more_work_within_h=self.more_work_within(slot, self.clock.now()),
            dph_total=inst.dph_total if inst is not None else None,
            storage_dph=inst.storage_total_cost if inst is not None else None,
            idle_gaps=idle_gaps([*slot.busy, *live], gap_history),
        )

    def record(self, slot: Slot, state: str | None = None) -> None:
        """What tether's rentals record in ``instance_events`` on every change it observes (the cost ledger)."""
        assert slot.inst_id is not None
        inst = self.emu.instances[slot.inst_id]
        self.events.append(
            {
                "name": f"{slot.profile}-{slot.inst_id}",
                "ts": self.clock.now(),
                "state": state or slot.state,
                "dph_total": inst.dph_total,
                "storage_dph": inst.storage_total_cost,
            }
        )

    # --- actions -------------------------------------------------------------------------------------------
    def pull(self, slot: Slot) -> bool:
        """Bring results home and verify; only a running instance can be read. False: it failed this time."""
        if slot.state != "running":
            return False
        self.counts["pull"] += 1
        if self.rng.random() < PULL_FAIL_P:
            self.counts["pull_failed"] += 1
            return False
        slot.unsynced.clear()
        slot.last_verified_pull = self.clock.now()
        return True

    def stop(self, slot: Slot) -> None:
        assert slot.inst_id is not None and slot.current is None
        status, _ = self.emu.change(slot.inst_id, {"state": "stopped"})
        assert status == 200
        slot.state, slot.since = "stopped", self.clock.now()
        self.record(slot)
        self.counts["stop"] += 1

    def destroy(self, slot: Slot) -> None:
        assert slot.inst_id is not None and slot.current is None
        status, _ = self.emu.destroy(slot.inst_id)
        assert status == 200
        self.results_lost += len(slot.unsynced)
        slot.unsynced.clear()
        self.record(slot, "gone")
        slot.inst_id, slot.state, slot.since = None, "none", self.clock.now()
        self.counts["destroy"] += 1

    def _rent(self, slot: Slot) -> None:
        profile = DEFAULT_PROFILES[slot.profile]
        body = search_body(profile.offer_query())
        offers = self.emu.search(body)
        assert offers, f"no offer for {slot.profile}"
        status, answer = self.emu.create(int(offers[0]["id"]), {"image": IMAGE, "disk": profile.min_disk_gb})
        assert status == 200, answer
        slot.inst_id = int(answer["new_contract"])
        slot.state, slot.since = "loading", self.clock.now()
        self.record(slot)
        self.counts["create"] += 1

    # --- the loop -------------------------------------------------------------------------------------------
    def run(self, operator: Callable[[Sim, float], None]) -> Outcome:
        arrivals = deque(self.workload)
        now = self.clock.now()
        while now < self.end:
            # the instances' own progress (loading -> running) as the emulator reports it
            for slot in self.slots.values():
                if slot.inst_id is not None and slot.state == "loading":
                    info = self.emu.instance_json(slot.inst_id)
                    assert info is not None
                    if info["actual_status"] == "running":
                        slot.state, slot.since = "running", now
                        self.record(slot)
                        slot.dph_total = float(info["dph_total"])
                # runs that finished leave their results on the instance
                if slot.current is not None and now >= slot.current_end:
                    slot.unsynced.append(slot.current.id)
                    slot.busy.append((slot.current_start, slot.current_end))
                    slot.last_activity = slot.current_end
                    slot.current = None
                    self.finished += 1
            while arrivals and arrivals[0].arrival <= now:
                exp = arrivals.popleft()
                self.pending.remove(exp)
                self.slots[exp.profile].queue.append(exp)
            for slot in self.slots.values():
                if slot.current is not None or not slot.queue:
                    continue
                if slot.state == "none":
                    self._rent(slot)
                elif slot.state == "stopped":
                    assert slot.inst_id is not None
                    status, _ = self.emu.change(slot.inst_id, {"state": "running"})
                    assert status == 200
                    slot.state, slot.since = "loading", now
                    self.record(slot)
                    self.counts["start"] += 1
                elif slot.state == "running":
                    exp = slot.queue.popleft()
                    slot.current, slot.current_start, slot.current_end = exp, now, now + exp.duration_s
                    slot.last_activity = now
                    self.lower_bound += slot.dph_total * exp.duration_s / 3600.0
            operator(self, now)
            self._account_overhead()
            now = self.clock.advance(STEP_S)
        return Outcome(
            self.name,
            self.emu.account_total(),
            self.lower_bound,
            self.results_lost,
            self.finished,
            dict(self.counts),
            self.idle_running,
            self.storage,
            accrued(self.events, self.clock.now()),
        )

    def _account_overhead(self) -> None:
        """Split the step's spending into idle-running and storage, from the emulator's own prices."""
        for slot in self.slots.values():
            if slot.inst_id is None:
                continue
            inst = self.emu.instances[slot.inst_id]
            if inst.state == "running" and slot.current is None:
                self.idle_running += inst.dph_total * STEP_S / 3600.0
            elif inst.state in ("loading", "stopped"):
                self.storage += inst.storage_total_cost * STEP_S / 3600.0


# --- operators -------------------------------------------------------------------------------------------------


def never_stop(sim: Sim, now: float) -> None:
    """Rent when needed, never stop."""


def daily_manual(sim: Sim, now: float) -> None:
    """The runbook's tree, by hand, once a day at 09:00 UTC (a failed pull is retried twice, then left)."""
    moment = datetime.fromtimestamp(now, UTC)
    if moment.hour != MANUAL_HOUR_UTC or moment.minute != 0:
        return
    for slot in sim.slots.values():
        if slot.inst_id is None or slot.current is not None or slot.queue:
            continue
        more = sim.more_work_within(slot, now)
        if slot.state == "running":
            if not any(sim.pull(slot) for _ in range(3)):
                continue
            if more:
                sim.stop(slot)
            else:
                sim.destroy(slot)
        elif slot.state == "stopped" and not more and not slot.unsynced:
            sim.destroy(slot)


def make_autopilot(policy: PolicyConfig) -> Callable[[Sim, float], None]:
    def autopilot(sim: Sim, now: float) -> None:
        if (now - START) % AUTOPILOT_EVERY_S:
            return
        for slot in sim.slots.values():
            if slot.inst_id is None:
                continue
            decision = decide(sim.view(slot, policy.gap_history), now, policy)
            if decision.action == "none":
                continue
            if decision.needs_pull and not sim.pull(slot):
                sim.log.append(f"{now:.0f} {slot.profile}: pull failed, {decision.action} postponed")
                continue
            if decision.action == "stop":
                sim.stop(slot)
            else:
                sim.destroy(slot)

    return autopilot


def parse_seeds(text: str) -> list[int]:
    """``"1-20"``, ``"1,3,5"`` or both (``"1-5,9"``) as the seeds in order, each once; ValueError if malformed."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise ValueError(f"empty item in {text!r}")
        lo_text, dash, hi_text = part.partition("-")
        lo = int(lo_text)
        hi = int(hi_text) if dash else lo
        if hi < lo:
            raise ValueError(f"range {part!r} runs backwards")
        seeds.extend(seed for seed in range(lo, hi + 1) if seed not in seeds)
    return seeds


def _seeds_arg(text: str) -> list[int]:
    try:
        return parse_seeds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--seeds wants ranges and comma lists like 1-20 or 1,4,7: {exc}") from exc


@dataclass(frozen=True)
class Trial:
    """One seed's workload under every operator (and the quick-timer autopilot shown beside them)."""

    seed: int
    workload: list[Experiment]
    outcomes: dict[str, Outcome]
    quick: Outcome

    @property
    def bound(self) -> float:
        return self.outcomes["autopilot"].lower_bound

    @property
    def ratio(self) -> float:
        return self.outcomes["autopilot"].cost / self.bound

    @property
    def lost(self) -> int:
        return sum(o.results_lost for o in self.outcomes.values())

    def problems(self) -> list[str]:
        """What makes this trial invalid: unfinished work, a ledger that disagrees with the bill, two bounds."""
        out: list[str] = []
        for o in self.outcomes.values():
            if o.finished != len(self.workload):
                out.append(f"{o.name}: only {o.finished} of {len(self.workload)} experiments finished")
            if not math.isclose(o.ledger_total, o.cost, rel_tol=1e-6, abs_tol=1e-6):
                out.append(f"{o.name}: tether's ledger says ${o.ledger_total:.4f}, the emulator billed ${o.cost:.4f}")
            if not math.isclose(o.lower_bound, self.bound, rel_tol=1e-9):
                out.append(f"{o.name}: a different lower bound ({o.lower_bound:.4f} vs {self.bound:.4f})")
        return [f"seed {self.seed}: {p}" for p in out]


def trial(seed: int, days: float, policy: PolicyConfig | None = None) -> Trial:
    """Run one seed's workload under the three operators; the autopilot uses ``policy`` (default: the default)."""
    workload = make_workload(seed, days)
    end = START + (days + 1.0) * 86400.0
    operators: list[tuple[str, Callable[[Sim, float], None]]] = [
        ("never_stop", never_stop),
        ("daily_manual", daily_manual),
        ("autopilot", make_autopilot(policy or PolicyConfig())),
    ]
    outcomes = {name: Sim(name, workload, seed, end).run(op) for name, op in operators}
    # Not in the JSON: the same autopilot with a shorter fixed idle timer, to show what the knob buys.
    quick_policy = (policy or PolicyConfig()).model_copy(update={"idle_stop_minutes": 10})
    quick = Sim("autopilot_10m", workload, seed, end).run(make_autopilot(quick_policy))
    return Trial(seed, workload, outcomes, quick)


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seed", type=int, default=SEED, help="the seed whose figures the JSON reports")
    parser.add_argument("--days", type=float, default=14.0)
    parser.add_argument(
        "--seeds", type=_seeds_arg, default=None, help="also run these seeds (e.g. 1-20, 1,4,7) and report the spread"
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    main_trial = trial(args.seed, args.days)
    others = [main_trial if seed == args.seed else trial(seed, args.days) for seed in args.seeds or []]
    problems = [p for t in [main_trial, *others] for p in t.problems()]
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    workload, outcomes, bound = main_trial.workload, main_trial.outcomes, main_trial.bound
    by_kind = {k: sum(1 for e in workload if e.profile == k) for k in WORKLOAD}
    busy_h = sum(e.duration_s for e in workload) / 3600.0
    print(
        f"workload: {len(workload)} experiments over {args.days:g} days (seed {args.seed}): "
        + ", ".join(f"{n} {k}" for k, n in by_kind.items())
        + f"; {busy_h:.1f} busy hours; window {args.days + 1:g} days"
    )
    for out in [*outcomes.values(), main_trial.quick]:
        counts = ", ".join(f"{k} {v}" for k, v in out.counts.items())
        print(
            f"  {out.name:<13} ${out.cost:8.2f}  x{out.cost / bound:5.2f} of the bound  lost {out.results_lost}"
            f"  idle-running ${out.idle_running:.2f}  storage ${out.storage:.2f}  ({counts})"
        )
    print(f"  {'lower bound':<13} ${bound:8.2f}  (busy time only)")
    print("  tether's ledger (tether.cost.accrued over the recorded events) matches the emulator's bill for each")
    result: dict[str, Any] = {
        "cost_never_stop": round(outcomes["never_stop"].cost, 4),
        "cost_daily_manual": round(outcomes["daily_manual"].cost, 4),
        "cost_autopilot": round(outcomes["autopilot"].cost, 4),
        "cost_lower_bound": round(bound, 4),
        "ratio_autopilot_to_bound": round(main_trial.ratio, 4),
        "results_lost": main_trial.lost,
    }
    if others:
        print(f"seeds ({len(others)}): autopilot cost / lower bound, and results lost over the three operators")
        print(f"  {'seed':>6}  {'experiments':>11}  {'bound':>8}  {'autopilot':>9}  {'ratio':>6}  lost")
        for t in others:
            bound_usd, auto_usd = f"${t.bound:.2f}", f"${t.outcomes['autopilot'].cost:.2f}"
            print(f"  {t.seed:>6}  {len(t.workload):>11}  {bound_usd:>8}  {auto_usd:>9}  {t.ratio:6.3f}  {t.lost}")
        ratios = [t.ratio for t in others]
        result.update(
            {
                "seeds": [t.seed for t in others],
                "seeds_ratio_median": round(median(ratios), 4),
                "seeds_ratio_max": round(max(ratios), 4),
                "seeds_results_lost": sum(t.lost for t in others),
            }
        )
    print(f"  [{time.monotonic() - started:.1f} s]")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
