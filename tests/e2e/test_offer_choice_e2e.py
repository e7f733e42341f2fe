"""The offer choice is explained, through the CLI on the Vast emulator over HTTP (real sshd hosts): every offer
cheaper than the one rented is passed over with its reason, said once and carried by `up --json`; an offer the
user's own destroyed server held is rented again at once."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tests.e2e.conftest import MakeCloud, vast_project
from tests.helpers import book_offer, tether
from tether import machines, schemas
from tether.paths import tether_home
from tether.renting import mark_taken, rent_lock, taken_marks
from tether.state import open_state


def _up(project: Path, env: dict[str, str], name: str) -> tuple[dict[str, Any], str]:
    result = tether("up", name, "--profile", "api", "--json", cwd=project, env=env, timeout=240)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    schemas.validate("up", doc)
    return doc, result.stderr


def test_an_offer_freed_by_the_users_own_destroy_is_rented_again_at_once(tmp_path: Path, make_cloud: MakeCloud) -> None:
    cloud = make_cloud([book_offer(9300001, 0.0472), book_offer(9300002, 0.1676)])
    project = vast_project(tmp_path, cloud, items=5)
    first, _ = _up(project, cloud.env, "box")
    assert first["rented"]["offer_id"] == 9300001 and first["rented"]["skipped_offers"] == []
    with rent_lock() as lp:
        assert 9300001 in taken_marks(lp, time.time())  # while box holds it, a rental beside it passes it over

    destroyed = tether("destroy", "box", "--json", cwd=project, env=cloud.env)
    assert destroyed.returncode == 0, destroyed.stderr
    with rent_lock() as lp:
        assert 9300001 not in taken_marks(lp, time.time())

    again, said = _up(project, cloud.env, "box2")
    assert again["rented"]["offer_id"] == 9300001, said  # the cheapest, not the $0.1676 one
    assert again["rented"]["skipped_offers"] == [] and "skipped offer" not in said
    assert [i.offer["id"] for i in cloud.emulator.billing_instances()] == [9300001]
    assert tether("destroy", "box2", cwd=project, env=cloud.env).returncode == 0


def test_an_offer_taken_by_a_rental_beside_this_one_is_skipped_with_its_reason(
    tmp_path: Path, make_cloud: MakeCloud
) -> None:
    cloud = make_cloud([book_offer(9300011, 0.0472), book_offer(9300012, 0.1676)])
    project = vast_project(tmp_path, cloud, items=5)
    with rent_lock() as lp:  # what another `up` on this machine leaves while its create is in flight
        mark_taken(lp, 9300011, "rented", "tether:other:gpu")

    doc, said = _up(project, cloud.env, "box")
    assert doc["rented"]["offer_id"] == 9300012
    (skipped,) = doc["rented"]["skipped_offers"]
    assert (skipped["offer_id"], skipped["dph_total"], skipped["kind"]) == (9300011, 0.0472, "taken")
    assert skipped["reason"].startswith("taken by another rental on this machine (gpu of project other) ")
    assert "tether tries it again in" in skipped["reason"]
    line = f"skipped offer 9300011 ($0.0472/hr): {skipped['reason']}"
    assert said.count("skipped offer 9300011") == 1 and line in said, said
    assert [i.offer["id"] for i in cloud.emulator.instances.values()] == [9300012]  # never tried the taken one
    assert tether("destroy", "box", cwd=project, env=cloud.env).returncode == 0


def test_an_avoided_machine_and_the_ranking_each_say_why(tmp_path: Path, make_cloud: MakeCloud) -> None:
    # 9300021 is the cheapest, on machine 21 whose last rental failed its preflight an hour ago (avoided 7 days);
    # 9300022 is cheaper than 9300023, on machine 22 whose two rentals failed 30 days ago (no longer avoided,
    # but a 67% chance of a failed rental makes its expected cost higher).
    cloud = make_cloud([book_offer(9300021, 0.030), book_offer(9300022, 0.045), book_offer(9300023, 0.046)])
    project = vast_project(tmp_path, cloud, items=5)
    now = time.time()
    with open_state() as st:
        st.add_machine_outcome(machines.Outcome(21, "vast", now - 3600, "failed", "shows 0 GPU(s)", "1"))
        for n in range(2):
            st.add_machine_outcome(machines.Outcome(22, "vast", now - 30 * 86400 - n, "failed", "old driver", "2"))

    listed = tether("offers", "--for", "exp", "--json", cwd=project, env=cloud.env)
    assert listed.returncode == 0, listed.stderr
    offers = json.loads(listed.stdout)
    schemas.validate("offers", offers)
    because = {o["id"]: o["skipped_because"] for o in offers["offers"]}
    assert because[9300022] is None and because[9300023] is None
    assert because[9300021].startswith("machine 21 is avoided until ")
    shown = tether("offers", "--for", "exp", cwd=project, env=cloud.env)
    assert f"`tether up` would skip offer 9300021: {because[9300021]}." in shown.stderr, shown.stderr

    doc, said = _up(project, cloud.env, "box")
    assert doc["rented"]["offer_id"] == 9300023
    skipped = doc["rented"]["skipped_offers"]
    assert [(s["offer_id"], s["kind"]) for s in skipped] == [(9300021, "avoided"), (9300022, "ranked_after")]
    avoided, ranked = skipped[0]["reason"], skipped[1]["reason"]
    assert avoided.startswith("machine 21 is avoided until ") and "(its last rental: failed: shows 0 GPU(s))" in avoided
    assert ranked.startswith("ranked after offer 9300023 by expected cost: $") and "67% chance" in ranked
    for s in skipped:
        assert said.count(f"skipped offer {s['offer_id']} ") == 1, said
        assert f"skipped offer {s['offer_id']} (${s['dph_total']:.4f}/hr): {s['reason']}" in said
    assert [i.offer["id"] for i in cloud.emulator.instances.values()] == [9300023]
    assert (tether_home() / "rent.lock").exists()
    assert tether("destroy", "box", cwd=project, env=cloud.env).returncode == 0
