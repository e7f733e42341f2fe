"""`tether agents` through the real CLI with a fake nvidia-smi on PATH, and tether runs holding GPU shares."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.helpers import fake_gpu_env, tether, tether_json, wait_status, write_project


def gpu_env(mode: str) -> dict[str, str]:
    return fake_gpu_env(mode)


def registry_file() -> Path:
    return Path(os.environ["TETHER_HOME"]) / "local" / "AGENT_STATUS.json"


def test_register_refuse_release_admit(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p")
    env = gpu_env("1x24")
    first = tether_json(
        "agents", "register", "--id", "a1", "--experiment", "ollama", "--gpu-gb", "20", cwd=project, env=env
    )
    assert first["cuda_visible_devices"] == "0"
    refused = tether(
        "agents", "register", "--id", "a2", "--experiment", "llama", "--gpu-gb", "10", cwd=project, env=env
    )
    assert refused.returncode == 4
    assert "10" in refused.stderr and "a1" in refused.stderr and "free" in refused.stderr
    entries = json.loads(registry_file().read_text())
    assert [e["id"] for e in entries] == ["a1"]  # the refusal changed nothing
    assert {"id", "experiment", "gpu_gb", "status", "started"} <= set(entries[0])
    done = tether_json("agents", "done", "a1", cwd=project, env=env)
    assert done["entry"]["status"] == "completed"
    second = tether_json(
        "agents", "register", "--id", "a2", "--experiment", "llama", "--gpu-gb", "10", cwd=project, env=env
    )
    assert second["entry"]["status"] == "running"
    listing = tether_json("agents", cwd=project, env=env)
    assert listing["gpus"][0]["total_gb"] > 23
    table = tether("agents", cwd=project, env=env)
    assert "a2" in table.stdout and "llama" in table.stdout


def test_api_only_always_fits_and_cpu_server_refuses_gpu(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p")
    no_gpu = {"PATH": "/usr/bin:/bin"}
    ok = tether_json(
        "agents", "register", "--id", "api1", "--experiment", "A5", "--gpu-gb", "0", cwd=project, env=no_gpu
    )
    assert ok["entry"]["status"] == "running"
    refused = tether("agents", "register", "--id", "g1", "--experiment", "ft", "--gpu-gb", "8", cwd=project, env=no_gpu)
    assert refused.returncode == 4 and "no GPU" in refused.stderr


def test_a_run_holds_its_share_and_releases_it(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", items=4000, extra="")
    text = (project / "tether.toml").read_text().replace('kind = "api"', 'kind = "inference"\ngpu_gb = 16')
    (project / "tether.toml").write_text(text)
    env = gpu_env("1x24")
    run_id = tether_json("run", "exp", "--local", "--", "--delay", "0.05", cwd=project, env=env)["run_id"]
    wait_status(project, run_id, {"running"})
    holder = [e for e in json.loads(registry_file().read_text()) if e["id"] == run_id]
    assert holder and holder[0]["status"] == "running" and holder[0]["gpus"] == [0]
    refused = tether("agents", "register", "--id", "x", "--experiment", "y", "--gpu-gb", "12", cwd=project, env=env)
    assert refused.returncode == 4 and run_id in refused.stderr
    assert tether_json("cancel", run_id, cwd=project, env=env)["status"] == "cancelled"
    released = [e for e in json.loads(registry_file().read_text()) if e["id"] == run_id]
    assert released[0]["status"] in ("completed", "failed")
    admitted = tether("agents", "register", "--id", "x", "--experiment", "y", "--gpu-gb", "12", cwd=project, env=env)
    assert admitted.returncode == 0, admitted.stderr


def test_a_second_gpu_run_that_does_not_fit_is_refused_not_started(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", items=4000)
    text = (project / "tether.toml").read_text().replace('kind = "api"', 'kind = "inference"\ngpu_gb = 16')
    (project / "tether.toml").write_text(text)
    env = gpu_env("1x24")
    first = tether_json("run", "exp", "--local", "--", "--delay", "0.05", cwd=project, env=env)["run_id"]
    wait_status(project, first, {"running"})
    second = tether("run", "exp", "--local", cwd=project, env=env)
    assert second.returncode == 1 and "refused" in second.stderr and first in second.stderr
    tether("cancel", first, cwd=project, env=env)


def test_json_errors_are_the_one_flat_document(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p")
    env = gpu_env("1x24")
    tether_json("agents", "register", "--id", "a1", "--experiment", "ollama", "--gpu-gb", "20", cwd=project, env=env)
    refused = tether(
        "agents", "register", "--id", "a2", "--experiment", "llama", "--gpu-gb", "10", "--json", cwd=project, env=env
    )
    assert refused.returncode == 4
    doc = json.loads(refused.stdout)
    assert set(doc) == {"error", "hint", "kind", "exit_code"}
    assert doc["kind"] == "NoRoom" and doc["exit_code"] == 4
    assert "10 GB asked" in doc["error"] and "GB free" in doc["error"] and "a1 (ollama, 20 GB)" in doc["error"]
    assert "--wait" in doc["hint"]
    unknown = tether("agents", "done", "nobody", "--json", cwd=project, env=env)
    assert unknown.returncode == 1
    doc = json.loads(unknown.stdout)
    assert doc["kind"] == "RegistryError" and doc["exit_code"] == 1 and "No agent 'nobody'" in doc["error"]
    bad = tether(
        "agents", "register", "--id", "x", "--experiment", "y", "--gpu-gb", "-3", "--json", cwd=project, env=env
    )
    doc = json.loads(bad.stdout)
    assert (
        bad.returncode == 2 and doc["kind"] == "ConfigError" and doc["exit_code"] == 2 and "0 or more" in doc["error"]
    )
    assert [e["id"] for e in json.loads(registry_file().read_text())] == ["a1"]  # no refusal changed the file
