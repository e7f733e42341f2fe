"""Shards of a checkpoint: a stable assignment by item id from TETHER_SHARD, and a merge identical to one run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tether.checkpoint import Checkpoint, CheckpointError, run_batch
from tether.checkpoint.shard import gather_shards, merge_shards, parse_shard, shard_of, split_journal


def items(n: int) -> list[dict[str, Any]]:
    return [{"id": f"q{k:04d}", "n": k} for k in range(n)]


def work(item: dict[str, Any]) -> dict[str, Any]:
    return {"id": item["id"], "double": item["n"] * 2, "text": "é ✓"}


def test_same_item_same_shard_and_shards_are_balanced() -> None:
    ids = [f"q{k:04d}" for k in range(2000)]
    first = [shard_of(i, 4) for i in ids]
    assert first == [shard_of(i, 4) for i in ids]  # stable (no hash randomisation: sha256 of the JSON id)
    sizes = [first.count(s) for s in range(4)]
    assert sum(sizes) == 2000 and min(sizes) > 420 and max(sizes) < 580
    assert shard_of("anything", 1) == 0


@pytest.mark.parametrize("text", ["", "3", "4/4", "-1/4", "a/b", "1/0"])
def test_a_bad_shard_value_is_refused_with_its_value(text: str) -> None:
    with pytest.raises(CheckpointError, match="TETHER_SHARD"):
        parse_shard(text)


def test_sharded_runs_merge_into_the_bytes_of_a_single_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    given = items(101)
    single = run_batch(work, given, tmp_path / "single", key=lambda it: it["id"], progress=False)
    assert single.final_path is not None
    folders = []
    seen: list[str] = []
    for k in range(3):
        monkeypatch.setenv("TETHER_SHARD", f"{k}/3")
        folder = tmp_path / f"shard{k}"
        ck = Checkpoint(folder, total=len(given))
        with ck:
            mine = list(ck.pending(given, key=lambda it: it["id"]))
            seen += [it["id"] for it in mine]
            for it in mine:
                ck.record(it["id"], work(it))
            ck.finalize()
        assert ck.progress()["total"] == len(mine)  # a shard counts its own items
        folders.append(folder)
    monkeypatch.delenv("TETHER_SHARD")
    assert sorted(seen) == sorted(it["id"] for it in given)  # every item exactly once
    assert merge_shards(folders) == single.final_path.read_bytes()


def test_merge_refuses_a_missing_shard_and_a_shard_with_failures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    given = items(20)
    folders = []
    for k in range(2):
        monkeypatch.setenv("TETHER_SHARD", f"{k}/2")
        folder = tmp_path / f"s{k}"
        with Checkpoint(folder) as ck:
            for n, it in enumerate(ck.pending(given, key=lambda it: it["id"])):
                if k == 1 and n == 0:
                    ck.record_failure(it["id"], "boom")
                else:
                    ck.record(it["id"], work(it))
            ck.finalize(allow_failures=True)
        folders.append(folder)
    with pytest.raises(CheckpointError, match=r"Shards \[1\] of 2 are missing"):
        merge_shards(folders[:1])
    with pytest.raises(CheckpointError, match=r"Shard 1 has \d+ results for its \d+ items"):
        merge_shards(folders)


def test_what_shards_finished_gathers_with_failures_marked_and_the_kept_journal_resumes_only_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shard that finished and one whose item failed (no final file, as run_batch leaves it): the finished
    results come together in item order with the failure counted, exactly as one run's finalize(allow_failures=
    True) writes them, and each shard's part of the kept journal resumes every finished item."""
    given = items(30)
    key = lambda it: it["id"]  # noqa: E731
    failing = next(it["id"] for it in given if shard_of(it["id"], 2) == 1)
    with Checkpoint(tmp_path / "single") as one:
        for it in one.pending(given, key=key):
            one.record_failure(it["id"], "refused") if it["id"] == failing else one.record(it["id"], work(it))
        single = one.finalize(allow_failures=True).read_bytes()
    folders = []
    for k in range(2):
        monkeypatch.setenv("TETHER_SHARD", f"{k}/2")
        folder = tmp_path / f"s{k}"
        with Checkpoint(folder, total=len(given)) as ck:
            for it in ck.pending(given, key=key):
                ck.record_failure(it["id"], "refused") if it["id"] == failing else ck.record(it["id"], work(it))
            if k == 0:
                ck.finalize()
        folders.append(folder)
    monkeypatch.delenv("TETHER_SHARD")
    got = gather_shards(folders)
    assert (got.completed, got.failed, got.total, got.complete) == (29, 1, 30, False)
    assert got.final == single
    assert got.journal is not None
    for k in range(2):
        part, done = split_journal(got.journal, k, 2)
        monkeypatch.setenv("TETHER_SHARD", f"{k}/2")
        folder = tmp_path / f"again{k}"
        folder.mkdir()
        (folder / "results.journal.jsonl").write_bytes(part)
        with Checkpoint(folder, total=len(given)) as ck:
            left = [it["id"] for it in ck.pending(given, key=key)]
        assert left == ([failing] if k == 1 else [])
        assert done == sum(1 for it in given if shard_of(it["id"], 2) == k and it["id"] != failing)
