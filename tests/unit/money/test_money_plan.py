"""Dispatch rules: each kind, short runs, the busy local machine, missing fields, cost on the cheapest offer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tether import config
from tether.config import ExperimentConfig, PolicyConfig
from tether.errors import ConfigError
from tether.plan import estimate_duration, plan_all, plan_experiment
from tether.providers.base import Offer

POLICY = PolicyConfig()
OFFERS = {
    "api": Offer(id=1, gpu_name="GTX 1080 Ti", num_gpus=1, dph_total=0.05, reliability=0.98),
    "inference": Offer(id=2, gpu_name="RTX 3090", num_gpus=1, gpu_ram_gb=24, dph_total=0.20, reliability=0.99),
    "finetune": Offer(id=3, gpu_name="RTX A6000", num_gpus=2, gpu_ram_gb=48, dph_total=1.00, reliability=0.97),
}


def exp(**kw: Any) -> ExperimentConfig:
    return ExperimentConfig(command=["python3", "-m", "x"], **kw)


def lookup(profile: str) -> Offer | None:
    return OFFERS.get(profile)


def test_duration_is_items_times_seconds_over_concurrency() -> None:
    assert estimate_duration(exp(items=1000, item_seconds=6, concurrency=4)) == pytest.approx(1500.0)
    assert estimate_duration(exp(items=10)) is None


def test_duration_of_some_items_is_the_same_estimate() -> None:
    # What a managed run's shard has left: the same rule for any number of items (never below zero).
    e = exp(items=1000, item_seconds=6, concurrency=4)
    assert estimate_duration(e, 250) == pytest.approx(375.0)
    assert estimate_duration(e, -3) == 0.0
    assert estimate_duration(exp(item_seconds=2.0), 10) == pytest.approx(20.0)  # no items in tether.toml
    assert estimate_duration(exp(items=10), 10) is None


@pytest.mark.parametrize(
    ("e", "busy", "where", "profile", "fragment"),
    [
        (exp(kind="local", items=10, item_seconds=3600), False, "local", None, "kind local"),
        (exp(kind="api", figures=True, items=5000, item_seconds=60), False, "local", None, "figure or LaTeX"),
        (exp(kind="api", figures=True, items=5000, item_seconds=60), True, "local", None, "marked busy"),
        (exp(kind="api", items=500, item_seconds=1), False, "local", None, "short run"),  # 8 min
        (exp(kind="api", items=500, item_seconds=1), True, "remote-cpu", "api", "rent even for API-only"),
        (exp(kind="api", items=500, item_seconds=10), False, "remote-cpu", "api", "500 items (more than 100)"),
        (exp(kind="api", items=100, item_seconds=60), False, "local", None, "100 or fewer"),
        (exp(kind="api", items=100, item_seconds=60), True, "remote-cpu", "api", "off or busy"),
        (exp(kind="inference", items=200, item_seconds=30), False, "remote-gpu", "inference", "24 GB"),
        # a short GPU run still needs a GPU: this machine has none unless [policy] local_gpu_gb says so
        (exp(kind="inference", items=20, item_seconds=30), False, "remote-gpu", "inference", "24 GB"),
        (exp(kind="finetune", items=1, item_seconds=6 * 3600, gpu_gb=80), False, "remote-gpu", "finetune", "80 GB"),
        (exp(kind="finetune", items=1, item_seconds=600), True, "remote-gpu", "finetune", "off or busy"),
    ],
)
def test_rules(e: ExperimentConfig, busy: bool, where: str, profile: str | None, fragment: str) -> None:
    entry = plan_experiment("E", e, POLICY, local_busy=busy, offer_lookup=lookup)
    assert (entry.where, entry.profile) == (where, profile), entry.reasons
    assert any(fragment in r for r in entry.reasons), entry.reasons
    assert entry.missing == []


def test_busy_from_config_counts_like_the_flag() -> None:
    entry = plan_experiment("E", exp(kind="api", items=10, item_seconds=1), PolicyConfig(local_busy=True))
    assert entry.where == "remote-cpu"


def test_local_max_minutes_is_the_threshold() -> None:
    e = exp(kind="inference", items=60, item_seconds=60)  # 60 min
    assert plan_experiment("E", e, POLICY).where == "remote-gpu"
    assert plan_experiment("E", e, PolicyConfig(local_max_minutes=90)).where == "remote-gpu"  # no local GPU
    assert plan_experiment("E", e, PolicyConfig(local_max_minutes=90, local_gpu_gb=24)).where == "local"
    assert plan_experiment("E", e, PolicyConfig(local_max_minutes=90, local_gpu_gb=16)).where == "remote-gpu"


def test_cost_on_cheapest_offer() -> None:
    entry = plan_experiment("E", exp(kind="finetune", items=3, item_seconds=3600), POLICY, offer_lookup=lookup)
    assert entry.est_duration_s == pytest.approx(3 * 3600)
    assert entry.est_cost_usd == pytest.approx(3.0)
    assert entry.cheapest_offer is not None and entry.cheapest_offer["id"] == 3
    assert entry.cheapest_offer["dph_total"] == pytest.approx(1.0)
    assert any("$3.00" in r and "RTX A6000" in r for r in entry.reasons)
    doc = entry.to_json()
    assert doc["where"] == "remote-gpu" and doc["est_cost_usd"] == pytest.approx(3.0)


def test_local_costs_nothing_and_no_offer_is_said() -> None:
    assert plan_experiment("E", exp(kind="local", items=1, item_seconds=1), POLICY).est_cost_usd == 0.0
    entry = plan_experiment("E", exp(kind="inference", items=100, item_seconds=60), POLICY, offer_lookup=lambda p: None)
    assert entry.est_cost_usd is None and entry.cheapest_offer is None
    assert any("no offer matches profile inference" in r for r in entry.reasons)


def test_missing_items_and_seconds_are_named() -> None:
    entry = plan_experiment("A5", exp(kind="api"), POLICY, offer_lookup=lookup)
    assert entry.missing == ["items", "item_seconds"]
    assert entry.est_duration_s is None and entry.est_cost_usd is None
    assert entry.where == "remote-cpu"  # still placed by kind
    assert any("add items and item_seconds to [experiments.A5]" in r for r in entry.reasons)
    assert any("$0.050/hr" in r for r in entry.reasons)


def test_missing_seconds_only_still_uses_the_item_count() -> None:
    few = plan_experiment("A5", exp(kind="api", items=50), POLICY)
    assert few.missing == ["item_seconds"] and few.where == "local"
    many = plan_experiment("A5", exp(kind="api", items=5000), POLICY)
    assert many.where == "remote-cpu"
    gpu = plan_experiment("F", exp(kind="finetune", item_seconds=3.0), POLICY)
    assert gpu.missing == ["items"] and gpu.where == "remote-gpu" and gpu.profile == "finetune"


TOML = """
[project]
name = "demo"

[experiments.fig]
command = "python3 make_figures.py"
kind = "local"
figures = true

[experiments.A5]
command = "python3 -m a5"
kind = "api"
items = 1000
item_seconds = 5

[experiments.ollama]
command = "python3 -m infer"
kind = "inference"
items = 400
item_seconds = 20

[experiments.findap]
command = "python3 -m train"
kind = "finetune"
"""


def test_plan_all_over_a_real_config(tmp_path: Path) -> None:
    (tmp_path / "tether.toml").write_text(TOML)
    project = config.load(tmp_path / "tether.toml")
    asked: list[str] = []

    def counting(profile: str) -> Offer | None:
        asked.append(profile)
        return lookup(profile)

    entries = plan_all(project, local_busy=False, offer_lookup=counting)
    assert [(e.experiment, e.where, e.profile) for e in entries] == [
        ("fig", "local", None),
        ("A5", "remote-cpu", "api"),
        ("ollama", "remote-gpu", "inference"),
        ("findap", "remote-gpu", "finetune"),
    ]
    assert entries[1].est_cost_usd == pytest.approx(5000 / 3600 * 0.05)
    assert entries[3].missing == ["items", "item_seconds"]
    assert sorted(asked) == ["api", "finetune", "inference"]  # one look-up per profile

    chosen = plan_all(project, names=["findap", "fig"])
    assert [e.experiment for e in chosen] == ["findap", "fig"]
    with pytest.raises(ConfigError, match="Unknown experiment 'nope'"):
        plan_all(project, names=["nope"])
