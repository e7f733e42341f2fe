"""Where ``tether run EXP`` goes without ``--local``/``--on``: it follows the plan (:mod:`tether.plan`), reuses a
rented server of the right profile, and rents one only when spending is allowed (``[policy] allow_spending`` or
``--provision``)."""

from __future__ import annotations

from tether import plan, provision, rentals
from tether.config import Project
from tether.context import Ctx
from tether.errors import PolicyRefusal
from tether.hosts import LOCAL, resolve


def server_name(project: Project, profile: str) -> str:
    """The name tether gives a server it rents for a profile when following the plan."""
    return f"{project.name}-{profile}"


def choose_target(ctx: Ctx, experiment: str, *, may_rent: bool = False, local_busy: bool = False) -> str:
    """Where ``experiment`` runs by the plan: ``local``, or the name of a running rented server (set up)."""
    project, st, say = ctx.project, ctx.state, ctx.say
    entry = plan.plan_experiment(
        experiment, project.experiment(experiment), project.config.policy, local_busy=local_busy
    )
    if not entry.remote or entry.profile is None:
        say(f"Plan: {experiment} runs on this machine ({'; '.join(entry.reasons)}).")
        return LOCAL
    for rec in st.instances():
        if rec.provider == rentals.PROVIDER and rec.meta.get("profile") == entry.profile and rec.state == "running":
            say(f"Plan: {experiment} runs on {rec.name}, the running {entry.profile} server.")
            return rec.name
    name = server_name(project, entry.profile)
    if not (may_rent or project.config.policy.allow_spending):
        raise PolicyRefusal(
            f"The plan runs {experiment} on a rented {entry.profile} server ({'; '.join(entry.reasons)}), and "
            "renting costs money.",
            f"Allow it with --provision (or [policy] allow_spending = true), rent it yourself with "
            f"`tether up {name} --profile {entry.profile}`, or run it here with --local.",
        )
    say(f"Plan: renting {name} ({entry.profile}) for {experiment}.")
    rentals.ensure_rented(project, st, name, profile=entry.profile, say=say)
    provision.up(ctx, resolve(project, name, st))
    return name
