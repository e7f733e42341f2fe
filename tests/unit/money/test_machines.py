"""The memory of machines (pure rules), and `tether machines` / `machines forget` through the CLI."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from tests.helpers import tether, tether_checked, write_project
from tether import machines
from tether.machines import Outcome
from tether.state import open_state

DAY = 86400.0


def test_a_bad_machine_is_avoided_for_avoid_days_unless_it_passed_since() -> None:
    seen = [
        Outcome(1, "vast", 100.0, "failed", "it shows 0 GPU(s), the offer promised 1"),
        Outcome(2, "vast", 100.0, "vanished"),
        Outcome(3, "vast", 100.0, "failed", "old driver"),
        Outcome(3, "vast", 200.0, "passed", minutes_to_running=2.0, setup_minutes=3.0),
        Outcome(4, "vast", 100.0, "preempted"),
    ]
    avoid = machines.avoided(seen, 1000.0, 7)
    assert sorted(avoid) == [1, 2]
    assert avoid[1].until == 100.0 + 7 * DAY and "0 GPU" in avoid[1].why
    assert machines.avoided(seen, 100.0 + 7 * DAY + 1, 7) == {}
    assert machines.avoided(seen, 1000.0, 0) == {}


def test_expected_cost_prices_reliability_and_the_machine_record() -> None:
    fresh = machines.expected_cost(1.0, 2.0, 1.0, [], interruptible=False)
    assert fresh == pytest.approx(2.0 + machines.DEFAULT_READY_MINUTES / 60)
    shaky = machines.expected_cost(1.0, 2.0, 0.5, [], interruptible=False)
    assert shaky > fresh
    known_fast = [Outcome(9, "vast", 1.0, "passed", minutes_to_running=1.0, setup_minutes=1.0)]
    assert machines.expected_cost(1.0, 2.0, 1.0, known_fast, interruptible=False) < fresh
    failing = [Outcome(9, "vast", 1.0, "failed"), Outcome(9, "vast", 2.0, "failed")]
    assert machines.expected_cost(1.0, 2.0, 1.0, failing, interruptible=False) > fresh
    assert machines.expected_cost(1.0, 2.0, 0.9, [], interruptible=True) > machines.expected_cost(
        1.0, 2.0, 0.9, [], interruptible=False
    )
    # A cheaper but unreliable offer can cost more than a dearer reliable one for a short experiment.
    cheap_bad = machines.expected_cost(0.8, 0.2, 0.5, failing, interruptible=False)
    dear_good = machines.expected_cost(1.0, 0.2, 0.99, known_fast, interruptible=False)
    assert cheap_bad > dear_good
    for bad in (math.nan, math.inf, -1.0):
        assert machines.expected_cost(bad, 1.0, 1.0, [], interruptible=False) == math.inf


def test_machines_lists_the_memory_and_forget_clears_one(tmp_path: Path) -> None:
    project = write_project(tmp_path / "proj")
    with open_state(Path(os.environ["TETHER_HOME"]) / "state.db") as st:
        import time

        now = time.time()
        st.add_machine_outcome(Outcome(41, "vast", now - 60, "failed", "its disk has 0.5 GB free", "a"))
        st.add_machine_outcome(Outcome(42, "vast", now - 30, "passed", None, "b", 1.5, 2.5))
    listed = tether_checked("machines", schema="machines", cwd=project)["machines"]
    assert [(m["machine_id"], m["last_outcome"]) for m in listed] == [(41, "failed"), (42, "passed")]
    assert listed[0]["avoided_until"] is not None and "0.5 GB free" in listed[0]["why"]
    assert listed[1]["avoided_until"] is None and listed[1]["ready_minutes"] == pytest.approx(4.0)
    shown = tether("machines", cwd=project)
    assert shown.returncode == 0 and "41" in shown.stdout
    forgot = tether_checked("machines", "forget", "41", schema="machines", cwd=project)
    assert forgot["forgotten"] == {"machine_id": 41, "rentals": 1}
    assert [m["machine_id"] for m in forgot["machines"]] == [42]
    again = tether("machines", "forget", "41", cwd=project)
    assert again.returncode == 2 and "No rental on machine 41" in again.stderr


@pytest.mark.parametrize(
    ("old", "new", "source", "want"),
    [
        ("running", "gone", "observe", "vanished"),
        ("running", "gone", "managed", "vanished"),
        ("running", "gone", "destroy", None),  # tether's own destroy
        ("stopped", "gone", "observe", None),  # a stopped server destroyed elsewhere says nothing of its machine
        ("creating", "gone", "reconcile", None),
        ("running", "preempted", "observe", "preempted"),
        ("preempted", "preempted", "observe", None),
        (None, "running", "rent", None),
    ],
)
def test_what_a_change_of_state_says_of_the_machine(old: str | None, new: str, source: str, want: str | None) -> None:
    from tether import rentals

    assert rentals.machine_loss(old, new, source) == want


def test_a_vanished_rental_is_remembered_against_its_machine(tmp_path: Path) -> None:
    from tether import rentals
    from tether.providers.base import Instance

    with open_state(tmp_path / "state.db") as st:
        running = Instance(id="7", state="running", ssh_host="h", ssh_port=1, dph_total=0.5)
        rentals.record(st, "box", running, source="rent", meta={"machine_id": 4242})
        rentals.record(st, "box", Instance(id="7", state="gone"), source="observe")
        outcomes = st.machine_outcomes()
    assert [(o.machine_id, o.outcome) for o in outcomes] == [(4242, "vanished")]
    assert 4242 in machines.avoided(outcomes, outcomes[0].ts + 1, 7)
