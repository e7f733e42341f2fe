"""What runs on servers must work on an old, bare python3 (3.8, no site-packages): the run wrapper, the checkpoint
library, the progress scan, the manifest and the agent registry, from the very folder `tether up` copies."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tether.provision import server_lib_stage


def old_python() -> str | None:
    """A working Python 3.8 interpreter, if this machine has one (a pyenv shim that cannot run does not count)."""
    candidates = [str(Path.home() / ".pyenv/versions/3.8.18/bin/python3.8"), shutil.which("python3.8") or ""]
    for candidate in candidates:
        if candidate and os.path.exists(candidate):
            probe = subprocess.run(
                [candidate, "-c", "import sys; print(sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            if probe.returncode == 0 and probe.stdout.strip() == "(3, 8)":
                return candidate
    return None


@pytest.mark.skipif(old_python() is None, reason="no Python 3.8 interpreter on this machine")
def test_server_side_runs_on_python_38_without_site_packages(tmp_path: Path) -> None:
    py = old_python()
    assert py is not None
    stage, _ = server_lib_stage()
    root = tmp_path / "root"
    code = root / "proj"
    code.mkdir(parents=True)
    (code / "exp.py").write_text(
        "from tether.checkpoint import run_batch\n"
        "items = [{'id': 'i%d' % n} for n in range(40)]\n"
        "run_batch(lambda it: {'v': it['id']}, items, key=lambda it: it['id'], concurrency=4, progress=False)\n"
    )
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(stage)}
    server = [py, "-S", "-m", "tether.server"]
    run = subprocess.run(
        [
            *server,
            "run",
            "--root",
            str(root),
            "--run-id",
            "r1",
            "--experiment",
            "exp",
            "--cwd",
            str(code),
            "--",
            py,
            "-S",
            "exp.py",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    final = json.loads((code / "results" / "results.json").read_text())
    assert final["completed"] == 40 and [r["v"] for r in final["results"]][:2] == ["i0", "i1"]

    def server_json(*args: str) -> Any:
        done = subprocess.run([*server, *args], env=env, capture_output=True, text=True, timeout=60, check=True)
        return json.loads(done.stdout)

    scan = server_json("progress", "--root", str(root))
    assert [(r["id"], r["status"], r["completed"]) for r in scan["runs"]] == [("r1", "completed", 40)]
    manifest = server_json("manifest", "--base", str(code), "results")
    assert list(manifest["files"]) == ["results/results.json"]
    agents = server_json("agents", "--root", str(root), "--json")
    assert [(e["id"], e["status"]) for e in agents["entries"]] == [("r1", "completed")]
