"""Ledger maths: running/stopped/destroyed pieces, missing prices, a backwards clock, days, projection, budget."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tether.cost import accrued, cost_by_experiment, ledger
from tether.state import InstanceRecord, open_state

MIDNIGHT = datetime(2026, 2, 11, tzinfo=UTC).timestamp()
T0 = MIDNIGHT + 10 * 3600  # 2026-02-11 10:00 UTC
H = 3600.0


def ev(name: str, ts: float, state: str, dph: float | None = 1.0, storage: float | None = 0.1) -> dict[str, Any]:
    return {"name": name, "ts": ts, "state": state, "dph_total": dph, "storage_dph": storage}


def test_running_stopped_destroyed() -> None:
    events = [
        ev("a", T0, "loading"),  # 0.5 h storage: 0.05
        ev("a", T0 + 0.5 * H, "running"),  # 2 h at 1.0: 2.0
        ev("a", T0 + 2.5 * H, "stopped"),  # 10 h storage: 1.0
        ev("a", T0 + 12.5 * H, "running"),  # 1 h: 1.0
        ev("a", T0 + 13.5 * H, "gone", None, None),  # nothing after
    ]
    led = ledger(events, T0 + 100 * H)
    assert led.total_usd == pytest.approx(0.05 + 2.0 + 1.0 + 1.0)
    a = led.by_instance["a"]
    assert a.running_hours == pytest.approx(3.0)
    assert a.billed_idle_hours == pytest.approx(10.5)
    assert a.state == "gone"
    assert a.burn_dph == 0.0
    assert led.burn_dph == 0.0
    assert led.projected_24h_usd == 0.0
    assert led.warnings == []
    assert accrued(events, T0 + 100 * H) == pytest.approx(led.total_usd)


def test_burn_and_projection_from_current_states() -> None:
    events = [
        ev("gpu", T0, "running", 0.5, 0.02),
        ev("cpu", T0, "running", 0.1, 0.01),
        ev("cpu", T0 + H, "stopped", 0.1, 0.01),
    ]
    led = ledger(events, T0 + 2 * H)
    assert led.by_instance["gpu"].burn_dph == pytest.approx(0.5)
    assert led.by_instance["cpu"].burn_dph == pytest.approx(0.01)
    assert led.burn_dph == pytest.approx(0.51)
    assert led.projected_24h_usd == pytest.approx(0.51 * 24)
    assert led.total_usd == pytest.approx(0.5 * 2 + 0.1 + 0.01)


def test_since_counts_only_the_part_after_it() -> None:
    events = [ev("a", T0, "running", 2.0)]
    assert accrued(events, T0 + 10 * H, since=T0 + 4 * H) == pytest.approx(12.0)
    assert accrued(events, T0 + 10 * H, since=T0 + 20 * H) == 0.0
    assert accrued(events, T0 + 10 * H) == pytest.approx(20.0)


def test_days_split_across_midnight() -> None:
    # Running from 22:00 on the 11th to 03:00 on the 13th at $1/hr: 2 h, 24 h, 3 h.
    start = MIDNIGHT + 22 * H
    events = [ev("a", start, "running"), ev("a", start + 29 * H, "gone", None, None)]
    led = ledger(events, start + 40 * H)
    assert led.by_day == pytest.approx({"2026-02-11": 2.0, "2026-02-12": 24.0, "2026-02-13": 3.0})
    assert sum(led.by_day.values()) == pytest.approx(led.total_usd)
    assert led.to_json()["by_day"]["2026-02-12"] == pytest.approx(24.0)


def test_missing_prices_use_last_known_and_warn() -> None:
    events = [
        ev("a", T0, "running", 1.0, 0.1),
        ev("a", T0 + H, "running", None, None),  # a refresh whose record lost its prices
        ev("a", T0 + 3 * H, "stopped", None, None),
        ev("a", T0 + 5 * H, "stopped", 1.0, 0.1),
    ]
    led = ledger(events, T0 + 6 * H)
    assert led.total_usd == pytest.approx(1.0 + 2.0 + 0.2 + 0.1)
    assert len(led.warnings) == 1
    warning = led.warnings[0]
    assert "prices missing for a between" in warning
    assert "2026-02-11T11:00:00Z and 2026-02-11T15:00:00Z" in warning
    assert "assumed last known" in warning


def test_prices_never_known_count_zero_and_say_so() -> None:
    events = [ev("lab", T0, "running", None, None), ev("lab", T0 + H, "running", None, None)]
    led = ledger(events, T0 + 2 * H)
    assert led.total_usd == 0.0
    assert led.warnings and all("no price was ever recorded for lab" in w for w in led.warnings)
    assert len(led.warnings) == 1  # repeated events do not repeat the warning


def test_bad_prices_are_treated_as_missing() -> None:
    events = [ev("a", T0, "running", 1.0), ev("a", T0 + H, "running", -5.0), ev("a", T0 + 2 * H, "running", "x")]  # type: ignore[arg-type]
    led = ledger(events, T0 + 3 * H)
    assert led.total_usd == pytest.approx(3.0)
    assert any("prices missing" in w for w in led.warnings)


def test_backwards_event_never_costs_negative() -> None:
    events = [
        {**ev("a", T0, "running"), "seq": 1},
        {**ev("a", T0 - 5 * H, "stopped"), "seq": 2},  # the clock jumped back 5 h when this was recorded
        {**ev("a", T0 + 2 * H, "running"), "seq": 3},
    ]
    led = ledger(events, T0 + 3 * H)
    # stopped is clamped to start at T0 (zero running time), then stopped 2 h, then running 1 h.
    assert led.total_usd == pytest.approx(0.2 + 1.0)
    assert any("clock went backwards for a" in w for w in led.warnings)


def test_now_before_last_event_counts_nothing_after_it() -> None:
    events = [ev("a", T0, "running"), ev("a", T0 + 2 * H, "running")]
    led = ledger(events, T0 + H)
    assert led.total_usd == pytest.approx(2.0)
    assert led.total_usd >= 0
    assert any("before a's last event" in w for w in led.warnings)


def test_single_event_at_now_still_burns() -> None:
    led = ledger([ev("a", T0, "running", 0.7)], T0)
    assert led.total_usd == 0.0
    assert led.burn_dph == pytest.approx(0.7)


def test_ledger_reads_what_state_records(tmp_path: Path) -> None:
    with open_state(tmp_path / "state.db") as st:
        for ts, state in [(T0, "loading"), (T0 + 0.1 * H, "running"), (T0 + 4.1 * H, "stopped")]:
            st.upsert_instance(
                InstanceRecord("v1", "vast", "42", None, "/workspace", state, 0.5, 0.05, T0, ts, {}), source="test"
            )
        events = st.event_log()
    led = ledger(events, T0 + 10.1 * H)
    assert led.total_usd == pytest.approx(0.1 * 0.05 + 4 * 0.5 + 6 * 0.05)
    assert led.by_instance["v1"].state == "stopped"


@dataclass(frozen=True)
class Run:
    experiment: str
    host: str
    started: float
    ended: float | None


def test_cost_by_experiment_splits_concurrent_runs_and_idle() -> None:
    events = [ev("a", T0, "running", 1.0, 0.1), ev("a", T0 + 6 * H, "stopped", 1.0, 0.1)]
    runs = [
        Run("A5", "a", T0, T0 + 2 * H),
        Run("I1", "a", T0 + H, T0 + 3 * H),
        Run("D1", "other", T0, T0 + 5 * H),
    ]
    out = cost_by_experiment(events, runs, T0 + 8 * H)
    # 0-1 h: A5 alone; 1-2 h: A5 and I1 share; 2-3 h: I1; 3-6 h idle running; 6-8 h idle stopped.
    assert out["A5"] == pytest.approx(1.5)
    assert out["I1"] == pytest.approx(1.5)
    assert out["(idle)"] == pytest.approx(3.0 + 0.2)
    assert "D1" not in out
    assert sum(out.values()) == pytest.approx(accrued(events, T0 + 8 * H))


def test_cost_by_experiment_live_run_counts_until_now() -> None:
    out = cost_by_experiment([ev("a", T0, "running", 2.0)], [Run("A5", "a", T0 + H, None)], T0 + 3 * H)
    assert out == pytest.approx({"(idle)": 2.0, "A5": 4.0})


def test_burn_follows_an_event_recorded_at_now() -> None:
    events = [ev("a", T0, "running", 1.0, 0.1), ev("a", T0 + H, "stopped", 1.0, 0.1)]
    led = ledger(events, T0 + H)
    assert led.total_usd == pytest.approx(1.0)
    assert led.by_instance["a"].state == "stopped"
    assert led.burn_dph == pytest.approx(0.1)


def test_burn_after_a_backwards_clock_is_the_last_recorded_state() -> None:
    events = [ev("a", T0, "running", 1.0, 0.1), ev("a", T0 + 2 * H, "gone", None, None)]
    led = ledger(events, T0 + H)
    assert led.by_instance["a"].state == "gone" and led.burn_dph == 0.0
    assert led.total_usd == pytest.approx(2.0)


def test_events_may_be_a_one_shot_iterator() -> None:
    events = [ev("a", T0, "running", 1.0), ev("a", T0 + H, "stopped", 1.0, 0.5)]
    led = ledger(iter(events), T0 + 2 * H)
    assert led.total_usd == pytest.approx(1.5)
    assert led.burn_dph == pytest.approx(0.5)
