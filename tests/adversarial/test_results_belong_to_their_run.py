"""Results belong to their run: a run reference names exactly one run (an exact id or experiment name wins over a
prefix; several matches are refused), a pull never silently replaces another run's result, and a finished run's
record never changes when later runs reuse its results folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.e2e.conftest import Cloud, vast_project
from tests.e2e.managed_helpers import FAST, running_instance, start_tether
from tests.helpers import tether, tether_checked, tether_json, wait_for, wait_status, write_project
from tether import config, vocab
from tether.context import Ctx
from tether.dashboard.snapshot import build
from tether.paths import local_root
from tether.server import procinfo
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

    # A second run on the same host replaces the first one's file there: the first one's is kept here.
    on_b = b.root_dir / "proj" / "results" / "results.json"
    from_b = local.read_bytes()
    on_b.unlink()
    run_b2 = tether_json("run", "exp", "--on", "b", "--", "--items", "7", cwd=project)["run_id"]
    wait_status(project, run_b2, {"completed"}, host="b")
    result = tether("pull", "b", "--json", cwd=project)
    assert result.returncode == 0, result.stderr
    assert f"kept the earlier results/results.json (made by run {run_b} on b) as" in result.stderr  # says so
    assert json.loads(result.stdout)["pulls"][0]["kept_aside"] == [
        {
            "path": "results/results.json",
            "kept_as": f"results/results.json.before-{run_b2}",
            "made_by": run_b,
            "made_on": "b",
            "replaced_by": run_b2,
        }
    ]
    assert (project / "results" / f"results.json.before-{run_b2}").read_bytes() == from_b
    assert json.loads(local.read_bytes())["completed"] == 7

    # A pulled file edited here is not what the run brought: the next change from that run keeps the edit aside.
    local.write_bytes(local.read_bytes() + b"\n")
    edited = local.read_bytes()
    on_b.write_bytes(on_b.read_bytes().replace(b'"total": 7', b'"total": 8'))
    (kept,) = _pull(project, "b")["kept_aside"]
    assert kept["made_by"] is None and kept["replaced_by"] == run_b2, kept
    assert kept["kept_as"] == f"results/results.json.before-{run_b2}-2"
    assert (project / kept["kept_as"]).read_bytes() == edited and local.read_bytes() == on_b.read_bytes()
    # Every earlier result is still here: A's, B's first, and the edit.
    assert len(list((project / "results").glob("results.json.before-*"))) == 3

    # Two pulls at once (a `sync` beside a `pull`) after the file changed here and there: both succeed, the
    # local edit survives beside the new file whoever moves it, and no earlier file is overwritten.
    local.write_bytes(local.read_bytes() + b" ")
    edited_again = local.read_bytes()
    earlier = {p.name: p.read_bytes() for p in (project / "results").glob("results.json.before-*")}
    on_b.write_bytes(on_b.read_bytes().replace(b'"total": 8', b'"total": 9'))
    racing = [
        subprocess.Popen(
            [sys.executable, "-m", "tether", "pull", "b", "--json"],
            cwd=project,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in racing]
    assert [p.returncode for p in racing] == [0, 0], outputs
    kept_now = {p.name: p.read_bytes() for p in (project / "results").glob("results.json.before-*")}
    assert all(kept_now[name] == data for name, data in earlier.items())
    assert edited_again in kept_now.values() and local.read_bytes() == on_b.read_bytes()


NAMED = """\
import argparse, time
from tether.checkpoint import run_batch

p = argparse.ArgumentParser()
p.add_argument("--name", default="results")
p.add_argument("--items", type=int, default=6)
p.add_argument("--delay", type=float, default=0.0)
p.add_argument("--fail", default="")
a = p.parse_args()
fail = set(a.fail.split(",")) if a.fail else set()

def work(item):
    time.sleep(a.delay)
    if item["id"] in fail:
        raise ValueError("bad item " + item["id"])
    return {"id": item["id"]}

items = [{"id": "i%03d" % n} for n in range(a.items)]
run_batch(work, items, key=lambda it: it["id"], name=a.name, config={"items": a.items}, concurrency=2,
          progress=False, retries=0, allow_failures=True)
"""
SHARED = '[experiments.named]\ncommand = "python3 named.py"\nresults = "shared"\n'


def _runs(project: Path, host: str = "--local") -> dict[str, dict[str, Any]]:
    doc = tether_checked("progress", host, schema="progress", cwd=project)
    return {r["id"]: r for h in doc["hosts"] for r in h["runs"]}


def _counts(run: dict[str, Any]) -> tuple[str, int, int, int | None]:
    return run["status"], run["completed"], run["failed"], run["total"]


def test_a_finished_runs_record_never_changes_when_later_runs_share_its_folder(
    tmp_path: Path, sshd_host: SshdHost
) -> None:
    project = write_project(tmp_path / "proj", extra=SHARED + _host_block("lab", sshd_host))
    (project / "named.py").write_text(NAMED)
    assert tether("up", "lab", cwd=project).returncode == 0
    shared = sshd_host.root_dir / "proj" / "shared"

    # A finished run with failures shows its own final counts, failures included.
    on_lab = ("run", "named", "--on", "lab", "--")
    first = tether_json(*on_lab, "--name", "a", "--fail", "i001,i002", cwd=project)["run_id"]
    wait_status(project, first, {"completed"}, host="lab")
    assert json.loads((shared / "a.json").read_text())["failed"] == 2
    assert _counts(_runs(project, "lab")[first]) == ("completed", 4, 2, 6)

    # A live run in the same folder: its progress is its own, and the finished run's record does not move.
    second = tether_json(
        "run", "named", "--on", "lab", "--", "--name", "b", "--items", "400", "--delay", "0.05", cwd=project
    )["run_id"]
    live = wait_for(lambda: (r := _runs(project, "lab")[second])["completed"] >= 4 and r, 60, "the second to progress")
    assert live["status"] == "running" and live["total"] == 400 and live["failed"] == 0, live
    assert _counts(_runs(project, "lab")[first]) == ("completed", 4, 2, 6)
    with open_state() as st:  # the dashboard's data: the finished run's row is its own, not the live run's
        board = build(Ctx(config.load(project / "tether.toml"), st))
    rows = {r["id"]: r for group in board["runs"] for r in group["runs"]}
    assert _counts(rows[first]) == ("completed", 4, 2, 6) and rows[first]["rate_per_s"] is None
    assert rows[second]["total"] == 400
    cancelled = tether_json("cancel", second, cwd=project)
    assert cancelled["status"] == "cancelled"
    stopped = _counts(_runs(project, "lab")[second])
    assert stopped[0] == "cancelled" and 4 <= stopped[1] < 400 and stopped[3] == 400, stopped

    # A third run resumes the second's journal and finishes it: only the third shows 400/400.
    third = tether_json("run", "named", "--on", "lab", "--", "--name", "b", "--items", "400", cwd=project)["run_id"]
    wait_status(project, third, {"completed"}, host="lab", timeout=120)
    shown = _runs(project, "lab")
    assert _counts(shown[third]) == ("completed", 400, 0, 400)
    assert _counts(shown[second]) == stopped
    assert _counts(shown[first]) == ("completed", 4, 2, 6)
    assert shown[second]["rate_per_s"] is None and shown[second]["eta_s"] is None
    status = {r["id"]: r for r in tether_checked("status", schema="status", cwd=project)["runs"]}
    assert _counts(status[second]) == stopped and _counts(status[first]) == ("completed", 4, 2, 6)

    # A record rewritten later on the server (live again, other counts) does not move what was frozen; a run.json
    # with malformed counts is read without them, and breaks nothing.
    runs_dir = sshd_host.root_dir / ".tether" / "runs"
    record = json.loads((runs_dir / second / "run.json").read_text())
    assert record["counts"]["completed"] == stopped[1]
    record.update(status="running", ended=None, counts={"completed": 999, "failed": 0, "total": 999})
    (runs_dir / second / "run.json").write_text(json.dumps(record))
    odd = dict(record, id="odd", status="completed", counts={"completed": "lots", "failed": -1})
    (runs_dir / "odd").mkdir()
    (runs_dir / "odd" / "run.json").write_text(json.dumps(odd))
    shown = _runs(project, "lab")
    assert _counts(shown[second]) == stopped and _counts(shown[first]) == ("completed", 4, 2, 6)
    assert shown["odd"]["status"] == "completed" and shown["odd"]["completed"] < 999


def test_two_live_runs_sharing_a_folder_each_show_only_their_own_progress(tmp_path: Path) -> None:
    project = write_project(tmp_path / "proj", extra=SHARED)
    (project / "named.py").write_text(NAMED)
    slow = ["--delay", "0.05"]
    first = tether_json("run", "named", "--local", "--", "--name", "a", "--items", "300", *slow, cwd=project)["run_id"]
    second = tether_json("run", "named", "--local", "--", "--name", "b", "--items", "500", *slow, cwd=project)["run_id"]

    def both_going() -> dict[str, dict[str, Any]] | None:
        shown = _runs(project)
        return (
            shown
            if all(shown[r]["status"] == "running" and shown[r]["completed"] >= 2 for r in (first, second))
            else None
        )

    shown = wait_for(both_going, 60, "both runs to make progress")
    assert shown[first]["total"] == 300 and shown[second]["total"] == 500, (shown[first], shown[second])
    assert [c["name"] for c in shown[first]["checkpoints"]] == ["a"]
    assert [c["name"] for c in shown[second]["checkpoints"]] == ["b"]
    for run_id in (first, second):
        assert tether_json("cancel", run_id, cwd=project)["status"] == "cancelled"
    ended = _runs(project)
    assert ended[first]["total"] == 300 and ended[second]["total"] == 500


def test_cancel_of_an_experiment_never_reaches_a_managed_run_of_another(tmp_path: Path, cloud: Cloud) -> None:
    project = vast_project(tmp_path, cloud, items=200)
    text = (project / "tether.toml").read_text()
    head, sep, tail = text.partition("\n[vast]")
    big = '\n[experiments.exp_big]\ncommand = "python3 exp.py --items 200"\nkind = "api"\nresults = "results_big"\n'
    (project / "tether.toml").write_text(head + big + sep + tail)
    ctl = start_tether("run", "exp_big", "--managed", *FAST, "--", "--delay", "0.1", cwd=project, env=cloud.env)
    try:
        server = running_instance(cloud, 0)
        with open_state() as st:
            (managed_big,) = st.managed_runs("exp_big")
        assert managed_big.id.startswith("exp")
        mine = tether_json("run", "exp", "--local", "--", "--delay", "0.1", cwd=project)["run_id"]
        cancelled = tether("cancel", "exp", "--json", cwd=project, env=cloud.env)
        assert cancelled.returncode == 0, cancelled.stderr
        assert json.loads(cancelled.stdout)["id"] == mine
        assert _managed_status(managed_big.id) == vocab.MANAGED_RUNNING and ctl.poll() is None
        assert cloud.emulator.instances[server.id].state == "running"
        several = tether("cancel", "exp", "x", cwd=project, env=cloud.env)
        assert several.returncode == 2  # usage: one RUN
        stopped = tether("cancel", "exp_big", "--json", cwd=project, env=cloud.env, timeout=300)
        assert stopped.returncode == 0, stopped.stderr
        assert json.loads(stopped.stdout)["id"] == managed_big.id
        ctl.communicate(timeout=120)
        assert cloud.emulator.billing_instances() == []
    finally:
        if ctl.poll() is None:
            ctl.kill()
            ctl.communicate()


def test_a_killed_run_keeps_its_counts_when_the_next_run_writes_over_its_checkpoint(tmp_path: Path) -> None:
    project = write_project(tmp_path / "proj", extra=SHARED)
    (project / "named.py").write_text(NAMED)
    args = ("--name", "b", "--items", "300")
    killed = tether_json("run", "named", "--local", "--", *args, "--delay", "0.05", cwd=project)["run_id"]
    seen = wait_for(lambda: (r := _runs(project)[killed])["completed"] >= 4 and r, 60, "the run to progress")
    record = json.loads((local_root() / ".tether" / "runs" / killed / "run.json").read_text())
    # The machine loses both processes at once: no end is recorded, nobody looks before the next run starts.
    os.kill(int(record["pid"]), signal.SIGKILL)
    os.killpg(int(record["child_pid"]), signal.SIGKILL)

    def gone() -> bool:
        return not any(procinfo.is_alive(int(record[k]), None, None) for k in ("pid", "child_pid"))

    wait_for(gone, 30, "the processes to die")
    last = json.loads((project / "shared" / "b.progress.json").read_text())["completed"]
    assert last >= seen["completed"]

    resumed = tether_json("run", "named", "--local", "--", *args, cwd=project)["run_id"]
    wait_status(project, resumed, {"completed"}, timeout=120)
    shown = _runs(project)
    assert _counts(shown[resumed]) == ("completed", 300, 0, 300)
    assert _counts(shown[killed]) == ("dead", last, 0, 300), shown[killed]


def test_the_managed_merge_keeps_every_earlier_file_through_the_one_keep_aside_rule(tmp_path: Path) -> None:
    from tether.managed import local as managed

    out = tmp_path / "results.json"
    out.write_bytes(b"made here")
    managed._place(out, b"first merge", "exp-mabc")
    managed._place(out, b"first merge", "exp-mabc")  # the same bytes again: nothing moves
    managed._place(out, b"second merge", "exp-mabc")  # merged again under the same id: the first is kept too
    assert out.read_bytes() == b"second merge"
    assert (tmp_path / "results.json.before-exp-mabc").read_bytes() == b"made here"
    assert (tmp_path / "results.json.before-exp-mabc-2").read_bytes() == b"first merge"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "results.json",
        "results.json.before-exp-mabc",
        "results.json.before-exp-mabc-2",
    ]


def test_pulls_racing_to_keep_one_file_aside_move_it_once_and_lose_nothing(tmp_path: Path) -> None:
    import hashlib
    import threading

    from tether.pull import keep_aside

    new_sha = hashlib.sha256(b"newer").hexdigest()
    for round_no in range(20):  # many rounds: each interleaving of link and unlink must keep exactly one copy
        folder = tmp_path / f"round{round_no}"
        folder.mkdir()
        path = folder / "results.json"
        path.write_bytes(b"earlier")
        (folder / "results.json.before-r1").write_bytes(b"taken by another pull")
        start = threading.Barrier(8)
        moved: list[Path | None] = []
        errors: list[BaseException] = []

        def race(path: Path, start: threading.Barrier, moved: list[Path | None], errors: list[BaseException]) -> None:
            start.wait()
            try:
                moved.append(keep_aside(path, new_sha, "r1"))
            except BaseException as exc:  # any error is the finding
                errors.append(exc)

        threads = [threading.Thread(target=race, args=(path, start, moved, errors)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        (aside,) = [m for m in moved if m is not None]
        assert aside.name.startswith("results.json.before-r1-") and aside.read_bytes() == b"earlier"
        assert sorted(p.name for p in folder.iterdir()) == sorted(["results.json.before-r1", aside.name])
        assert (folder / "results.json.before-r1").read_bytes() == b"taken by another pull"
        assert keep_aside(aside, hashlib.sha256(b"earlier").hexdigest(), "r2") is None  # same bytes: nothing moves


def test_an_older_server_side_that_sums_a_shared_folder_freezes_nothing(tmp_path: Path) -> None:
    from tether import runs
    from tether.hosts import local_target
    from tether.state import RunRecord

    project = config.load(write_project(tmp_path / "proj") / "tether.toml")
    target = local_target(project)
    with open_state() as st:
        st.add_run(
            RunRecord("r1", "exp", target.name, ["x"], "/p", "/p/results", "log", "s", 1.0, None, None, "running")
        )
        summed = vocab.RunInfo(id="r1", experiment="exp", status="completed", exit_code=0, completed=120, total=120)
        old = vocab.Scan.from_json({"host": "h", "time": 2.0, "runs": [summed.to_json()]})
        assert old.attributed is False
        runs.refresh(st, target, old)
        (rec,) = st.runs()
        assert rec.frozen is None and rec.status == "completed"  # the status is copied, the summed counts are not
        own = vocab.RunInfo(id="r1", experiment="exp", status="completed", exit_code=0, completed=53, total=60)
        runs.refresh(
            st, target, vocab.Scan.from_json({"host": "h", "time": 3.0, "attributed": True, "runs": [own.to_json()]})
        )
        later = runs.refresh(st, target, old)  # an older server side again: the frozen record stands
        (rec,) = st.runs()
        assert rec.frozen is not None and (rec.completed, rec.total) == (53, 60)
        assert (later.runs[0].completed, later.runs[0].total) == (53, 60)
