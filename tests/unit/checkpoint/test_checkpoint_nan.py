"""NaN and Infinity in results: refused at record, since results.json must stay valid JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from tests.unit.checkpoint.ckpt_helpers import journal_records
from tether.checkpoint import Checkpoint, run_batch
from tether.errors import CheckpointError


def strict_json(text: str) -> Any:
    """Parse as a strict reader (a browser, jq, another language) would: NaN and Infinity are not JSON."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, {"score": [1.0, math.nan]}])
def test_non_finite_numbers_are_refused_at_record_and_nothing_is_written(tmp_path: Path, bad: Any) -> None:
    with Checkpoint(tmp_path, total=2) as ck:
        ck.record("ok", {"score": 0.5})
        with pytest.raises(CheckpointError) as info:
            ck.record("bad", bad)
        assert info.value.message == (
            "The result for item bad holds NaN or Infinity, which JSON cannot represent; it was not recorded."
        )
        assert info.value.hint and "math.isfinite" in info.value.hint
        assert not ck.is_done("bad")
    assert [r["id"] for r in journal_records(tmp_path / "results.journal.jsonl")] == ["ok"]


def test_run_batch_fails_the_item_and_keeps_results_json_valid(tmp_path: Path) -> None:
    def fn(i: int) -> float:
        return math.nan if i == 2 else i / 2

    summary = run_batch(fn, [1, 2, 3], tmp_path, progress=False)
    assert summary.completed == 2 and summary.failed_by == {"CheckpointError": 1} and summary.final_path is None
    failure = {r["id"]: r for r in journal_records(tmp_path / "results.journal.jsonl")}[2]
    assert "NaN or Infinity" in failure["error"] and failure["error_type"] == "CheckpointError"
    summary = run_batch(fn, [1, 2, 3], tmp_path, progress=False, allow_failures=True)
    assert summary.final_path is not None
    assert strict_json(summary.final_path.read_text()) == {
        "completed": 2,
        "total": 3,
        "failed": 1,
        "results": [0.5, 1.5],
    }


def test_a_nan_journaled_by_an_older_version_is_refused_at_finalize(tmp_path: Path) -> None:
    with Checkpoint(tmp_path, total=1) as ck:
        pass
    journal = tmp_path / "results.journal.jsonl"
    with journal.open("a") as fh:
        fh.write('{"id":"x","ok":true,"result":NaN,"t":1.0}\n')  # what json.dumps wrote before
    with Checkpoint(tmp_path, total=1) as ck:
        list(ck.pending(["x"]))
        with pytest.raises(CheckpointError, match=r'item "x" holds NaN or Infinity.*results.json was not written'):
            ck.finalize()
    assert not (tmp_path / "results.json").exists() and journal.exists()


def test_a_config_with_nan_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="config is not JSON-serializable"):
        Checkpoint(tmp_path, config={"temperature": math.nan})
