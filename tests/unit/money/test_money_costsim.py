"""The cost simulation on a short workload: operators rank as expected and the results-lost counter counts."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[3] / "bench" / "costsim.py"


@pytest.fixture(scope="module")
def costsim() -> ModuleType:
    spec = importlib.util.spec_from_file_location("costsim", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["costsim"] = module
    spec.loader.exec_module(module)
    return module


def test_operators_rank_and_lose_nothing(costsim: ModuleType) -> None:
    workload = costsim.make_workload(7, 4.0)
    assert {e.profile for e in workload} == {"api", "inference", "finetune"}
    end = costsim.START + 5 * 86400.0
    never = costsim.Sim("never", workload, 7, end).run(costsim.never_stop)
    daily = costsim.Sim("daily", workload, 7, end).run(costsim.daily_manual)
    auto = costsim.Sim("auto", workload, 7, end).run(costsim.make_autopilot(costsim.PolicyConfig()))
    for out in (never, daily, auto):
        assert out.finished == len(workload)
        assert out.results_lost == 0
        assert out.cost >= out.lower_bound > 0
        # tether's ledger over the events the operator recorded equals what the emulator billed
        assert out.ledger_total == pytest.approx(out.cost, rel=1e-9)
    assert auto.cost < daily.cost < never.cost
    assert auto.counts["stop"] + auto.counts["destroy"] > 0


def test_destroying_without_a_pull_is_counted_as_lost(costsim: ModuleType) -> None:
    def reckless(sim: object, now: float) -> None:
        for slot in sim.slots.values():  # type: ignore[attr-defined]
            if slot.inst_id is not None and slot.state == "running" and slot.current is None and not slot.queue:
                sim.destroy(slot)  # type: ignore[attr-defined]

    workload = costsim.make_workload(7, 2.0)
    out = costsim.Sim("reckless", workload, 7, costsim.START + 3 * 86400.0).run(reckless)
    assert out.finished == len(workload)
    assert out.results_lost == len(workload)


def test_main_prints_one_json_object_last(costsim: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    assert costsim.main(["--days", "3", "--seed", "3"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    doc = json.loads(last)
    assert set(doc) == {
        "cost_never_stop",
        "cost_daily_manual",
        "cost_autopilot",
        "cost_lower_bound",
        "ratio_autopilot_to_bound",
        "results_lost",
    }
    assert doc["results_lost"] == 0
    assert doc["ratio_autopilot_to_bound"] == pytest.approx(doc["cost_autopilot"] / doc["cost_lower_bound"], rel=1e-3)


@pytest.mark.parametrize(
    ("text", "seeds"),
    [("1-4", [1, 2, 3, 4]), ("3", [3]), ("1,4,7", [1, 4, 7]), ("1-3,9,2", [1, 2, 3, 9]), (" 5 - 6 ", [5, 6])],
)
def test_parse_seeds(costsim: ModuleType, text: str, seeds: list[int]) -> None:
    assert costsim.parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["", "1,,2", "5-3", "a", "1-b"])
def test_parse_seeds_refuses(costsim: ModuleType, text: str) -> None:
    with pytest.raises(ValueError):
        costsim.parse_seeds(text)


def test_main_with_seeds_reports_the_spread(costsim: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    assert costsim.main(["--days", "2", "--seed", "3", "--seeds", "3-4,6"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    doc = json.loads(lines[-1])
    assert doc["seeds"] == [3, 4, 6]
    assert doc["seeds_results_lost"] == 0 and doc["results_lost"] == 0
    rows = {int(line.split()[0]): line.split() for line in lines if line.strip()[:1].isdigit()}
    assert set(rows) == {3, 4, 6}
    ratios = [float(rows[s][-2]) for s in (3, 4, 6)]
    assert doc["seeds_ratio_max"] == pytest.approx(max(ratios), abs=1e-3)
    assert doc["seeds_ratio_median"] == pytest.approx(sorted(ratios)[1], abs=1e-3)
    # the --seed figures are the same as without --seeds
    assert float(rows[3][-2]) == pytest.approx(doc["ratio_autopilot_to_bound"], abs=1e-3)


def test_the_autopilot_learns_from_the_gaps_on_its_server(costsim: ModuleType) -> None:
    """The simulation's view carries the gaps between the runs it saw, as gather() does from state."""
    workload = costsim.make_workload(7, 3.0)
    end = costsim.START + 4 * 86400.0
    sim = costsim.Sim("auto", workload, 7, end)
    sim.run(costsim.make_autopilot(costsim.PolicyConfig()))
    api = sim.slots["api"]
    assert len(api.busy) == sum(1 for e in workload if e.profile == "api")
    gaps = sim.view(api, 20).idle_gaps
    assert gaps and all(g > 0 for g in gaps)
    assert sim.view(api, 2).idle_gaps == gaps[-2:]
