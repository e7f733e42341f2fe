"""Benchmark: registry admissions per second under 32-way contention, against the runbook's unlocked protocol.

Runs PROCS worker processes (default 32) doing ITERATIONS (default 20) register/release cycles with random gpu_gb
against the fake nvidia-smi (1x24 GB), with a checker reading under the lock; then the runbook's protocol (read,
append, write; no lock) with the same processes and iterations. The last line printed is one JSON object:
``admissions_per_s``, ``lost`` and ``max_overcommit_gb`` (both must be 0), and the unlocked protocol's ``lost``.

Usage: ``python bench/registry.py [--procs N] [--iterations N] [--shape 1x24|2x48|8x80]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tether.testing import FAKES

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "integration" / "registry" / "registry_worker.py"
SHAPES = {"1x24": ([24564 / 1024], 12.0), "2x48": ([49140 / 1024] * 2, 40.0), "8x80": ([80.0] * 8, 150.0)}


def run(argv: list[str], env: dict[str, str], count: int) -> tuple[list[dict[str, object]], float]:
    start = time.monotonic()
    procs = [
        subprocess.Popen([*argv[:3], argv[3], str(n), *argv[4:]], stdout=subprocess.PIPE, text=True, env=env)
        for n in range(count)
    ]
    results = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"a worker failed with exit code {p.returncode}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results, time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--shape", choices=list(SHAPES), default="1x24")
    args = parser.parse_args()
    totals, max_gb = SHAPES[args.shape]
    env = dict(os.environ, FAKE_NVIDIA_SMI=args.shape, PATH=f"{FAKES}{os.pathsep}{os.environ.get('PATH', '')}")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p)
    py = [sys.executable, str(WORKER)]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "AGENT_STATUS.json")
        stop = os.path.join(tmp, "stop")
        checker = subprocess.Popen(
            [*py, "checker", path, stop, ",".join(str(t) for t in totals)], stdout=subprocess.PIPE, text=True, env=env
        )
        results, elapsed = run([*py, "worker", path, str(args.iterations), "11", str(max_gb)], env, args.procs)
        Path(stop).write_text("")
        check = json.loads(checker.communicate()[0])
        admitted = [i for r in results for i in r["admitted"]]  # type: ignore[attr-defined]
        refused = sum(int(r["refused"]) for r in results)  # type: ignore[call-overload]
        rows = json.loads(Path(path).read_text())
        recorded = {r["id"] for r in rows if r.get("status") == "completed"}
        lost = len(set(admitted) - recorded)

        plain = os.path.join(tmp, "plain.json")
        Path(plain).write_text("[]")
        u_results, u_elapsed = run([*py, "unlocked", plain, str(args.iterations)], env, args.procs)
        appended = sum(int(r["appended"]) for r in u_results)  # type: ignore[call-overload]
        try:
            kept = len(json.loads(Path(plain).read_text()))
        except ValueError:
            kept = 0
    ops = 2 * (len(admitted)) + refused
    summary = {
        "procs": args.procs,
        "iterations": args.iterations,
        "shape": args.shape,
        "admissions": len(admitted),
        "refusals": refused,
        "admissions_per_s": round(len(admitted) / elapsed, 1),
        "registry_ops_per_s": round(ops / elapsed, 1),
        "lost": lost,
        "max_overcommit_gb": round(float(check["max_overcommit_gb"]), 3),
        "checker_reads": check["checks"],
        "unlocked": {
            "appended": appended,
            "kept": kept,
            "lost": appended - kept,
            "appends_per_s": round(appended / u_elapsed, 1),
        },
    }
    print(f"registry: {len(admitted)} admitted, {refused} refused in {elapsed:.1f} s; lost {lost}", file=sys.stderr)
    print(f"unlocked runbook protocol: kept {kept} of {appended} appends", file=sys.stderr)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
