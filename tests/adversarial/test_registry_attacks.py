"""Attacks on the agent registry: odd figures in hand-written entries, runbook entries that never heart-beat, a lock
file deleted or replaced while held, and processes that only pretend to be agents. Each test checks the message
and that nothing in the file was lost or changed."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import tether
from tests.registry_fixtures import gpus, reg_path, registry
from tether.errors import NoRoom
from tether.server.registry import Registry, iso

__all__ = ["gpus", "reg_path", "registry"]

SRC = str(Path(tether.__file__).resolve().parents[1])


def read(path: Path) -> list[Any]:
    rows = json.loads(path.read_text())
    assert isinstance(rows, list)
    return rows


def same(a: Any, b: Any) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


# --------------------------------------------------------------------------------------------------------------
# gpu_gb the module cannot use is counted conservatively, never as 0

UNUSABLE = {
    "string": '"12"',
    "words": '"lots"',
    "negative": "-5",
    "nan": "NaN",
    "inf": "Infinity",
    "minus_inf": "-Infinity",
    "null": "null",
    "bool": "true",
    "list": "[4]",
    "missing": None,
}


def seed_row(gpu_gb_token: str | None, **extra: Any) -> str:
    """One runbook-shape entry as a line of JSON text (tokens like NaN are written as they are)."""
    gb = "" if gpu_gb_token is None else f'"gpu_gb": {gpu_gb_token}, '
    more = "".join(f', "{k}": {json.dumps(v)}' for k, v in extra.items())
    return f'{{"id": "odd", "experiment": "A5", {gb}"status": "running", "started": "{iso(time.time())}"{more}}}'


@pytest.mark.parametrize("token", list(UNUSABLE.values()), ids=list(UNUSABLE))
def test_unusable_gpu_gb_counts_as_the_whole_gpu(registry: Registry, reg_path: Path, token: str | None) -> None:
    row = seed_row(token)
    reg_path.write_text(f"[\n  {row}\n]\n")
    before = reg_path.read_bytes()
    with pytest.raises(NoRoom) as err:
        registry.register("b", "x", 1)
    assert "1 GB asked, 0 GB free" in err.value.message
    assert "odd (A5, 24 GB: its gpu_gb is unusable, so it counts as the whole GPU)" in err.value.message
    (holder,) = err.value.details["holders"]  # type: ignore[attr-defined]
    assert holder["id"] == "odd" and holder["gpus"] == [0] and holder["whole_gpu"] is True
    assert reg_path.read_bytes() == before  # the refusal changed nothing

    listing = registry.listing()
    assert any("entry 'odd' has an unusable gpu_gb" in p and "whole of each GPU" in p for p in listing.problems)
    (shown,) = listing.to_dict()["entries"]
    assert shown["gpu_gb"] is None and "whole of each GPU" in shown["gpu_gb_counted"]
    assert listing.gpus is not None and listing.gpus[0].free_gb == 0

    assert registry.register("api", "x", 0).status == "running"  # API-only work still runs beside it
    assert reg_path.read_text().splitlines()[1] == f"  {row},"  # its line is kept byte for byte
    registry.release("odd")  # a person marks it done: only status and ended change
    rows = read(reg_path)
    original = json.loads(row)
    assert set(rows[0]) == {*original, "ended"} and rows[0]["status"] == "completed"
    assert all(same(rows[0][k], v) for k, v in original.items() if k != "status")
    assert registry.register("b", "x", 1).gpus == [0]


def test_huge_gpu_gb_counts_as_it_says(registry: Registry, reg_path: Path) -> None:
    row = seed_row("1e12")
    reg_path.write_text(f"[\n  {row}\n]\n")
    before = reg_path.read_bytes()
    with pytest.raises(NoRoom) as err:
        registry.register("b", "x", 1)
    assert "0 GB free; held by odd (A5, 1000000000 GB)" in err.value.message
    assert reg_path.read_bytes() == before
    problems = registry.listing().problems
    assert any("gpu_gb of 1000000000000, more than any server has" in p for p in problems)


def test_unusable_gpu_gb_holds_only_the_gpus_it_names(
    registry: Registry, reg_path: Path, gpus: Callable[[str], None]
) -> None:
    gpus("2x48")
    row = seed_row('"lots"', gpus=[1])
    reg_path.write_text(f"[\n  {row}\n]\n")
    assert registry.register("b", "x", 40).gpus == [0]
    with pytest.raises(NoRoom) as err:
        registry.register("c", "x", 8)
    assert "GPU 1: 0" in err.value.message and "odd (A5, 48 GB on GPU 1: its gpu_gb is unusable" in err.value.message
    assert read(reg_path)[0] == json.loads(row)


# --------------------------------------------------------------------------------------------------------------
# an entry in the runbook's own shape (no pid, no heartbeat) is not expired by age


def server_agents(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The server side's ``agents`` command as a bare python3 runs it."""
    return subprocess.run(
        [sys.executable, "-S", "-m", "tether.server", "agents", *args],
        capture_output=True,
        text=True,
        env=dict(env, PYTHONPATH=SRC),
        timeout=60,
        check=False,
    )


def test_runbook_entry_counts_until_a_person_ends_it(registry: Registry, reg_path: Path) -> None:
    started = iso(time.time() - 5 * 3600)
    row = {"id": "agent-1", "experiment": "A5_option_bias", "gpu_gb": 20, "status": "running", "started": started}
    reg_path.write_text(json.dumps([row]))
    before = reg_path.read_bytes()
    with pytest.raises(NoRoom) as err:
        registry.register("b", "x", 10)
    assert "10 GB asked, 3.9 GB free; held by agent-1 (A5_option_bias, 20 GB)" in err.value.message
    assert reg_path.read_bytes() == before  # five hours without a heartbeat: still counted, not marked lost
    assert [(e.id, e.status) for e in registry.entries()] == [("agent-1", "running")]

    listing = registry.listing()
    (shown,) = listing.to_dict()["entries"]
    assert shown["live"] is True and shown["status"] == "running"
    assert shown["held_until"] == (
        f"marked done or removed by hand: no pid and no heartbeat, so it never expires (registered {started})"
    )
    (warning,) = listing.problems
    assert "'agent-1' has no pid and no heartbeat and was registered 5.0 h ago" in warning
    assert "tether agents done agent-1" in warning

    env = dict(os.environ)
    text = server_agents("--path", str(reg_path), env=env)
    assert text.returncode == 0, text.stderr
    line = next(x for x in text.stdout.splitlines() if x.startswith("agent-1"))
    assert "held until marked done or removed by hand: no pid and no heartbeat, so it never expires" in line
    assert "5.0 h ago" in text.stderr
    assert reg_path.read_bytes() == before  # listing changed nothing

    assert registry.release("agent-1").status == "completed"  # the person says it is done
    assert registry.register("b", "x", 10).gpus == [0]
    rows = read(reg_path)
    assert rows[0] == {**row, "status": "completed", "ended": rows[0]["ended"]}


def test_a_lease_still_expires_an_entry_that_has_one(registry: Registry, reg_path: Path) -> None:
    row = {"id": "leased", "experiment": "A5", "gpu_gb": 20, "status": "running", "started": iso(time.time() - 120)}
    reg_path.write_text(json.dumps([{**row, "lease_s": 60}]))
    assert registry.register("b", "x", 10).status == "running"
    (lost,) = [e for e in registry.entries() if e.id == "leased"]
    assert lost.status == "lost" and "lease 60 s" in (lost.note or "")
