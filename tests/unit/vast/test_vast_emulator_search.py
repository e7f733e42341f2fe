"""The emulator's own reading of the search wire form, as the service reads it (no client code involved)."""

from __future__ import annotations

from typing import Any

import pytest

from tether.emulator.vast import VastEmulator, null_host_factory, offer_matches, wire_filters

OFFER: dict[str, Any] = {
    "id": 1,
    "gpu_name": "RTX 4090",
    "num_gpus": 1,
    "gpu_ram": 24564,
    "reliability": 0.98,
    "geolocation": "Texas, US",
    "verified": True,
    "external": False,
    "rentable": True,
    "has_avx": 1,
    "dph_total": 0.35,
}


@pytest.mark.parametrize(
    ("filters", "ok"),
    [
        ({"gpu_ram": {"gte": 24000.0}}, True),
        ({"gpu_ram": {"gte": "24000"}}, True),
        ({"gpu_ram": {"gt": 24564}}, False),
        ({"num_gpus": {"eq": "1"}}, True),
        ({"num_gpus": {"neq": 1}}, False),
        ({"num_gpus": {"in": [1, 2]}}, True),
        ({"num_gpus": {"notin": ["1"]}}, False),
        ({"reliability": {"lt": "0.99"}, "dph_total": {"lte": 0.35}}, True),
        ({"verified": {"eq": True}, "external": {"eq": "false"}}, True),
        ({"has_avx": {"eq": True}}, True),
        ({"gpu_name": {"eq": "RTX 4090"}}, True),
        ({"gpu_name": {"in": ["RTX 3090", "A100"]}}, False),
        ({"geolocation": {"in": ["US", "CA"]}}, True),
        ({"geolocation": {"notin": ["US"]}}, False),
        ({"static_ip": {"eq": True}}, False),
        ({"static_ip": {"eq": None}}, True),
        ({"num_gpus": {"approx": 1}}, False),
    ],
)
def test_wire_filters_as_the_service_reads_them(filters: dict[str, Any], ok: bool) -> None:
    assert offer_matches(filters, OFFER) is ok


def test_wire_filters_skip_body_keys_and_unwrap_q() -> None:
    body = {"num_gpus": {"eq": 1}, "order": [["dph_total", "asc"]], "type": "on-demand", "limit": 3}
    assert wire_filters(body) == {"num_gpus": {"eq": 1}}
    assert wire_filters({"q": {"verified": {"eq": True}}}) == {"verified": {"eq": True}}


def test_search_orders_by_every_key_and_quotes_the_disk() -> None:
    book = [
        {"id": 1, "dph_base": 0.2, "storage_cost": 0.1, "reliability": 0.90},
        {"id": 2, "dph_base": 0.1, "storage_cost": 0.1, "reliability": 0.95},
        {"id": 3, "dph_base": 0.2, "storage_cost": 0.1, "reliability": 0.99},
    ]
    emu = VastEmulator(book, host_factory=null_host_factory)
    found = emu.search({"order": [["dph_total", "asc"], ["reliability", "desc"]], "allocated_storage": 72})
    assert [o["id"] for o in found] == [2, 3, 1]
    assert found[0]["storage_total_cost"] == pytest.approx(0.01)
    assert found[0]["dph_total"] == pytest.approx(0.11)
