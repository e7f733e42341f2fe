"""Managed runs: a batch spread over K = 4 rented servers, three preemptions and a vanished host injected.

Run: ``python bench/managed.py [--items 2000] [--item-ms 50] [--seed 7]``. On the Vast emulator (real time, one
second of loading per instance) whose instances are real sshd hosts, through the real CLI
(``tether run work --managed --shards K``), it runs the same experiment three times:

1. clean, K = 1 (one server);
2. clean, K = 4;
3. K = 4 with faults: at moments drawn with the fixed seed, three servers are preempted and one host vanishes
   (each time the server's processes are killed too, as losing the machine does; the emulator's hooks stop only
   its sshd).

The experiment records ``--items`` items of ``--item-ms`` each through ``tether.checkpoint.run_batch`` and logs
every item it starts to a file on its server, so work done twice is counted. The last line printed is one JSON
object:

- ``complete``: the faulty run's ``results.json`` holds every item exactly once and equals the clean runs' bytes;
- ``recomputed_items``: items started more than once over all servers of the faulty run (sum of count - 1);
- ``recompute_bound``: for each failure, the items its shard had finished after its last sync (the server's
  journal minus the copy at home at that moment) plus the one in flight (the issue's bound);
- ``wall_ratio``: the faulty run's wall time / the clean K = 4 run's;
- ``speedup_k``: the clean K = 1 wall time / the clean K = 4 wall time (wall times from the command's start to
  its exit: renting, set-up, pulls, merge and the verified destroys included);
- ``cost_ratio``: what the emulator billed the faulty run / the busy-time lower bound: every item's busy time (the
  clean one-server run's, from its run record: start to end over items) on the K cheapest matching offers, at
  their prices, the least K servers could cost with no renting, set-up, pull or failure (``cost_ratio_clean_k4``
  is the clean K = 4 run's).

Goals (the issue's): complete, recomputed_items <= recompute_bound, speedup_k >= 3.2, wall_ratio <= 1.5,
cost_ratio <= 1.2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, note
from tether.checkpoint.shard import shard_of
from tether.emulator.vast import Clock, HostHandle, VastEmulator, load_offer_book
from tether.testing.sshd import SshdHost, generate_key

EXPERIMENT = """\
import os, sys, time
from pathlib import Path
from tether.checkpoint import run_batch

n, ms = int(sys.argv[1]), float(sys.argv[2])
log = Path(os.environ["TETHER_RESULTS_DIR"]).parent / "work.log"

def work(item):
    with open(log, "a") as fh:
        fh.write(item["id"] + "\\n")
    time.sleep(ms / 1000.0)
    return {"id": item["id"], "value": item["n"] * 3}

items = [{"id": "w%05d" % k, "n": k} for k in range(n)]
run_batch(work, items, key=lambda it: it["id"], config={"n": n}, progress=False, interval_seconds=1.0)
"""

TOML = """[project]
name = "{name}"
setup_packages = []
apt_packages = []

[experiments.work]
command = "python3 work.py {items} {ms}"
kind = "api"
items = {items}
item_seconds = {seconds}
results = "results"

[vast]
identity_file = "{key}"
remote_root = "{base}/instance-{{instance_id}}/root"
wait_minutes = 2
poll_seconds = 0.2
retries = 2
backoff_seconds = 0.2

[policy]
allow_spending = true
"""


class Cloud:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.key = generate_key(base / "user-key" / "id_ed25519", "tether-bench-user")
        self.hosts: dict[int, SshdHost] = {}
        self.emulator = VastEmulator(
            load_offer_book(), loading_s=1.0, clock=Clock(realtime=True), host_factory=self._factory
        )

    def _factory(self, instance_id: int) -> HostHandle:
        host = SshdHost(self.base / "vast-hosts" / f"instance-{instance_id}")
        host.authorized_keys.write_text(self.key.with_name("id_ed25519.pub").read_text())
        host.start()
        self.hosts[instance_id] = host
        return host

    def root_of(self, instance_id: int) -> Path:
        return self.base / "vast-hosts" / f"instance-{instance_id}" / "root"

    def close(self) -> None:
        self.emulator.stop()
        for host in self.hosts.values():
            host.kill_tmux()
            host.stop()


def kill_runs(root: Path) -> None:
    """SIGKILL every run's wrapper and experiment under a server root (what losing the machine does)."""
    for record in (root / ".tether" / "runs").glob("*/run.json"):
        with contextlib.suppress(OSError, ValueError):
            doc = json.loads(record.read_text())
            child, wrapper = doc.get("child_pid"), doc.get("pid")
            if isinstance(child, int) and child > 0:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child, signal.SIGKILL)
            if isinstance(wrapper, int) and wrapper > 0:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(wrapper, signal.SIGKILL)


def ok_ids(path: Path) -> set[str]:
    out: set[str] = set()
    with contextlib.suppress(OSError):
        for line in path.read_bytes().splitlines()[1:]:
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                if rec.get("ok") is True:
                    out.add(str(rec["id"]))
    return out


def project(cloud: Cloud, name: str, items: int, ms: float) -> tuple[Path, Path]:
    root = cloud.base / name / "proj"
    root.mkdir(parents=True)
    (root / "work.py").write_text(EXPERIMENT)
    toml = TOML.format(name=name, items=items, ms=ms, seconds=ms / 1000, key=cloud.key, base=cloud.base / "vast-hosts")
    (root / "tether.toml").write_text(toml)
    home = cloud.base / name / "home"
    home.mkdir()
    return root, home


def run(
    cloud: Cloud, name: str, shards: int, items: int, ms: float, faults: list[tuple[float, str]] | None, seed: int
) -> dict[str, Any]:
    root, home = project(cloud, name, items, ms)
    env = {
        **os.environ,
        "TETHER_HOME": str(home),
        "VAST_URL": cloud.emulator.url,
        "VAST_API_KEY": cloud.emulator.api_key,
        "HOME": str(cloud.base / "home"),
    }
    env.pop("TETHER_AGENT_STATUS", None)
    argv = [
        sys.executable,
        "-m",
        "tether",
        "run",
        "work",
        "--managed",
        "--shards",
        str(shards),
        "--json",
        "--sync-every",
        "2s",
        "--poll",
        "0.25s",
        "--unreachable-after",
        "30s",
    ]
    before = set(cloud.emulator.instances)
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    bound = [0]
    injected: list[str] = []
    if faults:
        rng = random.Random(seed)
        injector = threading.Thread(
            target=inject, args=(cloud, name, home, t0, faults, rng, bound, injected, proc), daemon=True
        )
        injector.start()
    out, err = proc.communicate(timeout=1800)
    wall = time.monotonic() - t0
    if faults:
        injector.join(timeout=5)
    if proc.returncode != 0 or os.environ.get("BENCH_VERBOSE"):
        note(err)
    if proc.returncode != 0:
        raise SystemExit(f"{name}: tether exited {proc.returncode}")
    doc = json.loads(out)
    mine = [i for iid, i in cloud.emulator.instances.items() if iid not in before]
    cloud.emulator.settle()
    billed = sum(i.accrued for i in mine)
    starts: Counter[str] = Counter()
    for inst in mine:
        for log in cloud.root_of(inst.id).glob("*/work.log"):
            mine_ids = log.read_text().split()
            starts.update(mine_ids)
            if os.environ.get("BENCH_VERBOSE"):
                note(f"  instance {inst.id} ({inst.label}): {len(mine_ids)} starts, {len(set(mine_ids))} items")
    busy = 0.0
    for inst in mine:
        for record in cloud.root_of(inst.id).glob(".tether/runs/*/run.json"):
            with contextlib.suppress(OSError, ValueError, TypeError):
                rec = json.loads(record.read_text())
                busy += float(rec["ended"]) - float(rec["started"])
    return {
        "busy_s": busy,
        "wall_s": wall,
        "billed_usd": billed,
        "results": (root / "results" / "results.json").read_bytes(),
        "recomputed": sum(c - 1 for c in starts.values() if c > 1),
        "bound": bound[0],
        "injected": injected,
        "servers": len(mine),
        "left_billing": len([i for i in mine if i.state != "destroyed"]),
        "recoveries": sum(s["recoveries"] for s in doc["shards"]),
        "prices": sorted(i.dph_total for i in mine),
    }


def inject(
    cloud: Cloud,
    name: str,
    home: Path,
    t0: float,
    faults: list[tuple[float, str]],
    rng: random.Random,
    bound: list[int],
    injected: list[str],
    proc: subprocess.Popen[str],
) -> None:
    """At each fault's moment, lose one busy server of the run (chosen with the seed) and add its bound."""
    for at, kind in faults:
        while time.monotonic() - t0 < at:
            if proc.poll() is not None:
                return
            time.sleep(0.05)  # waiting for the fault's moment on the wall clock
        busy = []
        for inst in list(cloud.emulator.instances.values()):
            if inst.state != "running" or not (inst.label or "").startswith(f"tether:{name}:"):
                continue
            journal = next(iter(cloud.root_of(inst.id).glob("*/results/results.journal.jsonl")), None)
            if journal is not None:
                busy.append((inst, journal))
        if not busy:
            continue
        inst, journal = rng.choice(sorted(busy, key=lambda b: b[0].id))
        shard = label_shard(inst.label or "")
        kill_runs(cloud.root_of(inst.id))
        done = ok_ids(journal)
        home_copy = next(iter((home / "managed").glob(f"*/shard-{shard}/results/results.journal.jsonl")), None)
        synced = ok_ids(home_copy) if home_copy is not None else set()
        bound[0] += len(done - synced) + 1  # finished after the last sync, plus the one in flight
        if kind == "preempt":
            cloud.emulator.preempt(inst.id)
        else:
            cloud.emulator.vanish(inst.id)
        injected.append(f"{kind} shard {shard} at {time.monotonic() - t0:.1f}s ({len(done - synced)} unsynced)")
        note(f"  injected: {injected[-1]}")


def label_shard(label: str) -> int:
    name = label.rsplit(":", 1)[-1]
    return int(name.rsplit("-", 2)[-2][1:])


def cheapest_bound(prices: list[float], shards: int, items: int, item_s: float) -> float:
    """The busy-time lower bound: each shard's items at ``item_s`` each (the clean one-server run's busy time per
    item) on one of the K cheapest matching offers (those the clean K-server run rented), at its price, the
    biggest shard on the cheapest: what the work costs when a server bills only while it computes."""
    offers = sorted(prices)
    sizes = Counter(shard_of(f"w{k:05d}", shards) for k in range(items))
    per_shard = sorted((sizes[s] * item_s for s in range(shards)), reverse=True)
    return sum(busy * price / 3600.0 for busy, price in zip(per_shard, offers[:shards], strict=False))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=2000)
    p.add_argument("--item-ms", type=float, default=50.0)
    p.add_argument("--seed", type=int, default=7)
    a = p.parse_args()
    base = Path(tempfile.mkdtemp(prefix="tether-bench-managed-"))
    cloud = Cloud(base)
    cloud.emulator.start()
    try:
        note(f"clean K=1: {a.items} items of {a.item_ms:g} ms")
        k1 = run(cloud, "clean-k1", 1, a.items, a.item_ms, None, a.seed)
        note(f"  {k1['wall_s']:.1f} s, ${k1['billed_usd']:.6f}")
        note("clean K=4")
        k4 = run(cloud, "clean-k4", 4, a.items, a.item_ms, None, a.seed)
        note(f"  {k4['wall_s']:.1f} s, ${k4['billed_usd']:.6f}")
        rng = random.Random(a.seed)
        span = k4["wall_s"]
        moments = sorted(rng.uniform(0.2 * span, 0.75 * span) for _ in range(4))
        kinds = ["preempt", "preempt", "preempt", "vanish"]
        rng.shuffle(kinds)
        note("K=4 with three preemptions and a vanished host")
        bad = run(cloud, "faults-k4", 4, a.items, a.item_ms, list(zip(moments, kinds, strict=True)), a.seed)
        note(f"  {bad['wall_s']:.1f} s, ${bad['billed_usd']:.6f}, {bad['recoveries']} recoveries")
    finally:
        cloud.close()
    doc = json.loads(bad["results"])
    ids = [r["id"] for r in doc["results"]]
    complete = (
        bad["results"] == k4["results"] == k1["results"]
        and len(ids) == len(set(ids)) == a.items
        and doc["completed"] == a.items
    )
    item_s = k1["busy_s"] / a.items  # one server's busy time per item (the run's start to its end)
    lower = cheapest_bound(k4["prices"], 4, a.items, item_s)
    figures = {
        "items": a.items,
        "item_ms": a.item_ms,
        "seed": a.seed,
        "complete": complete,
        "recomputed_items": bad["recomputed"],
        "recompute_bound": bad["bound"],
        "injected": bad["injected"],
        "recoveries": bad["recoveries"],
        "wall_k1_s": round(k1["wall_s"], 2),
        "wall_k4_s": round(k4["wall_s"], 2),
        "wall_faults_s": round(bad["wall_s"], 2),
        "speedup_k": round(k1["wall_s"] / k4["wall_s"], 3),
        "wall_ratio": round(bad["wall_s"] / k4["wall_s"], 3),
        "cost_faults_usd": round(bad["billed_usd"], 8),
        "cost_clean_k4_usd": round(k4["billed_usd"], 8),
        "cost_lower_bound_usd": round(lower, 8),
        "busy_per_item_ms": round(item_s * 1000, 3),
        "cost_ratio": round(bad["billed_usd"] / lower, 3) if lower else None,
        "cost_ratio_clean_k4": round(k4["billed_usd"] / lower, 3) if lower else None,
        "servers_left_billing": bad["left_billing"] + k4["left_billing"] + k1["left_billing"],
    }
    figures["goal_met"] = bool(
        complete
        and figures["recomputed_items"] <= figures["recompute_bound"]
        and figures["speedup_k"] >= 3.2
        and figures["wall_ratio"] <= 1.5
        and (figures["cost_ratio"] or 9) <= 1.2
    )
    emit(figures)


if __name__ == "__main__":
    main()
