"""The managed-run tables (schema 4): a run and its shards round-trip, and changes touch only what is given."""

from __future__ import annotations

from pathlib import Path

from tether.state import ManagedRunRecord, ManagedShardRecord, open_state


def test_a_managed_run_and_its_shards_round_trip(tmp_path: Path) -> None:
    run = ManagedRunRecord(
        id="exp-m1",
        experiment="exp",
        shards=2,
        args=["--x", "1"],
        profile="api",
        hosts=["lab1"],
        max_usd=2.5,
        sync_every=120.0,
        mode="journal",
        status="running",
        reason=None,
        started=1.0,
        ended=None,
        results_path=None,
        cost_usd=0.0,
        controller_pid=42,
        cancel_requested=False,
        updated=1.0,
    )
    shard = ManagedShardRecord(
        run_id="exp-m1",
        shard=0,
        status="pending",
        server="lab1",
        own_host=True,
        run=None,
        attempt=0,
        recoveries=0,
        restarts=0,
        completed=0,
        total=None,
        synced=0,
        last_sync=None,
        last_seen=None,
        last_failure=None,
        failures=0,
        reason=None,
        retry_at=None,
        updated=1.0,
    )
    with open_state(tmp_path / "state.db") as st:
        st.add_managed_run(run, [shard, ManagedShardRecord(**{**shard.__dict__, "shard": 1, "own_host": False})])
        assert st.managed_run("exp-m1") == run
        changed = st.update_managed_shard("exp-m1", 1, status="running", server="exp-m1-s1-1", completed=7)
        assert (changed.status, changed.server, changed.completed, changed.own_host) == (
            "running",
            "exp-m1-s1-1",
            7,
            False,
        )
        again = st.update_managed_run("exp-m1", cancel_requested=True, hosts=["lab1", "lab2"])
        assert again.cancel_requested is True and again.hosts == ["lab1", "lab2"] and again.args == ["--x", "1"]
        assert [s.shard for s in st.managed_shards("exp-m1")] == [0, 1]
