"""Every dollar is committed before it is spent: one ledger of commitments, checked for the exact offer at the price
that will be billed, under the rent lock, counting every rental in flight; and a malformed price is never free.

Through the CLI, on the Vast emulator with real sshd hosts. Offers have no storage cost, so an offer's $/hr is its
``dph_base`` exactly (the emulator quotes ``dph_total = dph_base + storage``)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Cloud, MakeCloud, vast_project
from tests.e2e.managed_helpers import FAST, start_tether
from tests.helpers import book_offer, tether, wait_for
from tether import rentals
from tether.state import open_state


def _offer(offer_id: int, dph: float, **fields: Any) -> dict[str, Any]:
    """A book offer that also takes bids, at half its price unless ``fields`` say otherwise."""
    return book_offer(offer_id, dph, **{"min_bid": round(dph / 2, 4), **fields})


def _strict_json(text: str) -> Any:
    """Parse one JSON document the way a strict consumer does: NaN and Infinity are not JSON."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def _rented(cloud: Cloud) -> list[Any]:
    """Every instance the emulator ever made (destroyed ones too)."""
    return list(cloud.emulator.instances.values())


def _up(project: Path, env: dict[str, str], name: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tether", "up", name, "--profile", "api", *extra],
        cwd=project,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# ------------------------------------------------------------------------------------------ item 4: the ledger


def test_a_managed_run_rents_only_the_shards_its_budget_allows_at_the_offers_actually_rented(
    tmp_path: Path, make_cloud: MakeCloud
) -> None:
    # One shard is committed for about 5 minutes (its tiny work plus the rental overhead): at $0.60/hr that is
    # $0.05, at $0.78 $0.065, at $1.02 $0.085. With --max-usd 0.16, pricing every shard at the cheapest offer would
    # allow three ($0.15); at the offers actually rented only two fit ($0.115; a third makes $0.20).
    cloud = make_cloud([_offer(9200001, 0.60), _offer(9200002, 0.78), _offer(9200003, 1.02), _offer(9200004, 1.21)])
    project = vast_project(tmp_path, cloud, items=8)
    result = tether(
        "run", "exp", "--managed", "--shards", "4", "--max-usd", "0.16", *FAST, cwd=project, env=cloud.env, timeout=240
    )
    assert result.returncode == 3, result.stderr
    assert "past --max-usd $0.1600" in result.stderr, result.stderr
    rented = _rented(cloud)
    assert sorted(round(i.dph_total, 4) for i in rented) == [0.60, 0.78], result.stderr
    assert cloud.emulator.billing_instances() == []


def test_max_hourly_is_checked_against_the_offer_rented_after_the_cheapest_fails_to_start(
    tmp_path: Path, make_cloud: MakeCloud
) -> None:
    cloud = make_cloud([_offer(9200011, 0.04), _offer(9200012, 0.0648)])
    project = vast_project(tmp_path, cloud, items=5, policy="max_hourly_usd = 0.05\n")
    cloud.emulator.faults.exit_on_create(1)  # the cheapest offer's instance exits instead of running
    result = tether("up", "box", "--profile", "api", cwd=project, env=cloud.env, timeout=180)
    assert result.returncode == 3, result.stderr
    assert "offer 9200012" in result.stderr and "max_hourly_usd $0.0500" in result.stderr, result.stderr
    assert [i.offer["id"] for i in _rented(cloud)] == [9200011]  # the failed one only, and it is destroyed
    assert cloud.emulator.billing_instances() == []
    listing = json.loads(tether("ls", "--json", cwd=project, env=cloud.env).stdout)["instances"]
    assert [r for r in listing if r["state"] != "gone"] == []  # the reservation was let go


def test_two_concurrent_ups_under_an_hourly_cap_rent_one_server(tmp_path: Path, make_cloud: MakeCloud) -> None:
    cloud = make_cloud([_offer(9200021, 0.04), _offer(9200022, 0.045)])
    project = vast_project(tmp_path, cloud, items=5, policy="max_hourly_usd = 0.06\n")
    procs = [_up(project, cloud.env, "one"), _up(project, cloud.env, "two")]
    outs = [p.communicate(timeout=240) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 3], outs
    refused = next(err for p, (_, err) in zip(procs, outs, strict=True) if p.returncode == 3)
    assert "max_hourly_usd $0.0600" in refused and "nothing was rented" in refused, refused
    assert len(_rented(cloud)) == 1 and len(cloud.emulator.billing_instances()) == 1


def test_a_bid_rental_in_a_managed_run_is_budgeted_at_its_bid(tmp_path: Path, make_cloud: MakeCloud) -> None:
    # On demand the offer costs $0.60/hr ($0.05 for one shard's ~5 minutes); the profile bids $1.20/hr ($0.10).
    cloud = make_cloud([_offer(9200031, 0.60, min_bid=0.30)])
    profiles = '[profiles.api]\ntype = "bid"\nbid_usd = 1.2\n'
    project = vast_project(tmp_path, cloud, items=5, profiles=profiles)
    result = tether("run", "exp", "--managed", "--max-usd", "0.08", *FAST, cwd=project, env=cloud.env, timeout=180)
    assert result.returncode == 3, result.stderr
    assert "$1.2000/hr" in result.stderr and "past --max-usd $0.0800" in result.stderr, result.stderr
    assert _rented(cloud) == []


def test_a_reservation_left_by_a_killed_up_is_let_go_and_one_in_flight_counts(
    tmp_path: Path, make_cloud: MakeCloud
) -> None:
    """A kill between reserve and rent: the reservation (committed at $0.05/hr) stays in the state database. While
    its `up` holds the name's lock it is a rental in flight and counts against the cap; once nobody holds it, the
    next rental lets it go instead of being refused by a dollar that will never be spent."""
    cloud = make_cloud([_offer(9200041, 0.04)])
    project = vast_project(tmp_path, cloud, items=5, policy="max_hourly_usd = 0.06\n")
    env = cloud.env  # TETHER_HOME is this test's own (tests/conftest.py), here and in every tether process
    meta = {"profile": "api", "offer_id": 9200099, "commit_dph": 0.05, "commit_hours": 0.0}
    with open_state() as st:
        st.reserve_instance("killed", rentals.PROVIDER, "/workspace", meta)
    with rentals.name_lock("killed"):  # its `up` is alive: the reservation is in flight
        held = tether("up", "box", "--profile", "api", cwd=project, env=env, timeout=180)
    assert held.returncode == 3, held.stderr
    assert "from $0.0500/hr" in held.stderr and "max_hourly_usd" in held.stderr, held.stderr
    assert _rented(cloud) == []
    again = tether("up", "box", "--profile", "api", cwd=project, env=env, timeout=180)
    assert again.returncode == 0, again.stderr
    with open_state() as st:
        assert st.instance("killed") is None
        assert st.instance("box") is not None


# ------------------------------------------------------------------------------------------ item 5: prices


def test_an_offer_with_a_nan_price_is_skipped_never_rented_and_every_json_is_json(
    tmp_path: Path, make_cloud: MakeCloud
) -> None:
    cloud = make_cloud([_offer(9200051, math.nan), _offer(9200052, 0.07)])
    project = vast_project(tmp_path, cloud, items=5, policy="max_hourly_usd = 0.08\n")
    offers = tether("offers", "--json", cwd=project, env=cloud.env)
    assert offers.returncode == 0, offers.stderr
    assert [o["id"] for o in _strict_json(offers.stdout)["offers"]] == [9200052]
    assert offers.stderr.count("warning:") == 1 and "9200051" in offers.stderr, offers.stderr
    up = tether("up", "box", "--profile", "api", "--json", cwd=project, env=cloud.env, timeout=180)
    assert up.returncode == 0, up.stderr
    assert _strict_json(up.stdout)["rented"]["dph_total"] == pytest.approx(0.07)
    assert [i.offer["id"] for i in _rented(cloud)] == [9200052]
    cost = tether("cost", "--json", cwd=project, env=cloud.env)
    assert cost.returncode == 0, cost.stderr
    assert "by_experiment" in _strict_json(cost.stdout)


def test_an_instance_price_that_turns_nan_is_never_stored_as_free(tmp_path: Path, make_cloud: MakeCloud) -> None:
    cloud = make_cloud([_offer(9200061, 0.07)])
    project = vast_project(tmp_path, cloud, items=5)
    assert tether("up", "box", "--profile", "api", cwd=project, env=cloud.env, timeout=180).returncode == 0
    (inst,) = _rented(cloud)
    inst.dph_base = math.nan  # the provider now sends NaN for its price
    listing = tether("ls", "--json", cwd=project, env=cloud.env)
    assert listing.returncode == 0, listing.stderr
    (row,) = _strict_json(listing.stdout)["instances"]
    assert row["dph_total"] == pytest.approx(0.07) and row["hourly_now"] == pytest.approx(0.07)


def test_an_offer_with_an_out_of_range_machine_id_is_one_sentence_not_a_traceback(
    tmp_path: Path, make_cloud: MakeCloud
) -> None:
    cloud = make_cloud([_offer(9200071, 0.05, machine_id="1e400"), _offer(9200072, 0.06)])
    project = vast_project(tmp_path, cloud, items=5)
    result = tether("offers", "--json", cwd=project, env=cloud.env)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert [o["id"] for o in _strict_json(result.stdout)["offers"]] == [9200072]
    assert result.stderr.count("warning:") == 1 and "machine_id '1e400'" in result.stderr, result.stderr
    only_bad = tether("offers", "--json", "--query", "id=9200071 num_gpus=1", cwd=project, env=cloud.env)
    assert only_bad.returncode == 1 and "Traceback" not in only_bad.stderr, only_bad.stderr
    error = _strict_json(only_bad.stdout)
    assert error["kind"] == "NoCapacity" and "every offer that matched was malformed" in error["error"], error


def _committed_shard(project: Path) -> bool:
    """Whether a managed run's rental has been committed (its reservation, with its price, is in the state)."""
    with open_state() as st:
        return any(r.meta.get("budget_scope") and r.meta.get("commit_dph") for r in st.instances())


def test_an_up_beside_a_managed_run_counts_the_runs_rental_in_flight(tmp_path: Path, make_cloud: MakeCloud) -> None:
    cloud = make_cloud([_offer(9200081, 0.04), _offer(9200082, 0.045)])
    project = vast_project(tmp_path, cloud, items=30, policy="max_hourly_usd = 0.06\n")
    ctl = start_tether(
        "run", "exp", "--managed", "--max-usd", "1", *FAST, "--", "--delay", "1", cwd=project, env=cloud.env
    )
    try:
        wait_for(lambda: _committed_shard(project), 90, "the managed run's rental to be committed")
        beside = tether("up", "box", "--profile", "api", cwd=project, env=cloud.env, timeout=180)
        assert beside.returncode == 3, beside.stderr
        assert "max_hourly_usd $0.0600" in beside.stderr and "nothing was rented" in beside.stderr, beside.stderr
        _out, err = ctl.communicate(timeout=240)
    finally:
        if ctl.poll() is None:
            ctl.kill()
            ctl.communicate()
    assert ctl.returncode == 0, err
    assert [i.offer["id"] for i in _rented(cloud)] == [9200081]
    assert cloud.emulator.billing_instances() == []


def test_an_up_killed_after_its_create_still_counts_against_the_cap(tmp_path: Path, make_cloud: MakeCloud) -> None:
    """Killed between the create and its record: the next rental adopts what the create made (its label) and
    counts it at its committed price, so the cap holds."""
    cloud = make_cloud([_offer(9200091, 0.04), _offer(9200092, 0.045)])
    project = vast_project(tmp_path, cloud, items=5, policy="max_hourly_usd = 0.06\n")
    killed = _up(project, cloud.env, "one")
    try:
        wait_for(lambda: cloud.emulator.instances, 120, "the create to reach the provider")
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.communicate(timeout=60)
    second = tether("up", "two", "--profile", "api", cwd=project, env=cloud.env, timeout=180)
    assert second.returncode == 3, second.stderr
    assert "max_hourly_usd $0.0600" in second.stderr, second.stderr
    assert [i.offer["id"] for i in _rented(cloud)] == [9200091]
    listing = json.loads(tether("ls", "--json", cwd=project, env=cloud.env).stdout)["instances"]
    assert [(r["name"], r["dph_total"]) for r in listing if r["state"] != "gone"] == [("one", pytest.approx(0.04))]


def test_starting_a_stopped_server_is_committed_against_the_hourly_cap(tmp_path: Path, make_cloud: MakeCloud) -> None:
    """A stopped server burns only its storage; starting it again raises the burn to its full rate, so a start is
    checked like a rental (a server rented meanwhile counts)."""
    cloud = make_cloud([_offer(9200101, 0.04), _offer(9200102, 0.045)])
    project = vast_project(tmp_path, cloud, items=5, policy="max_hourly_usd = 0.08\n")
    assert tether("up", "a", "--profile", "api", cwd=project, env=cloud.env, timeout=180).returncode == 0
    assert tether("stop", "a", cwd=project, env=cloud.env, timeout=120).returncode == 0
    assert tether("up", "b", "--profile", "api", cwd=project, env=cloud.env, timeout=180).returncode == 0
    start = tether("start", "a", cwd=project, env=cloud.env, timeout=180)
    assert start.returncode == 3, start.stderr
    assert "Starting a at $0.0400/hr" in start.stderr and "nothing was started" in start.stderr, start.stderr
    states = {i.offer["id"]: i.state for i in _rented(cloud)}
    assert states == {9200101: "stopped", 9200102: "running"}
