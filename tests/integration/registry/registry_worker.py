"""A worker process for the registry stress test and benchmark (run as a script).

``worker PATH INDEX ITERATIONS SEED MAX_GB``: registers and releases ITERATIONS times with random gpu_gb, prints
one JSON line ``{"admitted": [...], "refused": n}``.
``checker PATH STOPFILE TOTALS_GB``: reads the registry under its lock until STOPFILE exists, prints
``{"checks": n, "max_overcommit_gb": x}`` where x is the worst per-GPU excess of running reservations.
``unlocked PATH INDEX ITERATIONS``: the runbook's protocol (read, append, write; no lock), prints ``{"appended": n}``.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import sys
import time

from tether.errors import AdmissionRefused
from tether.server.registry import Registry


def worker(path: str, index: int, iterations: int, seed: int, max_gb: float) -> None:
    rng = random.Random(seed * 1000 + index)
    registry = Registry(path, lock_timeout=60)
    admitted: list[str] = []
    refused = 0
    for i in range(iterations):
        ident = f"w{index}-{i}"
        gb = 0.0 if rng.random() < 0.2 else round(rng.uniform(0.5, max_gb), 1)
        wait = None if rng.random() < 0.6 else 5.0
        try:
            registry.register(ident, f"exp-{index}", gb, wait=wait, poll_s=0.02)
        except AdmissionRefused:
            refused += 1
            continue
        admitted.append(ident)
        time.sleep(rng.random() * 0.003)
        registry.release(ident)
    print(json.dumps({"admitted": admitted, "refused": refused}), flush=True)


def checker(path: str, stopfile: str, totals: list[float]) -> None:
    checks = 0
    worst = float("-inf")
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    while not os.path.exists(stopfile):
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            try:
                with open(path, "rb") as fh:
                    data = fh.read()  # read under the lock, parse after it
            except FileNotFoundError:
                data = b"[]"
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
        rows = json.loads(data)
        held = [0.0] * len(totals)
        for row in rows:
            if row["status"] == "running" and row["gpu_gb"] > 0:
                for g in row["gpus"]:
                    held[g] += row["gpu_gb"] / len(row["gpus"])
        worst = max(worst, *(h - t for h, t in zip(held, totals, strict=True)))
        checks += 1
        time.sleep(0.01)
    print(json.dumps({"checks": checks, "max_overcommit_gb": max(0.0, worst)}), flush=True)


def unlocked(path: str, index: int, iterations: int) -> None:
    appended = 0
    for i in range(iterations):
        try:
            with open(path) as fh:
                rows = json.load(fh)
        except (FileNotFoundError, ValueError):
            rows = []  # what an agent following the runbook does with a half-written file
        rows.append({"id": f"w{index}-{i}", "experiment": "x", "gpu_gb": 0, "status": "running", "started": "now"})
        with open(path, "w") as fh:
            json.dump(rows, fh, indent=2)
        appended += 1
    print(json.dumps({"appended": appended}), flush=True)


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "worker":
        worker(args[0], int(args[1]), int(args[2]), int(args[3]), float(args[4]))
    elif mode == "checker":
        checker(args[0], args[1], [float(x) for x in args[2].split(",")])
    else:
        unlocked(args[0], int(args[1]), int(args[2]))
