"""Local state keeps what users have across the schema change that moved the kv facts into the hosts table."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tether.state import MIGRATIONS, HostFacts, open_state


def _schema_2(path: Path) -> None:
    db = sqlite3.connect(path)
    for script in MIGRATIONS[:2]:
        db.executescript(script)
    db.execute("PRAGMA user_version = 2")
    db.executemany(
        "INSERT INTO kv(key, value) VALUES (?, ?)",
        [
            ("up:lab1", "abc123"),
            ("push:lab1", "f00d"),
            ("python:lab1", "/usr/bin/python3.11"),
            ("push:box", "beef"),
        ],
    )
    db.commit()
    db.close()


def test_kv_facts_move_into_host_columns(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    _schema_2(path)
    with open_state(path) as st:
        assert st.host_facts("lab1") == HostFacts(
            "lab1", server_version="abc123", python="/usr/bin/python3.11", pushed_fingerprint="f00d", updated=0.0
        )
        assert st.host_facts("box").pushed_fingerprint == "beef" and st.host_facts("box").server_version is None
        assert st.host_facts("never").server_version is None
        version = st.db.execute("PRAGMA user_version").fetchone()[0]
        assert version == len(MIGRATIONS)
        tables = {r[0] for r in st.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "kv" not in tables


def test_host_facts_change_only_what_is_given(tmp_path: Path) -> None:
    with open_state(tmp_path / "state.db") as st:
        st.set_host_facts("lab1", server_version="v1", python="/opt/py")
        facts = st.set_host_facts("lab1", pushed_fingerprint="fp", no_env=True)
        assert (facts.server_version, facts.python, facts.pushed_fingerprint, facts.no_env) == (
            "v1",
            "/opt/py",
            "fp",
            True,
        )
        assert st.set_host_facts("lab1", no_env=False).no_env is False


def test_processes_opening_a_new_state_at_once_all_succeed(tmp_path: Path) -> None:
    """Two `tether up` started together both create the schema: the second must see the first's, not fail."""
    import subprocess
    import sys

    code = (
        "import sys, time; from pathlib import Path; from tether.state import open_state\n"
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
        "st = open_state(Path(sys.argv[1])); st.close()\n"
    )
    for trial in range(5):
        path = tmp_path / f"state{trial}.db"
        import time

        at = str(time.time() + 0.6)
        procs = [
            subprocess.Popen([sys.executable, "-c", code, str(path), at], stderr=subprocess.PIPE, text=True)
            for _ in range(4)
        ]
        errors = [p.communicate()[1] for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
        with open_state(path) as st:
            assert st.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
