"""A server a live managed controller owns is left alone by the autopilot, ``stop`` and ``destroy`` (by the owner
on its instance record, not by its name); and shard set-ups staging the server side in one process do not clash."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import write_project
from tether import autopilot, provision, vocab
from tether.config import load
from tether.context import Ctx
from tether.errors import PolicyRefusal
from tether.managed.local import controller_lock, live_owner, owner_of
from tether.state import InstanceRecord, ManagedRunRecord, open_state


def _run(run_id: str, status: vocab.ManagedStatus = "running") -> ManagedRunRecord:
    return ManagedRunRecord(
        id=run_id,
        experiment="exp",
        shards=1,
        args=[],
        profile="api",
        hosts=[],
        max_usd=None,
        sync_every=60.0,
        mode="journal",
        status=status,
        reason=None,
        started=1.0,
        ended=None,
        results_path=None,
        cost_usd=0.0,
        controller_pid=None,
        cancel_requested=False,
        updated=1.0,
    )


def _instance(name: str) -> InstanceRecord:
    return InstanceRecord(name, "vast", "77", "root@127.0.0.1:2222", "/workspace", "running", 0.2, 0.0, 1.0, 1.0, {})


def test_a_server_of_a_live_managed_run_is_left_alone_by_its_owner_not_its_name(tmp_path: Path) -> None:
    project = load(write_project(tmp_path / "p") / "tether.toml")
    with open_state() as st:
        ctx = Ctx(project, st)
        st.add_managed_run(_run("exp-m1"), [])
        st.upsert_instance(_instance("renamed-server"))
        st.upsert_instance(_instance("exp-m1-s0-9"))  # the run's name prefix, but not its server
        st.set_instance_owner("renamed-server", owner_of("exp-m1"))
        assert live_owner(st, "renamed-server") is None  # no controller runs: nothing owns it now
        with controller_lock("exp") as (held, _):
            assert held
            owner = live_owner(st, "renamed-server")
            assert owner is not None and owner.id == "exp-m1"
            assert live_owner(st, "exp-m1-s0-9") is None
            with pytest.raises(PolicyRefusal, match="belongs to managed run exp-m1, whose controller is running"):
                autopilot.destroy(ctx, "renamed-server")
            with pytest.raises(PolicyRefusal, match="tether cancel exp-m1"):
                autopilot.guard_stop(ctx, "renamed-server")
            st.update_managed_run("exp-m1", status="completed")
            assert live_owner(st, "renamed-server") is None  # a finished run owns nothing


def test_two_stagings_of_the_server_side_in_one_process_do_not_clash(monkeypatch: pytest.MonkeyPatch) -> None:
    """A second shard's set-up stages while the first is half way through copying (as threads do): both end
    with the same complete stage, and neither loses its folder under the other."""
    real_copy = shutil.copy2
    nested: list[Any] = []

    def copy_and_let_another_stage(src: Any, dst: Any) -> Any:
        if not nested:
            nested.append(None)
            nested[0] = provision.server_lib_stage()  # the other set-up, in the middle of this one
        return real_copy(src, dst)

    monkeypatch.setattr(shutil, "copy2", copy_and_let_another_stage)
    stage, version = provision.server_lib_stage()
    assert nested == [(stage, version)]
    assert (stage / "tether" / ".complete").read_text() == version
    assert (stage / "tether" / "vocab.py").is_file()
    assert [p.name for p in stage.parent.iterdir()] == [version]  # no temporary folder left behind
