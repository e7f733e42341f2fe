"""A malformed price is not free: offers whose price is not a finite non-negative number, or whose id is out of range,
are skipped with one sentence naming each; an instance's malformed price is NaN (never $0), and the CLI's --json
edge writes a non-finite number as null."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from tether.cli.common import finite
from tether.providers.vast.translate import MalformedOffer, instance_from_json, offer_from_json, offers_from_json


def raw(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"id": 7, "machine_id": 31, "num_gpus": 1, "dph_total": 0.2, "dph_base": 0.18}
    base.update(fields)
    return base


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("dph_total", math.nan),
        ("dph_total", math.inf),
        ("dph_total", -0.01),
        ("dph_total", "nan"),
        ("dph_total", None),
        ("dph_total", True),
        ("dph_base", "-1"),
        ("min_bid", math.nan),
        ("storage_total_cost", [0.1]),
        ("machine_id", "1e400"),
        ("machine_id", 1.5),
        ("num_gpus", {"a": 1}),
        ("id", -3),
        ("id", 2**64),
    ],
)
def test_a_malformed_field_makes_the_offer_unusable_with_a_sentence_naming_it(field: str, value: Any) -> None:
    with pytest.raises(MalformedOffer) as info:
        offer_from_json(raw(**{field: value}))
    assert field in str(info.value) or (field == "dph_total" and value is None and "no price" in str(info.value))


def test_the_search_keeps_good_offers_and_says_once_which_were_skipped() -> None:
    offers, said = offers_from_json([raw(id=1, dph_total=math.nan), raw(id=2), "junk", raw(id=3, machine_id="1e400")])
    assert [o.id for o in offers] == [2]
    assert said is not None and said.startswith("Skipped 3 malformed offer(s)")
    assert "offer 1 has dph_total nan" in said and "machine_id '1e400'" in said and "str" in said
    assert offers_from_json([raw()]) == ([offer_from_json(raw())], None)


def test_numbers_sent_as_strings_are_still_read_and_a_zero_price_is_a_price() -> None:
    offer = offer_from_json(raw(dph_total="0", machine_id="31", num_gpus="2"))
    assert (offer.dph_total, offer.machine_id, offer.num_gpus) == (0.0, 31, 2)


def test_an_instance_price_that_is_malformed_or_missing_is_nan_never_zero() -> None:
    inst = instance_from_json({"id": 5, "actual_status": "running", "dph_total": math.nan, "storage_total_cost": -1})
    assert math.isnan(inst.dph_total) and math.isnan(inst.storage_total_cost) and math.isnan(inst.dph_base)
    assert instance_from_json({"id": 5, "dph_total": "0.3"}).dph_total == 0.3


def test_the_json_edge_writes_non_finite_numbers_as_null() -> None:
    doc = {"a": math.nan, "b": [1.0, -math.inf, {"c": math.inf}], "d": "NaN", "e": 2}
    assert json.dumps(finite(doc), allow_nan=False) == '{"a": null, "b": [1.0, null, {"c": null}], "d": "NaN", "e": 2}'
