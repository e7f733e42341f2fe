"""Vast.ai as the real service behaves, through the CLI on the emulator: exact offers among many, bid rentals and
preemption, the SSH key on the account before any money is spent, auto-tmux logins, rentals that cannot start,
queued starts, honest destroys, credit and every vendor status with its cost rule."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Cloud, MakeCloud, vast_project
from tests.helpers import tether, tether_checked, tether_json, wait_for, wait_status
from tether.emulator.vast import load_offer_book


def _book(n: int) -> list[dict[str, Any]]:
    """``n`` offers: the shipped ones repeated with fresh ids, machine ids and rising prices."""
    base = load_offer_book()
    out = []
    for i in range(n):
        o = dict(base[i % len(base)])
        o.update(id=9_500_000 + i, ask_contract_id=9_500_000 + i, machine_id=40_000 + i, verified=True)
        o["dph_base"] = round(0.05 + 0.01 * i, 4)
        o["min_bid"] = round(o["dph_base"] * 0.55, 4)
        o["reliability"] = o["reliability2"] = 0.99
        out.append(o)
    return out


def _creates(cloud: Cloud) -> list[tuple[str, Any]]:
    return [(p, b) for m, p, b in cloud.emulator.bodies if m == "PUT" and p.startswith("/api/v0/asks/")]


# ------------------------------------------------------------------------------------------ 1. --offer


def test_offer_id_is_found_among_150_offers_by_id(tmp_path: Path, make_cloud: MakeCloud) -> None:
    cloud = make_cloud(_book(150))
    project = vast_project(tmp_path, cloud, items=3)
    listed = tether_json("offers", "--profile", "api", "--limit", "500", cwd=project, env=cloud.env)["offers"]
    assert len(listed) <= 64  # the service answers at most 64 offers
    wanted = 9_500_000 + 140  # far beyond the cheapest 64
    assert wanted not in {o["id"] for o in listed}
    up = tether_json("up", "box", "--offer", str(wanted), cwd=project, env=cloud.env)
    raw = cloud.emulator.instance_json(int(up["rented"]["instance_id"]))
    assert raw is not None and raw["machine_id"] == 40_000 + 140
    searches = [b for m, p, b in cloud.emulator.bodies if p == "/api/v0/bundles/"]
    assert any(b.get("id") == {"eq": wanted} for b in searches)
    assert [p for p, _ in _creates(cloud)] == [f"/api/v0/asks/{wanted}/"]
    gone = tether("up", "other", "--offer", "123", cwd=project, env=cloud.env)
    assert gone.returncode == 1 and "Offer 123 is not available" in gone.stderr


# ------------------------------------------------------------------------------------------ 2. bids, preemption


BID_PROFILE = """
[profiles.cheap]
query = "reliability>0.95 num_gpus=1"
type = "bid"
bid_margin = 0.1
"""


def test_bid_rental_sends_its_price_budgets_with_it_and_shows_preemption(tmp_path: Path, cloud: Cloud) -> None:
    offers = [o for o in load_offer_book() if o["verified"] and o["num_gpus"] == 1 and o["reliability"] > 0.95]
    cheapest_demand = min(o["dph_base"] + o["storage_cost"] * 20 / 720 for o in offers)
    cheapest_bid = min(o["min_bid"] * 1.1 + o["storage_cost"] * 20 / 720 for o in offers)
    # A budget the bid fits under and an on-demand rental would not.
    limit = round((cheapest_bid + cheapest_demand) / 2, 4)
    project = vast_project(tmp_path, cloud, items=3, policy=f"max_hourly_usd = {limit}", profiles=BID_PROFILE)
    up = tether_checked("up", "box", "--profile", "cheap", schema="up", cwd=project, env=cloud.env)
    assert up["rented"]["offer_type"] == "bid" and up["rented"]["bid_usd"] is not None
    (path, body), *_ = _creates(cloud)
    offer = next(o for o in offers if path == f"/api/v0/asks/{o['id']}/")
    assert body["price"] == up["rented"]["bid_usd"] and body["price"] >= offer["min_bid"]
    assert body["price"] == pytest.approx(offer["min_bid"] * 1.1, abs=1e-4)
    iid = int(up["rented"]["instance_id"])
    assert cloud.emulator.instances[iid].dph_base == body["price"]  # billed at the bid, not on demand

    row = next(r for r in tether_json("ls", "--all", cwd=project, env=cloud.env)["instances"] if r["name"] == "box")
    assert row["bid_usd"] == body["price"] and row["offer_type"] == "bid"
    assert row["hourly_now"] == pytest.approx(body["price"] + offer["storage_cost"] * 20 / 720, abs=1e-6)

    run_id = tether_json("run", "exp", "--on", "box", cwd=project, env=cloud.env)["run_id"]
    wait_status(project, run_id, {"completed"}, host="box")
    cloud.emulator.preempt(iid)
    listing = tether("ls", cwd=project, env=cloud.env)
    assert listing.returncode == 0 and "preempted" in listing.stdout and "was preempted (outbid) at" in listing.stderr
    row = next(r for r in tether_checked("ls", schema="ls", cwd=project, env=cloud.env)["instances"])
    assert row["state"] == "preempted" and row["since"] > row["created"]
    progress = tether_checked("progress", schema="progress", cwd=project, env=cloud.env)["hosts"]
    host = next(h for h in progress if h["host"] == "box")
    assert host["server_state"] == "preempted" and host["since"] == row["since"] and "outbid" in host["error"]
    status = tether_checked("status", schema="status", cwd=project, env=cloud.env)
    server = next(s for s in status["servers"] if s["name"] == "box")
    assert server["state"] == "preempted" and server["since"] == row["since"]
    assert any("preempted (outbid)" in w for w in status["warnings"])


def test_a_bid_below_every_minimum_and_a_reserved_profile_rent_nothing(tmp_path: Path, cloud: Cloud) -> None:
    profiles = """
[profiles.stingy]
query = "num_gpus=1"
type = "bid"
bid_usd = 0.001

[profiles.yearly]
query = "num_gpus=1"
type = "reserved"
"""
    project = vast_project(tmp_path, cloud, items=3, profiles=profiles)
    low = tether("up", "box", "--profile", "stingy", cwd=project, env=cloud.env)
    assert low.returncode == 1 and "lowest minimum bid is" in low.stderr
    reserved = tether("up", "box", "--profile", "yearly", cwd=project, env=cloud.env)
    assert reserved.returncode == 2 and "reserved rental" in reserved.stderr and "on-demand" in reserved.stderr
    assert _creates(cloud) == [] and cloud.emulator.instances == {}


# ------------------------------------------------------------------------------------------ 3. the SSH key


def test_a_key_not_on_the_account_is_refused_before_any_create(tmp_path: Path, make_cloud: MakeCloud) -> None:
    cloud = make_cloud(key_on_account=False)
    project = vast_project(tmp_path, cloud, items=3)
    result = tether("up", "box", "--profile", "api", cwd=project, env=cloud.env)
    assert result.returncode == 1 and "is not on your Vast.ai account" in result.stderr
    assert "vastai create ssh-key" in result.stderr and "nothing was rented" in result.stderr
    assert _creates(cloud) == [] and cloud.emulator.instances == {}
    assert ("GET", "/api/v0/ssh/") in cloud.emulator.requests
    # Added to the account (as `vastai create ssh-key` does), the next rental works.
    cloud.emulator.add_ssh_key(cloud.public_key)
    assert tether_json("up", "box", "--profile", "api", cwd=project, env=cloud.env)["setup"] == "ran"


def test_a_fresh_instance_refusing_the_key_at_first_is_retried(tmp_path: Path, cloud: Cloud) -> None:
    project = vast_project(tmp_path, cloud, items=3)
    cloud.emulator.faults.refuse_keys(4.0)
    result = tether("up", "box", "--profile", "api", cwd=project, env=cloud.env)
    assert result.returncode == 0, result.stderr
    assert "accepts the key now" in result.stderr
    assert len(cloud.emulator.billing_instances()) == 1


def test_a_key_really_refused_destroys_the_rental_verified(tmp_path: Path, cloud: Cloud) -> None:
    project = vast_project(tmp_path, cloud, items=3, ssh_wait_seconds=3)
    cloud.emulator.faults.refuse_keys(3600.0)
    result = tether("up", "box", "--profile", "api", cwd=project, env=cloud.env)
    assert result.returncode == 1 and "refused the SSH key" in result.stderr
    assert "destroyed it (verified gone)" in result.stderr
    assert cloud.emulator.billing_instances() == [] and len(cloud.emulator.instances) == 1
    listing = tether_json("ls", "--all", cwd=project, env=cloud.env)["instances"]
    assert [(r["name"], r["state"]) for r in listing] == [("box", "gone")]


# ------------------------------------------------------------------------------------------ 4. auto-tmux


def test_auto_tmux_logins_do_not_break_attach_progress_or_pull(tmp_path: Path, cloud: Cloud) -> None:
    project = vast_project(tmp_path, cloud, items=4000)
    up = tether_json("up", "box", "--profile", "api", cwd=project, env=cloud.env)
    iid = up["rented"]["instance_id"]
    assert (cloud.home_of(iid) / ".no_auto_tmux").is_file()
    (_, body), *_ = _creates(cloud)
    assert ".no_auto_tmux" in body["onstart"]
    run_id = tether_json("run", "exp", "--on", "box", "--", "--delay", "0.05", cwd=project, env=cloud.env)["run_id"]
    wait_status(project, run_id, {"running"}, host="box")
    socket = f"tether-test-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, **cloud.env}
    try:
        subprocess.run(
            [
                *("tmux", "-L", socket, "new-session", "-d", "-x", "160", "-y", "40", "-c", str(project)),
                f"{sys.executable} -m tether attach {run_id}",
            ],
            env=env,
            check=True,
            capture_output=True,
        )

        def screen() -> str:
            shown = subprocess.run(
                ["tmux", "-L", socket, "capture-pane", "-p", "-t", "0"], capture_output=True, text=True, check=False
            ).stdout
            return shown if "[tether] run" in shown or "results:" in shown else ""

        wait_for(screen, 30, "the run's own tmux window (not the image's auto-tmux session)")
        subprocess.run(["tmux", "-L", socket, "send-keys", "-t", "0", "C-b", "d"], check=True)
    finally:
        subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True, check=False)
    assert tether_json("cancel", run_id, cwd=project, env=cloud.env)["status"] == "cancelled"
    hosts = tether_json("progress", "box", cwd=project, env=cloud.env)["hosts"]
    assert hosts[0]["error"] is None and hosts[0]["runs"][0]["id"] == run_id
    assert tether_json("pull", "box", cwd=project, env=cloud.env)["pulls"][0]["verified"] is True


def test_the_emulators_auto_tmux_takes_a_terminal_login_without_the_marker(tmp_path: Path, cloud: Cloud) -> None:
    """The witness itself: without ~/.no_auto_tmux a terminal login lands in the image's tmux session."""
    project = vast_project(tmp_path, cloud, items=3)
    iid = tether_json("up", "box", "--profile", "api", cwd=project, env=cloud.env)["rented"]["instance_id"]
    host = cloud.hosts[int(iid)]
    (cloud.home_of(iid) / ".no_auto_tmux").unlink()
    socket = f"tether-test-{uuid.uuid4().hex[:8]}"
    ssh = (
        f"ssh -tt -i {cloud.key} -p {host.port} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
        f"{host.user}@127.0.0.1 echo asked-for-this"
    )
    try:
        subprocess.run(["tmux", "-L", socket, "new-session", "-d", ssh], check=True, capture_output=True)
        wait_for(
            lambda: (
                subprocess.run(
                    ["tmux", "-L", host.vendor_tmux_socket, "has-session", "-t", "ssh_tmux"], capture_output=True
                ).returncode
                == 0
            ),
            30,
            "the image's tmux session",
        )
    finally:
        subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True, check=False)


# ------------------------------------------------------------------------------------------ 5. cannot start


def test_an_oci_failure_moves_to_the_next_offer_at_once(tmp_path: Path, cloud: Cloud) -> None:
    # A 10-minute wait: were the failure waited out, `up` would outlast the helper's own limit.
    project = vast_project(tmp_path, cloud, items=3, wait_minutes=10)
    cloud.emulator.faults.oci_failure(1)
    result = tether("up", "box", "--profile", "api", cwd=project, env=cloud.env)
    assert result.returncode == 0, result.stderr
    assert "OCI runtime create failed" in result.stderr
    first, second = sorted(cloud.emulator.instances.values(), key=lambda i: i.id)
    assert first.history == ["created", "destroyed"] and second.state == "running"
    assert [i.id for i in cloud.emulator.billing_instances()] == [second.id]


# ------------------------------------------------------------------------------------------ 6, 10. states, money


@pytest.mark.parametrize(
    ("actual", "state", "rate"),
    [
        ("frozen", "frozen", "full"),
        ("rebooting", "rebooting", "full"),
        ("offline", "unknown", "storage"),
        ("unknown", "unknown", "storage"),
        ("exited", "exited", "storage"),
        ("loading", "loading", "storage"),
        ("created", "creating", "storage"),
        (None, "creating", "storage"),
    ],
)
def test_every_vendor_status_shows_and_bills_by_its_rule(
    tmp_path: Path, cloud: Cloud, actual: str | None, state: str, rate: str
) -> None:
    project = vast_project(tmp_path, cloud, items=3)
    iid = int(tether_json("up", "box", "--profile", "api", cwd=project, env=cloud.env)["rented"]["instance_id"])
    cloud.emulator.set_status(iid, actual)
    row = next(r for r in tether_json("ls", "--all", cwd=project, env=cloud.env)["instances"] if r["name"] == "box")
    assert row["state"] == state
    assert row["hourly_now"] == (row["dph_total"] if rate == "full" else row["storage_dph"])
    assert cloud.emulator.instances[iid].rate() == pytest.approx(row["hourly_now"], abs=1e-6)


# ------------------------------------------------------------------------------------------ 7. queued start


def test_a_queued_start_is_waited_for_and_said(tmp_path: Path, cloud: Cloud) -> None:
    project = vast_project(tmp_path, cloud, items=3)
    tether_json("up", "box", "--profile", "api", cwd=project, env=cloud.env)
    assert tether_json("stop", "box", cwd=project, env=cloud.env)["state"] == "stopped"
    cloud.emulator.faults.queued_start(after_s=2.0)
    started = tether("start", "box", cwd=project, env=cloud.env)
    assert started.returncode == 0, started.stderr
    assert "start is queued" in started.stderr and "is running at" in started.stderr


def test_a_queued_start_given_up_is_stopped_and_verified(tmp_path: Path, cloud: Cloud) -> None:
    project = vast_project(tmp_path, cloud, items=3, wait_minutes=0.05)
    iid = int(tether_json("up", "box", "--profile", "api", cwd=project, env=cloud.env)["rented"]["instance_id"])
    tether_json("stop", "box", cwd=project, env=cloud.env)
    cloud.emulator.faults.stuck_restart()  # queued, and the GPU never frees up in the wait
    result = tether("start", "box", cwd=project, env=cloud.env)
    assert result.returncode == 1 and "sent a stop and verified it" in result.stderr
    inst = cloud.emulator.instances[iid]
    assert inst.intended == "stopped" and inst.start_at is None and inst.state == "stopped"
    row = next(r for r in tether_json("ls", "--all", cwd=project, env=cloud.env)["instances"] if r["name"] == "box")
    assert row["state"] == "stopped"


# ------------------------------------------------------------------------------------------ 8. destroy, URL


def test_destroy_counts_no_such_instance_as_gone_but_not_a_wrong_url(tmp_path: Path, cloud: Cloud) -> None:
    project = vast_project(tmp_path, cloud, items=3)
    iid = int(tether_json("up", "box", "--profile", "api", cwd=project, env=cloud.env)["rented"]["instance_id"])
    wrong = {**cloud.env, "VAST_URL": cloud.env["VAST_URL"] + "/not-the-api"}
    result = tether("destroy", "box", cwd=project, env=wrong)
    assert result.returncode == 1 and "is not the Vast.ai API" in result.stderr and "VAST_URL" in result.stderr
    assert cloud.emulator.instance_json(iid) is not None
    row = next(r for r in tether_json("ls", "--no-refresh", cwd=project, env=cloud.env)["instances"])
    assert row["state"] == "running"
    cloud.emulator.vanish(iid)  # the service no longer has it: "no such instance"
    gone = tether_json("destroy", "box", "--discard-unsynced", cwd=project, env=cloud.env)
    assert gone["state"] == "gone"


# ------------------------------------------------------------------------------------------ 9. key, credit


def test_bad_key_is_401_and_low_credit_is_said_clearly(tmp_path: Path, cloud: Cloud) -> None:
    project = vast_project(tmp_path, cloud, items=3)
    bad = tether("offers", cwd=project, env={**cloud.env, "VAST_API_KEY": "wrong-key"})
    assert bad.returncode == 1 and "HTTP 401" in bad.stderr and "Invalid user key" in bad.stderr
    cloud.emulator.bad_key_status = 404  # as some routes have answered
    bad = tether("offers", cwd=project, env={**cloud.env, "VAST_API_KEY": "wrong-key"})
    assert bad.returncode == 1 and "rejected the API key" in bad.stderr
    cloud.emulator.credit = 0.0
    poor = tether("up", "box", "--profile", "api", cwd=project, env=cloud.env)
    assert poor.returncode == 1 and "too little credit" in poor.stderr and "billing" in poor.stderr
    assert cloud.emulator.billing_instances() == []
