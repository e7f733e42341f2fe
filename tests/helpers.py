"""Helpers for tests that drive tether the way a user does: the real command in a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tether.testing import FAKES as FAKES  # the fake nvidia-smi (real output formats; FAKE_NVIDIA_SMI chooses GPUs)


def fake_gpu_env(mode: str) -> dict[str, str]:
    """Environment with the fake nvidia-smi first on PATH, showing the GPUs ``mode`` names (e.g. "1x24")."""
    return {**os.environ, "PATH": f"{FAKES}{os.pathsep}{os.environ['PATH']}", "FAKE_NVIDIA_SMI": mode}


def tether(
    *args: str, cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m tether ARGS`` in ``cwd`` and return what it did (never raises on a non-zero exit)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "tether", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def tether_json(*args: str, cwd: Path, env: Mapping[str, str] | None = None) -> Any:
    result = tether(args[0], "--json", *args[1:], cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


def run_status(cwd: Path, run_id: str, host: str | None = None) -> dict[str, Any] | None:
    args = ["progress"] + ([host] if host else [])
    doc = tether_json(*args, cwd=cwd)
    for h in doc["hosts"]:
        for run in h["runs"]:
            if run["id"] == run_id:
                return dict(run)
    return None


def wait_status(cwd: Path, run_id: str, states: set[str], host: str | None = None, timeout: float = 60) -> Any:
    def check() -> dict[str, Any] | None:
        run = run_status(cwd, run_id, host)
        return run if run and run["status"] in states else None

    return wait_for(check, timeout, f"run {run_id} to reach {sorted(states)}")


EXPERIMENT = '''\
"""A test experiment: items with ids, a configurable delay, results through tether.checkpoint."""
import argparse, os, time
from tether.checkpoint import run_batch

p = argparse.ArgumentParser()
p.add_argument("--items", type=int, default=20)
p.add_argument("--delay", type=float, default=0.0)
p.add_argument("--fail", default="")
a = p.parse_args()
fail = set(a.fail.split(",")) if a.fail else set()

def work(item):
    time.sleep(a.delay)
    if item["id"] in fail:
        raise ValueError("bad item " + item["id"])
    return {"id": item["id"], "value": item["n"] * 2}

items = [{"id": "i%03d" % n, "n": n} for n in range(a.items)]
s = run_batch(work, items, key=lambda it: it["id"], config={"items": a.items}, concurrency=2, progress=False,
              retries=0, allow_failures=False)
print("summary", s.completed, s.failed)
'''


def write_project(root: Path, *, name: str = "proj", extra: str = "", items: int = 20) -> Path:
    """A small project with one experiment ``exp`` that uses the checkpoint library."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "exp.py").write_text(EXPERIMENT)
    (root / "tether.toml").write_text(
        f"""[project]
name = "{name}"
setup_packages = []
apt_packages = []

[experiments.exp]
command = "python3 exp.py --items {items}"
kind = "api"
items = {items}
item_seconds = 0.01
results = "results"
{extra}
"""
    )
    return root


def tether_checked(*args: str, schema: str, cwd: Path, env: Mapping[str, str] | None = None, code: int = 0) -> Any:
    """Run ``tether ARGS --json``, check its exit code (``code``), and validate its one JSON document against the
    shipped schema ``schema`` (against ``error`` when ``code`` is not 0: every failure has that shape)."""
    from tether import schemas

    result = tether(*args, "--json", cwd=cwd, env=env)
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    doc = json.loads(result.stdout)
    schemas.validate("error" if code else schema, doc)
    return doc


def book_offer(offer_id: int, dph: float, **fields: Any) -> dict[str, Any]:
    """An offer of the emulator's shipped book's first kind at exactly ``dph`` $/hr (no storage cost), with its own
    id and contract, on machine ``offer_id % 100000``, reliable (0.99); ``fields`` override any of it."""
    from tether.emulator.vast import load_offer_book

    base = dict(load_offer_book()[0])
    base.update(
        id=offer_id,
        ask_contract_id=offer_id,
        machine_id=offer_id % 100000,
        dph_base=dph,
        storage_cost=0.0,
        reliability=0.99,
        reliability2=0.99,
    )
    base.update(fields)
    return base
