"""How fast the CLI answers: ``tether --version``, ``tether agents --local --json`` and ``tether progress --local
--json`` against a bare ``python3 -c "pass"``, in the same run.

A coding agent calls ``tether progress --json`` and ``tether agents ... --json`` in loops, so the start of the
command is most of what each call costs. The setup is a real one: a project with a ``tether.toml`` (already
checked once, as after its first command), three finished local runs started with ``tether run --local`` (so the
progress scan has run records and checkpoints to read), and two API-only agents in this machine's registry.

The same three commands are also timed outside a project (an empty folder) with a fresh ``TETHER_HOME`` of their
own, as the first call of a new user or agent makes them.

Each command is started as a user starts it: the ``tether`` script installed beside this interpreter (else
``python -m tether``), in the project folder, with its own ``TETHER_HOME``. Compiled bytecode is kept for the
children in a temporary ``PYTHONPYCACHEPREFIX`` (and ``PYTHONDONTWRITEBYTECODE`` is dropped), as it is after a
normal install; the bare interpreter runs with the same environment. Every round starts all seven commands once,
so a slow moment on a shared machine hits them alike; figures are medians, ``*_ratio`` = command / bare.

Goal: each ratio <= 8.

Run: python bench/cli_start.py [--repeats N]   (last line: JSON figures)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, median, note, timed

GOAL_RATIO = 8.0
RUNS = 3
AGENTS = 2

TOML = """\
[project]
name = "clistart"

[experiments.quick]
command = "python3 quick.py"
kind = "local"
items = 20
item_seconds = 0.001
"""

EXPERIMENT = """\
from tether.checkpoint import run_batch

items = [{"id": "i%03d" % n, "n": n} for n in range(20)]
run_batch(lambda it: {"id": it["id"], "value": it["n"] * 2}, items, key=lambda it: it["id"], progress=False)
"""


def tether_argv() -> list[str]:
    script = Path(sys.executable).with_name("tether")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "tether"]


def child_env(home: Path, pycache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "TETHER_AGENT_STATUS")}
    env.update({"TETHER_HOME": str(home), "PYTHONPYCACHEPREFIX": str(pycache)})
    return env


def call(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=120)


def quiet(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


def setup(base: Path, tether: list[str], env: dict[str, str]) -> Path:
    project = base / "project"
    project.mkdir()
    (project / "tether.toml").write_text(TOML)
    (project / "quick.py").write_text(EXPERIMENT)
    for _ in range(RUNS):
        started = call([*tether, "run", "quick", "--local", "--json"], project, env)
        if started.returncode != 0:
            raise SystemExit(f"tether run failed: {started.stderr}")
    deadline = time.monotonic() + 60
    while True:
        doc = json.loads(call([*tether, "progress", "--local", "--json"], project, env).stdout)
        statuses = [r["status"] for h in doc["hosts"] for r in h["runs"]]
        if len(statuses) == RUNS and all(s == "completed" for s in statuses):
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"the runs did not complete: {statuses}")
        time.sleep(0.2)  # waiting for the three runs started above to finish in their tmux windows
    for n in range(AGENTS):
        argv = [*tether, "agents", "--local", "register", "--id", f"agent{n}", "--experiment", "x", "--gpu-gb", "0"]
        done = call([*argv, "--json"], project, env)
        if done.returncode != 0:
            raise SystemExit(f"tether agents register failed: {done.stderr}")
    return project


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=21, help="rounds of the seven commands (default 21)")
    ns = parser.parse_args()
    tether = tether_argv()
    commands: dict[str, list[str]] = {
        "bare": [sys.executable, "-c", "pass"],
        "version": [*tether, "--version"],
        "agents": [*tether, "agents", "--local", "--json"],
        "progress": [*tether, "progress", "--local", "--json"],
    }
    with tempfile.TemporaryDirectory(prefix="tether-cli-start-") as tmp:
        base = Path(tmp)
        env = child_env(base / "home", base / "pycache")
        note(f"setting up: {RUNS} local runs, {AGENTS} agents ({' '.join(tether)})")
        project = setup(base, tether, env)
        outside = base / "outside"
        outside.mkdir()
        fresh_env = {**env, "TETHER_HOME": str(base / "fresh-home")}
        # name -> (argv, folder, environment): in the project, then outside any project with a fresh TETHER_HOME
        where: dict[str, tuple[list[str], Path, dict[str, str]]] = {n: (a, project, env) for n, a in commands.items()}
        where.update({f"{n}_outside": (a, outside, fresh_env) for n, a in commands.items() if n != "bare"})
        # Warm-up (bytecode written, files in the page cache), and a check that each command answers as it should.
        for name, (argv, cwd, env_of) in where.items():
            for _ in range(2):
                done = call(argv, cwd, env_of)
                if done.returncode != 0:
                    raise SystemExit(f"{name} failed: {done.stderr}")
        progress_doc = json.loads(call(commands["progress"], project, env).stdout)
        agents_doc = json.loads(call(commands["agents"], project, env).stdout)
        assert sum(len(h["runs"]) for h in progress_doc["hosts"]) == RUNS, progress_doc
        assert len(agents_doc["entries"]) == RUNS + AGENTS, agents_doc  # each run registers too
        times: dict[str, list[float]] = {name: [] for name in where}
        for _ in range(ns.repeats):
            for name, (argv, cwd, env_of) in where.items():
                seconds, done = timed(partial(quiet, argv, cwd, env_of))
                if done.returncode != 0:
                    raise SystemExit(f"{name} failed during the rounds")
                times[name].append(seconds)
        shutil.rmtree(base / "pycache", ignore_errors=True)
    medians = {name: median(values) for name, values in times.items()}
    bare = medians["bare"]
    figures: dict[str, Any] = {"bare_python_s": round(bare, 5), "repeats": ns.repeats, "goal_ratio": GOAL_RATIO}
    note(f"{'command':<52} {'median':>9} {'ratio':>7}")
    labels = {
        "version": "tether --version",
        "agents": "tether agents --local --json",
        "progress": "tether progress --local --json",
    }
    rows = [("bare", 'python3 -c "pass"')]
    rows += [(n, f"{label} (in a project)") for n, label in labels.items()]
    rows += [(f"{n}_outside", f"{label} (outside, fresh home)") for n, label in labels.items()]
    for name, label in rows:
        ratio = medians[name] / bare
        note(f"{label:<52} {medians[name] * 1000:7.1f}ms {ratio:6.1f}x")
        if name != "bare":
            figures[f"{name}_s"] = round(medians[name], 5)
            figures[f"{name}_ratio"] = round(ratio, 2)
    figures["meets_goal"] = all(figures[f"{n}_ratio"] <= GOAL_RATIO for n, _label in rows if n != "bare")
    emit(figures)


if __name__ == "__main__":
    main()
