"""Results belong to their run: a run reference names exactly one run (an exact id or experiment name wins over a
prefix; several matches are refused), a pull never silently replaces another run's result, and a finished run's
record never changes when later runs reuse its results folder."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tests.helpers import tether, tether_checked, tether_json, wait_for, wait_status, write_project
from tether import vocab
from tether.state import ManagedRunRecord, ManagedShardRecord, open_state
from tether.testing.sshd import SshdHost

EXP_BIG = '[experiments.exp_big]\ncommand = "python3 exp.py --items 100000"\nresults = "results_big"\n'


def _record_managed_run(experiment: str) -> str:
    """A managed run of ``experiment`` whose controller is gone, as local state records it (no server yet)."""
    now = time.time()
    run_id = f"{experiment}-20260101-000000-beef"
    with open_state() as st:
        st.add_managed_run(
            ManagedRunRecord(
                id=run_id,
                experiment=experiment,
                shards=1,
                args=[],
                profile=None,
                hosts=[],
                max_usd=None,
                sync_every=120.0,
                mode="journal",
                status=vocab.MANAGED_RUNNING,
                reason=None,
                started=now,
                ended=None,
                results_path=None,
                cost_usd=0.0,
                controller_pid=None,
                cancel_requested=False,
                updated=now,
            ),
            [
                ManagedShardRecord(
                    run_id=run_id,
                    shard=0,
                    status=vocab.SHARD_PENDING,
                    server=None,
                    own_host=False,
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
                    updated=now,
                )
            ],
        )
    return run_id


def _managed_status(run_id: str) -> str:
    with open_state() as st:
        rec = st.managed_run(run_id)
        assert rec is not None
        return rec.status


def test_a_run_reference_resolves_exactly_first_and_refuses_to_guess(tmp_path: Path) -> None:
    project = write_project(tmp_path / "proj", items=100_000, extra=EXP_BIG)
    big = tether_json("run", "exp_big", "--local", "--", "--delay", "0.05", cwd=project)["run_id"]
    managed_big = _record_managed_run("exp_big")
    assert managed_big.startswith("exp")

    # `exp` has no run yet: refused (exit 2), never taken as a prefix of exp_big's runs.
    nothing = tether("cancel", "exp", "--json", cwd=project)
    assert nothing.returncode == 2, (nothing.stdout, nothing.stderr)
    assert "no runs" in json.loads(nothing.stdout)["error"]
    assert _managed_status(managed_big) == vocab.MANAGED_RUNNING
    assert wait_status(project, big, {"running"})["status"] == "running"

    # With a run of its own, `exp` is that run: exp_big's plain and managed runs go on.
    mine = tether_json("run", "exp", "--local", "--", "--delay", "0.05", cwd=project)["run_id"]
    wait_status(project, mine, {"running"})
    cancelled = tether_json("cancel", "exp", cwd=project)
    assert cancelled["id"] == mine and cancelled["status"] == "cancelled", cancelled
    assert _managed_status(managed_big) == vocab.MANAGED_RUNNING
    assert wait_status(project, big, {"running"})["status"] == "running"
    logs = tether("logs", "exp", cwd=project)
    assert logs.returncode == 0 and mine in logs.stdout

    # A prefix of several runs (exp_big's plain and managed) is refused, naming them; so is one of no run.
    for command in (["cancel", "exp_big-"], ["logs", "exp_big-"], ["attach", "exp_big-"]):
        several = tether(*command, cwd=project)
        assert several.returncode == 2, (command, several.stderr)
        assert big in several.stderr and managed_big in several.stderr, several.stderr
    assert tether("logs", "nope", cwd=project).returncode == 2
    # A unique prefix still works; an exact id always wins.
    assert tether("logs", mine[:-2], cwd=project).returncode == 0
    assert tether_json("cancel", big, cwd=project)["status"] == "cancelled"
    assert _managed_status(managed_big) == vocab.MANAGED_RUNNING
    wait_for(lambda: wait_status(project, big, {"cancelled"}), 30, "exp_big's run to be cancelled")


def _host_block(name: str, host: SshdHost) -> str:
    return (
        f'[hosts.{name}]\naddress = "{host.address}"\nidentity_file = "{host.identity_file}"\n'
        f'remote_root = "{host.root_dir}"\n'
    )


SLOW = '[experiments.slow]\ncommand = "python3 exp.py --items 100000"\nresults = "slow_results"\n'


def _pull(project: Path, host: str) -> dict[str, Any]:
    doc = tether_checked("pull", host, schema="pull", cwd=project)
    (report,) = doc["pulls"]
    return dict(report)


def test_a_pull_never_silently_replaces_another_runs_result(
    tmp_path: Path, sshd_hosts: tuple[SshdHost, SshdHost]
) -> None:
    a, b = sshd_hosts
    project = write_project(tmp_path / "proj", extra=_host_block("a", a) + _host_block("b", b) + SLOW)
    for host in ("a", "b"):
        assert tether("up", host, cwd=project).returncode == 0
    local = project / "results" / "results.json"

    run_a = tether_json("run", "exp", "--on", "a", cwd=project)["run_id"]
    wait_status(project, run_a, {"completed"}, host="a")
    assert _pull(project, "a")["kept_aside"] == []
    from_a = local.read_bytes()
    assert json.loads(from_a)["completed"] == 20

    run_b = tether_json("run", "exp", "--on", "b", "--", "--items", "5", cwd=project)["run_id"]
    wait_status(project, run_b, {"completed"}, host="b")
    pulled = _pull(project, "b")
    assert pulled["verified"] is True
    kept_as = f"results/results.json.before-{run_b}"
    assert pulled["kept_aside"] == [
        {"path": "results/results.json", "kept_as": kept_as, "made_by": run_a, "made_on": "a", "replaced_by": run_b}
    ]
    assert (project / kept_as).read_bytes() == from_a  # A's 20 results, byte for byte
    assert json.loads(local.read_bytes())["completed"] == 5
    said = tether("pull", "b", cwd=project)  # nothing changed on b since: nothing to keep, nothing said
    assert said.returncode == 0 and "kept the earlier" not in said.stderr
    # A again: its server has not changed, so nothing replaces B's file (and A's stays kept).
    assert _pull(project, "a")["kept_aside"] == []
    assert json.loads(local.read_bytes())["completed"] == 5 and (project / kept_as).read_bytes() == from_a

    # A run updating the files it brought (a live journal pulled twice) keeps nothing aside.
    slow = tether_json("run", "slow", "--on", "b", "--", "--delay", "0.1", cwd=project)["run_id"]
    journal = project / "slow_results" / "results.journal.jsonl"

    def pulled_items() -> int:
        first = _pull(project, "b")
        assert first["kept_aside"] == [], first
        return len(journal.read_text().splitlines()) - 1 if journal.exists() else 0

    seen = wait_for(lambda: pulled_items() >= 2 and pulled_items(), 60, "the slow run's journal to come home")
    wait_for(lambda: pulled_items() > seen, 60, "the slow run's journal to grow and come home again")
    assert tether_json("cancel", slow, cwd=project)["status"] == "cancelled"
    assert _pull(project, "b")["kept_aside"] == []
    assert sorted(p.name for p in (project / "slow_results").iterdir() if ".before-" in p.name) == []
