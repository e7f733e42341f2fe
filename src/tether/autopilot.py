"""Applying the money policies to real instances: gather the facts, ask :mod:`tether.cost`, act safely.

Every stop or destroy is preceded by a pull whose files are verified against the server's manifest; if the pull
fails or does not verify, nothing is stopped or destroyed. Every decision is logged in local state with its reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tether import cost, plan, remote, rentals, runs
from tether.config import Project
from tether.errors import PolicyRefusal, TetherError
from tether.providers import Provider, provider_for
from tether.state import InstanceRecord, State
from tether.targets import host_target

Say = Callable[[str], None]


def _quiet(_message: str) -> None:
    return None


def entered_state_at(st: State, rec: InstanceRecord) -> float:
    """When the instance entered its current state, from the ledger (the first of the last run of equal states)."""
    since = rec.updated
    for event in reversed(st.events(rec.name)):
        if event["state"] != rec.state or (rec.instance_id and event["instance_id"] != rec.instance_id):
            break
        since = float(event["ts"])
    return since


def more_work_for(project: Project, st: State, rec: InstanceRecord) -> bool:
    """Whether an experiment planned on this instance's profile has not completed yet (so more work is coming)."""
    profile = rec.meta.get("profile")
    if not profile:
        return False
    done = {r.experiment for r in st.runs() if r.status == "completed"}
    return any(entry.profile == profile and entry.experiment not in done for entry in plan.plan_all(project))


@dataclass
class Facts:
    view: cost.InstanceView
    unsynced_files: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def gather(project: Project, st: State, name: str, now: float, *, more_work: bool | None = None) -> Facts:
    """Build the policy view of one rented instance (one scan and one manifest on the server when it runs)."""
    rec = rentals.rented(st, name)
    live_runs, last_activity = cost.run_activity(st.runs(host=name), name)
    live_agents = 0
    unsynced: bool | None = None
    files: list[str] = []
    errors: list[str] = []
    last = st.last_pull(name)
    last_verified = float(last["ts"]) if last and last["verified"] else None
    if rec.state == "running":
        try:
            target = host_target(project, name, st)
            doc = runs.scan(target)
            runs.refresh(st, target, doc)
            live_runs, last_activity = cost.run_activity(st.runs(host=name), name)
            files = remote.unsynced(st, target, project)
            unsynced = bool(files)
        except TetherError as exc:
            errors.append(f"could not read {name}: {exc}")
    elif (
        rec.state in ("stopped", "exited")
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
        more_work_within_h=more_work if more_work is not None else more_work_for(project, st, rec),
    )
    return Facts(view, files, errors)


def guard_destroy(project: Project, st: State, name: str, *, discard_unsynced: bool) -> Facts:
    """Refuse (PolicyRefusal, exit 3) to destroy while a run is alive or results are not verified home."""
    facts = gather(project, st, name, time.time(), more_work=False)
    if facts.errors and not discard_unsynced:
        raise PolicyRefusal(
            f"tether cannot check {name} before destroying it: {'; '.join(facts.errors)}.",
            "Nothing was destroyed. Fix the connection, or destroy anyway with --discard-unsynced.",
        )
    cost.refuse_destroy(facts.view, discard_unsynced)
    return facts


def pull_verified(project: Project, st: State, name: str) -> remote.PullReport:
    report = remote.pull(project, st, host_target(project, name, st))
    if not report.verified:
        raise PolicyRefusal(
            f"The pull from {name} did not verify ({len(report.mismatched)} files differ); nothing was stopped or "
            "destroyed.",
            f"Run `tether pull {name}` again once its runs settle.",
        )
    return report


def apply(
    project: Project,
    st: State,
    decision: cost.Decision,
    *,
    say: Say = _quiet,
    provider: Provider | None = None,
    discard_unsynced: bool = False,
) -> dict[str, Any]:
    """Carry out one decision: pull and verify first where needed, then stop or destroy; log it in state."""
    name = decision.name
    outcome: dict[str, Any] = {**decision.to_json(), "done": False, "error": None}
    if decision.action == "none":
        st.add_decision(name, "none", decision.reason, False)
        return outcome
    try:
        if decision.needs_pull:
            report = pull_verified(project, st, name)
            outcome["pull"] = report.to_json()
        if decision.action == "stop":
            rentals.stop(project, st, name, provider=provider)
        else:
            guard_destroy(project, st, name, discard_unsynced=discard_unsynced)
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
    say(
        f"{name}: {decision.action} {'done' if outcome['done'] else 'NOT done'}: {decision.reason}"
        + (f" ({outcome['error']})" if outcome["error"] else "")
    )
    return outcome


def tick(
    project: Project, st: State, *, dry_run: bool = False, say: Say = _quiet, now: float | None = None
) -> list[dict[str, Any]]:
    """One pass of the autopilot over every rented instance that still exists."""
    provider = provider_for(project)
    results: list[dict[str, Any]] = []
    try:
        for rec in st.instances():
            if rec.provider != rentals.PROVIDER or rec.state == "gone":
                continue
            try:
                rentals.observe(project, st, rec.name, provider=provider)
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
                say(f"{rec.name}: could not observe it ({exc}); nothing done.")
                continue
            moment = now if now is not None else time.time()
            facts = gather(project, st, rec.name, moment)
            decision = cost.decide(facts.view, moment, project.config.policy)
            if facts.errors and decision.action != "none":
                decision = cost.Decision("none", "; ".join(facts.errors) + ": nothing done", False, rec.name)
            if dry_run:
                results.append({**decision.to_json(), "done": False, "error": None, "dry_run": True})
                say(f"{rec.name}: would {decision.action}: {decision.reason}")
                continue
            results.append(apply(project, st, decision, say=say, provider=provider))
    finally:
        provider.close()
    return results


def down(project: Project, st: State, name: str, *, more_work: bool | None = None, say: Say = _quiet) -> dict[str, Any]:
    """The runbook's decision tree now: more work within 24 h → pull, stop; else → pull, verify, destroy."""
    rec = rentals.rented(st, name)
    if rec.state == "gone":
        return {"name": name, "action": "none", "reason": f"{name} is destroyed already.", "done": True}
    facts = gather(project, st, name, time.time(), more_work=more_work)
    view = facts.view
    if view.live_runs:
        raise PolicyRefusal(
            f"A run is still alive on {name}; `tether down` never stops or destroys a server in use.",
            f"Wait for it (`tether progress {name}`) or cancel it first.",
        )
    if facts.errors:
        raise PolicyRefusal(f"{name} could not be checked: {'; '.join(facts.errors)}.", "Nothing was changed.")
    if rec.state != "running":
        if view.more_work_within_h:
            return {"name": name, "action": "none", "reason": f"{name} is {rec.state} already.", "done": True}
        action, reason, needs_pull = "destroy", f"{name} is {rec.state} and no more work is planned within 24 h.", False
    elif view.more_work_within_h:
        action, reason, needs_pull = "stop", "more experiments are planned within 24 h: stop (storage only).", True
    else:
        action, reason, needs_pull = "destroy", "no more experiments planned within 24 h: sync, verify, destroy.", True
    decision = cost.Decision(action, reason, needs_pull, name)  # type: ignore[arg-type]
    outcome = apply(project, st, decision, say=say)
    if outcome["error"]:
        raise PolicyRefusal(f"{name} was not {'stopped' if action == 'stop' else 'destroyed'}: {outcome['error']}")
    return outcome
