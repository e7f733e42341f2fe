"""The client against the emulator where the real service is strict: 429s without Retry-After, the quota's
X-RateLimit-Reset, the long create with no blind retry, a bid refused with a stopped instance."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.integration.vast.conftest import Sleeps
from tests.integration.vast.test_vast_rent import offers_for, rent_on
from tether.emulator.vast import VastEmulator
from tether.errors import NoCapacity, RateLimited
from tether.providers import OfferQuery
from tether.providers.vast import VastProvider

MP = Callable[..., VastProvider]


def test_429_without_retry_after_backs_off(make_provider: MP, vast_api_emulator: VastEmulator) -> None:
    sleeps = Sleeps()
    p = make_provider(vast_api_emulator, sleeps=sleeps, backoff_base=0.5)
    vast_api_emulator.faults.rate_limit(3, retry_after=None)  # the docs say no Retry-After is sent
    assert p.search(OfferQuery("num_gpus=1"))
    assert len(sleeps) == 3 and all(s > 0 for s in sleeps) and sleeps[0] < sleeps[1] < sleeps[2]


def test_search_quota_reset_header_gives_the_hint(make_provider: MP, vast_api_emulator: VastEmulator) -> None:
    p = make_provider(vast_api_emulator)
    vast_api_emulator.faults.quota_exceeded(retry_after=None, reset_in=7200)
    with pytest.raises(RateLimited) as err:
        p.search(OfferQuery("num_gpus=1"))
    assert err.value.retry_after is not None and 7000 < err.value.retry_after < 7300
    assert "about 2.0 hours" in (err.value.hint or "")


def test_create_waits_long_and_is_sent_once(make_provider: MP, vast_api_emulator: VastEmulator) -> None:
    emu = vast_api_emulator
    p = make_provider(emu, timeout=0.3)  # every other call gives up after 0.3 s; the create waits 120 s
    assert p.client.create_timeout == 120.0
    offer = offers_for(p)[0]
    emu.faults.delay(1, 1.0)
    new_id = p.create(offer.id, image="pytorch/pytorch:latest", disk_gb=20.0, label="slow")
    assert new_id == str(max(emu.instances))
    assert [r for r in emu.requests if r[0] == "PUT"] == [("PUT", f"/api/v0/asks/{offer.id}/")]


def test_a_bid_below_the_minimum_leaves_no_instance_billing(make_provider: MP, vast_api_emulator: VastEmulator) -> None:
    emu = vast_api_emulator
    p = make_provider(emu)
    offers = offers_for(p)[:2]
    low = {offers[0].id: (offers[0].min_bid or 0) / 2, offers[1].id: offers[1].min_bid}
    inst = rent_on(emu, p, offers, price_for=lambda o: low[o.id])
    refused = min(emu.instances)
    assert emu.instances[refused].state == "destroyed"  # made stopped by the service, destroyed by tether
    assert [i.id for i in emu.billing_instances()] == [int(inst.id)]  # type: ignore[attr-defined]
    with pytest.raises(NoCapacity) as err:
        p.create(offers[0].id, image="i", disk_gb=20.0, price=0.0001)
    assert err.value.instance_id is not None


def test_the_proxy_address_is_apart_from_the_direct_one_and_both_answer(
    make_provider: MP, vast_emulator: VastEmulator
) -> None:
    import socket

    emu = vast_emulator
    p = make_provider(emu)
    inst = rent_on(emu, p, offers_for(p))
    raw = emu.instance_json(int(inst.id))  # type: ignore[attr-defined]
    assert raw is not None
    direct = int(raw["ports"]["22/tcp"][0]["HostPort"])
    assert (inst.ssh_host, inst.ssh_port) == ("127.0.0.1", direct)  # type: ignore[attr-defined]
    assert raw["ssh_port"] != direct  # the service's proxy is another address
    for port in (direct, raw["ssh_port"]):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            assert sock.recv(4).startswith(b"SSH-")
