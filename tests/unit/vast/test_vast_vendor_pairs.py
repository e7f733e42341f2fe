"""Recorded request/answer pairs from the vendor's own client (tests/data/vast_vendor_requests.json): tether's
client must send what the vendor sends (numbers may be numbers where the vendor sends strings), the emulator must
read the vendor's bodies exactly as it reads tether's, and tether must read the answers the vendor's code expects."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tether.emulator.vast import VastEmulator, load_offer_book, null_host_factory
from tether.errors import AuthError, NoCapacity
from tether.providers import OfferQuery, search_body
from tether.providers.vast import VastClient

DATA = json.loads((Path(__file__).resolve().parents[2] / "data" / "vast_vendor_requests.json").read_text())
SEARCHES = DATA["searches"]


def _norm(value: Any) -> Any:
    """Numbers sent as strings, and numbers, compare as floats; lists and dicts element-wise."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    if isinstance(value, list):
        return [_norm(v) for v in value]
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items()}
    return value


@pytest.mark.parametrize("case", SEARCHES, ids=[c["query"] for c in SEARCHES])
def test_tether_sends_the_vendors_search_body(case: dict[str, Any]) -> None:
    ours = search_body(OfferQuery(case["query"], case["order"], case["type"], case["disk_gb"], case["limit"]))
    assert _norm(ours) == _norm(case["body"])


@pytest.mark.parametrize("case", SEARCHES, ids=[c["query"] for c in SEARCHES])
def test_the_emulator_reads_the_vendors_body_as_it_reads_tethers(case: dict[str, Any]) -> None:
    emu = VastEmulator(load_offer_book(), host_factory=null_host_factory)
    ours = search_body(OfferQuery(case["query"], case["order"], case["type"], case["disk_gb"], case["limit"]))
    theirs = [o["id"] for o in emu.search(case["body"])]
    assert theirs == [o["id"] for o in emu.search(ours)]
    if case["query"].startswith("id="):
        assert theirs == [int(case["query"][3:])]


def test_the_vendors_create_body_rents_a_bid_on_the_emulator() -> None:
    create = DATA["create"]
    with VastEmulator(load_offer_book(), host_factory=null_host_factory) as emu:
        resp = httpx.put(
            emu.url + create["path"], json=create["body"], headers={"Authorization": f"Bearer {emu.api_key}"}
        )
        assert resp.status_code == 200 and resp.json()["success"] is True
        raw = emu.instance_json(resp.json()["new_contract"])
        assert raw is not None and raw["is_bid"] is True and raw["dph_base"] == create["body"]["price"]
        assert raw["onstart"] == create["body"]["onstart"]


def test_tethers_create_body_is_the_vendors_keys_with_the_same_types() -> None:
    with VastEmulator(load_offer_book(), host_factory=null_host_factory) as emu, VastClient(emu.api_key, emu.url) as c:
        c.create_instance(9100001, image="pytorch/pytorch:latest", disk_gb=20, label="x", onstart="true", price=0.03)
        sent = next(b for m, p, b in emu.bodies if m == "PUT" and p.startswith("/api/v0/asks/"))
    vendor = DATA["create"]["body"]
    assert set(sent) <= set(vendor)
    for key, value in sent.items():
        if vendor[key] is not None and value is not None:
            assert type(value) is type(vendor[key]), key


def _client(status: int, body: Any) -> VastClient:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body)

    return VastClient("k", "http://vendor.invalid", transport=httpx.MockTransport(answer), max_retries=0)


def test_tether_reads_the_answers_the_vendors_code_expects() -> None:
    ans = DATA["answers"]
    assert _client(200, ans["create_ok"]).create_instance(1, image="i", disk_gb=5) == 20000001
    with pytest.raises(AuthError, match="Invalid user key"):
        _client(ans["bad_key"]["status"], ans["bad_key"]["body"]).ssh_keys()
    with pytest.raises(AuthError):
        _client(404, {"success": False, "error": "auth_error", "msg": "Invalid user key"}).ssh_keys()
    assert _client(200, ans["ssh_keys_dict"]).ssh_keys() == [ans["ssh_keys_dict"]["ssh_keys"][0]["public_key"]]
    assert _client(200, ans["ssh_keys_list"]).ssh_keys() == [ans["ssh_keys_list"][0]["public_key"]]
    with pytest.raises(NoCapacity) as refused:
        _client(400, ans["bid_refused"]).create_instance(1, image="i", disk_gb=5, price=0.01)
    assert refused.value.instance_id == "20000002"
