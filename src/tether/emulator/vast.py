"""A local Vast.ai: the REST subset tether uses, with real SSH hosts, a test clock, costs and faults on demand.

Run it on its own::

    python -m tether.emulator --port 8765 --offers offers.json --loading-seconds 3

then point tether at it with ``VAST_URL=http://127.0.0.1:8765``, ``VAST_API_KEY=<the key it prints>`` and
``TETHER_VAST_REMOTE_ROOT=<the remote_root it prints>`` (each instance's own folder: every instance logs in as the
same user on this machine, where one ``/workspace`` would be shared by all); ``--env-file PATH`` writes the three.
In tests, use the ``vast_emulator`` fixture (``tests/integration/vast/conftest.py``) or build one::

    emu = VastEmulator(load_offer_book(), loading_s=30, host_factory=sshd_host_factory(tmp_path))
    with emu:
        ...  # emu.url, emu.api_key, emu.clock.advance(60), emu.faults.rate_limit(3), emu.account_total()

What it speaks (same paths, verbs, bodies and status codes as Vast.ai, see the project's Vast API notes):

- ``POST /api/v0/bundles/``: search the offer book with the wire filters (numbers may come as numbers or
  strings), the ``order``, ``limit`` and ``allocated_storage`` (which sets the quoted ``dph_total``).
- ``PUT /api/v0/asks/{id}/``: rent an offer → ``{"success": true, "new_contract": id}``; an offer already
  rented or taken answers 404 ``no_such_ask``. The offer leaves the book until the instance is destroyed.
- ``GET /api/v1/instances/?limit=25&after_token=T``: pages of 25 with ``next_token``;
  ``GET /api/v0/instances/`` answers 410 (retired).
- ``GET /api/v0/instances/{id}/?owner=me``: ``{"instances": {...}}``, or ``{"instances": null}`` once destroyed.
- ``PUT /api/v0/instances/{id}/`` with ``{"state": "stopped"|"running"}`` or ``{"label": "x"}``;
  ``DELETE /api/v0/instances/{id}/`` destroys (404 if unknown or already destroyed).
- ``GET /api/v0/ssh/`` (``{"ssh_keys": [{"id", "public_key", ...}]}``), ``POST /api/v0/ssh/`` ``{"ssh_key"}``,
  ``POST /api/v0/instances/{id}/ssh/`` ``{"ssh_key"}``: the account's keys, which an instance gets when it is
  created (later keys reach it only when attached to it).
- Auth: ``Authorization: Bearer <key>``; a wrong key answers 401 ``{"success": false, "error": "auth_error",
  "msg": "Invalid user key"}`` (``emu.bad_key_status = 404`` answers as some routes have), a missing one 401.
- A path that is no route answers a 404 HTML page (what a wrong ``VAST_URL`` meets).

A create with a ``price`` is an interruptible (bid) rental billed at that price plus storage; a price below the
offer's ``min_bid`` makes a stopped instance and answers 400 ``bid_too_low`` with its ``new_contract``. With
``emu.credit`` set, a create the remaining credit cannot cover for an hour answers 400 ``insufficient_credit``.
Searches answer at most 64 offers, whatever ``limit`` says.

Instances walk ``loading`` → ``running`` after ``loading_s`` seconds of the emulator's :class:`Clock` (a test
calls ``clock.advance``; the command-line emulator runs on real time). Each instance is a real SSH host made by
``host_factory(instance_id)`` (default: :class:`tether.testing.sshd.SshdHost`, one directory per instance);
while running, its JSON has ``public_ipaddr`` 127.0.0.1 and ``ports["22/tcp"][0]["HostPort"]`` = the sshd
port; ``ssh_host``/``ssh_port`` is the service's proxy, a loopback forwarder on another port (the only address
when the runtype has no ``ssh_direc``). Stopping stops the sshd (its files stay); starting brings it back (on a
new port if asked) and runs the ``onstart`` script there again. The default sshd hosts have the vendor's auto-tmux
login (:class:`tether.testing.sshd.SshdHost` ``auto_tmux``): a terminal login without ``~/.no_auto_tmux`` lands in
the vendor's tmux session instead of its command.

States as the vendor lists them, with ``intended_status``, ``cur_state`` and ``next_state``: an outbid instance is
stopped with intended running and next stopped; a queued start is stopped with intended running and next running.

Money: per second of the clock, ``dph_total`` while running, frozen or rebooting, only the storage part
(``storage_total_cost``) otherwise, nothing once destroyed. ``account_total()`` sums every instance ever rented.

Faults (Python: ``emu.faults.<name>(...)``; HTTP: ``POST /_emulator/faults {"kind": name, ...params}``):

- ``rate_limit(count, retry_after=1.0)``: the next ``count`` API requests answer 429 with ``Retry-After``;
- ``quota_exceeded(count=1, retry_after=86400, reset_in=None)``: the next searches answer 429
  ``search_quota_exceeded`` (``Retry-After``, and ``X-RateLimit-Reset`` as an epoch time when ``reset_in``);
- ``server_error(count, status=503)``: the next ``count`` API requests answer that 5xx;
- ``delay(count, seconds)``: the next ``count`` API requests are handled, then answered ``seconds`` late
  (wall time), to make a client time out;
- ``stuck_loading(count=1)``: the next instances created never leave ``loading``;
- ``exit_on_create(count=1)``: the next instances created go ``exited`` instead of ``running``;
- ``new_port_on_restart(on=True)``: a started instance comes back on a new SSH port;
- ``stuck_restart(count=1)``: the next starts hang in scheduling (the GPU was rented meanwhile);
- ``take_offer(offer_id)``: someone else rents that offer now (a create for it then fails);
- ``oci_failure(count=1)``: the next instances stay ``created`` with "OCI runtime create failed" (never start);
- ``queued_start(after_s, count=1)``: the next starts are queued (the GPU is in use) and happen by themselves
  ``after_s`` seconds of the clock later, billing from then on;
- ``refuse_keys(seconds, count=1)``: the next instances refuse every key for their first ``seconds`` (wall time);
- ``clear()``: no more faults.

Test hooks (Python: ``emu.preempt(id)``, ``emu.vanish(id)``, ``emu.set_status(id, actual_status, msg)``,
``emu.add_ssh_key(line)``; HTTP: ``POST /_emulator/preempt {"id": N}``, ``/_emulator/vanish {"id": N}``,
``/_emulator/status {"id", "actual_status", "msg"}``, ``/_emulator/ssh_key {"ssh_key"}``, ``/_emulator/credit
{"usd"}``): outbid an instance (stopped by the service, ``intended_status`` still ``running``, ``cur_state ==
next_state == "stopped"``), make its host disappear with it, put it in any vendor status, add an account key, set
the account's credit.

Inside an instance (what the vendor's containers carry): its start script (``onstart``, at creation and at every
start) runs with ``CONTAINER_ID`` (the instance id), ``CONTAINER_API_KEY`` (a key issued for that instance),
``PUBLIC_IPADDR``, ``VAST_TCP_PORT_22``, ``GPU_COUNT`` and the create body's ``env`` entries in its environment.
SSH sessions do not get them (on the service a container's variables reach SSH sessions only when the start
script exports them, e.g. to ``/etc/environment``): what a process on the server needs, the start script must
keep. An instance key may show, stop and start its own instance and nothing else: any other request with it
answers 403 ``forbidden`` (another instance, search, create, destroy, labels, the instance list, account keys);
once its instance is destroyed it is an unknown key (401). ``emu.instances[id].container_key`` gives it to tests.

Other admin endpoints (no auth, never faulted): ``POST /_emulator/clock {"advance": s}``,
``GET /_emulator/state`` → ``{"now", "total_cost", "instances": [...]}``.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

DEFAULT_API_KEY = "emulator-key-0123456789abcdef"
PAGE_SIZE = 25
DEFAULT_LIMIT = 64


class Clock:
    """The emulator's time: manual (``advance`` moves it) or real time plus whatever was advanced."""

    def __init__(self, start: float = 1_700_000_000.0, *, realtime: bool = False) -> None:
        self._lock = threading.Lock()
        self._realtime = realtime
        self._offset = start - time.time() if realtime else 0.0
        self._now = start

    def now(self) -> float:
        with self._lock:
            return time.time() + self._offset if self._realtime else self._now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        with self._lock:
            if self._realtime:
                self._offset += seconds
                return time.time() + self._offset
            self._now += seconds
            return self._now


class HostHandle(Protocol):
    """What an emulated instance needs from its SSH host."""

    host: str
    port: int

    def stop(self) -> None: ...

    def restart(self, new_port: bool = False) -> None: ...


HostFactory = Callable[[int], HostHandle]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class NullHost:
    """A host that holds an address but runs no sshd (for API-only tests and ``--no-ssh``)."""

    def __init__(self) -> None:
        self.host = "127.0.0.1"
        self.port = _free_port()
        self.running = True

    def stop(self) -> None:
        self.running = False

    def restart(self, new_port: bool = False) -> None:
        if new_port:
            old = self.port
            while self.port == old:
                self.port = _free_port()
        self.running = True


def null_host_factory(instance_id: int) -> HostHandle:
    return NullHost()


def sshd_host_factory(base_dir: Path) -> HostFactory:
    """Real sshd hosts, one directory ``base_dir/instance-<id>`` per instance (its ``root/`` is /workspace), with the
    vendor's auto-tmux login."""

    def make(instance_id: int) -> HostHandle:
        from tether.testing.sshd import SshdHost

        host = SshdHost(base_dir / f"instance-{instance_id}", auto_tmux=True)
        host.start()
        return host

    return make


def load_offer_book(path: Path | str | None = None) -> list[dict[str, Any]]:
    """The offers in a JSON file (a list, or ``{"offers": [...]}``); the shipped default book if no path."""
    if path is None:
        text = resources.files("tether.emulator").joinpath("offers.json").read_text(encoding="utf-8")
    else:
        text = Path(path).read_text(encoding="utf-8")
    data = json.loads(text)
    offers = data.get("offers") if isinstance(data, dict) else data
    if not isinstance(offers, list) or not all(isinstance(o, dict) and "id" in o for o in offers):
        raise ValueError("an offer book is a JSON list of offers, each with an id")
    return [dict(o) for o in offers]


class Faults:
    """Faults the next requests or instances will meet; thread-safe. See the module docstring."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.clear()

    def clear(self) -> None:
        with self._lock:
            self.rate_limit_left = 0
            self.rate_limit_retry_after: float | None = 1.0
            self.quota_left = 0
            self.quota_retry_after: float | None = 86400.0
            self.quota_reset_in: float | None = None
            self.server_error_left = 0
            self.server_error_status = 503
            self.delay_left = 0
            self.delay_s = 0.0
            self.stuck_loading_left = 0
            self.exit_left = 0
            self.new_port_after_restart = False
            self.stuck_restart_left = 0
            self.taken_offers: set[int] = set()
            self.oci_failure_left = 0
            self.queued_start_left = 0
            self.queued_start_after = 0.0
            self.refuse_keys_left = 0
            self.refuse_keys_s = 0.0

    def rate_limit(self, count: int, retry_after: float | None = 1.0) -> None:
        with self._lock:
            self.rate_limit_left, self.rate_limit_retry_after = count, retry_after

    def quota_exceeded(
        self, count: int = 1, retry_after: float | None = 86400.0, reset_in: float | None = None
    ) -> None:
        with self._lock:
            self.quota_left, self.quota_retry_after, self.quota_reset_in = count, retry_after, reset_in

    def server_error(self, count: int, status: int = 503) -> None:
        with self._lock:
            self.server_error_left, self.server_error_status = count, status

    def delay(self, count: int, seconds: float) -> None:
        with self._lock:
            self.delay_left, self.delay_s = count, seconds

    def stuck_loading(self, count: int = 1) -> None:
        with self._lock:
            self.stuck_loading_left = count

    def exit_on_create(self, count: int = 1) -> None:
        with self._lock:
            self.exit_left = count

    def new_port_on_restart(self, on: bool = True) -> None:
        with self._lock:
            self.new_port_after_restart = on

    def stuck_restart(self, count: int = 1) -> None:
        with self._lock:
            self.stuck_restart_left = count

    def take_offer(self, offer_id: int) -> None:
        with self._lock:
            self.taken_offers.add(int(offer_id))

    def oci_failure(self, count: int = 1) -> None:
        with self._lock:
            self.oci_failure_left = count

    def queued_start(self, after_s: float, count: int = 1) -> None:
        with self._lock:
            self.queued_start_left, self.queued_start_after = count, float(after_s)

    def refuse_keys(self, seconds: float, count: int = 1) -> None:
        with self._lock:
            self.refuse_keys_left, self.refuse_keys_s = count, float(seconds)

    def apply(self, spec: Mapping[str, Any]) -> None:
        """Set a fault from its JSON form ``{"kind": name, ...params}`` (the admin endpoint)."""
        kind = str(spec.get("kind", ""))
        params = {k: v for k, v in spec.items() if k != "kind"}
        handlers: dict[str, Callable[..., None]] = {
            "rate_limit": self.rate_limit,
            "quota_exceeded": self.quota_exceeded,
            "server_error": self.server_error,
            "delay": self.delay,
            "stuck_loading": self.stuck_loading,
            "exit_on_create": self.exit_on_create,
            "new_port_on_restart": self.new_port_on_restart,
            "stuck_restart": self.stuck_restart,
            "take_offer": self.take_offer,
            "oci_failure": self.oci_failure,
            "queued_start": self.queued_start,
            "refuse_keys": self.refuse_keys,
            "clear": self.clear,
        }
        if kind not in handlers:
            raise ValueError(f"unknown fault {kind!r}; known: {', '.join(sorted(handlers))}")
        handlers[kind](**params)

    def _take(self, name: str) -> bool:
        with self._lock:
            left = getattr(self, name)
            if left > 0:
                setattr(self, name, left - 1)
                return True
            return False

    def request_fault(self, is_search: bool) -> tuple[int, dict[str, str], Any] | None:
        """The fault answer for the next API request, if any (quota first, then 429, then 5xx)."""
        if is_search and self._take("quota_left"):
            headers = {} if self.quota_retry_after is None else {"Retry-After": f"{self.quota_retry_after:g}"}
            if self.quota_reset_in is not None:
                headers["X-RateLimit-Reset"] = f"{time.time() + self.quota_reset_in:.0f}"
            return (
                429,
                headers,
                {
                    "success": False,
                    "error": "search_quota_exceeded",
                    "msg": "Daily search quota exceeded.",
                },
            )
        if self._take("rate_limit_left"):
            headers = {} if self.rate_limit_retry_after is None else {"Retry-After": f"{self.rate_limit_retry_after:g}"}
            return 429, headers, "API requests too frequent endpoint threshold=2.0"
        if self._take("server_error_left"):
            return self.server_error_status, {}, "<html><body>Bad gateway</body></html>"
        return None

    def take_delay(self) -> float:
        return self.delay_s if self._take("delay_left") else 0.0

    def take_key_refusal(self) -> float:
        return self.refuse_keys_s if self._take("refuse_keys_left") else 0.0

    def take_queued_start(self) -> float | None:
        return self.queued_start_after if self._take("queued_start_left") else None


#: The status message of a container the host could not create (what Docker says; the instance never starts).
OCI_FAILURE = (
    "Error response from daemon: failed to create task for container: failed to create shim task: OCI runtime "
    'create failed: runc create failed: unable to start container process: exec: "/bin/bash": no such file'
)
#: States the emulator bills at the full rate (the GPU is held); the vendor's docs say so for frozen.
FULL_RATE = frozenset({"running", "frozen", "rebooting"})


@dataclass
class MachineTrouble:
    """What a bad machine of the marketplace does to every instance rented on it (``emu.bad_machine(machine_id,
    ...)``): the offer promised one thing, the host shows another."""

    gpus_shown: int | None = None
    """nvidia-smi shows this many GPUs (fewer than the offer's ``num_gpus``)."""
    cuda: str | None = None
    """The driver's CUDA version nvidia-smi shows (older than the offer's ``cuda_max_good``)."""
    disk_free_gb: float | None = None
    """``df`` shows this much free space on the workspace (a nearly full disk)."""
    loading_s: float | None = None
    """Seconds of the clock in ``loading`` before running (a slow image pull), instead of the emulator's own."""
    vanish_after_s: float | None = None
    """Seconds of the clock after it first runs, then the machine is gone with the instance (no longer listed)."""


def nvidia_smi_script(offer: Mapping[str, Any], trouble: MachineTrouble | None) -> str:
    """A stand-in ``nvidia-smi`` for an emulated host: the offer's GPUs (or fewer), its driver, its CUDA version,
    answering the plain call and ``--query-gpu`` in the driver's CSV format."""
    shown = int(_num(offer.get("num_gpus"), 0))
    if trouble is not None and trouble.gpus_shown is not None:
        shown = trouble.gpus_shown
    name = str(offer.get("gpu_name") or "GPU")
    mib = int(_num(offer.get("gpu_ram"), 0))
    driver = str(offer.get("driver_version") or "550.54.15")
    cuda = trouble.cuda if trouble is not None and trouble.cuda else f"{_num(offer.get('cuda_max_good'), 12.4):g}"
    rows = "\n".join(f"{i}, GPU-emu-{i:04d}, {name}, {mib}, 0, {driver}" for i in range(shown))
    return "\n".join(
        [
            "#!/bin/sh",
            "# The emulator's nvidia-smi: what this machine shows (not always what its offer promised).",
            f"if [ {shown} -eq 0 ]; then echo 'No devices were found'; exit 6; fi",
            'case "$*" in',
            "  *--query-compute-apps=*) exit 0 ;;",
            "  *--query-gpu=*)",
            '    fields=$(printf "%s\n" "$@" | sed -n "s/^--query-gpu=//p")',
            f"    printf '%s\\n' '{rows}' | while IFS=',' read -r idx uuid gname total used drv; do",
            '      out=""',
            '      for f in $(echo "$fields" | tr "," " "); do',
            '        case "$f" in',
            "          index) v=$idx ;; uuid) v=$uuid ;; name) v=$gname ;; memory.total) v=$total ;;",
            '          memory.used) v=$used ;; driver_version) v=$drv ;; *) v="[N/A]" ;;',
            "        esac",
            '        v=$(echo "$v" | sed "s/^ *//")',
            '        out="${out:+$out, }$v"',
            "      done",
            '      echo "$out"',
            "    done",
            "    exit 0 ;;",
            "esac",
            f"echo '| NVIDIA-SMI {driver}    Driver Version: {driver}    CUDA Version: {cuda}     |'",
            f"echo '|   0  {name}  On  |  {shown} GPU(s) |'",
            "",
        ]
    )


def df_script(free_gb: float) -> str:
    """A stand-in ``df`` that shows ``free_gb`` free on every file system (a nearly full disk), POSIX format."""
    free_k = int(free_gb * 1024 * 1024)
    return "\n".join(
        [
            "#!/bin/sh",
            "# The emulator's df: this machine's disk is nearly full.",
            "echo 'Filesystem     1024-blocks      Used Available Capacity Mounted on'",
            f'echo "overlay        104857600 {104857600 - free_k} {free_k} 99% /"',
            "",
        ]
    )


@dataclass
class EmuInstance:
    """One rented instance as the emulator keeps it.

    ``state`` is the vendor's ``actual_status`` (``created``, ``loading``, ``running``, ``stopped``, ``frozen``,
    ``exited``, ``rebooting``, ``unknown``, ``offline``, ``none`` for null) or ``destroyed``. ``intended`` is the
    renter's ``intended_status``; ``preempted`` marks a service stop against it (outbid); ``start_at`` a queued start
    the service performs by itself at that time (None: not queued; ``inf``: never).
    """

    id: int
    offer: dict[str, Any]
    label: str | None
    image: str
    env: dict[str, Any]
    onstart: str | None
    disk: float
    runtype: str
    created_at: float
    dph_base: float
    storage_total_cost: float
    host: HostHandle | None
    state: str = "loading"
    intended: str = "running"
    ready_at: float | None = None
    will_exit: bool = False
    status_msg: str = ""
    accrued: float = 0.0
    last_t: float = 0.0
    running_since: float | None = None
    history: list[str] = field(default_factory=list)
    preempted: bool = False
    price: float | None = None
    """The bid ($/hr for the machine) of an interruptible rental; None on demand."""
    start_at: float | None = None
    keys: list[str] = field(default_factory=list)
    """SSH public keys on this instance: the account's at creation, and those attached to it since."""
    proxy: Any = None
    """The loopback forwarder playing the service's SSH proxy (``ssh_host:ssh_port``), apart from the direct port."""
    container_key: str = ""
    """``CONTAINER_API_KEY``: the key issued for this instance alone (show, stop and start it; nothing else)."""
    trouble: MachineTrouble | None = None
    """What its machine does wrong (see :class:`MachineTrouble`), or None for a machine as its offer says."""

    def container_env(self) -> dict[str, str]:
        """The variables the service puts in the container's environment (what its start script sees)."""
        env = {str(k): str(v) for k, v in self.env.items() if not str(k).startswith("-")}  # "-p 80:80" are port maps
        port = self.host.port if self.host is not None else None
        env.update(
            {
                "CONTAINER_ID": str(self.id),
                "CONTAINER_API_KEY": self.container_key,
                "PUBLIC_IPADDR": "127.0.0.1",
                "GPU_COUNT": str(int(_num(self.offer.get("num_gpus"), 0))),
            }
        )
        if port is not None:
            env["VAST_TCP_PORT_22"] = str(port)
        return env

    @property
    def dph_total(self) -> float:
        return self.dph_base + self.storage_total_cost

    def rate(self) -> float:
        if self.state in FULL_RATE:
            return self.dph_total
        if self.state == "destroyed":
            return 0.0
        return self.storage_total_cost

    def _accrue(self, t: float) -> None:
        if t > self.last_t:
            self.accrued += self.rate() * (t - self.last_t) / 3600.0
            self.last_t = t

    def _set(self, state: str) -> None:
        self.state = state
        self.history.append(state)

    def settle(self, now: float) -> bool:
        """Bring state and accrued cost up to ``now``; True when a queued start began (its host must restart)."""
        began = False
        if self.state == "stopped" and self.start_at is not None and now >= self.start_at:
            # The queued start happens by itself once the GPU is free, and from then on it loads and bills.
            self._accrue(self.start_at)
            self.start_at = None
            self._set("loading")
            self.status_msg = "starting"
            self.ready_at = self.last_t
            began = True
        if self.state == "loading" and self.ready_at is not None and now >= self.ready_at:
            self._accrue(self.ready_at)
            self.ready_at = None
            if self.will_exit:
                self._set("exited")
                self.status_msg = "Error response from daemon: container exited with code 1"
            else:
                self._set("running")
                self.status_msg = "success, running " + self.image
                self.running_since = self.last_t
        self._accrue(now)
        return began

    def to_json(self, now: float) -> dict[str, Any]:
        running = self.state == "running" and self.host is not None
        direct = "ssh_direc" in self.runtype
        port = self.host.port if self.host is not None else None
        proxy_port = self.proxy.port if self.proxy is not None else port
        stopped = self.state == "stopped"
        return {
            "id": self.id,
            "label": self.label,
            "actual_status": None if self.state == "none" else self.state,
            "intended_status": self.intended,
            # cur_state: the machine contract (stopped once the GPU is let go); next_state: where the service takes
            # it. An outbid instance: stopped, intended running, next stopped. A queued start: next running.
            "cur_state": "stopped" if stopped else "running",
            "next_state": "stopped" if self.preempted else self.intended,
            "status_msg": self.status_msg,
            "image_uuid": self.image,
            "image_runtype": self.runtype,
            "onstart": self.onstart,
            "extra_env": [[k, v] for k, v in self.env.items()],
            "is_bid": self.price is not None,
            "min_bid": self.offer.get("min_bid"),
            "ssh_host": "127.0.0.1",
            "ssh_port": proxy_port,
            "public_ipaddr": "127.0.0.1",
            "ports": {"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(port)}]} if running and direct else {},
            "machine_id": self.offer.get("machine_id"),
            "host_id": self.offer.get("host_id"),
            "gpu_name": self.offer.get("gpu_name"),
            "num_gpus": self.offer.get("num_gpus"),
            "gpu_ram": self.offer.get("gpu_ram"),
            "gpu_totalram": self.offer.get("gpu_total_ram"),
            "cpu_cores_effective": self.offer.get("cpu_cores_effective"),
            "cpu_ram": self.offer.get("cpu_ram"),
            "geolocation": self.offer.get("geolocation"),
            "reliability2": self.offer.get("reliability"),
            "dph_base": self.dph_base,
            "dph_total": round(self.dph_total, 6),
            "storage_cost": self.offer.get("storage_cost"),
            "storage_total_cost": round(self.storage_total_cost, 6),
            "inet_up_cost": self.offer.get("inet_up_cost"),
            "inet_down_cost": self.offer.get("inet_down_cost"),
            "disk_space": self.disk,
            "disk_usage": 0.0,
            "start_date": self.created_at,
            "end_date": None,
            "uptime_mins": round((now - self.running_since) / 60.0, 2) if self.running_since else None,
        }


def _num(v: Any, default: float = 0.0) -> float:
    if isinstance(v, bool) or v is None:
        return default
    try:
        return float(v)
    except (TypeError, ValueError):
        return default


# ---------------------------------------------------------------------------------------------- the search service

#: Body keys of ``POST /api/v0/bundles/`` that are not filters.
_NOT_FILTERS = frozenset({"order", "type", "limit", "allocated_storage", "q", "select_cols", "disable_bundling"})
_OPS = frozenset({"eq", "neq", "gt", "gte", "lt", "lte", "in", "notin"})


def wire_filters(body: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The ``{field: {op: value}}`` filters of a search body (a ``q`` wrapper, as old clients send, is unwrapped)."""
    inner = body.get("q")
    if isinstance(inner, Mapping):
        body = inner
    return {k: dict(v) for k, v in body.items() if k not in _NOT_FILTERS and isinstance(v, Mapping)}


def _scalar(v: Any) -> Any:
    """A wire or offer value as the service compares it: numbers (also sent as strings) as floats, booleans as
    1.0/0.0, other strings case-folded, None as None."""
    if v is None:
        return None
    if isinstance(v, bool):
        return 1.0 if v else 0.0
    if isinstance(v, int | float):
        return float(v)
    text = str(v).strip()
    if text in ("true", "True"):
        return 1.0
    if text in ("false", "False"):
        return 0.0
    try:
        return float(text)
    except ValueError:
        return text.casefold()


def _candidates(field_name: str, have: Any) -> set[Any]:
    """What an offer's value equals: itself, and for ``geolocation`` ("Texas, US") also its country code."""
    value = _scalar(have)
    out = {value}
    if field_name == "geolocation" and isinstance(value, str) and "," in value:
        out.add(value.rsplit(",", 1)[1].strip())
    return out


def _passes(field_name: str, op: str, want: Any, have: Any) -> bool:
    if op in ("in", "notin"):
        wants = want if isinstance(want, list) else [want]
        hit = bool({_scalar(w) for w in wants} & _candidates(field_name, have))
        return hit if op == "in" else not hit
    if op in ("eq", "neq"):
        equal = _scalar(want) in _candidates(field_name, have)
        return equal if op == "eq" else not equal
    a, b = _scalar(have), _scalar(want)
    if not isinstance(a, float) or not isinstance(b, float):
        return False
    return {"gt": a > b, "gte": a >= b, "lt": a < b, "lte": a <= b}.get(op, False)


def offer_matches(filters: Mapping[str, Mapping[str, Any]], offer: Mapping[str, Any]) -> bool:
    """Whether an offer passes every wire filter (an unknown op matches nothing, as a strict service would)."""
    for field_name, ops in filters.items():
        have = offer.get(field_name)
        for op, want in ops.items():
            if op not in _OPS or not _passes(field_name, op, want, have):
                return False
    return True


def _sort_key(name: str) -> Callable[[Mapping[str, Any]], float]:
    def key(offer: Mapping[str, Any]) -> float:
        return _num(offer.get(name))

    return key


class VastEmulator:
    """The emulator itself: an HTTP server on 127.0.0.1 in a thread. See the module docstring."""

    def __init__(
        self,
        offers: Sequence[Mapping[str, Any]] | Path | str | None = None,
        *,
        api_key: str = DEFAULT_API_KEY,
        loading_s: float = 30.0,
        clock: Clock | None = None,
        host_factory: HostFactory | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        first_instance_id: int = 20_000_001,
    ) -> None:
        book = offers if isinstance(offers, Sequence) and not isinstance(offers, str) else load_offer_book(offers)
        self.offers: list[dict[str, Any]] = [dict(o) for o in book]
        self.api_key = api_key
        self.loading_s = loading_s
        self.clock = clock or Clock()
        self.faults = Faults()
        self.instances: dict[int, EmuInstance] = {}
        self.requests: list[tuple[str, str]] = []
        self.bodies: list[tuple[str, str, Any]] = []
        """Every API request's method, path and JSON body, as sent (what a test checks a client sent)."""
        self.ssh_keys: list[dict[str, Any]] = []
        """The account's SSH keys (``GET /api/v0/ssh/``); an instance gets the ones present when it is created."""
        self.bad_key_status = 401
        """What a wrong key gets: 401 as the service answers; 404 with ``auth_error`` as some routes have."""
        self.credit: float | None = None
        """The account's credit in dollars (None: unlimited); a create that it cannot cover for an hour is refused."""
        self.troubles: dict[int, MachineTrouble] = {}
        """Bad machines by ``machine_id`` (:meth:`bad_machine`)."""
        self._next_key_id = 1
        self._next_id = first_instance_id
        self._lock = threading.RLock()
        self._tmp: Path | None = None
        if host_factory is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="tether-vast-emulator-"))
            host_factory = sshd_host_factory(self._tmp)
        self._host_factory = host_factory
        self._bind = (host, port)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the emulator is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> VastEmulator:
        emu = self

        class Handler(_Handler):
            emulator = emu

        server = ThreadingHTTPServer(self._bind, Handler)
        server.daemon_threads = True
        server.block_on_close = False
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="vast-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and stop every SSH host it started."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        with self._lock:
            for inst in self.instances.values():
                if inst.host is not None:
                    inst.host.stop()
                if inst.proxy is not None:
                    inst.proxy.close()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> VastEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------------ inspection

    def settle(self) -> None:
        now = self.clock.now()
        began: list[EmuInstance] = []
        gone: list[EmuInstance] = []
        with self._lock:
            for inst in self.instances.values():
                if inst.settle(now):
                    began.append(inst)
                after = inst.trouble.vanish_after_s if inst.trouble is not None else None
                running_since = inst.running_since if inst.state == "running" else None
                if after is not None and running_since is not None and now >= running_since + after:
                    inst._accrue(running_since + after)
                    inst._set("destroyed")  # the machine left the market with it: not listed, not billed
                    inst.ready_at = None
                    gone.append(inst)
        for inst in began:
            self._bring_up(inst, new_port=self.faults.new_port_after_restart)
        for inst in gone:
            if inst.host is not None:
                inst.host.stop()

    def _bring_up(self, inst: EmuInstance, new_port: bool = False) -> None:
        """(Re)start an instance's host: sshd back up, the proxy aimed at it, the onstart script run."""
        if inst.host is None:
            return
        inst.host.restart(new_port=new_port)
        if inst.proxy is not None:
            inst.proxy.target = (inst.host.host, inst.host.port)
        runner = getattr(inst.host, "run_onstart", None)
        if inst.onstart and runner is not None:
            runner(inst.onstart, env=inst.container_env())

    def account_total(self) -> float:
        """Dollars accrued by every instance ever rented, up to the clock's now."""
        self.settle()
        with self._lock:
            return sum(i.accrued for i in self.instances.values())

    def billing_instances(self) -> list[EmuInstance]:
        """Instances not destroyed (they cost money: running, or storage while loading/stopped/exited)."""
        self.settle()
        with self._lock:
            return [i for i in self.instances.values() if i.state != "destroyed"]

    def instance_json(self, instance_id: int) -> dict[str, Any] | None:
        self.settle()
        with self._lock:
            inst = self.instances.get(instance_id)
            if inst is None or inst.state == "destroyed":
                return None
            return inst.to_json(self.clock.now())

    def state(self) -> dict[str, Any]:
        self.settle()
        with self._lock:
            now = self.clock.now()
            return {
                "now": now,
                "total_cost": sum(i.accrued for i in self.instances.values()),
                "instances": [
                    {**i.to_json(now), "emulator_state": i.state, "accrued": i.accrued} for i in self.instances.values()
                ],
            }

    # ------------------------------------------------------------------------------------------ API

    def _rented_offer_ids(self) -> set[int]:
        return {int(i.offer["id"]) for i in self.instances.values() if i.state != "destroyed"}

    def _available(self) -> list[dict[str, Any]]:
        gone = self._rented_offer_ids() | self.faults.taken_offers
        return [o for o in self.offers if int(o["id"]) not in gone]

    def search(self, body: Mapping[str, Any]) -> list[dict[str, Any]]:
        disk = _num(body.get("allocated_storage"), 5.0)
        order = body.get("order") or [["score", "desc"]]
        # The service answers at most 64 offers, whatever the limit asks: one offer is found by `id`, not by paging.
        limit = max(1, min(int(_num(body.get("limit"), DEFAULT_LIMIT)), DEFAULT_LIMIT))
        filters = wire_filters(body)
        with self._lock:
            quoted = []
            for o in self._available():
                q = dict(o)
                storage = _num(o.get("storage_cost")) * disk / 720.0
                q["storage_total_cost"] = round(storage, 6)
                q["dph_total"] = round(_num(o.get("dph_base")) + storage, 6)
                q.setdefault("rentable", True)
                q.setdefault("rented", False)
                if offer_matches(filters, q):
                    quoted.append(q)
        keys = [(str(x[0]), str(x[1])) for x in order if isinstance(x, list | tuple) and len(x) == 2]
        for key, direction in reversed(keys):
            quoted.sort(key=_sort_key(key), reverse=direction == "desc")
        return quoted[:limit]

    def create(self, offer_id: int, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        image = body.get("image")
        if not isinstance(image, str) or not image:
            return 400, {"success": False, "error": "invalid_args", "msg": "image is required"}
        disk = _num(body.get("disk"), 10.0)
        price_raw = body.get("price")
        price = None if price_raw is None else _num(price_raw, -1.0)
        if price is not None and price < 0:
            return 400, {"success": False, "error": "invalid_args", "msg": f"bad price {price_raw!r}"}
        self.settle()
        with self._lock:
            offer = next((o for o in self._available() if int(o["id"]) == offer_id), None)
            if offer is None:
                return 404, {
                    "success": False,
                    "error": "no_such_ask",
                    "msg": f"Instance type by id {offer_id} is not available.",
                }
            storage = _num(offer.get("storage_cost")) * disk / 720.0
            base = _num(offer.get("dph_base")) if price is None else price
            if self.credit is not None:
                left = self.credit - sum(i.accrued for i in self.instances.values())
                if left < base + storage:
                    return 400, {
                        "success": False,
                        "error": "insufficient_credit",
                        "msg": "Your account balance is too low to rent this instance; add credit to continue.",
                    }
            new_id = self._next_id
            self._next_id += 1
            now = self.clock.now()
            stuck = self.faults._take("stuck_loading_left")
            will_exit = self.faults._take("exit_left")
            oci = self.faults._take("oci_failure_left")
            low_bid = price is not None and price < _num(offer.get("min_bid"))
            env = body.get("env") if isinstance(body.get("env"), dict) else {}
            inst = EmuInstance(
                id=new_id,
                offer=dict(offer),
                label=str(body["label"]) if body.get("label") else None,
                image=image,
                env=dict(env or {}),
                onstart=str(body["onstart"]) if body.get("onstart") else None,
                disk=disk,
                runtype=str(body.get("runtype") or "ssh_proxy"),
                created_at=now,
                dph_base=base,
                storage_total_cost=storage,
                host=None,
                ready_at=None if (stuck or oci or low_bid) else now + self._loading_s(offer),
                will_exit=will_exit,
                status_msg="Pulling image " + image,
                last_t=now,
                history=["loading"],
                price=price,
                keys=[k["public_key"] for k in self.ssh_keys],
                container_key="ck_" + secrets.token_hex(20),
                trouble=self.troubles.get(int(_num(offer.get("machine_id"), -1))),
            )
            if oci:
                inst.state, inst.history, inst.status_msg = "created", ["created"], OCI_FAILURE
            if low_bid:
                # The service makes the instance anyway, stopped, and says no (dstack handles exactly this).
                inst.state, inst.history, inst.preempted = "stopped", ["stopped"], True
                inst.status_msg = "stopped: bid below the minimum"
            self.instances[new_id] = inst
        self._make_host(inst, start=not (oci or low_bid))
        if low_bid:
            return 400, {
                "success": False,
                "error": "bid_too_low",
                "msg": f"Your bid ${price:.4f}/hr is below the minimum ${_num(offer.get('min_bid')):.4f}/hr.",
                "new_contract": new_id,
            }
        return 200, {"success": True, "new_contract": new_id}

    def _make_host(self, inst: EmuInstance, *, start: bool) -> None:
        """The instance's SSH host, its proxy, its keys (late when the fault says so), its onstart script."""
        host = self._host_factory(inst.id)
        inst.host = host
        from tether.testing.proxy import CutProxy

        inst.proxy = CutProxy(host.port, host.host)
        install = getattr(host, "install_bin", None)
        if install is not None:
            install("nvidia-smi", nvidia_smi_script(inst.offer, inst.trouble))
            if inst.trouble is not None and inst.trouble.disk_free_gb is not None:
                install("df", df_script(inst.trouble.disk_free_gb))
        authorize = getattr(host, "authorize", None)
        if authorize is not None:
            late = self.faults.take_key_refusal()
            if late > 0:
                # A fresh instance refuses every key for its first seconds (the vendor's login banner says so).
                authorize([])
                timer = threading.Timer(late, authorize, args=(list(inst.keys),))
                timer.daemon = True
                timer.start()
            else:
                authorize(list(inst.keys))
        if not start:
            host.stop()
            return
        runner = getattr(host, "run_onstart", None)
        if inst.onstart and runner is not None:
            runner(inst.onstart, env=inst.container_env())

    def list_page(self, after: str | None, limit: int) -> dict[str, Any]:
        self.settle()
        with self._lock:
            now = self.clock.now()
            live = sorted((i for i in self.instances.values() if i.state != "destroyed"), key=lambda i: i.id)
            start = 0
            if after:
                start = next((n + 1 for n, i in enumerate(live) if str(i.id) == after), len(live))
            page = live[start : start + limit]
            more = start + limit < len(live)
            return {
                "instances": [i.to_json(now) for i in page],
                "next_token": str(page[-1].id) if more and page else None,
            }

    def change(self, instance_id: int, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        self.settle()
        restart: tuple[HostHandle, bool] | None = None
        stop_host: HostHandle | None = None
        message = ""
        with self._lock:
            inst = self.instances.get(instance_id)
            if inst is None or inst.state == "destroyed":
                return 404, {"success": False, "error": "no_such_instance", "msg": f"No instance {instance_id}."}
            if "label" in body:
                inst.label = str(body["label"]) if body["label"] is not None else None
            want = body.get("state")
            if want == "stopped" and inst.preempted:
                inst.intended = "stopped"
                inst.preempted = False
            elif want == "stopped" and inst.state == "stopped":
                inst.intended = "stopped"
                inst.start_at = None  # a queued start is cancelled by a stop
                inst.status_msg = "stopped by user"
            elif want == "stopped":
                inst.intended = "stopped"
                inst.ready_at = None
                inst.start_at = None
                inst._set("stopped")
                inst.status_msg = "stopped by user"
                inst.running_since = None
                stop_host = inst.host
            elif want == "running" and inst.state in ("stopped", "exited"):
                inst.intended = "running"
                inst.preempted = False
                queued = self.faults.take_queued_start()
                if self.faults._take("stuck_restart_left"):
                    inst.status_msg = "scheduling: waiting for the GPU (rented by another client)"
                    inst.start_at = float("inf")
                    message = "state change queued: the GPU is in use"
                elif queued is not None:
                    # The GPU is busy: the service queues the start and performs it by itself later, billing.
                    inst.status_msg = "scheduling: state change queued, the GPU is in use"
                    inst.start_at = self.clock.now() + queued
                    message = "state change queued: the GPU is in use"
                else:
                    inst._set("loading")
                    inst.ready_at = self.clock.now() + self._loading_s(inst.offer)
                    inst.will_exit = False
                    inst.status_msg = "starting"
                    if inst.host is not None:
                        restart = (inst.host, self.faults.new_port_after_restart)
            elif want == "running" and inst.state == "frozen":
                inst.intended = "running"
                inst._set("running")
                inst.status_msg = "success, running " + inst.image
            elif want is not None and want not in ("stopped", "running"):
                return 400, {"success": False, "error": "invalid_args", "msg": f"bad state {want!r}"}
        if stop_host is not None:
            stop_host.stop()
        if restart is not None:
            self._bring_up(inst, new_port=restart[1])
        return 200, {"success": True, "msg": message} if message else {"success": True}

    def destroy(self, instance_id: int) -> tuple[int, dict[str, Any]]:
        self.settle()
        with self._lock:
            inst = self.instances.get(instance_id)
            if inst is None or inst.state == "destroyed":
                return 404, {"success": False, "error": "no_such_instance", "msg": f"No instance {instance_id}."}
            inst._set("destroyed")
            inst.ready_at = None
            inst.start_at = None
            host = inst.host
        if host is not None:
            host.stop()
        if inst.proxy is not None:
            inst.proxy.close()
        return 200, {"success": True}

    # ------------------------------------------------------------------------------------------ test hooks

    def preempt(self, instance_id: int) -> None:
        """Outbid the instance now: the service stops it (its sshd goes down, its files stay, the disk still bills)
        while the renter's ``intended_status`` stays ``running``. Starting it again clears the mark."""
        self.settle()
        with self._lock:
            inst = self.instances.get(int(instance_id))
            if inst is None or inst.state == "destroyed":
                raise ValueError(f"no instance {instance_id}")
            inst._set("stopped")
            inst.preempted = True
            inst.ready_at = None
            inst.running_since = None
            inst.status_msg = "stopped: outbid by a higher bid"
            host = inst.host
        if host is not None:
            host.stop()

    def set_status(self, instance_id: int, actual_status: str | None, msg: str = "") -> None:
        """Put the instance in any status the vendor lists (``frozen``, ``rebooting``, ``unknown``, ``offline``,
        ``exited``, ``created``, ``loading``, ``running``, ``stopped``, or None for null), billed as the vendor's
        docs say (GPU and disk while running, frozen or rebooting; the disk otherwise)."""
        self.settle()
        with self._lock:
            inst = self.instances.get(int(instance_id))
            if inst is None or inst.state == "destroyed":
                raise ValueError(f"no instance {instance_id}")
            inst._accrue(self.clock.now())
            inst._set("none" if actual_status is None else str(actual_status))
            inst.ready_at = None
            if msg:
                inst.status_msg = msg
            if actual_status == "frozen":
                inst.intended = "frozen"

    def _loading_s(self, offer: Mapping[str, Any]) -> float:
        trouble = self.troubles.get(int(_num(offer.get("machine_id"), -1)))
        return trouble.loading_s if trouble is not None and trouble.loading_s is not None else self.loading_s

    def bad_machine(self, machine_id: int, **trouble: Any) -> MachineTrouble:
        """Make a machine of the book bad for every instance rented on it from now on (see :class:`MachineTrouble`:
        ``gpus_shown``, ``cuda``, ``disk_free_gb``, ``loading_s``, ``vanish_after_s``)."""
        made = MachineTrouble(**trouble)
        with self._lock:
            self.troubles[int(machine_id)] = made
        return made

    def add_ssh_key(self, public_key: str) -> int:
        """Put a public key on the account (what ``vastai create ssh-key`` does); instances created from now on get
        it. Its id."""
        with self._lock:
            key_id = self._next_key_id
            self._next_key_id += 1
            self.ssh_keys.append(
                {"id": key_id, "public_key": public_key.strip(), "created_at": self.clock.now(), "deleted_at": None}
            )
            return key_id

    def attach_ssh_key(self, instance_id: int, public_key: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            inst = self.instances.get(int(instance_id))
            if inst is None or inst.state == "destroyed":
                return 404, {"success": False, "error": "no_such_instance", "msg": f"No instance {instance_id}."}
            inst.keys.append(public_key.strip())
            keys = list(inst.keys)
        authorize = getattr(inst.host, "authorize", None)
        if authorize is not None:
            authorize(keys)
        return 200, {"success": True, "msg": "ssh key attached"}

    def vanish(self, instance_id: int) -> None:
        """The host goes away with the instance (a machine removed from the market): it answers nothing, the
        service no longer lists it and bills nothing more."""
        self.settle()
        with self._lock:
            inst = self.instances.get(int(instance_id))
            if inst is None or inst.state == "destroyed":
                raise ValueError(f"no instance {instance_id}")
            inst._set("destroyed")
            inst.ready_at = None
            host = inst.host
        if host is not None:
            host.stop()

    def handle(
        self, method: str, raw_path: str, headers: Mapping[str, str], body: Any
    ) -> tuple[int, dict[str, str], Any, float]:
        """Answer one request: ``(status, headers, body (JSON-able or text), delay in wall seconds)``."""
        parts = urlsplit(raw_path)
        path = parts.path if parts.path.endswith("/") else parts.path + "/"
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        if path.startswith("/_emulator/"):
            return (*self._admin(method, path, body), 0.0)
        with self._lock:
            self.requests.append((method, path))
            self.bodies.append((method, path, body))
        fault = self.faults.request_fault(is_search=path == "/api/v0/bundles/")
        if fault is not None:
            return (*fault, 0.0)
        delay = self.faults.take_delay()
        auth = headers.get("Authorization") or headers.get("authorization") or ""
        if not auth.startswith("Bearer "):
            return 401, {}, {"success": False, "error": "auth_error", "msg": "Please log in or sign up"}, delay
        given = auth[len("Bearer ") :]
        owner = self._instance_of_key(given) if given != self.api_key else None
        if owner is not None:
            own_status, own_answer = self._container_api(owner, method, path, body if isinstance(body, dict) else {})
            return own_status, {}, own_answer, delay
        if given != self.api_key:
            # What the service answers for a wrong or deleted key (its OpenAPI spec and the vendor's CLI).
            refusal: dict[str, Any] = {"success": False, "error": "auth_error", "msg": "Invalid user key"}
            return self.bad_key_status, {}, refusal, delay
        status, answer = self._api(method, path, query, body if isinstance(body, dict) else {})
        return status, {}, answer, delay

    def _instance_of_key(self, key: str) -> int | None:
        """The live instance whose ``CONTAINER_API_KEY`` this is, or None."""
        if not key:
            return None
        with self._lock:
            for inst in self.instances.values():
                if inst.state != "destroyed" and secrets.compare_digest(inst.container_key, key):
                    return inst.id
        return None

    def _container_api(self, own: int, method: str, path: str, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        """A request made with an instance's own key: show, stop or start that instance; 403 for anything else."""
        segs = [s for s in path.split("/") if s]
        mine = len(segs) == 4 and segs[:3] == ["api", "v0", "instances"] and segs[3] == str(own)
        if mine and method == "GET":
            return 200, {"instances": self.instance_json(own)}
        if mine and method == "PUT" and set(body) == {"state"} and body.get("state") in ("stopped", "running"):
            return self.change(own, body)
        return 403, {
            "success": False,
            "error": "forbidden",
            "msg": f"This key was issued for instance {own}: it may show, stop and start that instance only.",
        }

    def _api(
        self, method: str, path: str, query: Mapping[str, str], body: Mapping[str, Any]
    ) -> tuple[int, dict[str, Any] | str]:
        segs = [s for s in path.split("/") if s]
        if method == "POST" and segs == ["api", "v0", "bundles"]:
            return 200, {"offers": self.search(body)}
        if method == "PUT" and len(segs) == 4 and segs[:3] == ["api", "v0", "asks"] and segs[3].isdigit():
            return self.create(int(segs[3]), body)
        if method == "GET" and segs == ["api", "v1", "instances"]:
            limit = max(1, min(PAGE_SIZE, int(_num(query.get("limit"), PAGE_SIZE))))
            return 200, self.list_page(query.get("after_token"), limit)
        if method == "GET" and segs == ["api", "v0", "instances"]:
            return 410, {"success": False, "error": "gone", "msg": "Use /api/v1/instances/."}
        if segs == ["api", "v0", "ssh"] and method == "GET":
            with self._lock:
                return 200, {"ssh_keys": [dict(k) for k in self.ssh_keys]}
        if segs == ["api", "v0", "ssh"] and method == "POST":
            key = body.get("ssh_key")
            if not isinstance(key, str) or not key.strip().startswith(("ssh-", "ecdsa-", "sk-")):
                return 400, {"success": False, "error": "invalid_args", "msg": "ssh_key must be an OpenSSH public key"}
            key_id = self.add_ssh_key(key)
            return 200, {"success": True, "key": next(dict(k) for k in self.ssh_keys if k["id"] == key_id)}
        if (
            method == "POST"
            and len(segs) == 5
            and segs[:3] == ["api", "v0", "instances"]
            and segs[3].isdigit()
            and segs[4] == "ssh"
        ):
            key = body.get("ssh_key")
            if not isinstance(key, str) or not key.strip():
                return 400, {"success": False, "error": "invalid_args", "msg": "ssh_key is required"}
            return self.attach_ssh_key(int(segs[3]), key)
        if len(segs) == 4 and segs[:3] == ["api", "v0", "instances"] and segs[3].isdigit():
            iid = int(segs[3])
            if method == "GET":
                return 200, {"instances": self.instance_json(iid)}
            if method == "PUT":
                return self.change(iid, body)
            if method == "DELETE":
                return self.destroy(iid)
        return 404, _NOT_FOUND_PAGE

    def _admin(self, method: str, path: str, body: Any) -> tuple[int, dict[str, str], Any]:
        try:
            if method == "POST" and path == "/_emulator/faults/":
                self.faults.apply(body if isinstance(body, dict) else {})
                return 200, {}, {"success": True}
            if method == "POST" and path == "/_emulator/clock/":
                now = self.clock.advance(_num((body or {}).get("advance")))
                return 200, {}, {"now": now}
            if method == "POST" and path == "/_emulator/preempt/":
                self.preempt(int(_num((body or {}).get("id"), -1)))
                return 200, {}, {"success": True}
            if method == "POST" and path == "/_emulator/status/":
                b = body or {}
                self.set_status(int(_num(b.get("id"), -1)), b.get("actual_status"), str(b.get("msg") or ""))
                return 200, {}, {"success": True}
            if method == "POST" and path == "/_emulator/ssh_key/":
                return 200, {}, {"id": self.add_ssh_key(str((body or {}).get("ssh_key") or ""))}
            if method == "POST" and path == "/_emulator/credit/":
                raw = (body or {}).get("usd")
                self.credit = None if raw is None else _num(raw)
                return 200, {}, {"success": True}
            if method == "POST" and path == "/_emulator/bad_machine/":
                b = dict(body or {})
                machine = int(_num(b.pop("machine_id", None), -1))
                self.bad_machine(machine, **b)
                return 200, {}, {"success": True}
            if method == "POST" and path == "/_emulator/vanish/":
                self.vanish(int(_num((body or {}).get("id"), -1)))
                return 200, {}, {"success": True}
            if method == "GET" and path == "/_emulator/state/":
                return 200, {}, self.state()
        except (TypeError, ValueError) as exc:
            return 400, {}, {"success": False, "error": "invalid_args", "msg": str(exc)}
        return 404, {}, {"success": False, "error": "not_found", "msg": f"No admin route {method} {path}"}


#: What a web server answers for a path that is no API route (a wrong VAST_URL): a page, not JSON.
_NOT_FOUND_PAGE = "<!doctype html><html><head><title>404 Not Found</title></head><body>Not Found</body></html>"


class _Handler(BaseHTTPRequestHandler):
    emulator: VastEmulator
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                self._send(400, {}, {"success": False, "error": "invalid_json", "msg": "body is not JSON"})
                return
        status, headers, answer, delay = self.emulator.handle(method, self.path, dict(self.headers), body)
        if delay > 0:
            time.sleep(delay)
        self._send(status, headers, answer)

    def _send(self, status: int, headers: Mapping[str, str], answer: Any) -> None:
        if isinstance(answer, str):
            data, ctype = answer.encode(), "text/plain; charset=utf-8"
        else:
            data, ctype = json.dumps(answer).encode(), "application/json"
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")
