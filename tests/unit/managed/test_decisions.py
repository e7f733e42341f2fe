"""The managed run's decisions (pure): each status's next step, the final pull bounded, a finished shard never
rented again, the budget refusal pausing the shard, and the run's next move."""

from __future__ import annotations

import dataclasses

from tether import vocab
from tether.managed import rules
from tether.managed.rules import JobResult, Observation, decide, on_job, run_next
from tether.state import ManagedShardRecord

OPTS = rules.Options(shards=2, unreachable_after_s=300.0)


def shard(status: vocab.ShardStatus = vocab.SHARD_RUNNING, **changes: object) -> ManagedShardRecord:
    base = ManagedShardRecord(
        run_id="exp-m1",
        shard=0,
        status=status,
        server="exp-m1-s0-1",
        own_host=False,
        run="r1",
        attempt=1,
        recoveries=0,
        restarts=0,
        completed=0,
        total=10,
        synced=0,
        last_sync=None,
        last_seen=100.0,
        last_failure=None,
        failures=0,
        reason=None,
        retry_at=None,
        updated=100.0,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def completed_run() -> vocab.RunInfo:
    return vocab.RunInfo(id="r1", experiment="exp", status=vocab.COMPLETED, completed=10, total=10, exit_code=0)


def test_a_final_pull_that_always_fails_ends_in_a_stated_failure_with_its_server_destroyed() -> None:
    sh = shard(vocab.SHARD_FINISHING)
    now = 200.0
    for attempt in range(1, rules.MAX_FINAL_ATTEMPTS + 1):
        decision = on_job(sh, JobResult("pull", False, "the pull did not verify"), now)
        sh = dataclasses.replace(sh, **decision.update)
        if attempt < rules.MAX_FINAL_ATTEMPTS:
            assert sh.status == vocab.SHARD_FINISHING and sh.failures == attempt and decision.actions == ()
            assert sh.retry_at is not None and sh.retry_at > now
            now = sh.retry_at
            # the next look at it: the run is still completed, and that does not reset the count
            again = decide(sh, Observation(instance="running", answered=True, run=completed_run()), now, OPTS)
            assert again.actions == ("pull",) and "failures" not in again.update
    assert sh.status == vocab.SHARD_FAILED
    assert sh.reason is not None and "could not be brought home" in sh.reason and "5 tries" in sh.reason
    assert decision.actions == ("sync", "destroy")  # what was journaled comes home; nothing left billing


def test_a_finishing_shard_whose_results_are_home_is_released_not_rented_again() -> None:
    """A controller killed after the verified pull (or during the destroy) finds the shard finishing or
    releasing and its server gone: it destroys (verified) and completes, never rents."""
    sh = shard(vocab.SHARD_FINISHING)
    home = decide(sh, Observation(instance="gone", home=True), 200.0, OPTS)
    assert home.update["status"] == vocab.SHARD_RELEASING and home.actions == ("release",)
    releasing = dataclasses.replace(sh, status=vocab.SHARD_RELEASING)
    assert decide(releasing, Observation(instance="gone"), 200.0, OPTS).actions == ("release",)
    done = on_job(releasing, JobResult("release", True), 201.0)
    assert done.update["status"] == vocab.SHARD_COMPLETED
    # a server lost before its results were pulled is a recovery, as before
    lost = decide(sh, Observation(instance="gone", home=False), 200.0, OPTS)
    assert lost.update["status"] == vocab.SHARD_PENDING and lost.update["server"] is None


def test_a_completed_run_goes_to_its_pull_and_a_verified_pull_to_releasing() -> None:
    decision = decide(shard(), Observation(instance="running", answered=True, run=completed_run()), 200.0, OPTS)
    assert decision.update["status"] == vocab.SHARD_FINISHING and decision.actions == ("pull",)
    pulled = on_job(shard(vocab.SHARD_FINISHING, failures=2), JobResult("pull", True), 201.0)
    assert pulled.update["status"] == vocab.SHARD_RELEASING and pulled.update["failures"] == 0


def test_a_rental_the_budget_refuses_pauses_the_shard_with_the_figures_and_rents_nothing() -> None:
    pending = shard(vocab.SHARD_PENDING, server=None, run=None)
    refused = decide(pending, Observation(budget="$2.10 past --max-usd $2.00", run_id="r2"), 200.0, OPTS)
    assert refused.update["status"] == vocab.SHARD_PAUSED and refused.actions == ()
    assert "$2.10 past --max-usd $2.00" in (refused.update.get("reason") or "")
    rent = decide(pending, Observation(run_id="r2"), 200.0, OPTS)
    assert rent.actions == ("rent",) and rent.update["server"] == "exp-m1-s0-2" and rent.update["run"] == "r2"
    # the rent path itself may refuse for the budget: the shard pauses, and forgets the name it did not rent
    provisioning = dataclasses.replace(pending, status=vocab.SHARD_PROVISIONING, server="exp-m1-s0-2")
    paused = on_job(provisioning, JobResult("acquire", False, "over the daily budget", refused=True), 201.0)
    assert paused.update["status"] == vocab.SHARD_PAUSED and paused.update["server"] is None


def test_the_run_finishes_pauses_or_goes_on_only_when_no_job_is_in_flight() -> None:
    done, paused = shard(vocab.SHARD_COMPLETED), shard(vocab.SHARD_PAUSED)
    assert run_next([done, done], 0, cancel_requested=False) == "finish"
    assert run_next([done, done], 1, cancel_requested=False) == "go"
    assert run_next([done, paused], 0, cancel_requested=False) == "pause"
    assert run_next([done, shard()], 0, cancel_requested=False) == "go"
    assert run_next([done, shard()], 0, cancel_requested=True) == "cancel"


def test_retries_share_one_bounded_backoff() -> None:
    delays = [rules.retry_delay(n) for n in range(1, 10)]
    assert delays == [2.0, 4.0, 8.0, 16.0] + [32.0] * 5  # bounded: the last delay holds


def test_a_paused_shard_picked_up_again_never_holds_two_servers_nor_rents_what_is_home() -> None:
    home = shard(vocab.SHARD_PAUSED, reason=rules.Ending.RELEASE.said("exp-m1-s0-1: 503"))
    assert rules.resume_paused(home, server_exists=False)["status"] == vocab.SHARD_RELEASING
    set_up_failed = shard(vocab.SHARD_PAUSED, reason="the set-up failed (after 5 attempts)")
    assert rules.resume_paused(set_up_failed, server_exists=True)["status"] == vocab.SHARD_RETIRING
    assert rules.resume_paused(set_up_failed, server_exists=False)["status"] == vocab.SHARD_PENDING
    # a set-up that failed after the rental was made keeps the server's name, so the resume can destroy it
    provisioning = shard(vocab.SHARD_PROVISIONING, failures=rules.MAX_PROVISION_ATTEMPTS - 1)
    paused = on_job(provisioning, JobResult("acquire", False, "the set-up failed."), 200.0)
    assert paused.update["status"] == vocab.SHARD_PAUSED and "server" not in paused.update


def test_a_shard_whose_results_came_home_counts_all_it_completed_as_synced() -> None:
    """The last journal sync counted 49; the final pull brought all 60 home: synced and done agree after it."""
    from tether.managed.views import shard_json

    pulled = on_job(shard(vocab.SHARD_FINISHING, completed=58, total=60, synced=49), JobResult("pull", True), 200.0)
    assert pulled.update["completed"] == pulled.update["synced"] == 60
    home = decide(shard(vocab.SHARD_FINISHING, completed=60, total=60, synced=49), Observation(home=True), 200.0, OPTS)
    assert home.update["status"] == vocab.SHARD_RELEASING and home.update["synced"] == 60
    # a record written before the final pull counted it is mended in the state (schema 8), not in the view: see
    # tests/unit/state/test_run_scope_state.py
    running = shard_json(shard(vocab.SHARD_RUNNING, completed=30, total=60, synced=20))
    assert running["synced"] == 20  # while it runs, synced is what the last sync brought home
