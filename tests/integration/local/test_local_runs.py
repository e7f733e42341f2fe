"""Local runs through the real CLI: tmux, the run wrapper, the checkpoint library, SQLite state."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from tests.helpers import run_status, tether, tether_json, wait_for, wait_status, write_project


def test_run_returns_at_once_and_finishes_with_runbook_shape(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", items=30)
    started = tether_json("run", "exp", "--local", "--", "--delay", "0.02", cwd=project)
    run_id = started["run_id"]
    assert run_id.startswith("exp-")
    assert started["status"] in ("running", "completed")
    run = wait_status(project, run_id, {"completed"})
    assert run["completed"] == 30 and run["total"] == 30 and run["exit_code"] == 0
    doc = json.loads((project / "results" / "results.json").read_text())
    assert set(doc) == {"completed", "total", "results"}
    assert doc["completed"] == 30 and doc["total"] == 30
    assert [r["id"] for r in doc["results"]] == [f"i{n:03d}" for n in range(30)]
    # the journal and progress files are gone once the final file is written
    assert sorted(p.name for p in (project / "results").iterdir()) == ["results.json"]
    logs = tether("logs", run_id, cwd=project)
    assert logs.returncode == 0 and "summary 30 0" in logs.stdout
    by_name = tether("logs", "exp", cwd=project)  # an experiment's name means its latest run
    assert by_name.returncode == 0 and run_id in by_name.stdout


def test_run_id_is_printed_on_stdout_alone(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", items=3)
    result = tether("run", "exp", "--local", cwd=project)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("exp-") and len(result.stdout.strip().splitlines()) == 1
    wait_status(project, result.stdout.strip(), {"completed"})


def test_cancel_then_resume_keeps_finished_items(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", items=400)
    first = tether_json("run", "exp", "--local", "--", "--delay", "0.05", cwd=project)["run_id"]
    wait_for(lambda: (run_status(project, first) or {}).get("completed", 0) >= 10, 60, "10 items done")
    cancelled = tether_json("cancel", first, cwd=project)
    assert cancelled["cancelled"] is True and cancelled["status"] == "cancelled"
    journal = project / "results" / "results.journal.jsonl"
    kept = {json.loads(line)["id"] for line in journal.read_text().splitlines()[1:] if line.strip()}
    assert len(kept) >= 10
    second = tether_json("run", "exp", "--local", "--", "--items", "400", cwd=project)["run_id"]
    wait_status(project, second, {"completed"}, timeout=120)
    doc = json.loads((project / "results" / "results.json").read_text())
    ids = [r["id"] for r in doc["results"]]
    assert len(ids) == len(set(ids)) == 400
    assert kept <= set(ids)


def test_a_run_whose_process_died_shows_dead_not_running(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", items=10_000)
    run_id = tether_json("run", "exp", "--local", "--", "--delay", "0.05", cwd=project)["run_id"]
    wait_status(project, run_id, {"running"})
    record = json.loads((Path(os.environ["TETHER_HOME"]) / "local/.tether/runs" / run_id / "run.json").read_text())
    os.kill(record["child_pid"], signal.SIGKILL)
    os.kill(record["pid"], signal.SIGKILL)
    run = wait_status(project, run_id, {"dead"})
    assert run["alive"] is False
    table = tether("progress", cwd=project)
    assert "dead" in table.stdout and run_id in table.stdout


def test_a_command_that_does_not_exist_is_reported_failed_with_its_log(tmp_path: Path) -> None:
    project = write_project(
        tmp_path / "p", extra='[experiments.ghost]\ncommand = "no-such-program-xyz --flag"\nresults = "r2"\n'
    )
    result = tether("run", "ghost", "--local", cwd=project)
    assert result.returncode == 1
    assert "failed at once" in result.stderr and "command not found: no-such-program-xyz" in result.stderr
    doc = tether_json("progress", cwd=project)
    statuses = [r["status"] for h in doc["hosts"] for r in h["runs"]]
    assert statuses == ["failed"]


def test_unknown_experiment_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p")
    result = tether("run", "nope", "--local", cwd=project)
    assert result.returncode == 2
    assert "Unknown experiment 'nope'" in result.stderr and "Known experiments: exp" in result.stderr
    assert not (Path(os.environ["TETHER_HOME"]) / "local" / ".tether" / "runs").exists()


def test_missing_config_says_what_needs_it_and_how_to_start(tmp_path: Path) -> None:
    assert tether("progress", cwd=tmp_path).returncode == 0  # no project needed to look
    result = tether("run", "exp", "--local", cwd=tmp_path)
    assert result.returncode == 2
    assert "`tether run` needs a project" in result.stderr and "no tether.toml in" in result.stderr
    assert "tether init" in result.stderr


def test_malformed_config_names_file_and_line_and_is_left_alone(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p")
    bad = (project / "tether.toml").read_text().replace('kind = "api"', 'kind = "gpu"')
    (project / "tether.toml").write_text(bad)
    result = tether("run", "exp", "--local", cwd=project)
    assert result.returncode == 2
    assert f"{project / 'tether.toml'}:8: experiments.exp.kind" in result.stderr
    assert (project / "tether.toml").read_text() == bad
    (project / "tether.toml").write_text("[project\nname = 'x'\n")
    result = tether("progress", cwd=project)
    assert result.returncode == 2 and "is not valid TOML" in result.stderr and "line 1" in result.stderr


def test_json_errors_are_one_document_on_stdout(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p")
    result = tether("run", "nope", "--local", "--json", cwd=project)
    assert result.returncode == 2
    doc = json.loads(result.stdout)
    assert doc["kind"] == "ConfigError" and "Unknown experiment" in doc["error"]


def test_init_writes_a_loadable_starter_and_refuses_to_overwrite(tmp_path: Path) -> None:
    result = tether("init", "--name", "demo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "tether.toml").read_text()
    again = tether("init", cwd=tmp_path)
    assert again.returncode == 2 and "exists already" in again.stderr
    assert (tmp_path / "tether.toml").read_text() == text
    assert tether("progress", cwd=tmp_path).returncode == 0
