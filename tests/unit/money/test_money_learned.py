"""The learned idle timers: gaps between runs, the expected rest of a gap, the priced choice, and decide() with it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from tether import autopilot, config
from tether.config import PolicyConfig
from tether.context import Ctx
from tether.cost import (
    IdleCosts,
    InstanceView,
    cheapest_idle_action,
    decide,
    expected_rest,
    idle_costs,
    idle_gaps,
    run_gaps,
    storage_share,
)
from tether.state import InstanceRecord, RunRecord, open_state

T0 = 1_700_000_000.0
MIN = 60.0
H = 3600.0
POLICY = PolicyConfig()  # restart_cost_minutes=5, recreate_cost_minutes=30, gap_history=20, more_work_within_hours=24
NAN = float("nan")
INF = float("inf")


def view(state: str = "running", **kw: object) -> InstanceView:
    """An instance whose last run ended at T0 and that has been up since before it, at $1/hr ($0.05/hr stopped)."""
    fields: dict[str, object] = {
        "name": "gpu1",
        "state": state,
        "since": T0 - 5 * H if state == "running" else T0 + 5 * MIN,
        "last_activity": T0,
        "more_work_within_h": True,
        "dph_total": 1.0,
        "storage_dph": 0.05,
    }
    fields.update(kw)
    return InstanceView(**fields)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- idle_gaps


@pytest.mark.parametrize(
    ("busy", "limit", "expected"),
    [
        ([], 20, ()),
        ([(0.0, 10.0)], 20, ()),
        ([(0.0, 10.0), (30.0, 40.0)], 20, (20.0,)),
        ([(30.0, 40.0), (0.0, 10.0)], 20, (20.0,)),  # any order in
        ([(0.0, 10.0), (5.0, 20.0), (50.0, 60.0)], 20, (30.0,)),  # overlapping runs are one stretch
        ([(0.0, 100.0), (10.0, 20.0), (130.0, 140.0)], 20, (30.0,)),  # one inside another
        ([(0.0, 10.0), (10.0, 20.0)], 20, ()),  # back to back: no gap
        ([(0.0, None), (50.0, 60.0)], 20, ()),  # a live run keeps it busy from its start on
        ([(0.0, 10.0), (40.0, None)], 20, (30.0,)),
        ([(0.0, 10.0), (100.0, 50.0), (130.0, 140.0)], 20, (90.0, 30.0)),  # ended before it started: an instant
        ([(NAN, 10.0), (0.0, 10.0), (INF, 5.0), (30.0, 40.0)], 20, (20.0,)),  # no usable start: skipped
        ([(0.0, 10.0), (30.0, NAN), (90.0, 95.0)], 20, (20.0,)),  # no usable end: live
        ([(0.0, 1.0), (2.0, 3.0), (5.0, 6.0), (9.0, 10.0)], 2, (2.0, 3.0)),  # the most recent, oldest first
        ([(0.0, 1.0), (2.0, 3.0)], 0, ()),
        ([(0.0, 1.0), (1e12, 1e12 + 1.0)], 20, (1e12 - 1.0,)),  # a huge gap is a gap
    ],
)
def test_idle_gaps(busy: list[tuple[float, float | None]], limit: int, expected: tuple[float, ...]) -> None:
    assert idle_gaps(busy, limit) == expected


def test_run_gaps_from_real_run_records() -> None:
    def rec(rid: str, host: str, started: float, ended: float | None, status: str) -> RunRecord:
        return RunRecord(rid, "A5", host, ["python3"], "/p", "results", "log", "s", started, ended, None, status)

    runs = [
        rec("1", "gpu1", T0, T0 + H, "completed"),
        rec("2", "gpu1", T0 + 3 * H, T0 + 4 * H, "failed"),
        rec("3", "gpu1", T0 + 6 * H, None, "dead"),  # neither live nor ended: an instant at its start
        rec("4", "gpu2", T0 + 5 * H, T0 + 5.5 * H, "completed"),  # another server
        rec("5", "gpu1", T0 + 7 * H, None, "running"),  # live: nothing after it
    ]
    assert run_gaps(runs, "gpu1", 20) == (2 * H, 2 * H, 1 * H)
    assert run_gaps(runs, "gpu1", 1) == (1 * H,)
    assert run_gaps(runs, "gpu2", 20) == ()
    assert run_gaps(runs, "nobody", 20) == ()


# --------------------------------------------------------------------------------------------- expected_rest


@pytest.mark.parametrize(
    ("gaps", "idle", "expected"),
    [
        ((), 0.0, None),  # no history
        ((0.0, -5.0, NAN, INF), 0.0, None),  # nothing usable is no history
        ((600.0,), 0.0, 600.0),  # one gap
        ((600.0,), 200.0, 400.0),
        ((600.0,), 600.0, 600.0),  # as long as every gap seen: as long again
        ((600.0,), 900.0, 900.0),
        ((600.0, 1800.0, 3600.0), 1000.0, 1700.0),  # the mean rest of the gaps longer than this one so far
        ((600.0, NAN, 1800.0), 0.0, 1200.0),
        ((600.0,), -100.0, 600.0),  # clock backwards: idle counts from zero
        ((1e12,), 0.0, 1e12),  # huge gap
    ],
)
def test_expected_rest(gaps: tuple[float, ...], idle: float, expected: float | None) -> None:
    assert expected_rest(gaps, idle) == expected


@pytest.mark.parametrize(
    ("dph", "storage", "share"),
    [(None, 0.1, 0.0), (1.0, None, 0.0), (0.0, 0.1, 0.0), (2.0, 0.1, 0.05), (0.1, 0.5, 1.0), (1.0, 0.0, 0.0)],
)
def test_storage_share(dph: float | None, storage: float | None, share: float) -> None:
    assert storage_share(view(dph_total=dph, storage_dph=storage)) == share


def test_idle_costs_exact() -> None:
    costs = idle_costs((7200.0,), 0.0, 0.1, POLICY)
    assert costs is not None and (costs.rest_s, costs.keep, costs.destroy) == (7200.0, 2.0, 0.5)
    assert costs.stop == pytest.approx(0.2 + 5 / 60)
    # no more work planned: the rest of the gap is at least more_work_within_hours
    none_planned = idle_costs((7200.0,), 0.0, 0.1, POLICY, more_work=False)
    assert none_planned is not None
    assert (none_planned.rest_s, none_planned.keep, none_planned.destroy) == (86400.0, 24.0, 0.5)
    assert none_planned.stop == pytest.approx(2.4 + 5 / 60)
    # only the last gap_history gaps count; 0 learns nothing
    last = idle_costs((60.0, 7200.0), 0.0, 0.0, PolicyConfig(gap_history=1))
    assert last is not None and (last.rest_s, last.keep, last.destroy) == (7200.0, 2.0, 0.5)
    assert last.stop == pytest.approx(5 / 60)
    assert idle_costs((7200.0,), 0.0, 0.1, PolicyConfig(gap_history=0)) is None
    assert idle_costs((), 0.0, 0.1, POLICY) is None
    custom = PolicyConfig(restart_cost_minutes=0, recreate_cost_minutes=90)
    assert idle_costs((3600.0,), 1800.0, 0.5, custom) == IdleCosts(1800.0, 0.5, 0.25, 1.5)


@pytest.mark.parametrize(
    ("keep", "stop", "destroy", "state", "action"),
    [
        (2.0, 0.2, 0.5, "running", "stop"),
        (2.0, 0.8, 0.5, "running", "destroy"),
        (0.1, 0.2, 0.5, "running", "none"),
        (0.2, 0.2, 0.5, "running", "none"),  # a tie keeps it as it is
        (0.9, 0.5, 0.5, "running", "stop"),  # stop before destroy on a tie
        (2.0, 0.2, 0.5, "stopped", "none"),  # staying stopped costs the stop price
        (2.0, 0.8, 0.5, "stopped", "destroy"),
        (2.0, 0.5, 0.5, "exited", "none"),
    ],
)
def test_cheapest_idle_action(keep: float, stop: float, destroy: float, state: str, action: str) -> None:
    assert cheapest_idle_action(IdleCosts(3600.0, keep, stop, destroy), state) == action


# --------------------------------------------------------------------------------------------- decide, learned

TWO_H = (2 * H,)
LONG = (20 * H,)

# (id, view, now, expected action, needs_pull, fragment of the reason)
TABLE: list[tuple[str, InstanceView, float, str, bool, str]] = [
    # one gap of 2 h: the rest of this one is 2 h less 5 min; up 1.92 h vs stopped 0.1 + 0.08 h: stop at once
    ("one 2 h gap, idle 5 min", view(idle_gaps=TWO_H), T0 + 5 * MIN, "stop", True, "stopping is cheapest"),
    ("reason gives the estimate", view(idle_gaps=TWO_H), T0 + 5 * MIN, "stop", True, "~1.9 h"),
    # gaps of 3 min: stay up while the rest of the gap costs less than a restart (5 min), then stop
    ("short gaps, idle 1 min", view(idle_gaps=(180.0,)), T0 + 1 * MIN, "none", False, "staying up is cheapest"),
    ("short gaps, idle 4 min", view(idle_gaps=(180.0,)), T0 + 4 * MIN, "none", False, "staying up"),
    ("short gaps, idle 6 min", view(idle_gaps=(180.0,)), T0 + 6 * MIN, "stop", True, "then stop it"),
    # long gaps and dear storage: storage for the rest (2 h) is worth more than a re-rental (0.5 h)
    ("long gap, dear storage", view(idle_gaps=LONG, storage_dph=0.1), T0 + 5 * MIN, "destroy", True, "planned"),
    ("long gap, cheap storage", view(idle_gaps=LONG, storage_dph=0.01), T0 + 5 * MIN, "stop", True, "stop it"),
    ("huge gap", view(idle_gaps=(1e9,)), T0 + 5 * MIN, "destroy", True, "destroying is cheapest"),
    ("huge gap, prices unknown", view(idle_gaps=(1e9,), dph_total=None), T0 + 5 * MIN, "stop", True, "stopping"),
    # no more work planned: the gap lasts at least 24 h, so even short gaps do not keep it up
    (
        "no more work, short gaps",
        view(idle_gaps=(600.0,), more_work_within_h=False),
        T0 + 2 * MIN,
        "destroy",
        True,
        "no more experiments are planned",
    ),
    (
        "no more work, nearly free storage",
        view(idle_gaps=(600.0,), more_work_within_h=False, storage_dph=0.001),
        T0 + 2 * MIN,
        "stop",
        True,
        "stopping is cheapest",
    ),
    # only a gap that began when a run ended is learned; a server brought up since waits the fixed timer
    ("brought up since the last run", view(idle_gaps=LONG, since=T0 + H), T0 + H + 5 * MIN, "none", False, "under"),
    ("brought up, timer past", view(idle_gaps=LONG, since=T0 + H), T0 + H + 31 * MIN, "stop", True, "planned within"),
    ("never ran", view(idle_gaps=LONG, last_activity=None), T0 - 5 * H + 5 * MIN, "none", False, "idle_stop"),
    # the safety rules and the clock come first
    ("live run", view(idle_gaps=LONG, live_runs=1), T0 + 5 * H, "none", False, "still alive"),
    ("agent", view(idle_gaps=LONG, live_agents=1), T0 + 5 * H, "none", False, "1 agent(s)"),
    ("clock backwards", view(idle_gaps=LONG), T0 - 10 * MIN, "none", False, "clock catches up"),
    ("idle past the cap", view(idle_gaps=(1e9,), dph_total=None), T0 + 24 * H, "destroy", True, "destroy_after"),
    # no usable history: the fixed timers, as before
    ("gaps unusable", view(idle_gaps=(0.0, -1.0, NAN)), T0 + 5 * MIN, "none", False, "under idle_stop_minutes"),
    # stopped: destroyed once storage for the rest of the gap outweighs a re-rental, only with results home
    (
        "stopped, long gaps, home",
        view("stopped", idle_gaps=LONG, storage_dph=0.1, unsynced=False),
        T0 + 10 * MIN,
        "destroy",
        False,
        "verified home",
    ),
    (
        "stopped, long gaps, unsynced",
        view("stopped", idle_gaps=LONG, storage_dph=0.1, unsynced=True),
        T0 + 10 * MIN,
        "none",
        False,
        "not verified home",
    ),
    (
        "stopped, long gaps, sync unknown",
        view("stopped", idle_gaps=LONG, storage_dph=0.1, unsynced=None),
        T0 + 10 * MIN,
        "none",
        False,
        "--discard-unsynced",
    ),
    (
        "stopped, cheap storage",
        view("stopped", idle_gaps=LONG, storage_dph=0.01, unsynced=False),
        T0 + 10 * MIN,
        "none",
        False,
        "staying stopped is cheapest",
    ),
    # one gap of 2 h, stopped: staying stopped beats a re-rental (0.5 h) until 0.05 x gap + 0.08 h outgrows it (8.3 h)
    ("stopped, 2 h gap, 1 h", view("stopped", idle_gaps=TWO_H, unsynced=False), T0 + H, "none", False, "stopped"),
    ("stopped, 2 h gap, 9 h", view("stopped", idle_gaps=TWO_H, unsynced=False), T0 + 9 * H, "destroy", False, "home"),
    (
        "exited, long gaps, home",
        view("exited", idle_gaps=LONG, storage_dph=0.1, unsynced=False),
        T0 + 10 * MIN,
        "destroy",
        False,
        "destroying is cheapest",
    ),
    (
        "stopped past the cap, cheap storage",
        view("stopped", idle_gaps=LONG, storage_dph=0.01, unsynced=False),
        T0 + 5 * MIN + 24 * H,
        "destroy",
        False,
        "past destroy_after_idle_hours",
    ),
    ("stopped, clock backwards", view("stopped", idle_gaps=LONG, unsynced=False), T0, "none", False, "clock"),
]


@pytest.mark.parametrize(("case", "v", "now", "action", "pull", "fragment"), TABLE, ids=[r[0] for r in TABLE])
def test_learned_policy_table(case: str, v: InstanceView, now: float, action: str, pull: bool, fragment: str) -> None:
    d = decide(v, now, POLICY)
    assert (d.action, d.needs_pull) == (action, pull), d.reason
    assert fragment in d.reason, d.reason
    assert d.name == "gpu1"


def test_every_stop_or_destroy_of_a_running_server_asks_for_a_pull() -> None:
    """Over a grid of histories, prices and clocks: a running server is never stopped or destroyed without a pull,
    a live run is never touched, and a stopped one is destroyed only with results verified home."""
    histories = [(), (60.0,), (180.0, 7200.0), LONG, (1e12,)]
    for gaps in histories:
        for storage in (None, 0.001, 0.05, 0.5, 2.0):
            for more in (True, False):
                for minutes in (0, 1, 4, 6, 29, 31, 300, 2000):
                    now = T0 + 10 * MIN + minutes * MIN
                    for unsynced in (True, False, None):
                        base: dict[str, Any] = {
                            "idle_gaps": gaps,
                            "storage_dph": storage,
                            "more_work_within_h": more,
                            "unsynced": unsynced,
                        }
                        running = decide(view(**base), now, POLICY)
                        assert running.action == "none" or running.needs_pull
                        assert decide(view(live_runs=1, **base), now, POLICY).action == "none"
                        stopped = decide(view("stopped", **base), now, POLICY)
                        assert stopped.action in ("none", "destroy") and not stopped.needs_pull
                        if stopped.action == "destroy":
                            assert unsynced is False


def test_learning_off_keeps_the_fixed_timers() -> None:
    off = PolicyConfig(gap_history=0)
    assert decide(view(idle_gaps=LONG), T0 + 5 * MIN, off).action == "none"
    assert decide(view(idle_gaps=LONG), T0 + 30 * MIN, off).action == "stop"
    assert decide(view("stopped", idle_gaps=LONG, unsynced=False), T0 + 10 * MIN, off).action == "none"
    # the last gap_history gaps only: the old long gap is forgotten, the recent short one says stay up
    recent = PolicyConfig(gap_history=1)
    assert decide(view(idle_gaps=(20 * H, 60.0)), T0 + 2 * MIN, recent).action == "none"
    assert decide(view(idle_gaps=(60.0, 20 * H)), T0 + 2 * MIN, recent).action == "destroy"


# --------------------------------------------------------------------------------------------- gather fills it


def test_gather_fills_gaps_and_prices_from_state(tmp_path: Path) -> None:
    (tmp_path / "tether.toml").write_text('[project]\nname = "p"\n\n[policy]\ngap_history = 2\n')
    project = config.load(tmp_path / "tether.toml")
    with open_state(tmp_path / "state.db") as st:
        st.upsert_instance(
            InstanceRecord("box", "vast", "17", "1.2.3.4:22", "/workspace", "stopped", 0.5, 0.02, T0, T0 + 5 * H, {})
        )
        for i, (start, end) in enumerate([(T0, T0 + H), (T0 + 2 * H, T0 + 3 * H), (T0 + 4 * H, T0 + 4.5 * H)]):
            st.add_run(RunRecord(f"r{i}", "e", "box", ["x"], "/p", "results", "log", "s", start, end, 0, "completed"))
        st.add_run(RunRecord("o", "e", "other", ["x"], "/p", "results", "log", "s", T0, T0 + 1, 0, "completed"))
        facts = autopilot.gather(Ctx(project, st), "box", T0 + 6 * H, more_work=True)
    v = facts.view
    assert (v.dph_total, v.storage_dph, v.idle_gaps) == (0.5, 0.02, (H, H))
    assert v.last_activity == T0 + 4.5 * H and v.live_runs == 0
    assert math.isclose(storage_share(v), 0.04)
