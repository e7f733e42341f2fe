"""Inside an emulated instance: ``CONTAINER_ID`` and a per-instance ``CONTAINER_API_KEY`` that may show, stop and
start that instance only (the key a server-side watchdog uses; the account's key never reaches a server)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from tests.integration.vast.test_vast_rent import offers_for
from tether.emulator.vast import VastEmulator
from tether.providers.vast import VastProvider

MP = Callable[..., VastProvider]


def _call(emu: VastEmulator, key: str, method: str, path: str, body: Any = None) -> httpx.Response:
    return httpx.request(method, emu.url + path, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10.0)


def _two_running(emu: VastEmulator, p: VastProvider) -> tuple[int, int]:
    offers = offers_for(p)[:2]
    ids = [int(p.create(o.id, image="img", disk_gb=10.0, label=f"t{n}")) for n, o in enumerate(offers)]
    emu.clock.advance(60)
    return ids[0], ids[1]


def test_an_instance_key_shows_stops_and_starts_its_own_instance_only(
    make_provider: MP, vast_api_emulator: VastEmulator
) -> None:
    emu = vast_api_emulator
    p = make_provider(emu)
    own, other = _two_running(emu, p)
    key = emu.instances[own].container_key
    assert key and key != emu.api_key and key != emu.instances[other].container_key

    shown = _call(emu, key, "GET", f"/api/v0/instances/{own}/?owner=me")
    assert shown.status_code == 200 and shown.json()["instances"]["actual_status"] == "running"
    assert key not in shown.text  # the key is never in the instance's JSON

    assert _call(emu, key, "PUT", f"/api/v0/instances/{own}/", {"state": "stopped"}).status_code == 200
    assert emu.instances[own].state == "stopped"
    assert _call(emu, key, "PUT", f"/api/v0/instances/{own}/", {"state": "running"}).status_code == 200
    assert emu.instances[own].state == "loading"

    refused = [
        ("GET", f"/api/v0/instances/{other}/?owner=me", None),
        ("PUT", f"/api/v0/instances/{other}/", {"state": "stopped"}),
        ("DELETE", f"/api/v0/instances/{own}/", {}),
        ("DELETE", f"/api/v0/instances/{other}/", {}),
        ("PUT", f"/api/v0/instances/{own}/", {"label": "mine now"}),
        ("POST", "/api/v0/bundles/", {"num_gpus": {"eq": 1}}),
        ("PUT", f"/api/v0/asks/{offers_for(p)[0].id}/", {"image": "img", "disk": 10}),
        ("GET", "/api/v1/instances/?limit=25", None),
        ("GET", "/api/v0/ssh/", None),
        ("POST", "/api/v0/ssh/", {"ssh_key": "ssh-ed25519 AAAA x"}),
    ]
    before = {i: (inst.state, inst.label) for i, inst in emu.instances.items()}
    for method, path, body in refused:
        answer = _call(emu, key, method, path, body)
        assert answer.status_code == 403, (method, path, answer.status_code)
        assert answer.json()["error"] == "forbidden"
    assert {i: (inst.state, inst.label) for i, inst in emu.instances.items()} == before
    assert emu.instances[other].state == "running"

    p.destroy(str(own))
    gone = _call(emu, key, "GET", f"/api/v0/instances/{own}/?owner=me")
    assert gone.status_code == 401  # the key died with its instance


def test_the_start_script_sees_the_container_variables_at_creation_and_after_a_restart(
    make_provider: MP, vast_emulator: VastEmulator
) -> None:
    emu = vast_emulator
    p = make_provider(emu)
    offer = offers_for(p)[0]
    wanted = "CONTAINER_ID|CONTAINER_API_KEY|GPU_COUNT|PUBLIC_IPADDR|MY_SETTING"
    script = f'env | grep -E "^({wanted})=" | sort >> seen.env\n'
    iid = int(p.create(offer.id, image="img", disk_gb=10.0, label="env", onstart=script, env={"MY_SETTING": "on"}))
    inst = emu.instances[iid]
    from tether.testing.sshd import SshdHost

    assert isinstance(inst.host, SshdHost)
    seen = inst.host.root_dir / "seen.env"

    def lines() -> list[str]:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if seen.exists() and seen.read_text().count("CONTAINER_ID=") >= runs:
                return seen.read_text().splitlines()
            time.sleep(0.05)
        raise AssertionError(f"onstart did not write {seen}")

    runs = 1
    first = lines()
    assert f"CONTAINER_ID={iid}" in first
    assert f"CONTAINER_API_KEY={inst.container_key}" in first
    assert "MY_SETTING=on" in first and "PUBLIC_IPADDR=127.0.0.1" in first
    assert any(line.startswith("GPU_COUNT=") for line in first)

    emu.clock.advance(60)
    p.stop(str(iid))
    p.start(str(iid))
    emu.clock.advance(60)
    emu.settle()
    runs = 2
    again = lines()
    assert again.count(f"CONTAINER_API_KEY={inst.container_key}") == 2  # the same key after a restart
