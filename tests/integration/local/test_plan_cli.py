"""`tether plan` and `tether run` without --local/--on: the runbook's dispatch rules through the CLI."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import tether, tether_json, wait_status, write_project

MORE = """
[experiments.A5]
command = "python3 exp.py"
kind = "api"
items = 1200
item_seconds = 2.5
concurrency = 1
results = "r_a5"

[experiments.ollama]
command = "python3 exp.py"
kind = "inference"
items = 300
item_seconds = 4
gpu_gb = 20
results = "r_ollama"

[experiments.nosize]
command = "python3 exp.py"
kind = "api"
results = "r_nosize"
"""


def test_plan_places_each_experiment_and_says_what_is_missing(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", items=20, extra=MORE)
    doc = tether_json("plan", "--offline", cwd=project)
    where = {e["experiment"]: (e["where"], e["profile"]) for e in doc["plan"]}
    assert where == {
        "exp": ("local", None),
        "A5": ("remote-cpu", "api"),
        "ollama": ("remote-gpu", "inference"),
        "nosize": ("remote-cpu", "api"),
    }
    nosize = next(e for e in doc["plan"] if e["experiment"] == "nosize")
    assert nosize["missing"] == ["items", "item_seconds"] and nosize["est_duration_s"] is None
    assert "add items and item_seconds" in " ".join(nosize["reasons"])
    a5 = next(e for e in doc["plan"] if e["experiment"] == "A5")
    assert a5["est_duration_s"] == 3000.0  # 50 min: past the 30-minute local limit
    busy = tether_json("plan", "exp", "--offline", "--local-busy", cwd=project)["plan"][0]
    assert busy["where"] == "remote-cpu" and "rent even for API-only" in " ".join(busy["reasons"])


def test_run_follows_the_plan_and_never_rents_without_permission(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", items=20, extra=MORE)
    local = tether_json("run", "exp", cwd=project)
    assert local["host"] == "local"
    wait_status(project, local["run_id"], {"completed"})
    refused = tether("run", "A5", cwd=project)
    assert refused.returncode == 3
    assert "renting costs money" in refused.stderr and "--provision" in refused.stderr
    assert len(tether_json("progress", cwd=project)["hosts"][0]["runs"]) == 1  # nothing else started


def test_cost_with_nothing_rented_and_a_bad_date(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", items=20, extra=MORE)
    doc = tether_json("cost", cwd=project)
    assert doc["total_usd"] == 0 and doc["burn_dph"] == 0 and doc["by_instance"] == []
    since = tether_json("cost", "--since", "2026-01-01", cwd=project)
    assert since["since"] is not None
    bad = tether("cost", "--since", "last tuesday", cwd=project)
    assert bad.returncode == 2 and "is not a date" in bad.stderr
