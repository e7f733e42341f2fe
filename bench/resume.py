"""Time to resume a 100,000-item journal until the first new item starts.

A journal of 100,000 completed items (results of ~500 bytes) plus 10 new items: resume_s is the time from
calling run_batch until the item function is first called (open, replay, config check, duplicate check,
pending). Baseline: the runbook's resume (json.load of a results_partial.json holding the same 100,000
results, indent=2, then items[done:]) until its first new item. Median of 7, the two alternating; each
repeat gets a fresh copy of the journal (the finished run removes it).

Run: python bench/resume.py   (last line: JSON figures)
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, median, note
from tether.checkpoint import Checkpoint, run_batch

DONE = 100_000
NEW = 10
RESULT_BYTES = 500
REPEATS = 7
CONFIG = {"model": "bench", "dataset": "synthetic", "prompt": "v3"}


def result_of(i: int) -> dict[str, Any]:
    return {"id": f"item-{i}", "label": "ABCD"[i % 4], "text": ("lorem ipsum " * 50)[: RESULT_BYTES - 60]}


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-resume-"))
    try:
        items = [{"id": f"item-{i}"} for i in range(DONE + NEW)]
        source = work / "source"
        ck = Checkpoint(source, config=CONFIG)
        with ck:
            for i in range(DONE):
                ck.record(f"item-{i}", result_of(i))
        journal_bytes = ck.journal_path.stat().st_size
        partial = work / "results_partial.json"
        with open(partial, "w") as fh:
            json.dump({"completed": DONE, "total": DONE + NEW, "results": [result_of(i) for i in range(DONE)]}, fh,
                      indent=2)  # fmt: skip
        note(f"journal {journal_bytes / 1e6:.1f} MB, runbook partial {partial.stat().st_size / 1e6:.1f} MB")

        tether_s: list[float] = []
        base_s: list[float] = []
        for rep in range(REPEATS):  # tether and baseline alternate, so both see the same machine load
            folder = work / f"run{rep}"
            shutil.copytree(source, folder)
            first: list[float] = []

            def fn(item: dict[str, Any], first: list[float] = first) -> dict[str, Any]:
                if not first:
                    first.append(time.perf_counter())
                return {"id": item["id"]}

            t0 = time.perf_counter()
            summary = run_batch(fn, items, folder, key=lambda it: it["id"], config=CONFIG, progress=False)
            assert summary.skipped == DONE and summary.completed == NEW
            tether_s.append(first[0] - t0)
            shutil.rmtree(folder)

            t0 = time.perf_counter()
            # --- the runbook's resume ---
            checkpoint = json.load(open(partial))  # noqa: SIM115 - the runbook's code
            done = checkpoint["completed"]
            todo = items[done:]
            # --- end ---
            base_s.append(time.perf_counter() - t0)
            assert todo[0]["id"] == f"item-{DONE}"
            note(f"repeat {rep + 1}: tether {tether_s[-1]:.3f} s, runbook {base_s[-1]:.3f} s")
        emit(
            {
                "done_items": DONE,
                "new_items": NEW,
                "result_bytes": RESULT_BYTES,
                "journal_bytes": journal_bytes,
                "repeats": REPEATS,
                "resume_s": round(median(tether_s), 4),
                "resume_s_min": round(min(tether_s), 4),
                "baseline_resume_s_min": round(min(base_s), 4),
                "baseline_resume_s": round(median(base_s), 4),
                "ratio_vs_baseline": round(median(tether_s) / median(base_s), 2),
                "baseline": "runbook json.load of results_partial.json (indent=2) + items[done:], by position",
                "goal": "resume_s < 1",
            }
        )
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
