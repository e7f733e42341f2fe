"""Progress of 50 runs on one SSH host: tether's one-round-trip scan against one ``ssh cat`` per run file.

One real sshd on loopback (``tether.testing.sshd.SshdHost``) holds 50 fabricated runs under its root: for each,
``.tether/runs/<id>/run.json`` in the run wrapper's format (40 completed, 5 failed with a log, 5 running with the
pid of this bench process, so the liveness check has a live process to find) and a results folder with
``results.progress.json`` in the checkpoint library's format (and a journal beside it, which neither side reads).
tether's server side is installed there with ``tether.provision.install_server_side``.

- tether: ``tether.runs.scan(target)``, i.e. one ``ssh host python3 -m tether.server progress --root R``.
- baseline, the obvious script: ``ssh host ls <root>/.tether/runs``, then for each run ``ssh host cat run.json``
  and ``ssh host cat <results_dir>/results.progress.json`` (101 ssh commands), parsing each JSON.
- bare: one ``ssh host true``.

Every ssh command, on both sides, is built by tether's own ``ssh_argv`` (same options, same ControlMaster socket)
and runs on a connection that is already warm. Figures are medians: ``speedup`` = baseline / tether,
``rtt_ratio`` = tether / bare.

Variants of the server command are measured too (over ssh and, since the server is this machine, also started
directly without ssh): the interpreter as configured (``python3``, found through the remote PATH), the interpreter
resolved once to its real path (``sys.executable`` on the server, which skips wrapper scripts such as version
manager shims), and both with ``-S`` (no ``site`` import; the server side is stdlib-only). ``shell_startup_s`` is
what the login shell costs before any remote command runs (rc files read for ssh commands), measured by starting
it locally the way sshd does; it is part of every ssh command here, the bare ``true`` included.

Run: python bench/progress.py   (last line: JSON figures)
"""

from __future__ import annotations

import json
import os
import pwd
import shlex
import sys
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, median, note, timed
from _sshd import BenchHost, bench_host, run_timed
from tether import runs
from tether.hosts import Target
from tether.provision import install_server_side
from tether.server import procinfo

N_RUNS = 50
N_FAILED = 5
N_RUNNING = 5
REPEATS = 7
BASELINE_REPEATS = 3  # 101 ssh commands per repetition: kept lower so the bench stays near 2 minutes


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def fabricate_runs(root: Path) -> list[str]:
    """Write 50 runs (records, logs, results folders) under ``root``; returns their ids."""
    now = time.time()
    me = procinfo.identity()
    ids: list[str] = []
    for i in range(N_RUNS):
        experiment = f"exp{i % 5}"
        run_id = f"{experiment}-20250101-{i:06d}-{i:04x}"
        ids.append(run_id)
        run_dir = root / ".tether" / "runs" / run_id
        run_dir.mkdir(parents=True)
        results = root / "proj" / "results" / run_id
        results.mkdir(parents=True)
        started = now - 3600 + i
        total = 1000
        if i < N_RUNNING:
            status, exit_code, ended, done, ident = "running", None, None, 400 + i, me
        elif i < N_RUNNING + N_FAILED:
            status, exit_code, ended, done = "failed", 1, now - 60, 300 + i
            ident = {"pid": 0, "pid_start": None, "boot_id": me["boot_id"]}
        else:
            status, exit_code, ended, done = "completed", 0, now - 120, total
            ident = {"pid": 0, "pid_start": None, "boot_id": me["boot_id"]}
        log = run_dir / "log"
        log.write_text("".join(f"[{run_id}] item {k} done\n" for k in range(200)) + "Traceback: boom\n")
        record = {
            "id": run_id,
            "experiment": experiment,
            "argv": ["python", "run.py", "--seed", str(i)],
            "cwd": str(root / "proj"),
            "results_dir": str(results),
            "gpu_gb": 0.0,
            "log": str(log),
            "status": status,
            "started": started,
            "ended": ended,
            "exit_code": exit_code,
            "host": os.uname().nodename,
            **ident,
        }
        (run_dir / "run.json").write_text(json.dumps(record, indent=2) + "\n")
        elapsed = (ended or now) - started
        rate = done / elapsed
        progress = {
            "name": "results",
            "completed": done,
            "failed": 2,
            "total": total,
            "started": iso(started),
            "updated": iso(ended or now),
            "rate_per_s": round(rate, 3),
            "eta_s": round((total - done) / rate, 1) if status == "running" else None,
            "pid": ident["pid"],
            "finished": status == "completed",
        }
        (results / "results.progress.json").write_text(json.dumps(progress) + "\n")
        with open(results / "results.journal.jsonl", "w", encoding="utf-8") as fh:
            fh.write(json.dumps({"tether_journal": 1, "name": "results", "total": total}) + "\n")
            for k in range(min(done, 100)):
                fh.write(json.dumps({"id": f"q{k}", "ok": True, "result": {"answer": "x" * 40}, "t": now}) + "\n")
        # A real run's checkpoints were last written while it ran: the scan gives a shared folder's files to the
        # run whose window holds their mtime, so a finished run's files must not look written now.
        for written in (results / "results.progress.json", results / "results.journal.jsonl"):
            os.utime(written, (ended or now, ended or now))
    return ids


def obvious_script(b: BenchHost) -> dict[str, dict[str, Any]]:
    """The script a user would write: list the runs, then ``ssh cat`` each run's record and progress file."""
    runs_dir = f"{b.root}/.tether/runs"
    _, listing = run_timed(b.ssh_argv(shlex.join(["ls", runs_dir])))
    found: dict[str, dict[str, Any]] = {}
    for run_id in listing.decode().split():
        _, raw = run_timed(b.ssh_argv(shlex.join(["cat", f"{runs_dir}/{run_id}/run.json"])))
        record = json.loads(raw)
        _, raw = run_timed(b.ssh_argv(shlex.join(["cat", f"{record['results_dir']}/results.progress.json"])))
        found[run_id] = {"status": record["status"], "progress": json.loads(raw)}
    return found


def tether_scan(target: Target) -> dict[str, Any]:
    return runs.scan(target).to_json()


def bare(b: BenchHost) -> None:
    run_timed(b.ssh_argv("true"))


def shell_startup() -> float:
    """Median seconds the login shell takes to run ``true`` as sshd starts it (minus a shell without rc files)."""
    user = pwd.getpwuid(os.getuid())
    env = {"HOME": user.pw_dir, "USER": user.pw_name, "PATH": "/usr/bin:/bin", "SSH_CLIENT": "127.0.0.1 1 22"}
    with_rc = [run_timed([user.pw_shell, "-c", "true"], env=env)[0] for _ in range(REPEATS)]
    without = [run_timed([user.pw_shell, "--norc", "--noprofile", "-c", "true"], env=env)[0] for _ in range(REPEATS)]
    return max(0.0, median(with_rc) - median(without))


def server_variants(b: BenchHost) -> dict[str, list[str]]:
    """Server command variants: as configured, interpreter resolved to its real path, each with and without -S."""
    lib = f"PYTHONPATH={b.root}/.tether/lib"
    real = b.transport.run(["python3", "-c", "import sys; print(sys.executable)"]).text().strip()
    return {
        "python3": ["env", lib, "python3", "-m", "tether.server"],
        "python3_S": ["env", lib, "python3", "-S", "-m", "tether.server"],
        "resolved": ["env", lib, real, "-m", "tether.server"],
        "resolved_S": ["env", lib, real, "-S", "-m", "tether.server"],
    }


def variant_targets(b: BenchHost) -> dict[str, Target]:
    return {
        name: Target(
            name="bench", transport=b.transport, root=b.target.root, code_dir=b.target.code_dir, server_argv=argv
        )
        for name, argv in server_variants(b).items()
    }


def direct_argv(target: Target) -> list[str]:
    """The scan command started on the server machine itself (which is this machine), without ssh."""
    return [*target.server_argv, "progress", "--root", target.root]


def server_env() -> dict[str, str]:
    """This process's environment as an ssh session would see it: bytecode caching left on (as over ssh)."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def import_cost(b: BenchHost, python: str) -> float:
    """Median seconds ``python -S`` spends importing the scan's module (startup of ``-S -c pass`` subtracted)."""
    env = {**server_env(), "PYTHONPATH": f"{b.root}/.tether/lib"}
    importing = [python, "-S", "-c", "import tether.server.progress"]
    with_import = [run_timed(importing, env=env)[0] for _ in range(REPEATS)]
    bare_start = [run_timed([python, "-S", "-c", "pass"], env=env)[0] for _ in range(REPEATS)]
    return max(0.0, median(with_import) - median(bare_start))


def check_scan(doc: dict[str, Any], baseline: dict[str, dict[str, Any]]) -> None:
    """Both sides must have seen the same runs with the same statuses and counts."""
    by_id = {r["id"]: r for r in doc["runs"]}
    assert set(by_id) == set(baseline), "tether and the baseline saw different runs"
    statuses = sorted(r["status"] for r in doc["runs"])
    assert statuses.count("running") == N_RUNNING, statuses
    assert statuses.count("failed") == N_FAILED, statuses
    for run_id, seen in baseline.items():
        assert by_id[run_id]["status"] == seen["status"], run_id
        assert by_id[run_id]["completed"] == seen["progress"]["completed"], run_id
    assert all("log_tail" in r for r in doc["runs"] if r["status"] == "failed")


def main() -> int:
    t_start = time.perf_counter()
    with bench_host("tether-bench-progress-") as b:
        fabricate_runs(b.root)
        install_server_side(b.target)
        note(f"host {b.host.address}: {N_RUNS} runs fabricated, server side installed")

        targets = variant_targets(b)
        for name, target in targets.items():  # every variant must give the same 50 runs (and is warmed once)
            assert len(tether_scan(target)["runs"]) == N_RUNS, name
            run_timed(direct_argv(target), env=server_env())
        bare(b)

        # Interleaved repetitions, so a load change on the machine hits every measurement alike.
        bare_times: list[float] = []
        tether_times: list[float] = []
        baseline_times: list[float] = []
        over_ssh: dict[str, list[float]] = {name: [] for name in targets}
        direct: dict[str, list[float]] = {name: [] for name in targets}
        for rep in range(REPEATS):
            bare_times.append(timed(lambda: bare(b))[0])
            elapsed_tether, doc = timed(lambda: tether_scan(b.target))
            tether_times.append(elapsed_tether)
            if rep < BASELINE_REPEATS:
                elapsed, seen = timed(lambda: obvious_script(b))
                baseline_times.append(elapsed)
                check_scan(doc, seen)
            for name, target in targets.items():
                if name == "python3":  # the configured command: the headline measurement above
                    over_ssh[name].append(elapsed_tether)
                else:
                    over_ssh[name].append(timed(partial(tether_scan, target))[0])
                direct[name].append(run_timed(direct_argv(target), env=server_env())[0])
            note(f"repetition {rep + 1}/{REPEATS} done")
        shell_s = shell_startup()
        real_python = server_variants(b)["resolved"][2]
        import_s = import_cost(b, real_python)
        scan_bytes = len(json.dumps(doc))
    variants = {name: {"ssh_s": median(over_ssh[name]), "direct_s": median(direct[name])} for name in targets}

    bare_s, tether_s, baseline_s = median(bare_times), median(tether_times), median(baseline_times)
    figures: dict[str, Any] = {
        "bench": "progress",
        "runs": N_RUNS,
        "ssh_commands_baseline": 1 + 2 * N_RUNS,
        "repeats": REPEATS,
        "baseline_repeats": BASELINE_REPEATS,
        "tether_s": round(tether_s, 4),
        "baseline_s": round(baseline_s, 4),
        "bare_ssh_s": round(bare_s, 4),
        "speedup": round(baseline_s / tether_s, 2),
        "rtt_ratio": round(tether_s / bare_s, 2),
        "goal_speedup": 10,
        "goal_rtt_ratio": 2,
        "scan_json_bytes": scan_bytes,
        "server_import_s": round(import_s, 4),
        "shell_startup_s": round(shell_s, 4),
        "variants": {k: {kk: round(vv, 4) for kk, vv in v.items()} for k, v in variants.items()},
        "variant_rtt_ratio": {k: round(v["ssh_s"] / bare_s, 2) for k, v in variants.items()},
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    print(f"progress of {N_RUNS} runs on one SSH host (warm ControlMaster, medians)")
    print(f"  tether scan (1 ssh command):        {tether_s * 1000:8.1f} ms")
    print(f"  obvious script ({1 + 2 * N_RUNS} ssh commands): {baseline_s * 1000:8.1f} ms")
    print(f"  bare `ssh host true`:               {bare_s * 1000:8.1f} ms")
    print(f"  speedup {figures['speedup']}x (goal >= 10), rtt_ratio {figures['rtt_ratio']} (goal <= 2)")
    print(f"  login shell startup inside every ssh command: {shell_s * 1000:.1f} ms")
    print(f"  importing the scan's module (python -S, real interpreter): {import_s * 1000:.1f} ms")
    for name, v in variants.items():
        print(
            f"  server command {name:10s}: over ssh {v['ssh_s'] * 1000:7.1f} ms "
            f"(rtt_ratio {v['ssh_s'] / bare_s:.2f}), started directly {v['direct_s'] * 1000:6.1f} ms"
        )
    emit(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
