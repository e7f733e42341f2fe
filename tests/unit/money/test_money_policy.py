"""The stop/destroy policies over a table of states, clocks and flags, and the destroy guard."""

from __future__ import annotations

import pytest

from tether.config import PolicyConfig
from tether.cost import Decision, InstanceView, decide, decide_all, refuse_destroy
from tether.errors import EXIT_REFUSED, PolicyRefusal

T0 = 1_700_000_000.0
MIN = 60.0
H = 3600.0
POLICY = PolicyConfig()  # idle_stop_minutes=30, destroy_after_idle_hours=24, more_work_within_hours=24


def view(state: str = "running", **kw: object) -> InstanceView:
    fields: dict[str, object] = {"name": "gpu1", "state": state, "since": T0}
    fields.update(kw)
    return InstanceView(**fields)  # type: ignore[arg-type]


# (id, view, now, expected action, needs_pull, fragment of the reason)
TABLE: list[tuple[str, InstanceView, float, str, bool, str]] = [
    ("fresh running, no activity yet", view(), T0 + 5 * MIN, "none", False, "under idle_stop_minutes"),
    ("running 29 min idle", view(last_activity=T0), T0 + 29 * MIN, "none", False, "idle 29 min"),
    ("live run, idle timer long past", view(live_runs=1, last_activity=T0), T0 + 48 * H, "none", False, "still alive"),
    ("registered agent, no run", view(live_agents=1), T0 + 48 * H, "none", False, "1 agent(s)"),
    ("live run on a stopped record", view("stopped", live_runs=2), T0 + 48 * H, "none", False, "2 live run(s)"),
    ("idle 30 min, more work planned", view(more_work_within_h=True), T0 + 30 * MIN, "stop", True, "planned"),
    ("idle 2 h, more work planned", view(more_work_within_h=True), T0 + 2 * H, "stop", True, "then stop"),
    ("idle 30 min, no more work", view(), T0 + 30 * MIN, "destroy", True, "no more experiments"),
    (
        "idle since last run ended, not since start",
        view(last_activity=T0 + 10 * H),
        T0 + 10 * H + 20 * MIN,
        "none",
        False,
        "idle 20 min",
    ),
    ("running idle past 24 h, work planned", view(more_work_within_h=True), T0 + 25 * H, "destroy", True, "24 h"),
    ("running idle exactly 24 h", view(), T0 + 24 * H, "destroy", True, "destroy_after_idle_hours"),
    ("stopped 3 h", view("stopped", unsynced=False), T0 + 3 * H, "none", False, "under destroy_after"),
    ("stopped 25 h, synced", view("stopped", unsynced=False), T0 + 25 * H, "destroy", False, "verified home"),
    (
        "stopped 25 h, unsynced",
        view("stopped", unsynced=True),
        T0 + 25 * H,
        "none",
        False,
        "start it and pull",
    ),
    (
        "stopped 25 h, sync unknown",
        view("stopped", unsynced=None),
        T0 + 25 * H,
        "none",
        False,
        "--discard-unsynced",
    ),
    ("exited 30 h, synced", view("exited", unsynced=False), T0 + 30 * H, "destroy", False, "exited"),
    ("exited 30 h, unsynced", view("exited", unsynced=True), T0 + 30 * H, "none", False, "not verified home"),
    ("loading", view("loading"), T0 + 30 * H, "none", False, "waiting for it to settle"),
    ("creating", view("creating"), T0 + 1 * H, "none", False, "creating"),
    ("already gone", view("gone"), T0 + 99 * H, "none", False, "already gone"),
    ("clock before since", view(), T0 - 10 * MIN, "none", False, "clock catches up"),
    (
        "clock before last activity",
        view(last_activity=T0 + 5 * H),
        T0 + 4 * H,
        "none",
        False,
        "before gpu1's last recorded change",
    ),
    ("stopped, clock jumped back", view("stopped", unsynced=False), T0 - 30 * H, "none", False, "clock"),
]


@pytest.mark.parametrize(("case", "v", "now", "action", "pull", "fragment"), TABLE, ids=[r[0] for r in TABLE])
def test_policy_table(case: str, v: InstanceView, now: float, action: str, pull: bool, fragment: str) -> None:
    d = decide(v, now, POLICY)
    assert (d.action, d.needs_pull) == (action, pull), d.reason
    assert fragment in d.reason
    assert d.name == "gpu1"


def test_timers_follow_the_policy() -> None:
    quick = PolicyConfig(idle_stop_minutes=5, destroy_after_idle_hours=2)
    assert decide(view(more_work_within_h=True), T0 + 6 * MIN, quick).action == "stop"
    assert decide(view(more_work_within_h=True), T0 + 6 * MIN, POLICY).action == "none"
    assert decide(view("stopped", unsynced=False), T0 + 2 * H, quick).action == "destroy"
    assert decide(view("stopped", unsynced=False), T0 + 2 * H, POLICY).action == "none"


def test_decide_all_keeps_order_and_names() -> None:
    views = [
        InstanceView("a", "running", T0, more_work_within_h=True),
        InstanceView("b", "running", T0, live_runs=1),
        InstanceView("c", "stopped", T0, unsynced=False),
    ]
    out = decide_all(views, T0 + 26 * H, POLICY)
    assert list(out) == ["a", "b", "c"]
    assert [d.action for d in out.values()] == ["destroy", "none", "destroy"]
    assert out["b"] == Decision("none", out["b"].reason, False, "b")
    assert out["a"].to_json()["needs_pull"] is True


@pytest.mark.parametrize(
    ("v", "discard", "fragment"),
    [
        (view(live_runs=1, unsynced=False), False, "A run is still alive on gpu1"),
        (view(live_runs=1, unsynced=False), True, "A run is still alive on gpu1"),
        (view(live_agents=1), True, "A run is still alive"),
        (view(unsynced=True, last_verified_pull=T0), False, "not yet brought home since the last verified pull"),
        (view(unsynced=None), False, "cannot tell whether gpu1's results are home"),
        (view("stopped", unsynced=True), False, "not yet brought home"),
    ],
)
def test_refuse_destroy_refuses(v: InstanceView, discard: bool, fragment: str) -> None:
    with pytest.raises(PolicyRefusal) as info:
        refuse_destroy(v, discard)
    assert fragment in info.value.message
    assert info.value.exit_code == EXIT_REFUSED == 3
    assert info.value.hint


@pytest.mark.parametrize(
    ("v", "discard"),
    [
        (view(unsynced=False), False),
        (view(unsynced=True), True),
        (view(unsynced=None), True),
        (view("gone", unsynced=None), False),
    ],
)
def test_refuse_destroy_allows(v: InstanceView, discard: bool) -> None:
    refuse_destroy(v, discard)


def test_run_activity_from_real_run_records() -> None:
    from tether.cost import run_activity
    from tether.state import RunRecord

    def rec(rid: str, host: str, started: float, ended: float | None, status: str) -> RunRecord:
        return RunRecord(rid, "A5", host, ["python3"], "/p", "results", "log", "s", started, ended, None, status)

    runs = [
        rec("1", "gpu1", T0, T0 + H, "completed"),
        rec("2", "gpu1", T0 + 2 * H, T0 + 3 * H, "failed"),
        rec("3", "gpu2", T0 + 5 * H, None, "running"),
    ]
    assert run_activity(runs, "gpu1") == (0, T0 + 3 * H)
    assert run_activity(runs, "gpu2") == (1, T0 + 5 * H)
    assert run_activity(runs, "nobody") == (0, None)
    live, last = run_activity(runs, "gpu1")
    d = decide(view(live_runs=live, last_activity=last, more_work_within_h=True), T0 + 3.5 * H, POLICY)
    assert d.action == "stop"
