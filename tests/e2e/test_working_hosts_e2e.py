"""Rent hosts that work, through the CLI on the emulator: over a book whose three cheapest fitting offers are bad
machines (no GPU shown, an old driver, a nearly full disk), `tether up` rents the fourth after destroying the three
(verified, nothing billing) and says why for each; a second `up` skips those machines without renting them;
`tether machines` shows why; the failed rentals' cost is in up's summary and in the ledger."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.e2e.conftest import MakeCloud, vast_project
from tests.helpers import tether, tether_checked
from tether import schemas
from tether.emulator.vast import load_offer_book

BAD: dict[int, dict[str, Any]] = {31078: {"gpus_shown": 0}, 31065: {"cuda": "11.8"}, 31130: {"disk_free_gb": 1.0}}
GOOD = 31117  # the fourth cheapest fitting offer's machine


def test_up_rents_the_first_host_that_works_and_remembers_the_bad_ones(tmp_path: Path, make_cloud: MakeCloud) -> None:
    book = load_offer_book()
    for offer in book:  # equal reliability: the expected cost orders the fitting offers by price alone
        if offer["gpu_ram"] >= 24000 and offer["num_gpus"] == 1 and offer["reliability"] > 0.95:
            offer["reliability"] = offer["reliability2"] = 0.99
    cloud = make_cloud(book)
    emu = cloud.emulator
    for machine, trouble in BAD.items():
        emu.bad_machine(machine, **trouble)
    project = vast_project(tmp_path, cloud)
    env = cloud.env

    up = tether("up", "box", "--profile", "inference", "--json", cwd=project, env=env)
    assert up.returncode == 0, up.stderr
    doc = json.loads(up.stdout)
    schemas.validate("up", doc)
    assert doc["rented"]["machine_id"] == GOOD
    assert [f["machine_id"] for f in doc["failed_rentals"]] == list(BAD)
    whys = [f["why"] for f in doc["failed_rentals"]]
    assert "shows 0 GPU(s), the offer promised 1" in whys[0]
    assert "supports CUDA 11.8, the profile needs 12.4" in whys[1]
    assert "has 1.0 GB free" in whys[2]
    for failed in doc["failed_rentals"]:
        assert f"instance {failed['instance_id']} on machine {failed['machine_id']} failed its preflight" in up.stderr
        assert emu.instances[int(failed["instance_id"])].state == "destroyed"  # verified gone, nothing billing
        assert failed["cost_usd"] > 0
    assert [i.offer["machine_id"] for i in emu.billing_instances()] == [GOOD]
    assert doc["preflight"]["gpus"] == 1 and doc["preflight"]["cuda"] == 12.4

    listed = tether_checked("ls", schema="ls", cwd=project, env=env)["instances"]
    assert listed[0]["machine_id"] == GOOD and listed[0]["preflight"]["gpus"] == 1

    memory = tether_checked("machines", schema="machines", cwd=project, env=env)["machines"]
    by_id = {m["machine_id"]: m for m in memory}
    assert all(by_id[m]["avoided_until"] is not None for m in BAD)
    assert "0 GPU(s)" in by_id[31078]["why"] and by_id[GOOD]["last_outcome"] == "passed"
    assert by_id[GOOD]["ready_minutes"] is not None

    creates_before = [r for r in emu.requests if r[0] == "PUT" and r[1].startswith("/api/v0/asks/")]
    second = tether("up", "box2", "--profile", "inference", "--json", cwd=project, env=env)
    assert second.returncode == 0, second.stderr
    creates = [r for r in emu.requests if r[0] == "PUT" and r[1].startswith("/api/v0/asks/")][len(creates_before) :]
    assert len(creates) == 1  # the bad machines were not rented again
    assert json.loads(second.stdout)["rented"]["machine_id"] == 31156
    for machine in BAD:
        assert f"machine {machine} is avoided until" in second.stderr

    cost = tether_checked("cost", schema="cost", cwd=project, env=env)
    failed_cost = sum(f["cost_usd"] for f in doc["failed_rentals"])
    assert cost["total_usd"] >= failed_cost  # the failed rentals are in the ledger
    for name in ("box", "box2"):
        assert tether("destroy", name, "--discard-unsynced", cwd=project, env=env).returncode == 0
    assert emu.billing_instances() == []
