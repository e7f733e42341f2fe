"""The Vast client against the emulator over real HTTP: keys, rate limits, quotas, 5xx, timeouts, pagination."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from tether.emulator.vast import VastEmulator
from tether.errors import AuthError, ConfigError, NoCapacity, ProviderError, RateLimited
from tether.profiles import resolve_profile
from tether.providers.base import OfferQuery
from tether.providers.vast import VastClient, VastProvider
from tether.providers.vast.query import parse_query
from tether.renting import find_offers

MP = Callable[..., VastProvider]


def test_profiles_search_cheapest_matching_offers(make_provider: MP, vast_api_emulator: VastEmulator) -> None:
    p = make_provider(vast_api_emulator)
    prof = resolve_profile("inference")
    offers = find_offers(p, prof.offer_query())
    assert offers, "the default book has 24 GB offers"
    assert all(o.gpu_ram_gb >= 24 and o.num_gpus == 1 and o.reliability > 0.95 for o in offers)
    assert [o.dph_total for o in offers] == sorted(o.dph_total for o in offers)
    # the quoted price includes the storage for the disk asked
    o = offers[0]
    assert o.dph_total == pytest.approx(o.dph_base + o.storage_cost * prof.min_disk_gb / 720, abs=1e-5)
    # the defaults hold: no unverified or external offer comes back
    assert all(o.raw["verified"] is True and o.raw["external"] is False for o in offers)
    finetune = resolve_profile("finetune")
    big = find_offers(p, finetune.offer_query())
    assert big and all(o.num_gpus >= 2 and o.gpu_ram_gb >= 40 for o in big)


def test_malformed_query_and_unknown_field_send_nothing(vast_api_emulator: VastEmulator) -> None:
    with pytest.raises(ConfigError, match="term 2 at column 21"):
        parse_query("num_gpus=1  gpu_ram 24")
    with pytest.raises(ConfigError, match="did you mean 'reliability'"):
        parse_query("reliabilty>0.9")
    assert vast_api_emulator.requests == []


def test_no_offer_matches_names_the_filter_and_rents_nothing(
    make_provider: MP, vast_api_emulator: VastEmulator
) -> None:
    p = make_provider(vast_api_emulator)
    with pytest.raises(NoCapacity) as err:
        find_offers(p, OfferQuery("gpu_ram>=200 reliability>0.9"))
    assert "gpu_ram>=200 GB ruled out" in err.value.message
    assert vast_api_emulator.billing_instances() == []


def test_missing_key_is_refused_before_any_request(
    vast_api_emulator: VastEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv("VAST_API_KEY", raising=False)
    with closing(VastProvider(VastClient(base_url=vast_api_emulator.url))) as p, pytest.raises(AuthError) as err:
        p.search(OfferQuery(""))
    assert "VAST_API_KEY" in (err.value.hint or "") and "vastai set api-key" in (err.value.hint or "")
    assert vast_api_emulator.requests == []


def test_key_is_read_from_the_vendor_file(
    vast_api_emulator: VastEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    (tmp_path / ".config" / "vastai").mkdir(parents=True)
    (tmp_path / ".config" / "vastai" / "vast_api_key").write_text(vast_api_emulator.api_key + "\n")
    monkeypatch.setenv("VAST_URL", vast_api_emulator.url)
    with closing(VastProvider()) as p:
        assert p.search(OfferQuery("num_gpus=1"))


def test_bad_key_is_rejected_and_never_shown(vast_api_emulator: VastEmulator) -> None:
    secret = "not-the-right-key-5f3a9c"
    with (
        closing(VastProvider(VastClient(secret, vast_api_emulator.url, sleep=lambda s: None))) as p,
        pytest.raises(AuthError) as err,
    ):
        p.list_instances()
    assert err.value.message.startswith("Vast.ai rejected the API key (HTTP 401")
    assert secret not in str(err.value) and secret not in repr(p.client)
    assert len(vast_api_emulator.requests) == 1, "a rejected key is not retried"


def test_429_storm_is_retried_honouring_retry_after(
    make_provider: MP, vast_api_emulator: VastEmulator, sleeps: list[float]
) -> None:
    vast_api_emulator.faults.rate_limit(3, retry_after=2)
    p = make_provider(vast_api_emulator, sleeps)
    assert p.search(OfferQuery("num_gpus=1"))
    assert sleeps == [2.0, 2.0, 2.0]
    assert len(vast_api_emulator.requests) == 4


def test_429_past_the_budget_is_rate_limited(
    make_provider: MP, vast_api_emulator: VastEmulator, sleeps: list[float]
) -> None:
    vast_api_emulator.faults.rate_limit(50, retry_after=None)
    p = make_provider(vast_api_emulator, sleeps, max_retries=3, backoff_base=0.5, max_wait=3)
    with pytest.raises(RateLimited, match="kept rate limiting"):
        p.list_instances()
    assert len(vast_api_emulator.requests) == 4
    assert len(sleeps) == 3 and all(0.5 <= s <= 3 for s in sleeps)
    assert sleeps[0] < sleeps[1] < sleeps[2], "exponential backoff"


def test_retry_after_longer_than_the_cap_is_reported_at_once(
    make_provider: MP, vast_api_emulator: VastEmulator, sleeps: list[float]
) -> None:
    vast_api_emulator.faults.rate_limit(5, retry_after=900)
    p = make_provider(vast_api_emulator, sleeps, max_wait=60)
    with pytest.raises(RateLimited) as err:
        p.list_instances()
    assert err.value.retry_after == 900 and "15 minutes" in (err.value.hint or "")
    assert sleeps == [] and len(vast_api_emulator.requests) == 1


def test_search_quota_exceeded_is_not_retried(
    make_provider: MP, vast_api_emulator: VastEmulator, sleeps: list[float]
) -> None:
    vast_api_emulator.faults.quota_exceeded(1, retry_after=7200)
    p = make_provider(vast_api_emulator, sleeps)
    with pytest.raises(RateLimited) as err:
        p.search(OfferQuery(""))
    assert "search_quota_exceeded" in err.value.message and "2.0 hours" in (err.value.hint or "")
    assert sleeps == [] and len(vast_api_emulator.requests) == 1


def test_5xx_is_retried_then_succeeds_or_fails_bounded(
    make_provider: MP, vast_api_emulator: VastEmulator, sleeps: list[float]
) -> None:
    vast_api_emulator.faults.server_error(2, status=502)
    p = make_provider(vast_api_emulator, sleeps, max_retries=3)
    assert p.list_instances() == []
    assert len(sleeps) == 2
    vast_api_emulator.faults.server_error(10, status=503)
    with pytest.raises(ProviderError, match="after 4 tries: HTTP 503"):
        p.list_instances()


def test_timeouts_are_retried_and_bounded(
    make_provider: MP, vast_api_emulator: VastEmulator, sleeps: list[float]
) -> None:
    p = make_provider(vast_api_emulator, sleeps, timeout=0.3, max_retries=1)
    vast_api_emulator.faults.delay(1, 1.0)
    assert p.list_instances() == []
    assert len(sleeps) == 1
    vast_api_emulator.faults.delay(2, 1.0)
    with pytest.raises(ProviderError, match="did not answer GET /api/v1/instances/ after 2 tries"):
        p.list_instances()


def test_listing_follows_next_token_and_v0_list_is_retired(make_provider: MP, vast_api_emulator: VastEmulator) -> None:
    p = make_provider(vast_api_emulator)
    created = {p.create(int(o["id"]), image="img", disk_gb=10) for o in vast_api_emulator.offers}
    for o in list(vast_api_emulator.offers)[:12]:
        vast_api_emulator.offers.append(dict(o, id=int(o["id"]) + 5))
        created.add(p.create(int(o["id"]) + 5, image="img", disk_gb=10))
    assert len(created) == 32
    listed = p.list_instances()
    assert {i.id for i in listed} == created and len(listed) == 32
    pages = [path for method, path in vast_api_emulator.requests if path == "/api/v1/instances/"]
    assert len(pages) == 2
    resp = httpx.get(
        vast_api_emulator.url + "/api/v0/instances/",
        headers={"Authorization": f"Bearer {vast_api_emulator.api_key}"},
    )
    assert resp.status_code == 410


def test_admin_endpoint_sets_faults_and_moves_the_clock(vast_api_emulator: VastEmulator) -> None:
    url = vast_api_emulator.url
    assert httpx.post(url + "/_emulator/faults", json={"kind": "rate_limit", "count": 1}).status_code == 200
    before = vast_api_emulator.clock.now()
    assert httpx.post(url + "/_emulator/clock", json={"advance": 90}).json()["now"] == before + 90
    assert httpx.post(url + "/_emulator/faults", json={"kind": "volcano"}).status_code == 400
    resp = httpx.get(url + "/api/v1/instances/", headers={"Authorization": f"Bearer {vast_api_emulator.api_key}"})
    assert resp.status_code == 429 and resp.headers["Retry-After"] == "1"
    assert httpx.get(url + "/_emulator/state").json()["total_cost"] == 0
