"""``python3 -m tether.server agents ...`` (this module: ``tether.server.registry_cli``): the agent registry from the
command line (stdlib only, Python 3.8+).

::

    agents [--path FILE | --root DIR] [--lock-timeout S] [--history S] [--json]            list (the default)
    agents register --id ID --experiment EXP --gpu-gb N [--wait S] [--pid PID] [--lease S] [--json]
    agents done ID [--status completed|failed] [--json]
    agents heartbeat ID [--json]
    agents repair [--json]

The registry file is ``--path``, else ``<--root>/AGENT_STATUS.json``, else ``$TETHER_AGENT_STATUS``, else
``/workspace/AGENT_STATUS.json``. ``register`` without ``--pid`` records no owner process (this command exits
right away), so the entry lives by its lease: renew it with ``heartbeat`` at least every ``--lease`` seconds
(default 3600), or pass ``--pid`` of the process that does the work.

JSON contract (``--json``: exactly one document on stdout, also on failure):

- ``list``: ``{"path", "host", "entries": [entry + {"live", "queue_position", "cuda_visible_devices",
  "gpu_gb_counted", "held_until"}],
  "queue": [id, ...], "gpus": [{"index", "uuid", "total_gb", "used_gb", "reserved_gb", "outside_gb",
  "free_gb"}] | null (no nvidia-smi), "gpu_error": str | null, "problems": [str, ...]}``
- ``register``: ``{"entry": entry, "cuda_visible_devices": "0,1", "env": {name: value}}``; ``env`` is what the
  job's environment should get (``CUDA_VISIBLE_DEVICES``, ``CUDA_DEVICE_ORDER``, ``TETHER_AGENT_*``).
- ``done`` and ``heartbeat``: ``{"entry": entry}``.
- ``repair``: ``{"path", "kept_aside": str | null, "salvaged", "discovered", "entries": [entry, ...]}``.
- failure: ``{"error": {"type": class name, "message", "hint", "exit_code", "details": {...}}}``; for an
  admission refusal ``details`` holds ``asked_gb``, ``free_gb`` (per GPU index), ``holders``, ``outside_gb``,
  ``queued`` and ``reason`` (``no_room``, ``queued_ahead``, ``never_fits``, ``no_gpu``). ``type`` names a class of
  :mod:`tether.errors`; ``tether agents`` raises that class with this message and hint, so its own ``--json``
  failure is the flat ``{"error", "hint", "kind", "exit_code"}`` of every tether command.

An entry is ``{"id", "experiment", "gpu_gb", "status", "started", "pid", "pid_start", "boot_id", "host",
"heartbeat", "lease_s", "gpus", "ended", "note"}`` (see :mod:`tether.server.registry`).

Exit codes: 0 done; 1 the registry failed (bad file, lock timeout, unknown id, nvidia-smi failure); 2 usage;
4 admission refused (no room for the GPU memory asked).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from tether.errors import EXIT_USAGE, ConfigError, TetherError
from tether.server import registry as reg


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise _UsageError(f"{self.prog}: {message}")


def _common() -> _Parser:
    common = _Parser(add_help=False, argument_default=argparse.SUPPRESS)
    where = common.add_mutually_exclusive_group()
    where.add_argument("--path", help="the registry file")
    where.add_argument("--root", help="a folder holding AGENT_STATUS.json")
    common.add_argument("--lock-timeout", type=float, help="seconds to wait for the lock (default 30)")
    common.add_argument("--history", type=float, help="seconds finished entries stay listed (default 86400)")
    common.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = _Parser(prog="tether agents", parents=[common], description="The AGENT_STATUS.json registry.")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("list", parents=[common], help="show agents, the queue and GPU memory")
    p = sub.add_parser("register", parents=[common], help="admit a job (or queue for room with --wait)")
    p.add_argument("--id", required=True, dest="agent_id")
    p.add_argument("--experiment", required=True)
    p.add_argument("--gpu-gb", required=True, type=float)
    p.add_argument("--wait", type=float, default=None, help="seconds to queue for room (default: refuse at once)")
    p.add_argument("--pid", type=int, default=reg.NO_PID, help="the process that owns the entry (default: none)")
    p.add_argument("--lease", type=float, default=None, help="seconds between required heartbeats")
    p = sub.add_parser("done", parents=[common], help="mark an agent finished")
    p.add_argument("agent_id", metavar="ID")
    p.add_argument("--status", choices=list(reg.FINAL_STATUSES), default="completed")
    p = sub.add_parser("heartbeat", parents=[common], help="renew an agent's lease")
    p.add_argument("agent_id", metavar="ID")
    sub.add_parser("repair", parents=[common], help="rebuild a damaged file from what is readable and alive")
    return parser


def _registry(ns: argparse.Namespace) -> reg.Registry:
    path = reg.resolve_path(getattr(ns, "path", None), getattr(ns, "root", None))
    kwargs: dict[str, Any] = {}
    if getattr(ns, "lock_timeout", None) is not None:
        if ns.lock_timeout < 0:
            raise ConfigError("--lock-timeout must be 0 or more seconds.")
        kwargs["lock_timeout"] = ns.lock_timeout
    if getattr(ns, "history", None) is not None:
        if ns.history < 0:
            raise ConfigError("--history must be 0 or more seconds.")
        kwargs["history_s"] = ns.history
    return reg.Registry(path, **kwargs)


def _emit(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")


def _describe(e: reg.Entry) -> str:
    where = f"GPU {e.cuda_visible_devices}" if e.gpus else "no GPU"
    return f"{e.id} ({e.experiment}, {reg.fmt_gb(e.gpu_gb)} GB, {where})"


def _print_listing(listing: reg.Listing) -> None:
    out = sys.stdout
    out.write(f"{listing.path} on {listing.host}\n")
    if listing.gpus is None:
        out.write(f"GPUs: {listing.gpu_error}\n" if listing.gpu_error else "GPUs: none (no nvidia-smi)\n")
    else:
        for u in listing.gpus:
            out.write(
                f"GPU {u.gpu.index}: {reg.fmt_gb(u.gpu.total_gb)} GB, {reg.fmt_gb(u.reserved_gb)} reserved, "
                f"{reg.fmt_gb(u.outside_gb)} outside the registry, {reg.fmt_gb(reg.floor_gb(u.free_gb))} free\n"
            )
    rows = [("ID", "EXPERIMENT", "GPU_GB", "STATUS", "GPUS", "STARTED", "PID", "NOTE")]
    position = {ident: n for n, ident in reversed(list(enumerate(listing.queue, 1)))}
    for e in listing.entries:
        status = e.status + (f" #{position[e.id]}" if e.status == "queued" and e.id in position else "")
        rows.append(
            (
                e.id,
                e.experiment,
                reg.fmt_gb(e.gpu_gb),
                status,
                e.cuda_visible_devices or "-",
                e.started or "-",
                str(e.pid) if e.pid else "-",
                _note(listing, e),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        out.write(("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1]).rstrip() + "\n")
    for problem in listing.problems:
        sys.stderr.write(f"warning: {problem}\n")


def _note(listing: reg.Listing, e: reg.Entry) -> str:
    """The NOTE column: the entry's note, how an odd gpu_gb counts, and what ends a hold only a person can end."""
    notes = [e.note]
    if e.is_live:
        notes.append(e.gpu_gb_counted and f"gpu_gb counts as {e.gpu_gb_counted}")
        if not e.pid and e.lease_s is None:
            notes.append(f"held until {listing.held_until(e)}")
    return "; ".join(n for n in notes if n)


def _run(ns: argparse.Namespace, emit: Callable[[Any], None] = _emit) -> int:
    registry = _registry(ns)
    as_json = bool(getattr(ns, "json", False))
    command = ns.command or "list"
    if command == "list":
        listing = registry.listing()
        if as_json:
            emit(listing.to_dict())
        else:
            _print_listing(listing)
        return 0
    if command == "register":
        entry = registry.register(ns.agent_id, ns.experiment, ns.gpu_gb, pid=ns.pid, wait=ns.wait, lease_s=ns.lease)
        if as_json:
            emit(
                {
                    "entry": entry.to_dict(),
                    "cuda_visible_devices": entry.cuda_visible_devices,
                    "env": reg.agent_env(entry, registry.path),
                }
            )
        else:
            sys.stdout.write(f"admitted {_describe(entry)}: CUDA_VISIBLE_DEVICES={entry.cuda_visible_devices}\n")
        return 0
    if command == "done":
        entry = registry.release(ns.agent_id, ns.status)
        if as_json:
            emit({"entry": entry.to_dict()})
        else:
            sys.stdout.write(f"{entry.id}: {entry.status}\n")
        return 0
    if command == "heartbeat":
        entry = registry.heartbeat(ns.agent_id)
        if as_json:
            emit({"entry": entry.to_dict()})
        else:
            sys.stdout.write(f"{entry.id}: heartbeat {entry.heartbeat}\n")
        return 0
    report = registry.repair()
    if as_json:
        emit(report.to_dict())
    else:
        aside = f"; the damaged file is kept at {report.kept_aside}" if report.kept_aside else ""
        sys.stdout.write(
            f"rebuilt {report.path}: {len(report.entries)} entries ({report.salvaged} salvaged, "
            f"{report.discovered} found from live processes){aside}\n"
        )
    return 0


def _fail(exc: TetherError, as_json: bool, emit: Callable[[Any], None] = _emit, say: bool = True) -> int:
    if as_json:
        details = getattr(exc, "details", None)
        emit(
            {
                "error": {
                    "type": type(exc).__name__,
                    "message": exc.message,
                    "hint": exc.hint,
                    "exit_code": exc.exit_code,
                    "details": details if isinstance(details, dict) else {},
                }
            }
        )
    if say:
        sys.stderr.write(f"error: {exc}\n")
    return exc.exit_code


def main(argv: Sequence[str]) -> int:
    """Run ``agents ARGV``; returns the exit code."""
    argv = list(argv)
    as_json = "--json" in argv
    try:
        ns = build_parser().parse_args(argv)
    except _UsageError as exc:
        return _fail(ConfigError(str(exc), "See `tether agents --help`."), as_json)
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return _run(ns)
    except TetherError as exc:
        return _fail(exc, as_json)


def answer(argv: Sequence[str]) -> tuple[int, dict[str, Any]]:
    """``agents ARGV --json`` without printing: (the exit code, the one JSON document it would print). What
    ``tether agents --local`` calls in its own process instead of starting a second interpreter."""
    docs: list[Any] = []
    argv = [*argv, "--json"] if "--json" not in argv else list(argv)
    try:
        ns = build_parser().parse_args(argv)
    except _UsageError as exc:
        code = _fail(ConfigError(str(exc), "See `tether agents --help`."), True, docs.append, say=False)
    except SystemExit as exc:  # --help: the usage went to stdout
        return (exc.code if isinstance(exc.code, int) else EXIT_USAGE), {}
    else:
        try:
            code = _run(ns, docs.append)
        except TetherError as exc:
            code = _fail(exc, True, docs.append, say=False)
    return code, docs[-1] if docs and isinstance(docs[-1], dict) else {}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
