"""``tether run EXP`` without ``--local``/``--on``: follow the plan, reuse a rented server of the right profile, and
rent one only when spending is allowed (``[policy] allow_spending`` or ``--provision``)."""

from __future__ import annotations

from collections.abc import Callable

from tether import plan, remote, rentals
from tether.config import Project
from tether.errors import PolicyRefusal
from tether.state import State
from tether.targets import LOCAL, resolve

Say = Callable[[str], None]


def _quiet(_message: str) -> None:
    return None


def server_name(project: Project, profile: str) -> str:
    """The name tether gives a server it rents for a profile when following the plan."""
    return f"{project.name}-{profile}"


def choose_target(
    project: Project,
    st: State,
    experiment: str,
    *,
    provision: bool = False,
    local_busy: bool = False,
    say: Say = _quiet,
) -> str:
    """Where ``experiment`` runs by the plan: ``local``, or the name of a running rented server (set up)."""
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
    if not (provision or project.config.policy.allow_spending):
        raise PolicyRefusal(
            f"The plan runs {experiment} on a rented {entry.profile} server ({'; '.join(entry.reasons)}), and "
            "renting costs money.",
            f"Allow it with --provision (or [policy] allow_spending = true), rent it yourself with "
            f"`tether up {name} --profile {entry.profile}`, or run it here with --local.",
        )
    say(f"Plan: renting {name} ({entry.profile}) for {experiment}.")
    rentals.ensure_rented(project, st, name, profile=entry.profile, say=say)
    remote.up(project, st, resolve(project, name, st))
    return name
