"""The run wrapper: ``python3 -m tether.server run --root R --run-id ID ... -- ARGV``.

It runs inside a detached tmux session on the server (or on this machine for ``--local``), so the run survives the
controller going away. It:

1. writes ``<root>/.tether/runs/<id>/run.json`` (status ``starting``, wrapper pid, pid start time, boot id);
2. registers the run in the agent registry (``<root>/AGENT_STATUS.json`` unless ``--registry``) with its ``gpu_gb``;
   a refusal ends the run with status ``refused`` and exit code 4, the reason in the log;
3. starts ARGV in ``--cwd`` with ``TETHER_RUN_ID``, ``TETHER_RESULTS_DIR``, ``CUDA_VISIBLE_DEVICES`` (the GPUs the
   registry placed it on; empty for an API-only run), ``TETHER_AGENT_*`` and the variables of ``<cwd>/.env``
   (never printed), and for a shard of a managed run ``TETHER_SHARD=i/K`` (``--shard``) and
   ``TETHER_MANAGED_RUN`` (``--managed``), its output going to ``log`` and to the tmux pane;
4. heartbeats the registry while it runs, forwards SIGTERM/SIGINT/SIGHUP to the experiment (``tether cancel``);
5. records status (``completed`` on exit 0, ``failed``, ``cancelled``), exit code and end time in ``run.json``, and
   leaves the registry;
6. announces a completed or failed run to the URLs of ``<root>/.tether/notify.json`` that a server speaks
   (:mod:`tether.server.notify`), when that file is this project's, marking ``announced_by: server`` in the same
   write as the end, so the controller does not announce it again.

The experiment runs in a session of its own, so a SIGKILL of the wrapper does not kill it. ``run.json`` records
the experiment's identity too (``child_pid``, ``child_start``): while the experiment lives, the progress scan reports
the run ``running`` (with ``wrapper_alive: false``) and ``cancel`` signals the experiment's process group directly.
Only when neither the wrapper nor the experiment is alive does the scan report ``dead``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tether import vocab
from tether.atomic import atomic_write
from tether.server import procinfo

HEARTBEAT_S = 20.0


def run_dir(root: str, run_id: str) -> Path:
    return Path(vocab.run_dir(root, run_id))


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, json.dumps(data, indent=2) + "\n")


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a .env file (comments, ``export``, and simple quotes handled). Values are never printed."""
    out: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return out
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        if line.startswith("export "):
            line = line[len("export ") :].strip()
        key, value = line.split("=", 1)
        key = key.strip()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        if key:
            out[key] = value
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m tether.server run")
    p.add_argument("--root", required=True, help="the server's workspace root (holds .tether/ and AGENT_STATUS.json)")
    p.add_argument("--run-id", required=True)
    p.add_argument("--experiment", required=True)
    p.add_argument("--cwd", required=True, help="the project folder the command runs in")
    p.add_argument("--results", default="results", help="results folder, relative to --cwd")
    p.add_argument("--gpu-gb", type=float, default=0.0)
    p.add_argument("--wait", type=float, default=None, help="queue this long for GPU room (seconds)")
    p.add_argument("--registry", default=None, help="AGENT_STATUS.json path (default: <root>/AGENT_STATUS.json)")
    p.add_argument("--no-registry", action="store_true", help="do not register in AGENT_STATUS.json")
    p.add_argument("--shard", default=None, help="i/K: run shard i of K of a managed run (sets TETHER_SHARD)")
    p.add_argument("--managed", default=None, help="the managed run this shard belongs to (TETHER_MANAGED_RUN)")
    p.add_argument("argv", nargs=argparse.REMAINDER)
    return p


class _Run:
    def __init__(self, args: argparse.Namespace, argv: list[str]) -> None:
        self.args = args
        self.argv = argv
        self.dir = run_dir(args.root, args.run_id)
        # A run's folder and log are its owner's alone: experiments print what they like (keys included).
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.log_path = self.dir / vocab.RUN_LOG
        os.close(os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
        self.record: dict[str, Any] = {
            "id": args.run_id,
            "experiment": args.experiment,
            "argv": argv,
            "cwd": args.cwd,
            "results_dir": str(Path(args.cwd) / args.results),
            "gpu_gb": args.gpu_gb,
            "log": str(self.log_path),
            "status": vocab.STARTING,
            "started": time.time(),
            "ended": None,
            "exit_code": None,
            "host": os.uname().nodename,
            "shard": args.shard,
            "managed": args.managed,
            **procinfo.identity(),
        }
        self.child: subprocess.Popen[bytes] | None = None
        self.cancelled = False
        self.stop = threading.Event()
        self.registry: Any = None

    def save(self) -> None:
        write_json_atomic(self.dir / vocab.RUN_RECORD, self.record)

    def log(self, message: str) -> None:
        with open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(f"[tether] {message}\n")
        print(f"[tether] {message}", flush=True)

    def _announcer(self, status: str) -> dict[str, Any] | None:
        """The notify.json to announce this end with, when the server takes that on: a completed or failed run of
        this project (its code folder) and at least one URL the server speaks. Else the controller announces it."""
        if status not in (vocab.COMPLETED, vocab.FAILED, vocab.REFUSED):
            return None
        try:
            from tether.server import notify

            doc = notify.load(self.args.root)
            if doc is None or not notify.server_urls(doc):
                return None
            if os.path.normpath(doc["code_dir"]) != os.path.normpath(self.args.cwd):
                return None  # another project's URLs (the last one set up on this server)
            return doc
        except (ImportError, ValueError) as exc:  # an older server side, or a URL it cannot read: tether announces
            self.log(f"the controller announces this run's end ({type(exc).__name__} reading notify.json)")
            return None

    def _announce(self, doc: dict[str, Any], status: str, code: int) -> None:
        """Announce the run's end (never raises; a few seconds at most per URL); the log says how it went."""
        try:
            from tether.server import notify, progress

            host = doc["host"] or self.record["host"]
            counts = ""
            checkpoints = progress.scan_results(self.record["results_dir"])
            totals = [c["total"] for c in checkpoints if isinstance(c.get("total"), int)]
            if totals:
                done = sum(c["completed"] for c in checkpoints if isinstance(c.get("completed"), int))
                counts = f" ({done}/{sum(totals)} items)"
            run_id = self.args.run_id
            if status == vocab.COMPLETED:
                kind = "run_completed"
                text = f"run {run_id} completed on {host}{counts}; `tether pull {host}`"
            else:
                kind = "run_failed"
                text = f"run {run_id} {status} on {host} (exit code {code}){counts}; `tether logs {run_id}`"
            project = doc["project"] or "tether"
            answers = notify.send_urls(
                notify.server_urls(doc),
                notify.title(project, kind),
                notify.line(project, self.args.experiment, text),
                kind,
            )
            answered = sum(1 for _, ok, _ in answers if ok)
            self.log(f"announced the run's end to {answered} of {len(answers)} notification URL(s)")
            for url, ok, error in answers:
                if not ok:
                    self.log(f"could not notify {url}: {error}")
        except Exception as exc:  # the run's outcome is recorded already
            self.log(f"could not send notifications ({type(exc).__name__})")

    def finish(self, status: str, code: int) -> int:
        self.record.update(status=status, exit_code=code, ended=time.time())
        try:
            # The run's own counts, frozen now: later runs that reuse its results folder never change them.
            from tether.server import progress

            record = vocab.RunRecordFile.from_json(self.record, self.args.run_id)
            self.record["counts"] = progress.run_counts(self.args.root, record)
        except Exception as exc:  # the outcome must be recorded even if the results folder cannot be read
            self.log(f"could not count this run's results: {exc}")
        announcer = self._announcer(status)
        if announcer is not None:
            # In the same write as the end: a controller that sees the end sees who announces it.
            self.record["announced_by"] = "server"
        self.save()
        self.stop.set()
        if self.registry is not None:
            try:
                self.registry.release(
                    self.args.run_id, status=vocab.COMPLETED if status == vocab.COMPLETED else vocab.FAILED
                )
            except Exception as exc:  # the run's outcome is recorded already; a registry hiccup must not hide it
                self.log(f"could not leave the agent registry: {exc}")
        self.log(f"run {self.args.run_id} {status} (exit code {code})")
        if announcer is not None:
            self._announce(announcer, status, code)
        return code

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.cancelled = True
        child = self.child
        if child is not None and child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)

    def _heartbeat(self) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            if self.registry is None:
                continue
            try:
                self.registry.heartbeat(self.args.run_id)
            except Exception as exc:  # keep running: a missed heartbeat is recoverable, a dead wrapper is not
                self.log(f"heartbeat failed: {exc}")

    def _show_log(self, child: subprocess.Popen[bytes]) -> None:
        """Copy what the experiment writes to its log onto the tmux pane until it exits.

        The experiment writes to the log file itself (not through a pipe to this process), so a SIGKILL of the
        wrapper neither stops it nor breaks its output.
        """
        with open(self.log_path, "rb") as log:
            log.seek(0, os.SEEK_END)
            while True:
                chunk = log.read(65536)
                if chunk:
                    try:
                        sys.stdout.buffer.write(chunk)
                        sys.stdout.buffer.flush()
                    except (OSError, ValueError):
                        pass
                    continue
                if child.poll() is not None:
                    rest = log.read()
                    if rest:
                        with contextlib.suppress(OSError, ValueError):
                            sys.stdout.buffer.write(rest)
                            sys.stdout.buffer.flush()
                    return
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(timeout=0.05)  # following a file another process writes, until the child exits

    def execute(self) -> int:
        self.save()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        env = dict(os.environ)
        agent_env: dict[str, str] = {}
        if not self.args.no_registry:
            from tether.errors import TetherError
            from tether.server import registry as registry_mod
            from tether.server.registry import Registry

            path = self.args.registry or vocab.agent_status_path(self.args.root)
            registry = Registry(path)
            try:
                entry = registry.register(
                    self.args.run_id,
                    self.args.experiment,
                    self.args.gpu_gb,
                    pid=os.getpid(),
                    wait=self.args.wait,
                )
            except TetherError as exc:
                self.log(f"not started: {exc}")
                return self.finish(vocab.REFUSED, getattr(exc, "exit_code", 4))
            self.registry = registry
            agent_env = registry_mod.agent_env(entry, registry.path)
        for key, value in read_env_file(Path(self.args.cwd) / ".env").items():
            env.setdefault(key, value)
        lib = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = lib + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["TETHER_RUN_ID"] = self.args.run_id
        env["TETHER_RESULTS_DIR"] = self.record["results_dir"]
        env["PYTHONUNBUFFERED"] = "1"
        if self.args.shard:
            env["TETHER_SHARD"] = self.args.shard
        else:
            env.pop("TETHER_SHARD", None)
        if self.args.managed:
            env["TETHER_MANAGED_RUN"] = self.args.managed
        # CUDA_VISIBLE_DEVICES (the GPUs the registry placed it on) and TETHER_AGENT_* (`repair` finds runs by them)
        env.update(agent_env)
        self.log(f"run {self.args.run_id}: {' '.join(self.argv)}")
        try:
            # A killed run of this results folder keeps the counts it had: this run is about to write over them.
            from tether.server import progress

            for killed in progress.freeze_killed(self.args.root, self.record["results_dir"], self.args.run_id):
                self.log(f"run {killed} was killed: its counts are frozen in its record")
        except Exception as exc:  # never keep this run from starting
            self.log(f"could not freeze the counts of killed runs: {exc}")
        try:
            with open(self.log_path, "ab") as log:
                self.child = subprocess.Popen(
                    self.argv,
                    cwd=self.args.cwd,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        except FileNotFoundError:
            self.log(f"command not found: {self.argv[0]} (is it installed on this server, and on PATH?)")
            return self.finish(vocab.FAILED, 127)
        except PermissionError:
            self.log(f"command not executable: {self.argv[0]}")
            return self.finish(vocab.FAILED, 126)
        except OSError as exc:
            self.log(f"cannot start {self.argv[0]}: {exc}")
            return self.finish(vocab.FAILED, 1)
        self.record.update(
            status=vocab.RUNNING, child_pid=self.child.pid, child_start=procinfo.pid_start(self.child.pid)
        )
        self.save()
        beat = threading.Thread(target=self._heartbeat, daemon=True)
        beat.start()
        self._show_log(self.child)
        code = self.child.wait()
        if code < 0:
            code = 128 - code
        if self.cancelled:
            return self.finish(vocab.CANCELLED, code)
        return self.finish(vocab.COMPLETED if code == 0 else vocab.FAILED, code)


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    command = list(args.argv)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        print("tether.server run: no command given after --", file=sys.stderr)
        return 2
    return _Run(args, command).execute()


def experiment_alive(record: vocab.RunRecordFile) -> bool:
    """Whether the experiment process of a run still runs (it outlives a SIGKILLed wrapper: own session)."""
    if record.child_pid is None:
        return False
    return procinfo.is_alive(record.child_pid, record.child_start, record.boot_id)


def wrapper_alive(record: vocab.RunRecordFile) -> bool:
    return procinfo.is_alive(record.pid, record.pid_start, record.boot_id)


def cancel_main(argv: list[str]) -> int:
    """``python3 -m tether.server cancel --root R --run-id ID``: stop a live run.

    SIGTERM goes to the wrapper, which forwards it to the experiment and records ``cancelled``. When the wrapper is
    gone but the experiment still runs, SIGTERM goes to the experiment's process group and the record says
    ``cancelled``.
    """
    p = argparse.ArgumentParser(prog="python3 -m tether.server cancel")
    p.add_argument("--root", required=True)
    p.add_argument("--run-id", required=True)
    args = p.parse_args(argv)
    path = run_dir(args.root, args.run_id) / vocab.RUN_RECORD
    try:
        with open(path, encoding="utf-8") as fh:
            raw = json.load(fh)
        record = vocab.RunRecordFile.from_json(raw, args.run_id)
    except (OSError, ValueError) as exc:
        reason = "no such run on this host" if isinstance(exc, OSError) else f"its record is unreadable ({exc})"
        print(json.dumps({"id": args.run_id, "cancelled": False, "reason": reason}))
        return 1
    if not vocab.is_live(record.status):
        print(json.dumps({"id": args.run_id, "cancelled": False, "reason": f"run is {record.status}"}))
        return 0
    if wrapper_alive(record):
        os.kill(record.pid, signal.SIGTERM)
        print(json.dumps({"id": args.run_id, "cancelled": True, "reason": "SIGTERM sent"}))
        return 0
    if record.child_pid is not None and experiment_alive(record):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(record.child_pid, signal.SIGTERM)
        raw.update(status=vocab.CANCELLED, ended=time.time(), reason="cancelled after its wrapper died")
        write_json_atomic(path, raw)
        print(json.dumps({"id": args.run_id, "cancelled": True, "reason": "SIGTERM sent to the experiment"}))
        return 0
    print(json.dumps({"id": args.run_id, "cancelled": False, "reason": "run is dead"}))
    return 0
