"""``tether agents``: the AGENT_STATUS.json registry of a server (or of this machine), for agents that launch work
by hand. tether's own runs register and leave through the run wrapper.

The server side (``python3 -m tether.server agents``) answers one JSON document; a failure there becomes the
matching :class:`~tether.errors.TetherError` here, so the CLI's one edge renders it like every other command's
(``--json``: ``{"error", "hint", "kind", "exit_code"}``)."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from tether.agents import SUBCOMMANDS, call, registry_argv
from tether.cli.common import duration, emit_json, load_project, new_table, out, say, state, status_text
from tether.errors import NoRoom, RegistryError, TetherError
from tether.hosts import LOCAL, resolve
from tether.server.registry import parse_iso

__all__ = ["SUBCOMMANDS", "agents", "registry_argv", "server_error"]


def _error_classes() -> dict[str, type[TetherError]]:
    found: dict[str, type[TetherError]] = {}
    todo: list[type[TetherError]] = [TetherError]
    while todo:
        cls = todo.pop()
        found[cls.__name__] = cls
        todo.extend(cls.__subclasses__())
    return found


def server_error(error: Any, where: str) -> TetherError:
    """The TetherError for the server side's ``{"error": {"type", "message", "hint", "exit_code", "details"}}``
    (pure): the class it names (RegistryError if it names none), its message and hint, its exit code."""
    if not isinstance(error, dict):
        return RegistryError(f"The agent registry on {where} failed: {json.dumps(error)[:200]}")
    cls = _error_classes().get(str(error.get("type")), RegistryError)
    message = error.get("message")
    hint = error.get("hint")
    exc = cls(
        message if isinstance(message, str) and message else f"The agent registry on {where} failed.",
        hint if isinstance(hint, str) and hint else None,
    )
    code = error.get("exit_code")
    if isinstance(code, int) and not isinstance(code, bool) and code != exc.exit_code:
        exc.exit_code = code
    details = error.get("details")
    if isinstance(exc, NoRoom) and isinstance(details, dict):
        exc.details = details
    return exc


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("words", nargs=-1, type=click.UNPROCESSED)
@click.option("--local", is_flag=True, help="This machine's registry (runs started with --local; the default).")
@click.option("--on", "on", metavar="HOST", default=None, help="A configured host's or rented server's registry.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.pass_context
def agents(ctx: click.Context, words: tuple[str, ...], local: bool, on: str | None, as_json: bool) -> None:
    """Who uses a server's GPU: list, register, heartbeat, release, repair.

    \b
    tether agents [HOST|--on HOST|--local] [--json]       list entries, the queue and GPU memory
    tether agents [HOST] register --id ID --experiment EXP --gpu-gb N [--wait SECONDS] [--pid PID]
    tether agents [HOST] heartbeat ID
    tether agents [HOST] done ID [--status completed|failed]
    tether agents [HOST] repair                           rebuild a damaged AGENT_STATUS.json

    Admission is one step under an exclusive lock: API-only requests (--gpu-gb 0) always fit; a GPU request fits
    only beside the live reservations and the memory the GPU really uses. A refusal exits with code 4 and says
    how much is free, how much was asked, and who holds the rest. No project is needed: outside one, HOST is this
    machine or a server tether rented.
    """
    if local and on:
        raise click.UsageError("Give either --local or --on HOST, not both.")
    args = list(words)
    host = on or LOCAL
    if not on and args and args[0] not in SUBCOMMANDS and not args[0].startswith("-"):
        host = args.pop(0)
    if local:
        host = LOCAL
    project = load_project(ctx)  # outside a project: this machine and rented servers, with the defaults
    if host == LOCAL:
        target = resolve(project, host)
    else:
        with state() as st:
            target = resolve(project, host, st)
    doc = call(target, args)
    if "error" in doc:
        raise server_error(doc["error"], target.name)
    if as_json:
        emit_json(doc)
        return
    sub = args[0] if args and args[0] in SUBCOMMANDS else "list"
    if sub == "list":
        _render_list(target.name, doc)
    elif sub == "register":
        entry = doc["entry"]
        cuda = doc.get("cuda_visible_devices")
        say(
            f"Registered {entry['id']} ({entry['status']}) for {entry['gpu_gb']:g} GB"
            + (f" on GPUs {cuda}" if cuda else "")
            + "."
        )
        for key, value in (doc.get("env") or {}).items():
            click.echo(f"export {key}={value}")
    elif sub == "repair":
        say(
            f"Rebuilt {doc['path']} with {len(doc['entries'])} entries"
            + (f"; the damaged file is kept as {doc['kept_aside']}" if doc.get("kept_aside") else "")
            + "."
        )
    else:
        entry = doc["entry"]
        say(f"{entry['id']}: {entry['status']}.")


def _render_list(host: str, doc: dict[str, Any]) -> None:
    now = time.time()
    entries = doc.get("entries", [])
    if not entries:
        say(f"No agents registered on {host} ({doc.get('path')}).")
    else:
        table = new_table()
        for col in ("id", "experiment", "GB", "status", "live", "GPUs", "queue", "started", "heartbeat", "held until"):
            table.add_column(col)
        for e in entries:
            beat = parse_iso(e.get("heartbeat"))
            table.add_row(
                str(e.get("id")),
                str(e.get("experiment")),
                _gb(e.get("gpu_gb")),
                status_text(str(e.get("status"))),
                "yes" if e.get("live") else "no",
                ",".join(str(g) for g in e.get("gpus") or []) or "-",
                str(e.get("queue_position") or "-"),
                str(e.get("started") or "-"),
                f"{duration(max(0.0, now - beat))} ago" if beat is not None else "-",
                str(e.get("held_until") or "-"),
            )
        out.print(table)
    gpus = doc.get("gpus")
    if gpus is None:
        say(f"{host}: no GPU ({doc.get('gpu_error') or 'nvidia-smi not found'}); GPU requests are refused there.")
    else:
        for g in gpus:
            say(
                f"GPU {g['index']}: {g['free_gb']:.1f} GB free of {g['total_gb']:.1f} "
                f"(reserved {g['reserved_gb']:.1f}, used outside the registry {g['outside_gb']:.1f})."
            )
    for problem in doc.get("problems", []):
        say(f"warning: {problem}")


def _gb(value: Any) -> str:
    """A GB figure for the table; "?" for one the registry could not use (it counts as the whole GPU)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "?"
    return f"{float(value):g}"
