"""What keeps running or billing when a command is interrupted (Ctrl-C), and the commands that pick each thing up
or stop it.

Read from local state only (no provider call, no SSH: the user is waiting to get their prompt back), for the CLI
edge (``cli/main.py``) to say before it exits 130:

- every rented server that bills (its state and $/hr: the full price, the bid for an interruptible rental, or the
  storage part when stopped or loading), with ``tether down NAME`` and ``tether destroy NAME`` (and ``tether up
  NAME`` for the server whose set-up was interrupted);
- the managed runs this process drove, which keep running on their servers without a controller:
  ``tether run EXP --managed`` picks one up, ``tether cancel ID`` stops it and destroys its servers;
- the plain runs this command started that are live (``run --follow`` leaves its run running): ``tether logs ID
  -f`` follows one, ``tether cancel ID`` stops it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from tether import cost, vocab
from tether.state import InstanceRecord, State


@dataclass(frozen=True)
class BillingServer:
    name: str
    state: str
    usd_per_hr: float | None
    """What it bills now (None: unknown, e.g. a rental interrupted before the provider named the instance)."""
    rate: str
    """``full`` (the server runs), ``storage`` (its disk only) or ``unknown``."""
    commands: list[str]


@dataclass(frozen=True)
class LiveRun:
    id: str
    experiment: str
    host: str
    status: str
    commands: list[str]


@dataclass(frozen=True)
class LiveManagedRun:
    id: str
    experiment: str
    status: str
    servers: list[str]
    commands: list[str]


@dataclass(frozen=True)
class Leftovers:
    servers: list[BillingServer] = field(default_factory=list)
    managed: list[LiveManagedRun] = field(default_factory=list)
    runs: list[LiveRun] = field(default_factory=list)

    @property
    def usd_per_hr(self) -> float:
        """What the servers bill together, per hour (the ones whose price is known)."""
        return round(sum(s.usd_per_hr for s in self.servers if s.usd_per_hr is not None), 6)

    @property
    def empty(self) -> bool:
        return not (self.servers or self.managed or self.runs)

    def to_json(self) -> dict[str, Any]:
        return {
            "servers": [asdict(s) for s in self.servers],
            "managed": [asdict(m) for m in self.managed],
            "runs": [asdict(r) for r in self.runs],
            "usd_per_hr": self.usd_per_hr,
        }

    def sentence(self) -> str:
        """One sentence: what keeps running or billing."""
        if self.empty:
            return "Interrupted; nothing tether started keeps running, and no server bills."
        parts: list[str] = []
        if self.servers:
            named = ", ".join(f"{s.name} ({_price(s)})" for s in self.servers)
            many = len(self.servers) > 1
            parts.append(f"{'servers' if many else 'server'} {named} {'keep' if many else 'keeps'} billing")
        for m in self.managed:
            parts.append(f"managed run {m.id} of {m.experiment} keeps running without its controller")
        for r in self.runs:
            parts.append(f"run {r.id} of {r.experiment} keeps running on {r.host}")
        total = f" (${self.usd_per_hr:.4f}/hr in all)" if len(self.servers) > 1 else ""
        return "Interrupted: " + "; ".join(parts) + total + "."

    def lines(self) -> list[str]:
        """One line per thing left, with the exact commands for it."""
        out = []
        for m in self.managed:
            on = f" on {', '.join(m.servers)}" if m.servers else ""
            out.append(
                f"managed run {m.id}{on}: pick it up with `{m.commands[0]}`; stop it (its servers destroyed, what "
                f"finished kept) with `{m.commands[1]}`."
            )
        for r in self.runs:
            out.append(f"run {r.id}: follow it with `{r.commands[0]}`; stop it with `{r.commands[1]}`.")
        for s in self.servers:
            if s.commands[0] == "tether ls":
                out.append(
                    f"{s.name} ({s.state}): its rental was cut short; `tether ls` adopts what it made, then "
                    f"`{s.commands[1]}` stops paying for it."
                )
                continue
            how = " or ".join(f"`{c}`" for c in s.commands if not c.startswith("tether up "))
            first = next((c for c in s.commands if c.startswith("tether up ")), None)
            lead = f"finish its set-up with `{first}`; " if first else ""
            out.append(f"{s.name} ({s.state}, {_price(s)}): {lead}stop paying with {how}.")
        return out


def _price(server: BillingServer) -> str:
    if server.usd_per_hr is None:
        return "price unknown"
    kind = "" if server.rate == "full" else f", {server.rate}"
    return f"${server.usd_per_hr:.4f}/hr{kind}"


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) and number >= 0 else None


def _server(rec: InstanceRecord, setting_up: str | None) -> BillingServer:
    kind = cost.rate_kind(rec.state)
    if not rec.instance_id:
        price, rate = None, "unknown"  # a rental in flight: `tether ls` adopts what it made
    elif kind == "full":
        bid = _finite(rec.meta.get("bid_usd")) if isinstance(rec.meta, dict) else None
        price, rate = (bid if bid is not None else _finite(rec.dph_total)), "full"
    else:
        price, rate = _finite(rec.storage_dph), "storage"
    commands = [f"tether down {rec.name}", f"tether destroy {rec.name}"]
    if not rec.instance_id:
        commands = ["tether ls", f"tether destroy {rec.name}"]  # `ls` adopts what the cut-short rental made
    elif rec.name == setting_up:
        commands.insert(0, f"tether up {rec.name}")
    return BillingServer(rec.name, rec.state, price, rate, commands)


def gather(st: State, *, since: float, pid: int, setting_up: str | None = None) -> Leftovers:
    """What keeps running or billing: every rented server that bills, the unfinished managed runs process ``pid``
    drove (left without a controller), the live plain runs started at or after ``since`` (a time.time(); not a
    managed run's shards). ``setting_up`` names the server whose ``tether up`` was interrupted."""
    servers = [_server(rec, setting_up) for rec in st.instances() if cost.rate_kind(rec.state) != "none"]
    managed: list[LiveManagedRun] = []
    shard_runs: set[str] = set()
    for m in st.managed_runs():
        shards = st.managed_shards(m.id)
        shard_runs |= {s.run for s in shards if s.run}
        if m.status in vocab.MANAGED_FINAL or m.controller_pid != pid:
            continue  # finished, or driven by another controller (another terminal, a --detach one): not ours
        on = [s.server for s in shards if s.server and s.status not in vocab.SHARD_FINAL]
        commands = [f"tether run {m.experiment} --managed", f"tether cancel {m.id}"]
        managed.append(LiveManagedRun(m.id, m.experiment, m.status, on, commands))
    runs = [
        LiveRun(r.id, r.experiment, r.host, r.status, [f"tether logs {r.id} -f", f"tether cancel {r.id}"])
        for r in st.runs()
        if r.started >= since and vocab.is_live(r.status) and r.id not in shard_runs
    ]
    return Leftovers(servers, managed, runs)


__all__ = ["BillingServer", "Leftovers", "LiveManagedRun", "LiveRun", "gather"]
