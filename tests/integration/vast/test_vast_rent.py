"""Renting against the emulator: nothing rented twice, nothing left billing, real SSH hosts, costs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from tether.emulator.vast import VastEmulator
from tether.errors import NoCapacity, ProviderError
from tether.profiles import resolve_profile
from tether.providers.base import Offer, ssh_address
from tether.providers.vast import VastProvider
from tether.renting import find_offers, rent, wait_running

MP = Callable[..., VastProvider]


def offers_for(p: VastProvider, profile: str = "api", disk_gb: float = 20.0) -> list[Offer]:
    return find_offers(p, replace(resolve_profile(profile), min_disk_gb=disk_gb).offer_query())


def rent_on(emu: VastEmulator, p: VastProvider, offers: list[Offer], **kw: object) -> object:
    opts: dict[str, object] = {
        "image": "pytorch/pytorch:latest",
        "disk_gb": 20.0,
        "label": "tether-test",
        "wait_deadline_s": 120.0,
        "poll_s": 10.0,
        "clock": emu.clock.now,
        "sleep": emu.clock.advance,
    }
    opts.update(kw)
    return rent(p, offers, **opts)  # type: ignore[arg-type]


def ssh_banner(host: str, port: int) -> bytes:
    with socket.create_connection((host, port), timeout=5) as sock:
        return sock.recv(64)


def _advancing(emu: VastEmulator) -> Callable[[float], None]:
    """A sleep that moves the emulator's clock instead of waiting."""

    def sleep(seconds: float) -> None:
        emu.clock.advance(seconds)

    return sleep


def test_rent_gives_a_real_ssh_host_and_the_lifecycle_costs_what_it_should(
    vast_emulator: VastEmulator, make_provider: MP
) -> None:
    emu = vast_emulator
    p = make_provider(emu)
    offers = offers_for(p)
    inst = rent_on(emu, p, offers)
    assert inst.state == "running" and inst.raw["machine_id"] == offers[0].raw["machine_id"]  # type: ignore[attr-defined]
    host, port, user = ssh_address(inst)  # type: ignore[arg-type]
    assert (host, user) == ("127.0.0.1", "root")
    assert ssh_banner(host, port).startswith(b"SSH-")
    start_cost = emu.account_total()  # storage while loading
    storage_per_hour = offers[0].storage_cost * 20.0 / 720  # $/GB/month x GB / 720 h
    assert start_cost == pytest.approx(storage_per_hour * 30 / 3600, rel=1e-9)
    emu.clock.advance(3600)
    assert emu.account_total() - start_cost == pytest.approx(offers[0].dph_base + storage_per_hour, rel=1e-9)

    p.stop(inst.id)  # type: ignore[attr-defined]
    assert p.show(inst.id).state == "stopped"  # type: ignore[attr-defined,union-attr]
    with pytest.raises(OSError):
        ssh_banner(host, port)
    before = emu.account_total()
    emu.clock.advance(3600)
    assert emu.account_total() - before == pytest.approx(storage_per_hour, rel=1e-9)

    emu.faults.new_port_on_restart()
    p.start(inst.id)  # type: ignore[attr-defined]
    again = wait_running(p, inst.id, 120, poll_s=10, clock=emu.clock.now, sleep=_advancing(emu))  # type: ignore[attr-defined]
    new_host, new_port, _ = ssh_address(again)
    assert new_port != port, "the address is re-read after a start"
    assert ssh_banner(new_host, new_port).startswith(b"SSH-")

    p.destroy(inst.id)  # type: ignore[attr-defined]
    p.destroy(inst.id)  # type: ignore[attr-defined]  # idempotent
    assert p.show(inst.id) is None  # type: ignore[attr-defined]
    assert p.list_instances() == [] and emu.billing_instances() == []
    final = emu.account_total()
    emu.clock.advance(3600)
    assert emu.account_total() == final, "a destroyed instance costs nothing"


def test_offer_taken_before_create_moves_on_and_is_not_billed(
    vast_api_emulator: VastEmulator, make_provider: MP
) -> None:
    emu = vast_api_emulator
    p = make_provider(emu)
    offers = offers_for(p)
    emu.faults.take_offer(offers[0].id)
    events: list[str] = []
    inst = rent_on(emu, p, offers, on_event=events.append)
    assert inst.raw["machine_id"] == offers[1].raw["machine_id"]  # type: ignore[attr-defined]
    assert all(i.offer["id"] != offers[0].id for i in emu.instances.values())
    assert any(f"offer {offers[0].id} is gone" in e for e in events)
    assert [i.id for i in emu.billing_instances()] == [int(inst.id)]  # type: ignore[attr-defined]


@pytest.mark.parametrize("fault", ["stuck_loading", "exit_on_create"])
def test_instance_that_never_runs_is_destroyed_and_the_next_offer_tried(
    vast_api_emulator: VastEmulator, make_provider: MP, fault: str
) -> None:
    emu = vast_api_emulator
    getattr(emu.faults, fault)(1)
    p = make_provider(emu)
    offers = offers_for(p)
    inst = rent_on(emu, p, offers)
    first, second = sorted(emu.instances.values(), key=lambda i: i.id)
    assert first.state == "destroyed" and first.offer["id"] == offers[0].id
    assert second.offer["id"] == offers[1].id and str(second.id) == inst.id  # type: ignore[attr-defined]
    assert [i.id for i in emu.billing_instances()] == [second.id]


def test_every_attempt_failing_leaves_nothing_running(vast_api_emulator: VastEmulator, make_provider: MP) -> None:
    emu = vast_api_emulator
    emu.faults.stuck_loading(5)
    p = make_provider(emu)
    with pytest.raises(NoCapacity) as err:
        rent_on(emu, p, offers_for(p), max_attempts=2)
    assert "after 2 attempt(s)" in err.value.message and "still loading" in err.value.message
    assert emu.billing_instances() == [] and len(emu.instances) == 2
    total = emu.account_total()
    emu.clock.advance(86400)
    assert emu.account_total() == total


def test_max_price_below_every_offer_names_the_cheapest(vast_api_emulator: VastEmulator, make_provider: MP) -> None:
    emu = vast_api_emulator
    p = make_provider(emu)
    offers = offers_for(p)
    with pytest.raises(NoCapacity) as err:
        rent_on(emu, p, offers, max_price=0.01)
    assert f"${offers[0].dph_total:.4f}/hr" in err.value.message and str(offers[0].id) in err.value.message
    assert not any(path.startswith("/api/v0/asks/") for _, path in emu.requests)


def test_create_that_times_out_is_cleaned_up_by_label(vast_api_emulator: VastEmulator, make_provider: MP) -> None:
    emu = vast_api_emulator
    p = make_provider(emu, timeout=0.3, create_timeout=0.3)
    offers = offers_for(p)
    emu.faults.delay(1, 1.0)  # the create is done, but its answer comes too late
    with pytest.raises(ProviderError, match="may or may not have been done"):
        rent_on(emu, p, offers, label="ambiguous-1")
    assert len(emu.instances) == 1 and emu.billing_instances() == []


def test_restart_stuck_in_scheduling_fails_with_a_clear_hint(
    vast_api_emulator: VastEmulator, make_provider: MP
) -> None:
    emu = vast_api_emulator
    p = make_provider(emu)
    inst = rent_on(emu, p, offers_for(p))
    p.stop(inst.id)  # type: ignore[attr-defined]
    emu.faults.stuck_restart()
    p.start(inst.id)  # type: ignore[attr-defined]
    with pytest.raises(NoCapacity) as err:
        wait_running(p, inst.id, 300, poll_s=30, clock=emu.clock.now, sleep=_advancing(emu))  # type: ignore[attr-defined]
    assert "still queued" in err.value.message and "scheduling" in err.value.message
    assert "move the data to a new instance" in (err.value.hint or "")


def test_concurrent_rents_in_threads_never_take_the_same_offer(
    vast_api_emulator: VastEmulator, make_provider: MP
) -> None:
    emu = vast_api_emulator
    offers = offers_for(make_provider(emu))
    results: list[str] = []
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        p = make_provider(emu)
        try:
            inst = rent_on(emu, p, offers, label=f"agent-{n}", sleep=lambda s: emu.clock.advance(s))
            results.append(inst.id)  # type: ignore[attr-defined]
        except BaseException as exc:  # collected and re-raised by the test below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    rented = [i.offer["id"] for i in emu.instances.values()]
    assert len(results) == 4 and len(set(rented)) == len(rented) == 4
    assert set(rented) == {o.id for o in offers[:4]}


RENT_SCRIPT = """
import json, sys, httpx
from tether.providers.vast import VastClient, VastProvider
from tether.renting import rent
from tether.providers.base import Offer
url, key, label = sys.argv[1], sys.argv[2], sys.argv[3]
offers = [Offer.model_validate(o) for o in json.loads(sys.stdin.read())]
def advance(s):
    httpx.post(url + "/_emulator/clock", json={"advance": s})
def now():
    return httpx.get(url + "/_emulator/state").json()["now"]
inst = rent(VastProvider(VastClient(key, url)), offers, image="img", disk_gb=20, label=label,
            wait_deadline_s=120, poll_s=10, clock=now, sleep=advance)
print(inst.id)
"""


def test_concurrent_rents_in_processes_never_take_the_same_offer(
    vast_api_emulator: VastEmulator, make_provider: MP, tmp_path: Path
) -> None:
    emu = vast_api_emulator
    offers = offers_for(make_provider(emu))
    payload = json.dumps([o.model_dump() for o in offers])
    env = dict(os.environ)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RENT_SCRIPT, emu.url, emu.api_key, f"proc-{n}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for n in range(3)
    ]
    outs = []
    for proc in procs:
        out, err = proc.communicate(payload, timeout=120)
        assert proc.returncode == 0, err
        outs.append(out.strip())
    rented = [i.offer["id"] for i in emu.instances.values()]
    assert len(set(outs)) == 3 and len(rented) == 3 and len(set(rented)) == 3
    assert (Path(os.environ["TETHER_HOME"]) / "rent.lock").exists()
