"""Adopting a results_partial.json left by the runbook's own checkpoint code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tether.checkpoint import Checkpoint, CheckpointWarning, run_batch
from tether.errors import CheckpointError

ITEMS: list[dict[str, Any]] = [{"id": f"item-{i}", "x": i} for i in range(8)]


def runbook_partial(folder: Path, done: int, completed: int | None = None) -> Path:
    """What the runbook's loop leaves behind after ``done`` items (its own json.dump, indent=2)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "results_partial.json"
    doc = {
        "completed": done if completed is None else completed,
        "total": len(ITEMS),
        "results": [{"x": i, "runbook": True} for i in range(done)],
    }
    with open(path, "w") as fh:
        json.dump(doc, fh, indent=2)
    return path


def test_partial_results_map_to_the_first_item_ids_and_file_is_renamed_aside(tmp_path: Path) -> None:
    partial = runbook_partial(tmp_path, done=5)
    original = partial.read_bytes()
    calls: list[str] = []

    def fn(it: dict[str, object]) -> dict[str, object]:
        calls.append(str(it["id"]))
        return {"x": it["x"], "runbook": False}

    with pytest.warns(CheckpointWarning, match="Adopted 5 results"):
        summary = run_batch(fn, ITEMS, tmp_path, key=lambda it: it["id"], progress=False)
    assert calls == ["item-5", "item-6", "item-7"]
    assert summary.skipped == 5 and summary.completed == 3
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["completed"] == 8
    assert [r["x"] for r in doc["results"]] == list(range(8))
    assert [r["runbook"] for r in doc["results"]] == [True] * 5 + [False] * 3
    assert not partial.exists()
    assert (tmp_path / "results_partial.json.adopted").read_bytes() == original


def test_adoption_is_journaled_before_the_rename(tmp_path: Path) -> None:
    runbook_partial(tmp_path, done=3)
    with pytest.warns(CheckpointWarning), Checkpoint(tmp_path) as ck:
        assert [it["x"] for it in ck.pending(ITEMS, key=lambda it: it["id"])] == [3, 4, 5, 6, 7]
    lines = (tmp_path / "results.journal.jsonl").read_bytes().split(b"\n")[1:-1]
    assert [json.loads(line)["id"] for line in lines] == ["item-0", "item-1", "item-2"]
    with Checkpoint(tmp_path) as ck:  # a later run: nothing to adopt, the journal remembers
        assert ck.completed == 3


def test_runbook_counter_reset_uses_all_results(tmp_path: Path) -> None:
    # The runbook's resume restarts enumerate() at 0, so "completed" can be smaller than the results held.
    runbook_partial(tmp_path, done=6, completed=2)
    with pytest.warns(CheckpointWarning) as caught, Checkpoint(tmp_path) as ck:
        assert [it["x"] for it in ck.pending(ITEMS, key=lambda it: it["id"])] == [6, 7]
    messages = [str(w.message) for w in caught]
    assert any("completed=2" in m for m in messages) and any("Adopted 6 results" in m for m in messages), messages


def test_partial_that_is_not_json_is_refused_and_left_untouched(tmp_path: Path) -> None:
    partial = runbook_partial(tmp_path, done=4)
    torn = partial.read_bytes()[:-40]  # the runbook truncates before writing: a crash leaves half a file
    partial.write_bytes(torn)
    calls: list[object] = []
    with pytest.raises(CheckpointError) as info:
        run_batch(calls.append, ITEMS, tmp_path, key=lambda it: it["id"], progress=False)
    assert str(partial) in info.value.message and "not valid JSON" in info.value.message
    assert calls == []
    assert partial.read_bytes() == torn
    assert not (tmp_path / "results_partial.json.adopted").exists()


def test_partial_with_more_results_than_items_is_refused(tmp_path: Path) -> None:
    partial = runbook_partial(tmp_path, done=8)
    before = partial.read_bytes()
    with Checkpoint(tmp_path) as ck, pytest.raises(CheckpointError, match="only 3 items"):
        ck.pending(ITEMS[:3], key=lambda it: it["id"])
    assert partial.read_bytes() == before


def test_partial_of_the_wrong_shape_is_refused(tmp_path: Path) -> None:
    partial = tmp_path / "results_partial.json"
    partial.write_text('{"completed": 1}')
    with pytest.raises(CheckpointError, match="not of the form"):
        Checkpoint(tmp_path).open()
    assert partial.read_text() == '{"completed": 1}'
