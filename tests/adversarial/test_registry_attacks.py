"""Attacks on the agent registry: odd figures in hand-written entries, runbook entries that never heart-beat, a lock
file deleted or replaced while held, and processes that only pretend to be agents. Each test checks the message
and that nothing in the file was lost or changed."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.registry_fixtures import gpus, reg_path, registry
from tether.errors import NoRoom
from tether.server.registry import Registry, iso

__all__ = ["gpus", "reg_path", "registry"]


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
