"""Pure parts of the Vast provider: where the key is found, JSON → models, SSH address, states."""

from __future__ import annotations

from pathlib import Path

import pytest

from tether.errors import ProviderError
from tether.providers.base import ssh_address
from tether.providers.vast.api import find_api_key
from tether.providers.vast.translate import instance_from_json, normalize_state, offer_from_json


def test_key_lookup_order(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".config" / "vastai").mkdir(parents=True)
    assert find_api_key({"HOME": str(home)}) is None
    (home / ".vast_api_key").write_text("legacy\n")
    assert find_api_key({"HOME": str(home)}) == "legacy"
    (home / ".config" / "vastai" / "vast_api_key").write_text("xdg-default\n")
    assert find_api_key({"HOME": str(home)}) == "xdg-default"
    xdg = tmp_path / "xdg"
    (xdg / "vastai").mkdir(parents=True)
    (xdg / "vastai" / "vast_api_key").write_text("xdg-env")
    assert find_api_key({"HOME": str(home), "XDG_CONFIG_HOME": str(xdg)}) == "xdg-env"
    assert find_api_key({"HOME": str(home), "XDG_CONFIG_HOME": str(xdg), "VAST_API_KEY": "env"}) == "env"


def test_offer_translation_turns_mb_into_gb() -> None:
    o = offer_from_json(
        {
            "id": "7",
            "gpu_name": "RTX 4090",
            "num_gpus": "1",
            "gpu_ram": 24564,
            "cpu_ram": 64117,
            "dph_total": "0.35",
            "reliability2": 0.97,
            "geolocation": "Texas, US",
        }
    )
    assert (o.id, o.num_gpus, o.gpu_ram_gb, o.cpu_ram_gb, o.dph_total) == (7, 1, 24.564, 64.117, 0.35)
    assert o.reliability == 0.97 and o.geolocation == "Texas, US"


@pytest.mark.parametrize(
    ("actual", "intended", "state"),
    [
        (None, "running", "creating"),
        ("created", "running", "creating"),
        ("loading", "running", "loading"),
        ("running", "running", "running"),
        ("stopped", "stopped", "stopped"),
        ("exited", "stopped", "stopped"),
        ("exited", "running", "exited"),
        ("offline", "running", "unknown"),
        ("unknown", "running", "unknown"),
        ("frozen", "running", "frozen"),
        ("frozen", "frozen", "frozen"),
        ("rebooting", "running", "rebooting"),
        ("stopped", "running", "queued"),
    ],
)
def test_states_are_normalized(actual: str | None, intended: str, state: str) -> None:
    assert normalize_state({"actual_status": actual, "intended_status": intended}) == state


@pytest.mark.parametrize(
    "msg",
    [
        'Error response from daemon: failed to create task: OCI runtime create failed: exec: "/bin/bash"',
        "Error response from daemon: pull access denied for private/image",
    ],
)
@pytest.mark.parametrize("actual", [None, "created", "loading"])
def test_a_container_that_cannot_be_created_is_exited_at_once(actual: str | None, msg: str) -> None:
    raw = {"actual_status": actual, "intended_status": "running", "status_msg": msg}
    assert normalize_state(raw) == "exited"
    assert normalize_state({**raw, "status_msg": "Pulling image pytorch/pytorch"}) != "exited"


def test_every_vendor_status_has_a_tether_state_with_a_meaning_and_a_cost_rule() -> None:
    from tether.providers.base import STATE_MEANINGS

    vendor = [None, "created", "loading", "running", "stopped", "frozen", "exited", "rebooting", "unknown", "offline"]
    for actual in vendor:
        for intended in ("running", "stopped"):
            state = normalize_state({"actual_status": actual, "intended_status": intended})
            meaning, rate = STATE_MEANINGS[state]
            assert meaning and rate in ("full", "storage", "none")
    assert STATE_MEANINGS["frozen"][1] == "full"  # the vendor's docs: a frozen instance bills GPU time


def test_ssh_address_prefers_direct_mapping_then_proxy_with_jupyter_offset() -> None:
    base = {"id": 5, "actual_status": "running", "ssh_host": "ssh4.vast.ai", "ssh_port": 12345}
    direct = instance_from_json(
        {**base, "public_ipaddr": "1.2.3.4 ", "ports": {"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": "40022"}]}}
    )
    assert ssh_address(direct) == ("1.2.3.4", 40022, "root")
    assert ssh_address(instance_from_json(base)) == ("ssh4.vast.ai", 12345, "root")
    assert ssh_address(instance_from_json({**base, "image_runtype": "jupyter_direc ssh"}))[1] == 12346
    with pytest.raises(ProviderError, match="no SSH address yet"):
        ssh_address(instance_from_json({**base, "actual_status": "loading"}))
