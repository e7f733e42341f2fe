"""One journal, one writer: two processes opening a fresh Checkpoint on one folder at the same moment.

Each trial hands both writer processes a fresh folder and a moment to start at (they spin until it), the second
one 0 to 6 ms after the first (the window where both see no journal yet and create one), so their ``open`` calls
race; each records its own item and closes. A writer that reports success must find its record in
the journal afterwards; the other may be refused ("Another process is writing ..."), never silently dropped.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

TRIALS = 60

WRITER = textwrap.dedent(
    """
    import sys, time
    from tether.checkpoint import Checkpoint
    from tether.errors import CheckpointError

    me = sys.argv[1]
    for line in sys.stdin:
        folder, start = line.split()
        while time.time() < float(start):
            pass  # spin: both writers leave this loop within microseconds of each other
        try:
            ck = Checkpoint(folder, total=2, interval=1)
            ck.open()
            ck.record(me, {"by": me})
            ck.close()
            print("ok", flush=True)
        except CheckpointError as exc:
            print("refused " + exc.message.replace("\\n", " "), flush=True)
    """
)


def journal_ids(folder: Path) -> set[str]:
    path = folder / "results.journal.jsonl"
    if not path.exists():
        return set()
    lines = path.read_bytes().split(b"\n")
    return {json.loads(line)["id"] for line in lines[1:] if line}


def test_two_processes_opening_one_fresh_checkpoint_never_lose_a_record(tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    names = ("a", "b")
    procs = {
        n: subprocess.Popen(
            [sys.executable, str(script), n], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        for n in names
    }
    losses: list[str] = []
    refusals = 0
    try:
        for trial in range(TRIALS):
            folder = tmp_path / f"trial{trial:02d}"
            start = time.time() + 0.05
            offsets = (0.0, (trial % 30) * 0.0002) if trial % 2 else ((trial % 30) * 0.0002, 0.0)
            for proc, offset in zip(procs.values(), offsets, strict=True):
                assert proc.stdin is not None
                proc.stdin.write(f"{folder} {start + offset!r}\n")
                proc.stdin.flush()
            answers = {}
            for n, proc in procs.items():
                assert proc.stdout is not None
                answers[n] = proc.stdout.readline().strip()
            kept = journal_ids(folder)
            for n, answer in answers.items():
                if answer == "ok":
                    if n not in kept:
                        losses.append(f"trial {trial}: {n} reported success, its record is not in the journal")
                else:
                    assert answer.startswith("refused Another process is writing the journal"), answer
                    refusals += 1
            assert "ok" in answers.values(), f"trial {trial}: both writers were refused: {answers}"
    finally:
        for proc in procs.values():
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in procs.values():
            proc.wait(timeout=30)
            if proc.stdout is not None:
                proc.stdout.close()
    assert losses == [], f"{len(losses)} silent losses in {TRIALS} trials ({refusals} refusals): {losses[:5]}"
