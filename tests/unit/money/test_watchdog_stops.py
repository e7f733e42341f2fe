"""What tether makes of a stop it did not make: the pure rules, and a server's stop record kept within the window
tether saw (a hostile or confused server cannot move money outside it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tether import rentals, watchdogs
from tether.config_models import PolicyConfig
from tether.state import InstanceRecord, open_state


@pytest.mark.parametrize(
    ("old", "new", "source", "want"),
    [
        ("running", "stopped", "observe", True),
        ("running", "stopped", "managed", True),
        ("running", "stopped", "stop", False),  # tether's own stop
        ("running", "stopped", "start-cancelled", False),
        ("running", "preempted", "observe", False),  # an outbid is its own state
        ("stopped", "stopped", "observe", False),
        (None, "stopped", "reconcile", False),
    ],
)
def test_who_stopped_it(old: str | None, new: str, source: str, want: bool) -> None:
    assert rentals.stopped_by_others(old, new, source) is want


def test_idle_stop_setting() -> None:
    assert watchdogs.idle_stop_seconds(PolicyConfig()) == 30 * 60
    assert watchdogs.idle_stop_seconds(PolicyConfig(idle_stop=0.5)) == 30.0
    assert watchdogs.idle_stop_seconds(PolicyConfig(idle_stop="never")) is None
    assert watchdogs.idle_stop_seconds(PolicyConfig(idle_stop_minutes=5)) == 300.0


def test_the_window_is_after_the_last_running_look_and_before_the_stopped_one() -> None:
    events = [{"ts": 10.0, "state": "loading"}, {"ts": 20.0, "state": "running"}, {"ts": 50.0, "state": "running"}]
    assert watchdogs.stop_window(events, 80.0) == (50.0, 80.0)
    assert watchdogs.stop_window(events[:1], 80.0) is None


def _record(st_path: Path, state: str, ts: float, source: str = "observe") -> None:
    with open_state(st_path) as st:
        old = st.instance("box")
        meta = dict(old.meta) if old else {}
        if old is not None and rentals.stopped_by_others(old.state, state, source):
            meta["last_stop"] = {"by": None, "seen": ts, "at": None}
        rec = InstanceRecord("box", "vast", "7", "root@h:1", "/w", state, 1.0, 0.01, 0.0, ts, meta)
        st.upsert_instance(rec, source=source)


def test_a_stop_time_outside_the_window_moves_no_money(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    _record(db, "running", 100.0)
    _record(db, "stopped", 500.0)
    with open_state(db) as st:
        rec = st.instance("box")
        assert rec is not None and rec.meta["last_stop"] == {"by": None, "seen": 500.0, "at": None}
        assert watchdogs.describe(rec.meta, rec.state) is not None
        assert "not by tether" in (watchdogs.describe(rec.meta, rec.state) or "")
        before = len(st.events("box"))
        # What learn_stop does with a record whose time is outside (100, 500): only the cause, no ledger event.
        st.merge_instance_meta("box", {"last_stop": {**rec.meta["last_stop"], "by": "someone else"}})
        assert len(st.events("box")) == before
        st.merge_instance_meta("box", {"x": 1}, stopped_at=(250.0, "watchdog"))
        assert [(e.ts, e.state) for e in st.events("box")] == [
            (100.0, "running"),
            (250.0, "stopped"),
            (500.0, "stopped"),
        ]


@pytest.mark.parametrize(
    ("at", "by", "stopped_at"),
    [
        (250.0, "watchdog", 250.0),
        (50.0, "someone else", None),  # before tether last saw it running: a server cannot undo billing it saw
        (600.0, "someone else", None),  # after tether saw it stopped
        (None, "someone else", None),  # no record (a stop by hand in the console)
    ],
)
def test_judge(at: float | None, by: str, stopped_at: float | None) -> None:
    last = {"by": None, "seen": 500.0, "at": None}
    events = [{"ts": 100.0, "state": "running"}, {"ts": 500.0, "state": "stopped"}]
    meta, when = watchdogs.judge(last, events, at)
    assert meta["by"].startswith(by) and when == stopped_at
