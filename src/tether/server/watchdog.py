"""The server keeps its own cost rule: ``python3 -m tether.server watchdog --root R [--daemon | --once]``.

Stdlib only, Python 3.8. One watchdog per server (an exclusive lock on ``<root>/.tether/watchdog.lock``; a second
one started by ``tether up`` or by the server's start script exits at once). Every ``poll_s`` it looks at the
server: a run whose wrapper or experiment process is alive (``.tether/runs/*/run.json``), or an agent entry of
``AGENT_STATUS.json`` that still holds its place (running or queued, by the registry's own liveness), keeps the
server busy; so does a tether command touching it (every ``python3 -m tether.server ...`` call but the watchdog's
own marks ``.tether/touched``). When nothing was busy and nothing touched it for ``idle_stop_s``, it stops the
server:

- on Vast.ai, with the instance's own ``CONTAINER_ID`` and ``CONTAINER_API_KEY`` (the key the service issued for
  that instance alone; the start script keeps both in ``.tether/container.env``, mode 0600): ``PUT
  /api/v0/instances/<id>/ {"state": "stopped"}``. A stop keeps every file on the server's disk (storage billing
  only); the watchdog never destroys. The user's account key never reaches a server.
- on a server the user owns (no provider API) it only says so, once per idle period.

What it decided is in ``.tether/watchdog.json`` (the settings ``tether up`` wrote: ``idle_stop_s`` (null: never),
``poll_s``, ``provider``, ``api_url``) and ``.tether/watchdog.state.json`` (pid, last look, last busy moment,
``stopped_at``); ``.tether/watchdog.log`` keeps one line per event. Before it asks for the stop it writes
``.tether/watchdog-stop.json`` (when, idle for how long) so tether can tell, when it next looks, who stopped the
server and since when. The stop and an idle owned host are announced through ``tether.server.notify`` when the
server has notification URLs.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from tether import retry, vocab
from tether.atomic import atomic_write
from tether.errors import TetherError
from tether.server import procinfo

SETTINGS = "watchdog.json"
STATE = "watchdog.state.json"
STOP_RECORD = "watchdog-stop.json"
LOCK = "watchdog.lock"
LOG = "watchdog.log"
TOUCHED = "touched"
CONTAINER_ENV = "container.env"
DEFAULT_POLL_S = 60.0
STOP_ATTEMPTS = 5


def tether_dir(root: str) -> str:
    return os.path.join(root, ".tether")


# ------------------------------------------------------------------------------------------ pure rule


def decide(
    now: float, started: float, last_busy: float | None, touched: float | None, idle_stop_s: float | None
) -> tuple[str, float]:
    """What the watchdog does now (pure): ``("off", 0)`` without an idle-stop time, ``("stop", idle_for)`` once
    nothing was busy and nothing touched the server for ``idle_stop_s``, else ``("wait", seconds_left)``.

    ``started``: when this watchdog started (a server start is activity); ``last_busy``: the last moment a run or an
    agent was alive; ``touched``: the last time a tether command reached the server.
    """
    if idle_stop_s is None:
        return "off", 0.0
    quiet_since = max(started, last_busy or started, touched or started)
    idle_for = max(0.0, now - quiet_since)
    if idle_for >= idle_stop_s:
        return "stop", idle_for
    return "wait", idle_stop_s - idle_for


# ------------------------------------------------------------------------------------------ looking at the server


def _load(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def busy_runs(root: str) -> tuple[list[str], float | None]:
    """Runs alive on the server (wrapper or experiment process), and the latest end of a finished run."""
    alive: list[str] = []
    last_end: float | None = None
    try:
        ids = sorted(os.listdir(vocab.runs_dir(root)))
    except OSError:
        return alive, None
    for run_id in ids:
        try:
            record = vocab.RunRecordFile.from_json(_load(vocab.run_record_path(root, run_id)), run_id)
        except ValueError:
            continue
        if vocab.is_live(record.status):
            wrapper = record.pid is not None and procinfo.is_alive(record.pid, record.pid_start, record.boot_id)
            child = record.child_pid is not None and procinfo.is_alive(
                record.child_pid, record.child_start, record.boot_id
            )
            if wrapper or child:
                alive.append(run_id)
        elif isinstance(record.ended, (int, float)):
            last_end = record.ended if last_end is None else max(last_end, float(record.ended))
    return alive, last_end


def busy_agents(root: str) -> list[str]:
    """Agent entries that hold their place on the server (running or queued, by the registry's liveness)."""
    path = vocab.agent_status_path(root)
    if not os.path.exists(path):
        return []
    try:
        from tether.server.registry import Registry

        entries = Registry(path).entries()
    except (TetherError, OSError, ValueError):  # unreadable: busy (never stop a server over a file we cannot read)
        return ["AGENT_STATUS.json (unreadable)"]
    return [str(e.id) for e in entries if e.is_live and e.status in ("running", "queued")]


def touched_at(root: str) -> float | None:
    try:
        return os.path.getmtime(os.path.join(tether_dir(root), TOUCHED))
    except OSError:
        return None


def touch(root: str) -> None:
    """Mark the server as reached by a tether command now (what keeps an idle watchdog from stopping it)."""
    path = os.path.join(tether_dir(root), TOUCHED)
    try:
        with open(path, "a", encoding="utf-8"):
            pass
        os.utime(path, None)
    except OSError:
        pass


def read_container_env(root: str, environ: dict[str, str] | None = None) -> tuple[str | None, str | None]:
    """``CONTAINER_ID`` and ``CONTAINER_API_KEY``: from the environment, else from ``.tether/container.env``."""
    env = dict(os.environ if environ is None else environ)
    path = os.path.join(tether_dir(root), CONTAINER_ENV)
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                key, sep, value = line.strip().partition("=")
                if sep and key in ("CONTAINER_ID", "CONTAINER_API_KEY") and key not in env:
                    env[key] = value.strip().strip("'\"")
    except OSError:
        pass
    return env.get("CONTAINER_ID") or None, env.get("CONTAINER_API_KEY") or None


# ------------------------------------------------------------------------------------------ acting


class Watchdog:
    """One watchdog over ``root``; ``clock`` and ``sleep`` are injectable for tests."""

    def __init__(self, root: str, clock: Any = time.time) -> None:
        self.root = root
        self.clock = clock
        self.dir = tether_dir(root)
        self.started = clock()
        self.last_busy: float | None = None
        self.said_idle = False
        self.settings: dict[str, Any] = {}
        self.reload()

    def reload(self) -> None:
        doc = _load(os.path.join(self.dir, SETTINGS))
        self.settings = doc if isinstance(doc, dict) else {}

    @property
    def idle_stop_s(self) -> float | None:
        value = self.settings.get("idle_stop_s")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return float(value)
        return None

    @property
    def poll_s(self) -> float:
        value = self.settings.get("poll_s")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return float(value)
        return DEFAULT_POLL_S

    def log(self, text: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock()))
        try:
            with open(os.path.join(self.dir, LOG), "a", encoding="utf-8") as fh:
                fh.write(f"{stamp} {text}\n")
        except OSError:
            pass

    def _write(self, name: str, doc: dict[str, Any]) -> None:
        atomic_write(os.path.join(self.dir, name), json.dumps(doc), durable=False)

    def look(self) -> tuple[str, float, list[str]]:
        """One look: record what is alive and decide. Returns ``(decision, figure, what is busy)``."""
        self.reload()
        now = self.clock()
        runs, last_end = busy_runs(self.root)
        agents = busy_agents(self.root)
        busy = runs + agents
        if busy:
            self.last_busy = now
            self.said_idle = False
        elif last_end is not None and last_end <= now:
            self.last_busy = max(self.last_busy or last_end, last_end)
        decision, figure = decide(now, self.started, self.last_busy, touched_at(self.root), self.idle_stop_s)
        self._write(
            STATE,
            {
                "pid": os.getpid(),
                "pid_start": procinfo.pid_start(os.getpid()),
                "boot_id": procinfo.boot_id(),
                "started": self.started,
                "checked": now,
                "last_busy": self.last_busy,
                "busy": busy,
                "decision": decision,
                "idle_stop_s": self.idle_stop_s,
            },
        )
        return decision, figure, busy

    def stop_server(self, idle_for: float) -> bool:
        """Stop this server through the provider with its own key; True when the provider took the stop. On a
        server without a provider API, say it once and return False."""
        provider = self.settings.get("provider")
        minutes = idle_for / 60.0
        if provider != "vast":
            if not self.said_idle:
                self.said_idle = True
                text = (
                    f"{os.uname().nodename} has been idle for {minutes:.0f} min (no run, no agent, no tether "
                    "command); it has no provider API, so it keeps running: stop it if nothing is planned."
                )
                self.log(text)
                _notify(self.root, "server_idle", text)
            return False
        container_id, key = read_container_env(self.root)
        api_url = str(self.settings.get("api_url") or "https://console.vast.ai").rstrip("/")
        if not container_id or not key:
            if not self.said_idle:
                self.said_idle = True
                self.log("idle past idle_stop, but CONTAINER_ID/CONTAINER_API_KEY are unknown: cannot stop.")
            return False
        now = self.clock()
        self._write(STOP_RECORD, {"at": now, "idle_s": idle_for, "instance": container_id})
        self.log(f"idle for {minutes:.1f} min: stopping instance {container_id} (its disk and results stay).")
        _notify(
            self.root,
            "server_stopped",
            f"instance {container_id} stopped itself after {minutes:.0f} min with nothing running; its results "
            "stay on its disk (storage billing only): `tether start` it, or `tether pull` then `tether destroy`.",
        )
        for attempt in range(STOP_ATTEMPTS):
            status = _put_state(api_url, container_id, key, "stopped")
            if status == 200:
                return True
            self.log(f"the stop request answered {status}; trying again.")
            time.sleep(retry.backoff_step(attempt, 2.0, 60.0))  # the one backoff
        return False

    def run(self, once: bool = False) -> int:
        while True:
            decision, figure, _busy = self.look()
            if decision == "stop" and self.stop_server(figure):
                self._write(STOP_RECORD, {**(_load(os.path.join(self.dir, STOP_RECORD)) or {}), "stopped": True})
                return 0
            if once:
                return 0
            time.sleep(self.poll_s if decision != "wait" else max(0.05, min(self.poll_s, figure)))


def _put_state(api_url: str, instance_id: str, key: str, state: str) -> int:
    """``PUT /api/v0/instances/<id>/`` with the instance's own key; the HTTP status (0: no answer)."""
    body = json.dumps({"state": state}).encode()
    request = urllib.request.Request(
        f"{api_url}/api/v0/instances/{instance_id}/",
        data=body,
        method="PUT",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return 0


def _notify(root: str, kind: str, text: str) -> None:
    try:
        from tether.server import notify
    except ImportError:  # an older server side: nothing to announce with
        return
    notify.send(root, kind, text)  # never raises: a notification never stops the watchdog


def _lock(root: str) -> int | None:
    """Hold the server's watchdog lock for this process's life; None when another watchdog holds it."""
    os.makedirs(tether_dir(root), exist_ok=True)
    fd = os.open(os.path.join(tether_dir(root), LOCK), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _daemonize(root: str) -> bool:
    """Detach (double fork, new session, output to the log); True in the detached child."""
    if os.fork() > 0:
        return False
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    log = os.open(os.path.join(tether_dir(root), LOG), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    return True


USAGE = "usage: python3 -m tether.server watchdog --root DIR [--settings -] [--daemon | --once]"


def write_settings(root: str, data: bytes) -> None:
    """Store the settings ``tether up`` sent (a JSON object on stdin) as ``.tether/watchdog.json``, mode 0600."""
    doc = json.loads(data.decode("utf-8"))
    if not isinstance(doc, dict):
        raise ValueError("the watchdog's settings must be a JSON object")
    atomic_write(os.path.join(tether_dir(root), SETTINGS), json.dumps(doc))


def main(argv: list[str]) -> int:
    root: str | None = None
    daemon = once = settings = False
    args = list(argv)
    while args:
        flag = args.pop(0)
        if flag == "--root" and args:
            root = args.pop(0)
        elif flag == "--settings" and args and args[0] == "-":
            args.pop(0)
            settings = True
        elif flag == "--daemon":
            daemon = True
        elif flag == "--once":
            once = True
        else:
            print(USAGE, file=sys.stderr)
            return 2
    if root is None or (daemon and once):
        print(USAGE, file=sys.stderr)
        return 2
    os.makedirs(tether_dir(root), exist_ok=True)
    if settings:
        try:
            write_settings(root, sys.stdin.buffer.read())
        except ValueError as exc:
            print(f"tether.server watchdog: {exc}", file=sys.stderr)
            return 2
    if daemon and not _daemonize(root):
        return 0
    fd = _lock(root)
    if fd is None:
        if not daemon:
            print("tether.server watchdog: another watchdog watches this server already", file=sys.stderr)
        return 0 if daemon else 1
    dog = Watchdog(root)
    dog.log(f"watching {root} (pid {os.getpid()}, idle_stop_s {dog.idle_stop_s})")
    code = dog.run(once=once)
    if daemon:
        os._exit(code)
    return code
