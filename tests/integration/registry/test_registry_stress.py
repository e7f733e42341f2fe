"""32 real processes registering and releasing against one registry, with a checker reading under the lock.

By default the most contended shape (one 24 GB GPU) runs at the issue's full size, 50 register/release cycles per
process (about 80 s on two cores), and the other two shapes at 10; REGISTRY_STRESS_ITERATIONS sets all three (50
for the full size everywhere, about 4 minutes). A shape at full size is marked ``slow`` (the suite still runs it;
``-m "not slow"`` leaves it out of a quick local run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import FAKES

HERE = Path(__file__).resolve().parent
WORKER = HERE / "registry_worker.py"
PROCS = 32
FORCED = os.environ.get("REGISTRY_STRESS_ITERATIONS")
ITERATIONS = {"1x24": 50, "2x48": 10, "8x80": 10}
SHAPES = {"1x24": ([24564 / 1024], 12.0), "2x48": ([49140 / 1024] * 2, 40.0), "8x80": ([80.0] * 8, 150.0)}


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    "shape",
    [pytest.param(s, marks=pytest.mark.slow) if ITERATIONS[s] >= 50 or FORCED else s for s in SHAPES],
)
def test_no_entry_lost_and_gpu_never_overcommitted(
    shape: str, tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    totals, max_gb = SHAPES[shape]
    iterations = int(FORCED) if FORCED else ITERATIONS[shape]
    path = tmp_path / "AGENT_STATUS.json"
    stop = tmp_path / "stop"
    env = dict(os.environ, FAKE_NVIDIA_SMI=shape, PATH=f"{FAKES}{os.pathsep}{os.environ['PATH']}")
    py = [sys.executable, str(WORKER)]
    checker = subprocess.Popen(
        [*py, "checker", str(path), str(stop), ",".join(str(t) for t in totals)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    procs.append(checker)
    workers = [
        subprocess.Popen(
            [*py, "worker", str(path), str(n), str(iterations), "7", str(max_gb)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for n in range(PROCS)
    ]
    procs.extend(workers)
    admitted: list[str] = []
    refused = 0
    for w in workers:
        out, _ = w.communicate(timeout=600)
        assert w.returncode == 0
        result = json.loads(out.strip().splitlines()[-1])
        admitted += result["admitted"]
        refused += result["refused"]
    stop.write_text("")
    out, _ = checker.communicate(timeout=60)
    check = json.loads(out)

    rows = json.loads(path.read_text())
    ids = [r["id"] for r in rows]
    assert len(admitted) + refused == PROCS * iterations
    assert admitted, "nothing was admitted at all"
    assert sorted(ids) == sorted(admitted)  # every admission recorded exactly once, no refused id left behind
    assert {r["status"] for r in rows} == {"completed"}
    assert check["checks"] > 0
    assert check["max_overcommit_gb"] <= 1e-6
    gpu_rows = [r for r in rows if r["gpu_gb"] > 0]
    assert gpu_rows and all(r["gpus"] for r in gpu_rows)
    if len(totals) > 1:
        assert len({g for r in gpu_rows for g in r["gpus"]}) > 1  # placement used more than one GPU
