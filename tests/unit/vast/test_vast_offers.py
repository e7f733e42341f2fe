"""The offer query language: what users type → the exact wire body, and every way it is refused."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from tether.errors import ConfigError
from tether.profiles import estimate_cost, profile_for_kind, rank_offers, resolve_profile
from tether.providers.base import Offer
from tether.providers.vast.query import explain_no_match, matches, parse_order, parse_query, render_body

DEFAULTS = {"verified": {"eq": True}, "external": {"eq": False}, "rentable": {"eq": True}, "rented": {"eq": False}}


def body(text: str, **kw: Any) -> dict[str, Any]:
    return render_body(parse_query(text), **kw)


def test_runbook_api_query_wire_body() -> None:
    assert body("reliability>0.95 num_gpus=1", order="dph+", disk_gb=20) == {
        **DEFAULTS,
        "reliability": {"gt": 0.95},
        "num_gpus": {"eq": 1},
        "order": [["dph_total", "asc"]],
        "type": "on-demand",
        "allocated_storage": 20.0,
    }


def test_runbook_inference_query_wire_body() -> None:
    assert body("gpu_ram>=24 reliability>0.95 num_gpus=1", order="dph+", disk_gb=60) == {
        **DEFAULTS,
        "gpu_ram": {"gte": 24000.0},
        "reliability": {"gt": 0.95},
        "num_gpus": {"eq": 1},
        "order": [["dph_total", "asc"]],
        "type": "on-demand",
        "allocated_storage": 60.0,
    }


def test_runbook_finetune_query_wire_body() -> None:
    assert body("gpu_ram>=40 reliability>0.95 num_gpus>=2", order="dph+", disk_gb=150, limit=10) == {
        **DEFAULTS,
        "gpu_ram": {"gte": 40000.0},
        "reliability": {"gt": 0.95},
        "num_gpus": {"gte": 2},
        "order": [["dph_total", "asc"]],
        "type": "on-demand",
        "allocated_storage": 150.0,
        "limit": 10,
    }


@pytest.mark.parametrize(
    ("text", "op"),
    [
        ("num_gpus<2", "lt"),
        ("num_gpus<=2", "lte"),
        ("num_gpus=2", "eq"),
        ("num_gpus==2", "eq"),
        ("num_gpus!=2", "neq"),
        ("num_gpus>=2", "gte"),
        ("num_gpus>2", "gt"),
        ("num_gpus eq 2", "eq"),
        ("num_gpus neq 2", "neq"),
        ("num_gpus gt 2", "gt"),
        ("num_gpus gte 2", "gte"),
        ("num_gpus lt 2", "lt"),
        ("num_gpus lte 2", "lte"),
        ("num_gpus >= 2", "gte"),
    ],
)
def test_every_comparison_operator(text: str, op: str) -> None:
    assert parse_query(text).filters()["num_gpus"] == {op: 2}


@pytest.mark.parametrize(
    ("text", "op"),
    [("geolocation in [US,CA]", "in"), ("geolocation notin [US,CA]", "notin"), ("geolocation nin [US,CA]", "notin")],
)
def test_list_operators(text: str, op: str) -> None:
    assert parse_query(text).filters()["geolocation"] == {op: ["US", "CA"]}


def test_list_of_numbers_with_units_and_spaces() -> None:
    f = parse_query("gpu_ram in [24, 48] num_gpus in [1,2]").filters()
    assert f["gpu_ram"] == {"in": [24000.0, 48000.0]}
    assert f["num_gpus"] == {"in": [1, 2]}


@pytest.mark.parametrize(
    ("alias", "field"),
    [
        ("dph", "dph_total"),
        ("cuda_vers", "cuda_max_good"),
        ("dlperf_usd", "dlperf_per_dphtotal"),
        ("flops_usd", "flops_per_dphtotal"),
    ],
)
def test_aliases(alias: str, field: str) -> None:
    assert parse_query(f"{alias}<1.5").filters() == {**DEFAULTS, field: {"lt": 1.5}}


def test_display_active_alias_is_a_bool() -> None:
    assert parse_query("display_active=false").filters()["gpu_display_active"] == {"eq": False}


@pytest.mark.parametrize(
    ("text", "field", "value"),
    [
        ("gpu_ram>=24", "gpu_ram", 24000.0),
        ("gpu_total_ram>=80", "gpu_total_ram", 80000.0),
        ("cpu_ram>=32", "cpu_ram", 32000.0),
        ("duration>=2", "duration", 172800.0),
        ("disk_space>=100", "disk_space", 100),
        ("inet_down>=500.5", "inet_down", 500.5),
    ],
)
def test_units(text: str, field: str, value: float) -> None:
    got = parse_query(text).filters()[field]["gte"]
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize(("literal", "value"), [("true", True), ("True", True), ("false", False), ("False", False)])
def test_bool_literals(literal: str, value: bool) -> None:
    assert parse_query(f"static_ip={literal}").filters()["static_ip"] == {"eq": value}


@pytest.mark.parametrize("literal", ["None", "null"])
def test_null_literals(literal: str) -> None:
    assert parse_query(f"gpu_arch={literal}").filters()["gpu_arch"] == {"eq": None}


@pytest.mark.parametrize("anyword", ["any", "?", "*"])
def test_any_removes_a_default_filter(anyword: str) -> None:
    f = parse_query(f"verified={anyword} num_gpus=1").filters()
    assert "verified" not in f
    assert f["external"] == {"eq": False} and f["num_gpus"] == {"eq": 1}


def test_any_removes_an_earlier_user_term() -> None:
    assert "num_gpus" not in parse_query("num_gpus>=2 num_gpus=any").filters()


def test_user_term_replaces_the_default() -> None:
    assert parse_query("external=true").filters()["external"] == {"eq": True}


def test_two_terms_on_one_field_merge() -> None:
    assert parse_query("gpu_ram>=24 gpu_ram<=48").filters()["gpu_ram"] == {"gte": 24000.0, "lte": 48000.0}


def test_underscore_means_space_and_quotes_keep_it() -> None:
    assert parse_query("gpu_name=RTX_4090").filters()["gpu_name"] == {"eq": "RTX 4090"}
    assert parse_query('gpu_name="RTX 4090"').filters()["gpu_name"] == {"eq": "RTX 4090"}
    assert parse_query("geolocation in [United_States,CA]").filters()["geolocation"] == {"in": ["United States", "CA"]}


def test_empty_query_gives_defaults_only() -> None:
    assert parse_query("   ").filters() == DEFAULTS


@pytest.mark.parametrize(
    ("order", "wire"),
    [
        ("dph+", [["dph_total", "asc"]]),
        ("dph", [["dph_total", "asc"]]),
        ("dph+,reliability-", [["dph_total", "asc"], ["reliability", "desc"]]),
        ("-score", [["score", "desc"]]),
        ("+num_gpus, dlperf_usd-", [["num_gpus", "asc"], ["dlperf_per_dphtotal", "desc"]]),
    ],
)
def test_order_syntax(order: str, wire: list[list[str]]) -> None:
    assert parse_order(order) == wire


@pytest.mark.parametrize(
    ("typed", "wire"), [("on-demand", "on-demand"), ("bid", "bid"), ("interruptible", "bid"), ("reserved", "reserved")]
)
def test_offer_types(typed: str, wire: str) -> None:
    assert body("", type=typed)["type"] == wire


def test_bad_type_disk_and_limit_are_refused() -> None:
    with pytest.raises(ConfigError, match="Unknown offer type 'spot'"):
        body("", type="spot")
    with pytest.raises(ConfigError, match="Disk size must be positive"):
        body("", disk_gb=0)
    with pytest.raises(ConfigError, match="limit must be positive"):
        body("", limit=0)


# ------------------------------------------------------------------------------------------------ errors


def test_unknown_field_names_position_and_suggests() -> None:
    with pytest.raises(ConfigError) as err:
        parse_query("num_gpus=1 gpu_rma>=24")
    e = err.value
    assert "Unknown field 'gpu_rma'" in e.message
    assert "term 2 at column 12" in e.message
    assert "did you mean 'gpu_ram'" in e.message
    assert e.hint is not None and "gpu_total_ram" in e.hint and "reliability" in e.hint


def test_unknown_order_field_suggests() -> None:
    with pytest.raises(ConfigError, match="did you mean 'reliability'"):
        parse_order("reliabilty-")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("gpu_ram 24", "term 1 at column 9"),
        ("num_gpus=", "missing value"),
        ("=1", "expected a field name"),
        ("geolocation in [US,CA", "unclosed list"),
        ('gpu_name="RTX 4090', "unclosed quote"),
        ("num_gpus=[1,2]", "a list value needs the op 'in'"),
        ("geolocation in []", "non-empty list"),
        ("num_gpus>any", "only works with '='"),
        ("reliability>0.95 num_gpus", "expected an operator"),
    ],
)
def test_malformed_terms(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_query(text)
    assert fragment in err.value.message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("num_gpus=two", "takes a number, not 'two'"),
        ("gpu_ram>=lots", "takes a number"),
        ("reliability>true", "takes a number"),
        ("verified=maybe", "takes true or false, not 'maybe'"),
    ],
)
def test_bad_value_types(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_query(text)
    assert fragment in err.value.message
    assert "term 1" in err.value.message


# ------------------------------------------------------------------------------------------------ matching

OFFER = {
    "id": 1,
    "gpu_name": "RTX 4090",
    "num_gpus": 1,
    "gpu_ram": 24564,
    "reliability": 0.98,
    "geolocation": "Texas, US",
    "verified": True,
    "external": False,
    "rentable": True,
    "rented": False,
    "dph_total": 0.35,
}


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("gpu_ram>=24 reliability>0.95 num_gpus=1", True),
        ("gpu_ram>=40", False),
        ("gpu_name=RTX_4090", True),
        ("gpu_name=rtx_4090", True),
        ("geolocation in [US,CA]", True),
        ("geolocation notin [US]", False),
        ("dph<0.3", False),
        ("num_gpus!=1", False),
        ("external=true", False),
        ("external=any", True),
        ("static_ip=true", False),
    ],
)
def test_matches(text: str, ok: bool) -> None:
    assert matches(parse_query(text), OFFER) is ok


def test_matches_accepts_wire_values_as_strings() -> None:
    wire = {"num_gpus": {"eq": "1"}, "reliability": {"gt": "0.95"}, "verified": {"eq": "true"}}
    assert matches(wire, OFFER)
    assert not matches({"num_gpus": {"gte": "2"}}, OFFER)


def test_explain_no_match_names_the_worst_filter() -> None:
    offers = [dict(OFFER, id=i, gpu_ram=24564, reliability=0.9 + i / 100) for i in range(10)]
    text = explain_no_match(parse_query("gpu_ram>=80 reliability>0.95"), offers)
    assert "gpu_ram>=80 GB" in text and "10 of 10" in text
    assert "reliability" not in text


def test_explain_no_match_with_no_offers_at_all() -> None:
    assert "no offers at all" in explain_no_match(parse_query("num_gpus=1"), [])


# ------------------------------------------------------------------------------------------------ profiles


def test_default_profiles_match_the_runbook() -> None:
    assert resolve_profile("api").query == "reliability>0.95 num_gpus=1"
    assert resolve_profile("inference").query == "gpu_ram>=24 reliability>0.95 num_gpus=1"
    assert resolve_profile("finetune").query == "gpu_ram>=40 reliability>0.95 num_gpus>=2"
    assert {resolve_profile(n).order for n in ("api", "inference", "finetune")} == {"dph+"}


def test_profile_override_and_new_profile() -> None:
    over: dict[str, Mapping[str, Any]] = {
        "inference": {"query": "gpu_ram>=48 num_gpus=1", "min_disk_gb": 120},
        "big": {"query": "num_gpus>=8"},
    }
    p = resolve_profile("inference", over)
    assert (p.query, p.order, p.min_disk_gb) == ("gpu_ram>=48 num_gpus=1", "dph+", 120.0)
    assert resolve_profile("big", over).query == "num_gpus>=8"


def test_profile_errors() -> None:
    with pytest.raises(ConfigError, match="did you mean 'inference'"):
        resolve_profile("inferense")
    with pytest.raises(ConfigError, match="Unknown field 'vram'"):
        resolve_profile("api", {"api": {"query": "vram>=24"}})
    with pytest.raises(ConfigError, match="bad min_disk_gb"):
        resolve_profile("api", {"api": {"min_disk_gb": "big"}})


def test_kind_to_profile() -> None:
    assert [profile_for_kind(k) for k in ("api", "inference", "finetune", "local")] == [
        "api",
        "inference",
        "finetune",
        None,
    ]
    with pytest.raises(ConfigError, match="Unknown experiment kind"):
        profile_for_kind("gpu")


def test_ranking_cheapest_first_ties_by_reliability_and_cost_estimate() -> None:
    offers = [
        Offer(id=1, dph_total=0.5, reliability=0.99),
        Offer(id=2, dph_total=0.2, reliability=0.96),
        Offer(id=3, dph_total=0.2, reliability=0.99),
    ]
    assert [o.id for o in rank_offers(offers)] == [3, 2, 1]
    assert estimate_cost(offers[0], 10) == pytest.approx(5.0)
    with pytest.raises(ConfigError):
        estimate_cost(offers[0], -1)
