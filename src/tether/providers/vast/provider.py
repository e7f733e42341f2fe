"""Vast.ai as a :class:`~tether.providers.base.Provider`, and renting with every failure cleaned up.

:class:`VastProvider` translates the API's JSON into :class:`Offer` and :class:`Instance`. :func:`rent` turns a
list of offers into one running instance: cheapest first, under a file lock so that several ``rent`` at once
never take the same offer, destroying (and verifying gone) every instance that did not come up, so nothing is
left billing. :func:`find_offers` searches and, when nothing matches, says which filter ruled out most offers.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tether.errors import AuthError, NoCapacity, ProviderError
from tether.offers import Query, explain_no_match, rank_offers, render_body
from tether.providers.base import DEAD_STATES, Instance, InstanceState, Offer
from tether.providers.vast.api import VastClient

TAKEN_TTL_S = 300.0
DESTROY_VERIFY_S = 60.0


def _f(v: Any, default: float = 0.0) -> float:
    if v is None or isinstance(v, bool):
        return default
    try:
        return float(v)
    except (TypeError, ValueError):
        return default


def _i(v: Any, default: int = 0) -> int:
    return int(_f(v, float(default)))


def offer_from_json(raw: Mapping[str, Any]) -> Offer:
    """An :class:`Offer` from one element of the search answer (MB fields become GB)."""
    return Offer(
        id=_i(raw.get("id") if raw.get("id") is not None else raw.get("ask_contract_id")),
        gpu_name=str(raw.get("gpu_name") or ""),
        num_gpus=_i(raw.get("num_gpus")),
        gpu_ram_gb=round(_f(raw.get("gpu_ram")) / 1000.0, 3),
        gpu_total_ram_gb=round(_f(raw.get("gpu_total_ram")) / 1000.0, 3),
        dph_total=_f(raw.get("dph_total")),
        dph_base=_f(raw.get("dph_base")),
        storage_cost=_f(raw.get("storage_cost")),
        storage_total_cost=_f(raw.get("storage_total_cost")),
        reliability=_f(raw.get("reliability", raw.get("reliability2"))),
        geolocation=str(raw["geolocation"]) if raw.get("geolocation") else None,
        cpu_cores=_f(raw.get("cpu_cores_effective", raw.get("cpu_cores"))),
        cpu_ram_gb=round(_f(raw.get("cpu_ram")) / 1000.0, 3),
        disk_space_gb=_f(raw.get("disk_space")),
        inet_up=_f(raw.get("inet_up")),
        inet_down=_f(raw.get("inet_down")),
        cuda_max_good=_f(raw["cuda_max_good"]) if raw.get("cuda_max_good") is not None else None,
        machine_id=_i(raw["machine_id"]) if raw.get("machine_id") is not None else None,
        verified=bool(raw["verified"]) if raw.get("verified") is not None else None,
        raw=dict(raw),
    )


def normalize_state(raw: Mapping[str, Any]) -> InstanceState:
    """Vast's ``actual_status`` (and ``intended_status``) as one of tether's instance states."""
    actual = str(raw.get("actual_status") or "").lower()
    intended = str(raw.get("intended_status") or "").lower()
    if actual == "running":
        return "running"
    if intended == "stopped" and actual in ("", "stopped", "exited", "frozen", "created", "loading"):
        return "stopped"
    if actual in ("", "created", "scheduling"):
        return "creating"
    if actual in ("loading", "rebooting"):
        return "loading"
    if actual in ("stopped", "frozen"):
        return "stopped"
    if actual == "exited":
        return "exited"
    return "unknown"


def ssh_pair(raw: Mapping[str, Any]) -> tuple[str | None, int | None]:
    """The SSH host and port: the direct mapping if there is one, else the proxy pair."""
    ports = raw.get("ports")
    ip = raw.get("public_ipaddr")
    if isinstance(ports, Mapping) and ip:
        mapping = ports.get("22/tcp")
        if isinstance(mapping, list) and mapping and isinstance(mapping[0], Mapping):
            port = _i(mapping[0].get("HostPort"), -1)
            if port > 0:
                return str(ip).strip(), port
    host, port_raw = raw.get("ssh_host"), raw.get("ssh_port")
    if host and port_raw is not None:
        port = _i(port_raw, -1)
        if port > 0:
            if "jupyter" in str(raw.get("image_runtype") or ""):
                port += 1
            return str(host), port
    return None, None


def instance_from_json(raw: Mapping[str, Any]) -> Instance:
    """An :class:`Instance` from the API's instance JSON."""
    state = normalize_state(raw)
    host, port = ssh_pair(raw) if state == "running" else (None, None)
    status_word = raw.get("actual_status") or "creating"
    msg = str(raw.get("status_msg") or "").strip()
    start = raw.get("start_date")
    return Instance(
        id=str(_i(raw.get("id"))),
        label=str(raw["label"]) if raw.get("label") else None,
        state=state,
        status=f"{status_word}: {msg}" if msg else str(status_word),
        ssh_host=host,
        ssh_port=port,
        ssh_user="root",
        dph_total=_f(raw.get("dph_total")),
        dph_base=_f(raw.get("dph_base")),
        storage_total_cost=_f(raw.get("storage_total_cost")),
        gpu_name=str(raw.get("gpu_name") or ""),
        num_gpus=_i(raw.get("num_gpus")),
        gpu_ram_gb=round(_f(raw.get("gpu_ram")) / 1000.0, 3),
        disk_gb=_f(raw.get("disk_space")),
        start_date=_f(start) if start is not None else None,
        raw=dict(raw),
    )


def _instance_id(instance_id: str) -> int:
    try:
        return int(instance_id)
    except ValueError as exc:
        raise ProviderError(
            f"{instance_id!r} is not a Vast.ai instance id.", "Vast.ai instance ids are numbers; see `tether ls`."
        ) from exc


class VastProvider:
    """Rented Vast.ai instances through :class:`VastClient`."""

    name = "vast"

    def __init__(self, client: VastClient | None = None, **client_options: Any) -> None:
        self.client = client if client is not None else VastClient(**client_options)

    def search(self, query_body: Mapping[str, Any]) -> list[Offer]:
        return [offer_from_json(o) for o in self.client.search_offers(query_body)]

    def create(
        self,
        offer_id: int,
        *,
        image: str,
        disk_gb: float,
        label: str | None = None,
        onstart: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> str:
        new_id = self.client.create_instance(
            offer_id, image=image, disk_gb=disk_gb, label=label, onstart=onstart, env=env
        )
        return str(new_id)

    def show(self, instance_id: str) -> Instance:
        raw = self.client.show_instance(_instance_id(instance_id))
        if raw is None:
            return Instance(id=instance_id, state="gone", status="destroyed")
        return instance_from_json(raw)

    def list(self) -> list[Instance]:
        return [instance_from_json(i) for i in self.client.list_instances()]

    def stop(self, instance_id: str) -> None:
        self.client.stop_instance(_instance_id(instance_id))

    def start(self, instance_id: str) -> None:
        self.client.start_instance(_instance_id(instance_id))

    def label(self, instance_id: str, label: str) -> None:
        self.client.label_instance(_instance_id(instance_id), label)

    def destroy(self, instance_id: str) -> None:
        self.client.destroy_instance(_instance_id(instance_id))

    def close(self) -> None:
        self.client.close()


# ---------------------------------------------------------------------------------------------- searching


def find_offers(
    provider: VastProvider,
    query: Query,
    *,
    order: str = "dph+",
    offer_type: str = "on-demand",
    disk_gb: float = 20.0,
    limit: int | None = None,
) -> list[Offer]:
    """Search, rank cheapest first; when nothing matches, NoCapacity names the filter that ruled out most."""
    body = render_body(query, order, offer_type, disk_gb, limit)
    offers = provider.search(body)
    if offers:
        return rank_offers(offers)
    wide = provider.search(render_body(query.without_user_terms(), order, offer_type, disk_gb, None))
    why = explain_no_match(query, [o.raw for o in wide])
    raise NoCapacity(
        f"No offer matches {query.text!r}. {why}",
        "Loosen that filter (or set it to any, e.g. verified=any), or try again later.",
    )


# ---------------------------------------------------------------------------------------------- waiting


def ssh_address(instance: Instance) -> tuple[str, int, str]:
    """``(host, port, user)`` of a running instance; re-read it after every start (it changes)."""
    if instance.ssh_host is None or instance.ssh_port is None:
        raise ProviderError(
            f"Instance {instance.id} has no SSH address yet (state {instance.state}).",
            "Wait until it is running: `tether ls` shows its state.",
        )
    return instance.ssh_host, instance.ssh_port, instance.ssh_user


def wait_running(
    provider: Any,
    instance_id: str,
    deadline_s: float,
    *,
    poll_s: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Instance:
    """Poll until the instance runs with an SSH address; NoCapacity if it dies or the deadline passes."""
    start = clock()
    last: Instance | None = None
    while True:
        inst: Instance = provider.show(instance_id)
        last = inst
        if inst.state == "running" and inst.ssh_host is not None and inst.ssh_port is not None:
            return inst
        if inst.state in DEAD_STATES:
            raise NoCapacity(
                f"Instance {instance_id} ended up {inst.state} ({inst.status}) instead of running.",
                "tether tries another offer; if this keeps happening, raise reliability in the query.",
            )
        elapsed = clock() - start
        if elapsed >= deadline_s:
            break
        sleep(min(poll_s, max(0.0, deadline_s - elapsed)))
    status = last.status if last is not None else "unknown"
    raise NoCapacity(
        f"Instance {instance_id} was still {last.state if last else 'unknown'} ({status}) after {deadline_s:g} s.",
        "A big image can load slowly: raise the wait deadline, or pick another offer."
        if last is not None and last.state != "stopped"
        else "The GPU may have been rented by someone else meanwhile: move the data to a new instance.",
    )


def destroy_verified(
    provider: Any,
    instance_id: str,
    *,
    deadline_s: float = DESTROY_VERIFY_S,
    poll_s: float = 2.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Destroy and poll until the provider says the instance is gone; ProviderError if it never is."""
    start = clock()
    while True:
        provider.destroy(instance_id)
        if provider.show(instance_id).state == "gone":
            return
        if clock() - start >= deadline_s:
            raise ProviderError(
                f"Instance {instance_id} is still there after destroying it for {deadline_s:g} s; "
                "it may still be billing.",
                f"Destroy it by hand: `tether destroy {instance_id}` or in the Vast.ai console.",
            )
        sleep(poll_s)


# ---------------------------------------------------------------------------------------------- renting

_process_lock = threading.Lock()


def _rent_lock_path() -> Path:
    try:
        from tether.paths import tether_home

        return tether_home() / "rent.lock"
    except ImportError:  # pragma: no cover - the paths module ships with tether
        env = os.environ.get("TETHER_HOME")
        home = Path(env).expanduser() if env else Path.home() / ".local" / "share" / "tether"
        return home / "rent.lock"


@contextlib.contextmanager
def rent_lock(path: Path | None = None) -> Iterator[Path]:
    """Hold the machine-wide rent lock (a thread lock plus ``flock`` on ``rent.lock``); yields the lock path."""
    lock_path = path or _rent_lock_path()
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with _process_lock, open(lock_path, "a+", encoding="utf-8") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield lock_path
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _taken_file(lock_path: Path) -> Path:
    return lock_path.with_name("rent-taken.json")


def _read_taken(lock_path: Path, now: float) -> dict[int, float]:
    """Offers taken recently (by this process or another one holding the same lock); caller holds the lock."""
    taken: dict[int, float] = {}
    try:
        data = json.loads(_taken_file(lock_path).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        data = {}
    if isinstance(data, dict):
        for k, v in data.items():
            if str(k).isdigit() and isinstance(v, int | float) and now - float(v) < TAKEN_TTL_S:
                taken[int(k)] = max(float(v), taken.get(int(k), 0.0))
    return taken


def _write_taken(lock_path: Path, taken: Mapping[int, float]) -> None:
    path = _taken_file(lock_path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    tmp.write_text(json.dumps({str(k): v for k, v in taken.items()}), encoding="utf-8")
    os.replace(tmp, path)


def _mark_taken(lock_path: Path, offer_id: int) -> None:
    now = time.time()
    taken = _read_taken(lock_path, now)
    taken[offer_id] = now
    _write_taken(lock_path, taken)


def _cleanup_by_label(provider: Any, label: str | None) -> None:
    """After a create whose outcome is unknown, destroy any instance it may have made (found by label)."""
    if not label:
        return
    for inst in provider.list():
        if inst.label == label:
            destroy_verified(provider, inst.id)


def rent(
    provider: Any,
    offers: Sequence[Offer],
    *,
    image: str,
    disk_gb: float,
    label: str | None = None,
    onstart: str | None = None,
    env: Mapping[str, str] | None = None,
    max_price: float | None = None,
    wait_deadline_s: float = 900.0,
    poll_s: float = 5.0,
    max_attempts: int = 3,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    lock_path: Path | None = None,
    on_event: Callable[[str], None] | None = None,
) -> Instance:
    """Rent the cheapest usable offer and wait until it runs; never leave a failed instance billing.

    Offers are tried cheapest first (ties: higher reliability). An offer that is gone, or an instance that
    stays ``loading`` past ``wait_deadline_s`` or ends ``exited``/``unknown``/``offline``, is destroyed
    (verified gone) and the next offer is tried, at most ``max_attempts`` creates in all. Picking an offer and
    creating the instance happen under a machine-wide file lock, and taken offers are remembered, so several
    ``rent`` at once never rent the same offer twice.
    """
    say = on_event or (lambda _msg: None)
    ranked = rank_offers(offers)
    if not ranked:
        raise NoCapacity("There is no offer to rent.", "Loosen the query or try again later.")
    if max_price is not None:
        affordable = [o for o in ranked if o.dph_total <= max_price]
        if not affordable:
            cheapest = ranked[0]
            raise NoCapacity(
                f"No offer costs at most ${max_price:.4f}/hr; the cheapest found is "
                f"${cheapest.dph_total:.4f}/hr (offer {cheapest.id}, {cheapest.gpu_name or 'CPU'}).",
                "Raise --max-price or loosen the query.",
            )
        ranked = affordable
    failures: list[str] = []
    tried: set[int] = set()
    attempts = 0
    while attempts < max_attempts:
        instance_id: str | None = None
        offer: Offer | None = None
        with rent_lock(lock_path) as lp:
            taken = _read_taken(lp, time.time())
            for candidate in ranked:
                if candidate.id not in tried and candidate.id not in taken:
                    offer = candidate
                    break
            if offer is None:
                break
            tried.add(offer.id)
            attempts += 1
            say(f"renting offer {offer.id} ({offer.gpu_name or 'CPU'}, ${offer.dph_total:.4f}/hr)")
            try:
                instance_id = provider.create(
                    offer.id, image=image, disk_gb=disk_gb, label=label, onstart=onstart, env=env
                )
            except NoCapacity as exc:
                _mark_taken(lp, offer.id)
                failures.append(f"offer {offer.id}: {exc.message}")
                say(f"offer {offer.id} is gone; trying the next one")
                continue
            except AuthError:
                raise
            except ProviderError:
                _cleanup_by_label(provider, label)
                raise
            _mark_taken(lp, offer.id)
        try:
            inst = wait_running(provider, instance_id, wait_deadline_s, poll_s=poll_s, clock=clock, sleep=sleep)
        except NoCapacity as exc:
            failures.append(f"offer {offer.id}: {exc.message}")
            say(f"instance {instance_id} did not come up; destroying it and trying the next offer")
            destroy_verified(provider, instance_id, clock=clock, sleep=sleep)
            continue
        except BaseException:
            destroy_verified(provider, instance_id, clock=clock, sleep=sleep)
            raise
        say(f"instance {inst.id} is running at {inst.ssh_host}:{inst.ssh_port}")
        return inst
    detail = "; ".join(failures) if failures else "every offer was just taken by another rent on this machine"
    raise NoCapacity(
        f"Could not get a running instance after {attempts} attempt(s): {detail}.",
        "Search again (offers change quickly), loosen the query, or raise the wait deadline.",
    )
