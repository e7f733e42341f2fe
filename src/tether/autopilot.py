"""Acting on rented servers safely: gather the facts, ask :mod:`tether.cost`, then stop or destroy.

One path acts: :func:`act` pulls and verifies first where the decision needs it (if the pull fails or does not
verify, nothing is stopped or destroyed), runs the destroy guard before every destroy, and logs the decision in
local state. ``tether down`` (:func:`down`), ``tether stop`` (:func:`stop`), ``tether destroy`` (:func:`destroy`)
and the autopilot's pass (:func:`tick`) all go through it.

What lives on a server is read from the server, not only from this controller's state: the progress scan counts
runs started by any controller (another ``TETHER_HOME``, a colleague's laptop), the agent registry counts agents
registered by hand or by other tools, and the folders the server's run records name are results too, even when no
experiment in ``tether.toml`` names them any more.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Any

from tether import agents, cost, fmt, notify, plan, pull, rentals, runs, vocab
from tether.context import Ctx
from tether.errors import PolicyRefusal, TetherError
from tether.fmt import duration
from tether.hosts import Target, host_target
from tether.providers import Provider, provider_for
from tether.state import InstanceRecord, State
from tether.state import entered_state_at as entered_state_at  # its home is the ledger's module


def more_work_for(ctx: Ctx, rec: InstanceRecord) -> bool:
    """Whether an experiment planned on this instance's profile has not completed yet (so more work is coming)."""
    profile = rec.meta.get("profile")
    if not profile:
        return False
    done = {r.experiment for r in ctx.state.runs() if r.status == vocab.COMPLETED}
    return any(entry.profile == profile and entry.experiment not in done for entry in plan.plan_all(ctx.project))


@dataclass
class Facts:
    view: cost.InstanceView
    unsynced_files: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    """Why the server could not be read (then nothing is stopped or destroyed unless the user discards)."""
    notes: list[str] = field(default_factory=list)
    """What is known beside the view, e.g. a run last seen running on a server that is stopped now."""


def _server_side(ctx: Ctx, target: Target, name: str) -> tuple[int, int, float | None, list[str]]:
    """Live runs (any controller's), live agents that are not those runs, the last activity, unsynced files."""
    st = ctx.state
    found = runs.observe(st, target, ctx=ctx)
    local_live, last_activity = cost.run_activity(st.runs(host=name), name)
    live_ids = {r.id for r in found.runs if r.live} | {
        r.id for r in st.runs(host=name) if vocab.is_live(r.status) and r.ended is None
    }
    for r in found.runs:
        moment = r.started if r.live else r.ended
        if moment is not None:
            last_activity = moment if last_activity is None else max(last_activity, moment)
    registry = agents.listing(target)
    live_agents = [e for e in agents.live_entries(registry) if e.get("id") not in live_ids]
    files = pull.unsynced(ctx, target)
    files += _unlisted_results(ctx, target, found)
    return max(len(live_ids), local_live), len(live_agents), last_activity, files


def _unlisted_results(ctx: Ctx, target: Target, found: vocab.Scan) -> list[str]:
    """Files in results folders that the server's run records name but ``tether.toml`` does not (an experiment
    removed or renamed, another project on the same server): never home, since ``tether pull`` cannot see them."""
    listed = {posixpath.normpath(posixpath.join(target.code_dir, p)) for p in pull.results_paths(ctx.project)}
    extra = sorted(
        {posixpath.normpath(r.results_dir) for r in found.runs if r.results_dir and posixpath.isabs(r.results_dir)}
        - listed
    )
    files: list[str] = []
    for folder in extra:
        if any(folder.startswith(p + "/") for p in listed):
            continue
        manifest = pull.remote_manifest(target, posixpath.dirname(folder), [posixpath.basename(folder)])
        held = [*(manifest.files or {}), *manifest.links]
        files += sorted(posixpath.join(posixpath.dirname(folder), rel) for rel in held)
    return files


def gather(ctx: Ctx, name: str, now: float, *, more_work: bool | None = None) -> Facts:
    """Build the policy view of one rented instance (a scan, the registry and a manifest when it runs)."""
    project, st = ctx.project, ctx.state
    rec = rentals.rented(st, name)
    live_runs, last_activity = cost.run_activity(st.runs(host=name), name)
    live_agents = 0
    unsynced: bool | None = None
    files: list[str] = []
    errors: list[str] = []
    notes: list[str] = []
    last = st.last_pull(name)
    last_verified = last.ts if last and last.verified else None
    if rec.state == "running":
        try:
            target = host_target(project, name, st)
            live_runs, live_agents, last_activity, files = _server_side(ctx, target, name)
            unsynced = bool(files)
        except TetherError as exc:
            errors.append(f"could not read {name}: {exc}")
            notes += _stale(st, name, now, f"{name} cannot be reached")
            live_runs = 0  # unknown, not alive: the errors keep the autopilot from acting
    else:
        # A stopped (or preempted, exited) server runs nothing: a run recorded live there was cut off by the stop.
        notes += _stale(st, name, now, f"the server is {rec.state}")
        live_runs = 0
        if (
            rec.state in ("stopped", "preempted", "exited")
            and last_verified is not None
            and (last_activity is None or last_verified >= last_activity)
        ):
            # Every stop is preceded by a verified pull; results are home if that pull came after the last activity.
            unsynced = False
    view = cost.InstanceView(
        name=name,
        state=rec.state,
        since=entered_state_at(st, rec),
        last_activity=last_activity,
        live_runs=live_runs,
        live_agents=live_agents,
        unsynced=unsynced,
        last_verified_pull=last_verified,
        more_work_within_h=more_work if more_work is not None else more_work_for(ctx, rec),
        dph_total=rec.dph_total,
        storage_dph=rec.storage_dph,
        idle_gaps=cost.run_gaps(st.runs(host=name), name, project.config.policy.gap_history),
    )
    return Facts(view, files, errors, notes)


def _stale(st: State, name: str, now: float, why: str) -> list[str]:
    """Sentences for runs recorded live on a server that cannot be running them (stopped, or unreachable)."""
    return [
        f"run {r.id} was last seen {r.status} {duration(now - r.started)} ago; {why}."
        for r in st.runs(host=name)
        if vocab.is_live(r.status) and r.ended is None
    ]


def guard_destroy(ctx: Ctx, name: str, *, discard_unsynced: bool) -> Facts:
    """Refuse (PolicyRefusal, exit 3) to destroy while a run or agent is alive or results are not verified home."""
    refuse_managed(ctx, name)
    facts = gather(ctx, name, ctx.now(), more_work=False)
    if facts.errors and not discard_unsynced:
        raise PolicyRefusal(
            f"tether cannot check {name} before destroying it: {'; '.join(facts.errors)}.",
            "Nothing was destroyed. Fix the connection, or destroy anyway with --discard-unsynced.",
        )
    try:
        cost.refuse_destroy(facts.view, discard_unsynced)
    except PolicyRefusal as exc:
        if not (facts.view.live_runs or facts.view.live_agents):  # refused because results are not home
            notify.announce_refused_destroy(ctx, name, facts.view.last_verified_pull, f"{exc.message} {exc.hint}")
        raise
    return facts


def pull_verified(ctx: Ctx, name: str) -> pull.PullReport:
    report = pull.pull(ctx, host_target(ctx.project, name, ctx.state))
    if not report.verified:
        raise PolicyRefusal(
            f"The pull from {name} did not verify ({fmt.count(len(report.mismatched), 'file')} differ); "
            "nothing was stopped or destroyed.",
            f"Run `tether pull {name}` again once its runs settle.",
        )
    return report


def act(
    ctx: Ctx,
    decision: cost.Decision,
    *,
    provider: Provider | None = None,
    discard_unsynced: bool = False,
) -> dict[str, Any]:
    """Carry out one decision: pull and verify first where needed, guard a destroy, then stop or destroy; log it.

    Never raises for a failed step: the outcome's ``error`` says why nothing was done.
    """
    project, st = ctx.project, ctx.state
    name = decision.name
    outcome: dict[str, Any] = {**decision.to_json(), "done": False, "error": None}
    if decision.action == "none":
        st.add_decision(name, "none", decision.reason, False)
        return outcome
    try:
        if decision.needs_pull:
            report = pull_verified(ctx, name)
            outcome["pull"] = report.to_json()
        if decision.action == "stop":
            if not decision.needs_pull:
                guard_stop(ctx, name)
            rentals.stop(project, st, name, provider=provider)
        else:
            guard_destroy(ctx, name, discard_unsynced=discard_unsynced)
            rentals.destroy(project, st, name, provider=provider)
        outcome["done"] = True
    except TetherError as exc:
        outcome["error"] = str(exc)
    st.add_decision(
        name,
        decision.action,
        decision.reason + (f" [not done: {outcome['error']}]" if outcome["error"] else ""),
        bool(outcome["done"]),
    )
    ctx.say(
        f"{name}: {decision.action} {'done' if outcome['done'] else 'NOT done'}: {decision.reason}"
        + (f" ({outcome['error']})" if outcome["error"] else "")
    )
    return outcome


def refuse_managed(ctx: Ctx, name: str) -> None:
    """Refuse (exit 3) to act on a server that a live managed run's controller owns: it stops and destroys its own
    servers (verified), and a stop or destroy behind its back would cost a recovery."""
    from tether.managed.local import live_owner

    run = live_owner(ctx.state, name)
    if run is not None:
        raise PolicyRefusal(
            f"{name} belongs to managed run {run.id}, whose controller is running; nothing was done.",
            f"The controller destroys it when its shard is home; to stop the run, `tether cancel {run.id}`.",
        )


def guard_stop(ctx: Ctx, name: str) -> None:
    """Refuse (exit 3) to stop a running server while a run or agent is alive on it (a stop kills them)."""
    refuse_managed(ctx, name)
    facts = gather(ctx, name, ctx.now())
    _refuse_unreadable(facts, name)
    _refuse_in_use(facts, name, "a stop would kill it.")


def _refuse_in_use(facts: Facts, name: str, consequence: str) -> None:
    view = facts.view
    if view.live_runs or view.live_agents:
        raise PolicyRefusal(
            f"A run is still alive on {name} ({view.live_runs} live run(s), {view.live_agents} agent(s)); "
            + consequence,
            f"Wait for it (`tether progress {name}`) or cancel it first.",
        )


def _refuse_unreadable(facts: Facts, name: str) -> None:
    if facts.errors:
        raise PolicyRefusal(f"{name} could not be checked: {'; '.join(facts.errors)}.", "Nothing was changed.")


def tick(ctx: Ctx, *, dry_run: bool = False, now: float | None = None) -> list[dict[str, Any]]:
    """One pass of the autopilot over every rented instance that still exists."""
    from tether.managed.local import live_owner

    project, st = ctx.project, ctx.state
    provider = provider_for(project)
    results: list[dict[str, Any]] = []
    try:
        try:
            for sentence in rentals.reconcile(project, st, provider):
                ctx.say(sentence)
        except TetherError as exc:
            ctx.say(f"could not list this project's instances: {exc}")
        for rec in st.instances():
            if rec.provider != rentals.PROVIDER or rec.state in ("gone", "creating") or not rec.instance_id:
                continue
            owner = live_owner(st, rec.name)
            if owner is not None:  # its controller acts on it: left alone, not even looked at
                why = f"managed run {owner.id}'s controller owns it"
                results.append({"name": rec.name, "action": "none", "reason": why, "done": False, "error": None})
                continue
            try:
                rentals.observe(project, st, rec.name, provider=provider)
                notify.announce_preempted(ctx, rec.name)  # said once, by whichever command sees it first
            except TetherError as exc:
                results.append(
                    {
                        "name": rec.name,
                        "action": "none",
                        "reason": f"could not observe: {exc}",
                        "done": False,
                        "error": str(exc),
                    }
                )
                ctx.say(f"{rec.name}: could not observe it ({exc}); nothing done.")
                continue
            moment = now if now is not None else ctx.now()
            facts = gather(ctx, rec.name, moment)
            decision = cost.decide(facts.view, moment, project.config.policy)
            if facts.errors and decision.action != "none":
                decision = cost.Decision("none", "; ".join(facts.errors) + ": nothing done", False, rec.name)
            if dry_run:
                results.append({**decision.to_json(), "done": False, "error": None, "dry_run": True})
                ctx.say(f"{rec.name}: would {decision.action}: {decision.reason}")
                continue
            results.append(act(ctx, decision, provider=provider))
    finally:
        provider.close()
    return results


def down(ctx: Ctx, name: str, *, more_work: bool | None = None) -> dict[str, Any]:
    """The runbook's decision tree now (:func:`tether.cost.decide_now`): more work within ``more_work_within_hours``
    → pull, stop; else → pull, verify, destroy."""
    rec = rentals.rented(ctx.state, name)
    if rec.state == "gone":
        return {"name": name, "action": "none", "reason": f"{name} is destroyed already.", "done": True}
    facts = gather(ctx, name, ctx.now(), more_work=more_work)
    for note in facts.notes:
        ctx.say(note)
    _refuse_in_use(facts, name, "`tether down` never stops or destroys a server in use.")
    _refuse_unreadable(facts, name)
    decision = cost.decide_now(facts.view, ctx.project.config.policy)
    if decision.action == "none":
        return {**decision.to_json(), "done": True}
    outcome = act(ctx, decision)
    if outcome["error"]:
        verb = "stopped" if decision.action == "stop" else "destroyed"
        raise PolicyRefusal(f"{name} was not {verb}: {outcome['error']}")
    return outcome


def stop(ctx: Ctx, name: str, *, no_pull: bool = False) -> tuple[InstanceRecord, pull.PullReport | None]:
    """``tether stop``: the same safety rule as the autopilot's — results pulled and verified first (refused,
    nothing stopped, when that fails), never while a run or agent is alive — unless ``no_pull``."""
    rec = rentals.rented(ctx.state, name)
    report = None
    if rec.state == "running":
        guard_stop(ctx, name)
        if not no_pull:
            report = pull_verified(ctx, name)
    return rentals.stop(ctx.project, ctx.state, name), report


def destroy(ctx: Ctx, name: str, *, discard_unsynced: bool = False) -> tuple[InstanceRecord, Facts | None]:
    """``tether destroy``: idempotent; refused (exit 3) while anything on the server is alive or not home, or while
    a live managed run's controller owns it."""
    rec = rentals.rented(ctx.state, name)
    if rec.state == "gone":
        return rec, None
    refuse_managed(ctx, name)
    facts = guard_destroy(ctx, name, discard_unsynced=discard_unsynced)
    return rentals.destroy(ctx.project, ctx.state, name), facts
