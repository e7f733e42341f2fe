"""Schema 8: each run carries its project (a run here, recorded before, gets its folder), and a failed run's log tail
is claimed shown once; forgetting the run forgets that too. The scope rule reads records written before it (a
server run then: one of the project's experiments)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tether.config import Project
from tether.scope import Scope
from tether.state import MIGRATIONS, open_state

INSERT = (
    "INSERT INTO runs(id, experiment, host, argv, cwd, results_dir, log_path, session, started, status)"
    " VALUES (?, ?, ?, '[]', ?, ?, '/log', 's', 1.0, 'failed')"
)


def _schema_7(path: Path, project: Path) -> None:
    db = sqlite3.connect(path)
    for script in MIGRATIONS[:7]:
        db.executescript(script)
    db.execute("PRAGMA user_version = 7")
    db.execute(INSERT, ("here", "exp", "local", str(project), f"{project}/results"))
    db.execute(INSERT, ("elsewhere", "exp", "local", "/elsewhere", "/elsewhere/results"))
    db.execute(INSERT, ("there", "exp", "lab1", "/srv/root/proj", "/srv/root/proj/results"))
    db.execute(INSERT, ("theirs", "train", "lab1", "/srv/root/other", "/srv/root/other/results"))
    db.commit()
    db.close()


def test_older_records_get_their_project_and_the_scope_reads_them(tmp_path: Path) -> None:
    folder = tmp_path / "proj"
    folder.mkdir()
    (folder / "tether.toml").write_text('[project]\nname = "proj"\n\n[experiments.exp]\ncommand = "true"\n')
    path = tmp_path / "state.db"
    _schema_7(path, folder)
    with open_state(path) as st:
        projects = {r.id: r.project for r in st.runs()}
        assert projects == {"here": str(folder), "elsewhere": "/elsewhere", "there": None, "theirs": None}
        scope = Scope.of(Project(folder, None, folder / "tether.toml"))
        assert [r.id for r in scope.records(st)] == ["here", "there"]
        assert {r.id for r in Scope.of(Project(folder, None, folder / "tether.toml"), True).records(st)} == {
            "here",
            "elsewhere",
            "there",
            "theirs",
        }


def test_a_tail_is_claimed_once_until_its_run_is_forgotten(tmp_path: Path) -> None:
    with open_state(tmp_path / "state.db") as st:
        st.db.execute(INSERT, ("r1", "exp", "local", "/p", "/p/results"))
        assert st.claim_tails([("local", "r1"), ("lab1", "r2")]) == {("local", "r1"), ("lab1", "r2")}
        assert st.claim_tails([("local", "r1"), ("lab1", "r2")]) == set()
        assert st.forget_runs(["r1"]) == 1
        assert st.claim_tails([("local", "r1"), ("lab1", "r2")]) == {("local", "r1")}


def test_a_finished_shard_recorded_before_schema_8_counts_what_its_final_pull_brought_home(tmp_path: Path) -> None:
    """Before schema 8 the final pull set a shard's completed but not its synced (49 of 60 shown beside done 60)."""
    path = tmp_path / "state.db"
    _schema_7(path, tmp_path)
    db = sqlite3.connect(path)
    shard = (
        "INSERT INTO managed_shards(run_id, shard, status, completed, total, synced, updated) VALUES (?,?,?,?,?,?,1)"
    )
    db.execute(shard, ("m", 0, "completed", 60, 60, 49))
    db.execute(shard, ("m", 1, "releasing", 30, 30, 12))
    db.execute(shard, ("m", 2, "running", 40, 60, 35))  # not home yet: what its last sync brought stands
    db.commit()
    db.close()
    with open_state(path) as st:
        assert [(s.shard, s.completed, s.synced) for s in st.managed_shards("m")] == [
            (0, 60, 60),
            (1, 30, 30),
            (2, 40, 35),
        ]
