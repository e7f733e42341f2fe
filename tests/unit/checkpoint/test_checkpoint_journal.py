"""The journal: record, resume by id, repair a torn tail, refuse corruption and config changes, finalize."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import pytest

from tether.checkpoint import Checkpoint, CheckpointWarning, config_hash, read_progress
from tether.errors import CheckpointError

ITEMS: list[dict[str, Any]] = [{"id": f"q{i}", "x": i} for i in range(10)]


def key(it: dict[str, Any]) -> str:
    return str(it["id"])


def fill(folder: Path, upto: int, **kw: Any) -> Checkpoint:
    ck = Checkpoint(folder, config={"model": "m1"}, **kw)
    with ck:
        for it in ck.pending(ITEMS, key=key):
            if it["x"] >= upto:
                break
            ck.record(it["id"], {"answer": it["x"] * 2})
    return ck


def test_finalize_writes_runbook_shape_in_item_order_and_removes_partial_files(tmp_path: Path) -> None:
    ck = Checkpoint(tmp_path, config={"model": "m1"})
    with ck:
        # record out of order: the final file must still follow the items' order
        for it in reversed(list(ck.pending(ITEMS, key=key))):
            ck.record(it["id"], {"answer": it["x"] * 2})
        path = ck.finalize()
    assert path == tmp_path / "results.json"
    doc = json.loads(path.read_text())
    assert doc == {"completed": 10, "total": 10, "results": [{"answer": i * 2} for i in range(10)]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_journal_contract_header_and_one_flushed_line_per_item(tmp_path: Path) -> None:
    ck = Checkpoint(tmp_path, config={"model": "m1", "dataset": "easy"}, total=10).open()
    try:
        ck.record("a", [1, "é"])
        ck.record_failure(7, ValueError("bad input"))
        # read by another handle while the checkpoint is still open: each record is already in the file
        lines = (tmp_path / "results.journal.jsonl").read_bytes().split(b"\n")
        header = json.loads(lines[0])
        assert header["tether_journal"] == 1
        assert header["name"] == "results"
        assert header["config"] == {"model": "m1", "dataset": "easy"}
        assert header["config_hash"] == config_hash({"dataset": "easy", "model": "m1"})
        assert header["total"] == 10
        assert header["created"].endswith("Z")
        ok, bad = json.loads(lines[1]), json.loads(lines[2])
        assert ok["id"] == "a" and ok["ok"] is True and ok["result"] == [1, "é"] and ok["t"] > 0
        assert bad == {
            "id": 7,
            "ok": False,
            "error": "ValueError: bad input",
            "error_type": "ValueError",
            "t": bad["t"],
        }
        assert lines[3] == b""
    finally:
        ck.close()


def test_fsync_every_interval_items(tmp_path: Path) -> None:
    ck = Checkpoint(tmp_path, interval=10, interval_seconds=None).open()
    for i in range(35):
        ck.record(i, i)
    assert ck.stats["fsyncs"] == 3
    ck.close()
    assert ck.stats["fsyncs"] == 4  # close makes the rest durable


def test_resume_is_by_id_not_position(tmp_path: Path) -> None:
    fill(tmp_path, upto=4)
    shuffled = list(reversed(ITEMS))
    ck = Checkpoint(tmp_path, config={"model": "m1"})
    with ck:
        todo = [it["x"] for it in ck.pending(shuffled, key=key)]
        assert todo == [9, 8, 7, 6, 5, 4]
        assert ck.completed == 4 and ck.result("q3") == {"answer": 6}
        for x in todo:
            ck.record(f"q{x}", {"answer": x * 2})
        doc = json.loads(ck.finalize(order=[it["id"] for it in ITEMS]).read_text())
    assert [r["answer"] for r in doc["results"]] == [i * 2 for i in range(10)]


def test_int_and_str_ids_are_distinct_and_bad_ids_are_refused(tmp_path: Path) -> None:
    with Checkpoint(tmp_path) as ck:
        ck.record(7, "int")
        ck.record("7", "str")
        assert ck.result(7) == "int" and ck.result("7") == "str"
        for bad in (1.5, True, None, {"id": 1}):
            with pytest.raises(CheckpointError, match="must be str or int"):
                ck.record(bad, 1)  # type: ignore[arg-type]
    with Checkpoint(tmp_path) as ck:
        assert list(ck.pending([7, "7", 8])) == [8]


def test_unserializable_result_is_refused_and_nothing_written(tmp_path: Path) -> None:
    with Checkpoint(tmp_path) as ck:
        before = ck.journal_path.read_bytes()
        with pytest.raises(CheckpointError, match="not JSON-serializable"):
            ck.record("a", {1, 2})
        assert ck.journal_path.read_bytes() == before


def test_torn_last_line_at_every_byte_offset_resumes_with_every_complete_record(tmp_path: Path) -> None:
    src = tmp_path / "src"
    fill(src, upto=5)
    data = (src / "results.journal.jsonl").read_bytes()
    last_start = data.rindex(b"\n", 0, len(data) - 1) + 1
    assert data[last_start:].startswith(b'{"id":"q4"')
    for cut in range(last_start, len(data)):
        folder = tmp_path / f"cut{cut}"
        folder.mkdir()
        (folder / "results.journal.jsonl").write_bytes(data[:cut])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ck = Checkpoint(folder, config={"model": "m1"}).open()
        complete_but_newline = cut == len(data) - 1
        expected_done = 5 if complete_but_newline else 4
        assert ck.completed == expected_done, cut
        if cut == last_start or complete_but_newline:
            assert ck.dropped_tail is None
        else:
            assert ck.dropped_tail == data[last_start:cut]
            assert any("torn last line" in str(w.message) for w in caught)
            assert any("torn last line" in text for text in ck.warnings)
            assert all(issubclass(w.category, CheckpointWarning) for w in caught)
        assert next(it["id"] for it in ck.pending(ITEMS, key=key)) == f"q{expected_done}"
        for it in ITEMS[expected_done:]:
            ck.record(it["id"], {"answer": it["x"] * 2})
        ck.close()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the repaired journal replays cleanly: no warning, no error
            ck = Checkpoint(folder, config={"model": "m1"}).open()
        doc = json.loads(ck.finalize(order=[it["id"] for it in ITEMS]).read_text())
        assert doc["results"] == [{"answer": i * 2} for i in range(10)], cut


def test_corrupt_middle_line_is_refused_with_its_line_number_and_file_untouched(tmp_path: Path) -> None:
    fill(tmp_path, upto=6)
    journal = tmp_path / "results.journal.jsonl"
    lines = journal.read_bytes().split(b"\n")
    lines[3] = lines[3][:20] + b"GARBAGE" + lines[3][20:]
    journal.write_bytes(b"\n".join(lines))
    before = journal.read_bytes()
    with pytest.raises(CheckpointError) as info:
        Checkpoint(tmp_path, config={"model": "m1"}).open()
    assert "line 4" in info.value.message and str(journal) in info.value.message
    assert info.value.hint
    assert journal.read_bytes() == before


def test_valid_json_that_is_not_a_record_is_corrupt_too(tmp_path: Path) -> None:
    fill(tmp_path, upto=3)
    journal = tmp_path / "results.journal.jsonl"
    lines = journal.read_bytes().split(b"\n")
    lines.insert(2, b'{"hello": 1}, {"id": 5, "ok": true, "result": 1}')
    journal.write_bytes(b"\n".join(lines))
    before = journal.read_bytes()
    with pytest.raises(CheckpointError, match="line 3"):
        Checkpoint(tmp_path, config={"model": "m1"}).open()
    assert journal.read_bytes() == before


def test_changed_config_is_refused_naming_keys_and_journal_unchanged(tmp_path: Path) -> None:
    fill(tmp_path, upto=3)
    journal = tmp_path / "results.journal.jsonl"
    before = journal.read_bytes()
    with pytest.raises(CheckpointError) as info:
        Checkpoint(tmp_path, config={"model": "m2", "prompt": "v2"}).open()
    msg = info.value.message
    assert "model" in msg and '"m1"' in msg and '"m2"' in msg and "prompt" in msg
    assert "allow_config_change=True" in str(info.value)
    assert journal.read_bytes() == before

    with pytest.warns(CheckpointWarning, match="changed config"):
        ck = Checkpoint(tmp_path, config={"model": "m2"}, allow_config_change=True).open()
    assert ck.completed == 3
    ck.close()
    header = json.loads(journal.read_bytes().split(b"\n")[0])
    assert header["config"] == {"model": "m2"}
    assert header["previous_config_hashes"] == [config_hash({"model": "m1"})]
    with Checkpoint(tmp_path, config={"model": "m2"}) as again:  # now the journal's config
        assert again.completed == 3


def test_failed_items_are_not_completed_are_retried_and_block_finalize(tmp_path: Path) -> None:
    with Checkpoint(tmp_path) as ck:
        for i in ck.pending([1, 2, 3]):
            if i == 2:
                ck.record_failure(i, RuntimeError("timeout"))
            else:
                ck.record(i, i * 10)
        assert ck.completed == 2 and ck.failed == {2: "RuntimeError: timeout"}
        with pytest.raises(CheckpointError, match="1 items failed") as info:
            ck.finalize()
        assert "allow_failures=True" in str(info.value)
    assert read_progress(tmp_path)["failed"] == 1  # type: ignore[index]
    with Checkpoint(tmp_path) as ck:
        assert list(ck.pending([1, 2, 3])) == [2]
        ck.record(2, 20)
        assert ck.failed == {}
        doc = json.loads(ck.finalize().read_text())
    assert doc == {"completed": 3, "total": 3, "results": [10, 20, 30]}


def test_allow_failures_leaves_failed_items_out_and_counts_them(tmp_path: Path) -> None:
    with Checkpoint(tmp_path) as ck:
        list(ck.pending(["a", "b", "c"]))
        ck.record("a", 1)
        ck.record_failure("b", "HTTP 500")
        ck.record("c", 3)
        doc = json.loads(ck.finalize(allow_failures=True).read_text())
    assert doc == {"completed": 2, "total": 3, "failed": 1, "results": [1, 3]}


def test_finalize_refuses_missing_items_unless_allowed(tmp_path: Path) -> None:
    with Checkpoint(tmp_path) as ck:
        ck.record("a", 1)
        with pytest.raises(CheckpointError, match="no result"):
            ck.finalize(order=["a", "b"])
        doc = json.loads(ck.finalize(order=["a", "b"], allow_missing=True).read_text())
    assert doc == {"completed": 1, "total": 2, "results": [1]}


def test_insertion_order_when_no_order_is_given(tmp_path: Path) -> None:
    with Checkpoint(tmp_path) as ck:
        for k in ("z", 3, "a"):
            ck.record(k, str(k))
    with Checkpoint(tmp_path) as ck:
        ck.record("b", "b")
        doc = json.loads(ck.finalize().read_text())
    assert doc["results"] == ["z", "3", "a", "b"]


def test_duplicate_ids_are_refused_naming_them(tmp_path: Path) -> None:
    with Checkpoint(tmp_path) as ck, pytest.raises(CheckpointError) as info:
        items: list[dict[str, Any]] = [{"id": "a"}, {"id": "b"}, {"id": "a"}, {"id": 3}, {"id": 3}]
        ck.pending(items, key=lambda it: it["id"])
    assert '"a"' in info.value.message and "3" in info.value.message
    assert "nothing was run" in info.value.message


@pytest.mark.parametrize("layout", ["parent_is_file", "folder_is_file"])
def test_unwritable_results_folder(tmp_path: Path, layout: str) -> None:
    # Tests run as root, which ignores permission bits; a path through or onto a regular file fails for root too.
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    folder = blocker / "results" if layout == "parent_is_file" else blocker
    with pytest.raises(CheckpointError) as info:
        Checkpoint(folder).open()
    assert str(folder) in info.value.message
    assert info.value.hint and "folder" in info.value.hint
    assert blocker.read_text() == "x"


def test_progress_file_is_readable_from_outside_and_final_replaces_it(tmp_path: Path) -> None:
    ck = Checkpoint(tmp_path, name="run1", total=4, progress_interval=0.0).open()
    ck.record("a", 1)
    ck.record_failure("b", "boom")
    doc = json.loads((tmp_path / "run1.progress.json").read_text())
    assert set(doc) == {
        "name", "completed", "failed", "failed_by", "total", "started", "updated", "rate_per_s", "eta_s", "pid",
        "finished",
    }  # fmt: skip
    assert doc["name"] == "run1" and doc["completed"] == 1 and doc["failed"] == 1 and doc["total"] == 4
    assert doc["failed_by"] == {"error": 1}  # a plain message: no status, no error type
    assert doc["pid"] == os.getpid() and doc["finished"] is False and doc["rate_per_s"] > 0
    assert doc["eta_s"] is not None and doc["started"].endswith("Z")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    ck.record("b", 2)
    ck.finalize(order=["a", "b"], allow_missing=True)
    assert not (tmp_path / "run1.progress.json").exists()
    assert read_progress(tmp_path, "run1") == {
        "name": "run1", "completed": 2, "failed": 0, "total": 4, "finished": True,
    }  # fmt: skip
    assert read_progress(tmp_path, "other") is None


def test_progress_not_rewritten_on_every_item(tmp_path: Path) -> None:
    # An interval no run of this test reaches, however loaded the machine: the count does not depend on its pace.
    ck = Checkpoint(tmp_path, progress_interval=3600).open()
    for i in range(200):
        ck.record(i, i)
    written = ck.stats["progress_bytes"]
    one = len((tmp_path / "results.progress.json").read_bytes())
    assert written <= one
    ck.close()


def test_finished_checkpoint_runs_nothing_again(tmp_path: Path) -> None:
    with Checkpoint(tmp_path) as ck:
        for i in ck.pending([1, 2]):
            ck.record(i, i)
        path = ck.finalize()
    before = path.read_bytes()
    with pytest.warns(CheckpointWarning, match="finished earlier"), Checkpoint(tmp_path) as ck:
        assert ck.already_finalized
        assert list(ck.pending([1, 2, 3])) == []
        assert ck.finalize() == path
        with pytest.raises(CheckpointError, match="already finalized"):
            ck.record(3, 3)
    assert path.read_bytes() == before


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    with Checkpoint(tmp_path) as first:
        first.record(1, 1)
        with pytest.raises(CheckpointError, match="Another process"):
            Checkpoint(tmp_path).open()
    with Checkpoint(tmp_path) as second:  # released on close
        assert second.completed == 1


def test_from_env_prefers_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETHER_RESULTS_DIR", str(tmp_path / "env"))
    assert Checkpoint.from_env(tmp_path / "arg").results_dir == tmp_path / "env"
    monkeypatch.delenv("TETHER_RESULTS_DIR")
    assert Checkpoint.from_env(tmp_path / "arg").results_dir == tmp_path / "arg"
    with pytest.raises(CheckpointError, match="TETHER_RESULTS_DIR"):
        Checkpoint.from_env()


def test_bad_name_and_config_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="plain file name"):
        Checkpoint(tmp_path, name="../x")
    with pytest.raises(CheckpointError, match="not JSON-serializable"):
        Checkpoint(tmp_path, config={"f": object()})


def test_null_and_falsy_results_are_kept_after_replay(tmp_path: Path) -> None:
    with Checkpoint(tmp_path) as ck:
        values: list[Any] = [None, 0, "", [], {}, False]
        for i, value in enumerate(values):
            ck.record(i, value)
    with Checkpoint(tmp_path) as ck:
        assert ck.completed == 6 and ck.result(0) is None
        ck.record(6, None)  # recorded now, not replayed
        doc = json.loads(ck.finalize().read_text())
    assert doc == {"completed": 7, "total": 7, "results": [None, 0, "", [], {}, False, None]}
