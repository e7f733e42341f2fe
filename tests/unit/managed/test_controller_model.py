"""A model test of the managed-run controller: Hypothesis drives the pure rules (:mod:`tether.managed.rules`) and
a small in-memory applier over a fake provider and fake servers through random event orders (preemption, a
vanished host, unreachable, start failures, failed items, final pulls that fail, budget refusals, cancel, the
controller killed and restarted at any step) and checks the invariants after every step:

- at most K servers alive per run, and no shard holds two;
- never more committed than the budget;
- no result that is home (synced or pulled) is computed again;
- nothing billing once the run is final or paused (but a server the user was told about);
- with the faults stopped, the run reaches a final or paused state within a bounded number of steps;
- what finished is in the project's results folder at the end (the real merge, on real files).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tether import vocab
from tether.checkpoint import shard as shard_lib
from tether.managed import rules
from tether.managed.local import bring_together
from tether.state import ManagedShardRecord

K = 2
ITEMS = 6  # all items; each shard gets those whose stable hash says so
MAX_USD = 3.0
SERVER_USD = 1.0  # what one rental commits (the model's price for a shard's remaining work)
OPTS = rules.Options(shards=K, unreachable_after_s=300.0, sync_every=60.0)
IDS = [f"i{n}" for n in range(ITEMS)]
SHARD_IDS = {i: [x for x in IDS if shard_lib.shard_of(x, K) == i] for i in range(K)}
BOUND = 400  # steps to a final or paused state once the faults stop


@dataclasses.dataclass
class Server:
    name: str
    shard: int
    state: str = "running"  # running, stopped, gone, exited
    reachable: bool = True
    pull_broken: bool = False  # every final pull from it fails (e.g. a link the pull refuses)
    done: set[str] = dataclasses.field(default_factory=set)
    failed: set[str] = dataclasses.field(default_factory=set)
    run: str | None = None
    run_status: str = "running"


class ManagedModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0
        self.shards = {i: self._record(i) for i in range(K)}
        self.servers: dict[str, Server] = {}
        self.jobs: dict[int, tuple[vocab.Action, bool]] = {}  # shard -> (action, effect already happened)
        self.synced: dict[int, dict[str, Any]] = {i: {} for i in range(K)}  # journal copies: id -> result
        self.synced_failed: dict[int, set[str]] = {i: set() for i in range(K)}
        self.pulled: dict[int, dict[str, Any] | None] = {i: None for i in range(K)}  # final files home
        self.pulled_from: dict[int, str] = {}
        self.computed: dict[str, int] = {}
        self.bad_items: set[str] = set()
        self.final: str | None = None  # the run's end: finish, pause, cancel
        self.provider_down = False
        self.runs = 0
        self.told: set[str] = set()  # servers a paused reason names
        self.merged: dict[str, Any] | None = None
        self.cancel_requested = False

    # ------------------------------------------------------------------------------------------ the applier
    def _record(self, i: int) -> ManagedShardRecord:
        return ManagedShardRecord(
            run_id="m",
            shard=i,
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
            updated=self.now,
        )

    def alive(self) -> list[Server]:
        return [s for s in self.servers.values() if s.state != "gone"]

    def server_of(self, i: int) -> Server | None:
        name = self.shards[i].server
        return self.servers.get(name) if name else None

    def home(self, i: int) -> set[str]:
        got = set(self.synced[i])
        if self.pulled[i] is not None:
            got |= set(self.pulled[i] or {})
        return got

    def observe(self, sh: ManagedShardRecord) -> rules.Observation:
        self.runs += 1
        srv = self.server_of(sh.shard)
        if self.provider_down:
            return rules.Observation(provider_asked=False, run_id=f"r{self.runs}")
        obs = rules.Observation(instance=srv.state if srv else None, run_id=f"r{self.runs}")
        if sh.status == vocab.SHARD_PENDING:
            committed = len(self.alive()) * SERVER_USD
            if committed + SERVER_USD > MAX_USD:
                return dataclasses.replace(obs, budget=f"${committed + SERVER_USD:.2f} past ${MAX_USD:.2f}")
        if sh.status == vocab.SHARD_FINISHING:
            return dataclasses.replace(obs, home=self.pulled_from.get(sh.shard) == sh.server)
        if sh.status != vocab.SHARD_RUNNING or srv is None or srv.state != "running" or not srv.reachable:
            return obs
        run = None
        if srv.run == sh.run:
            total = len(SHARD_IDS[sh.shard])
            exit_code = None if srv.run_status == "running" else 0 if srv.run_status == "completed" else 1
            run = vocab.RunInfo(
                id=srv.run or "",
                experiment="exp",
                status=srv.run_status,
                completed=len(srv.done),
                total=total,
                exit_code=exit_code,
                log_tail="boom" if srv.run_status == "failed" else None,
            )
        return dataclasses.replace(obs, answered=True, run=run)

    def apply(self, i: int, decision: rules.Decision) -> None:
        if decision.update:
            self.shards[i] = dataclasses.replace(self.shards[i], **decision.update, updated=self.now)
        if decision.update.get("status") == vocab.SHARD_PAUSED and decision.update.get("reason"):
            self.told |= {n for n in self.servers if n in str(decision.update.get("reason"))}
        for action in decision.actions:
            if action == "sync":
                self.sync(i)
            elif action == "destroy":
                srv = self.server_of(i)
                if srv is not None:
                    srv.state = "gone"
            else:
                assert i not in self.jobs, "a shard got a second job while one was in flight"
                self.jobs[i] = (action, False)

    def sync(self, i: int) -> None:
        srv = self.server_of(i)
        if srv is None or srv.state != "running" or not srv.reachable:
            return
        self.synced[i] = {x: {"id": x} for x in srv.done}
        self.synced_failed[i] = set(srv.failed)

    def effect(self, i: int, action: vocab.Action, ok: bool | None) -> rules.JobResult:
        """``ok``: the job does its work (True), fails (False), or fails after its rental was made (None)."""
        """What a job does to the world; returns how it ended."""
        sh = self.shards[i]
        kind, how = rules.JOB_OF[action]
        srv = self.server_of(i)
        if kind == "acquire":
            if ok is False:
                return rules.JobResult(kind, False, "the provider answered 503.")
            if how == "rent":
                assert sh.server is not None
                if srv is None:
                    srv = self.servers[sh.server] = Server(sh.server, i)
                    srv.done = set(self.synced[i])  # the last synced journal is pushed
                    srv.failed = set()
                elif srv.state != "running":
                    return rules.JobResult(kind, False, f"{srv.name} is {srv.state}.")
            if ok is None:  # rented, then its set-up failed
                return rules.JobResult(kind, False, "the set-up failed.")
            elif srv is None or srv.state not in ("running", "stopped"):
                return rules.JobResult(kind, False, "it did not start.")
            srv.state = "running"
            if srv.run != sh.run:
                srv.run, srv.run_status = sh.run, "running"
                srv.failed = set()
                self._maybe_complete(srv)
            return rules.JobResult(kind, True, server=srv.name)
        if kind == "pull":
            if not ok or srv is None or srv.state != "running" or not srv.reachable or srv.pull_broken:
                return rules.JobResult(kind, False, "the pull did not verify")
            pulled = self.pulled[i] = {x: {"id": x} for x in srv.done}
            if srv.failed:  # no final file: the journal comes home with the folder
                self.synced[i] = dict(pulled)
            self.synced_failed[i] = set(srv.failed)
            self.pulled_from[i] = srv.name
            return rules.JobResult(kind, True)
        if ok and srv is not None:
            srv.state = "gone"
        return rules.JobResult(kind, bool(ok), "" if ok else "the destroy was not confirmed")

    def _maybe_complete(self, srv: Server) -> None:
        if srv.run_status == "running" and len(srv.done) + len(srv.failed) >= len(SHARD_IDS[srv.shard]):
            srv.run_status = "completed"

    # ------------------------------------------------------------------------------------------ the controller
    @precondition(lambda self: self.final is None)
    @rule()
    def tick(self) -> None:
        for i, sh in list(self.shards.items()):
            if i in self.jobs:
                continue
            self.apply(i, rules.decide(sh, self.observe(sh), self.now, OPTS))
        for i in range(K):
            if self.shards[i].status == vocab.SHARD_RUNNING and i not in self.jobs:
                self.sync(i)
        nxt = rules.run_next(list(self.shards.values()), len(self.jobs), cancel_requested=self.cancel_requested)
        if nxt == "cancel":  # as the controller's stop_all: wait for the jobs, bring journals home, destroy, merge
            for i, (action, _happened) in sorted(self.jobs.items()):
                self.effect(i, action, True)
            self.jobs.clear()
            for i in range(K):
                self.sync(i)
            self.finish()
            self.final = "cancelled"
        elif nxt == "finish":
            self.finish()
        elif nxt == "pause":  # the controller destroys what is left (verified): nothing bills while paused
            for srv in self.alive():
                srv.state = "gone"
            self.final = "paused"

    @precondition(lambda self: bool(self.jobs) and self.final is None)
    @rule(oks=st.lists(st.sampled_from([True, False, None]), min_size=K, max_size=K))
    def jobs_end_then_tick(self, oks: list[bool | None]) -> None:
        """The jobs in flight end (each as drawn: done, or failed), then the controller looks again."""
        for n, i in enumerate(sorted(self.jobs)):
            action, happened = self.jobs.pop(i)
            result = self.effect(i, action, True if happened else oks[n % K])
            self.apply(i, rules.on_job(self.shards[i], result, self.now))
        self.tick()

    @precondition(lambda self: self.final is None)
    @rule(effects=st.lists(st.sampled_from([True, False]), min_size=K, max_size=K))
    def controller_killed_and_restarted(self, effects: list[bool]) -> None:
        """The controller dies at any step: each job in flight may or may not have done its work (a destroy sent,
        a pull that verified); nothing of it is recorded. The next controller starts from the records."""
        for n, (i, (action, _happened)) in enumerate(sorted(self.jobs.items())):
            if effects[n % K]:
                self.effect(i, action, True)
        self.jobs.clear()

    @precondition(lambda self: self.final is None)
    @rule(seconds=st.sampled_from([5.0, 60.0, 400.0]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds

    # ------------------------------------------------------------------------------------------ the world
    @rule(data=st.data(), count=st.integers(1, ITEMS))
    def work(self, data: st.DataObject, count: int) -> None:
        """A running server computes some of its shard's items (an item fails when it is a bad one)."""
        busy = [s for s in self.alive() if s.state == "running" and s.run and s.run_status == "running"]
        if not busy:
            return
        srv = data.draw(st.sampled_from(sorted(busy, key=lambda s: s.name)))
        for _ in range(count):
            self.compute_one(srv)

    def compute_one(self, srv: Server) -> None:
        left = [x for x in SHARD_IDS[srv.shard] if x not in srv.done and x not in srv.failed]
        if not left or srv.run_status != "running":
            return
        item = left[0]
        assert item not in self.home(srv.shard) or item in self.synced_failed[srv.shard], (
            f"item {item} was home and was computed again"
        )
        self.computed[item] = self.computed.get(item, 0) + 1
        if item in self.bad_items:
            srv.failed.add(item)
        else:
            srv.done.add(item)
        self._maybe_complete(srv)

    @rule(
        data=st.data(),
        how=st.sampled_from(
            ["stopped", "gone", "exited", "unreachable", "pull_broken", "provider", "bad_item", "cancel"]
        ),
    )
    def fault(self, data: st.DataObject, how: str) -> None:
        """Preemption, a vanished host, an exited one, no answer, a final pull that always fails, the provider
        down (or back), an item the experiment records as failed, ``tether cancel`` (seen at the next look)."""
        if how == "cancel":
            self.cancel_requested = self.cancel_requested or self.now > 2000.0  # once the run got going
            return
        if how == "provider":
            self.provider_down = not self.provider_down
            return
        if how == "bad_item":
            self.bad_items.add(data.draw(st.sampled_from(IDS)))
            return
        live = self.alive()
        if not live:
            return
        srv = data.draw(st.sampled_from(sorted(live, key=lambda s: s.name)))
        if how == "unreachable":
            srv.reachable = not srv.reachable
        elif how == "pull_broken":
            srv.pull_broken = True
        else:
            srv.state = how
            if srv.run_status == "running" and how == "exited":
                srv.run_status = "failed"
            if how == "gone":
                srv.done, srv.failed = set(), set()

    # ------------------------------------------------------------------------------------------ the end
    def finish(self, tmp: Path | None = None) -> None:
        """Every shard is final: the applier destroys what is left and merges with the real merge, on files."""
        for srv in self.alive():
            srv.state = "gone"
        self.final = "finished"
        import tempfile

        with tempfile.TemporaryDirectory() as base:
            folders = []
            for i in range(K):
                folder = Path(base) / f"shard-{i}"
                folder.mkdir()
                positions = [IDS.index(x) for x in SHARD_IDS[i]]
                shard_lib.write_shard_file(folder, "results", i, K, SHARD_IDS[i], ITEMS, positions)
                header = json.dumps({"tether_journal": 1, "name": "results", "config": {}, "total": None}) + "\n"
                lines = [json.dumps({"id": x, "ok": True, "result": r}) + "\n" for x, r in self.synced[i].items()]
                lines += [json.dumps({"id": x, "ok": False, "error": "refused"}) + "\n" for x in self.synced_failed[i]]
                (folder / "results.journal.jsonl").write_text(header + "".join(lines))
                pulled = self.pulled[i]
                if pulled is not None and len(pulled) == len(SHARD_IDS[i]):
                    results = [pulled[x] for x in SHARD_IDS[i]]
                    doc = {"completed": len(results), "total": len(results), "results": results}
                    (folder / "results.json").write_text(json.dumps(doc))
                folders.append(folder)
            dest = Path(base) / "project" / "results"
            bring_together(dest, folders, "m", sharded=True)
            merged = json.loads((dest / "results.json").read_text())["results"]
            kept = dest / "results.journal.jsonl"
            if kept.exists():
                merged += [json.loads(ln)["result"] for ln in kept.read_text().splitlines()[1:] if '"ok":true' in ln]
            self.merged = {r["id"]: r for r in merged}
        for i in range(K):
            lost = self.home(i) - set(self.merged) - self.synced_failed[i]
            assert not lost, f"shard {i}'s finished items {sorted(lost)} were dropped by the merge"

    # ------------------------------------------------------------------------------------------ invariants
    @invariant()
    def at_most_k_servers_and_one_per_shard(self) -> None:
        live = self.alive()
        assert len(live) <= K, f"{len(live)} servers alive for {K} shards"
        per_shard = [s.shard for s in live]
        assert len(per_shard) == len(set(per_shard)), f"a shard holds two servers: {[s.name for s in live]}"

    @invariant()
    def never_more_committed_than_the_budget(self) -> None:
        assert len(self.alive()) * SERVER_USD <= MAX_USD

    @invariant()
    def nothing_billing_once_final_or_paused(self) -> None:
        if self.final is not None:
            billing = [s.name for s in self.alive() if s.state == "running" and s.name not in self.told]
            assert not billing, f"run {self.final} with {billing} billing"

    @invariant()
    def a_shard_whose_results_are_home_rents_nothing(self) -> None:
        for i, name in self.pulled_from.items():
            assert self.shards[i].server in (name, None) or self.shards[i].status in vocab.SHARD_FINAL, (
                f"shard {i} is home from {name} and got {self.shards[i].server}"
            )

    def teardown(self) -> None:
        """The faults stop (a broken pull stays broken): the run must end within BOUND steps."""
        if self.final is not None:
            return
        self.provider_down = False
        for srv in self.alive():
            srv.reachable = True
        for _ in range(BOUND):
            if self.final is not None:
                return
            self.now += 60.0
            for i in sorted(self.jobs):
                action, _happened = self.jobs.pop(i)
                self.apply(i, rules.on_job(self.shards[i], self.effect(i, action, True), self.now))
            for srv in self.alive():
                while srv.state == "running" and srv.run and srv.run_status == "running":
                    self.compute_one(srv)
            self.tick()
            self.at_most_k_servers_and_one_per_shard()
            self.nothing_billing_once_final_or_paused()
        pytest.fail(
            f"the run did not end within {BOUND} steps: {[(s.status, s.failures) for s in self.shards.values()]}"
        )


ManagedModel.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestManagedModel = ManagedModel.TestCase
