"""The agent registry of a target, from this machine: the argv of the server side's ``agents`` command, and reading
its listing (used by ``tether agents``, ``tether status`` and the destroy guard)."""

from __future__ import annotations

import json
from typing import Any

from tether.errors import RemoteError
from tether.hosts import Target

SUBCOMMANDS = ("list", "register", "done", "heartbeat", "repair")


def registry_argv(target: Target, args: list[str]) -> list[str]:
    """The server-side argv for ``agents`` on ``target`` (pure)."""
    where = ["--path", target.registry] if target.registry else ["--root", target.root]
    sub, rest = (args[0], args[1:]) if args and args[0] in SUBCOMMANDS else ("list", args)
    return [*target.server_argv, "agents", sub, *where, *rest, "--json"]


def call(target: Target, args: list[str], *, timeout: float = 600) -> dict[str, Any]:
    """The registry's one JSON document for ``agents ARGS`` on ``target`` (``{"error": {...}}`` on a failure
    there). On this machine it answers in this process (:attr:`Target.in_process`; a listing that fails raises its
    TetherError itself); elsewhere over the transport, and a RemoteError when the server side does not answer
    with a document."""
    argv = registry_argv(target, args)
    if target.in_process:
        if args in ([], ["list"]):  # the listing, what agents poll: straight from the registry, no argparse
            from tether.server import registry as reg

            where = reg.resolve_path(target.registry, None if target.registry else target.root)
            return reg.Registry(where).listing().to_dict()
        from tether.server import registry_cli

        answered = registry_cli.answer(argv[len(target.server_argv) + 1 :])[1]
        if answered:
            return answered
        raise RemoteError(f"The agent registry on {target.name} did not answer.", "See `tether agents --help`.")
    result = target.transport.run(argv, check=False, timeout=timeout)
    try:
        doc = json.loads(result.text())
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise RemoteError(
            f"The agent registry on {target.name} did not answer.",
            (result.output_tail() or "No output.") + f" Run `tether up {target.name}` if tether is not set up there.",
        )
    return doc


def listing(target: Target) -> dict[str, Any]:
    """The registry's listing on ``target`` (entries, queue, GPUs) as the server side prints it."""
    result = target.transport.run(registry_argv(target, []), check=False)
    try:
        doc = json.loads(result.text())
    except ValueError:
        raise RemoteError(
            f"The agent registry on {target.name} could not be read.", result.output_tail() or None
        ) from None
    if not isinstance(doc, dict):
        raise RemoteError(f"The agent registry on {target.name} answered something that is not a listing.")
    return doc


def live_entries(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The entries of a listing that hold (or may hold) the server: live ones."""
    entries = doc.get("entries")
    return [e for e in entries if isinstance(e, dict) and e.get("live")] if isinstance(entries, list) else []
