"""``python -m tether.emulator`` runs on its own and answers a real client."""

from __future__ import annotations

import json
import subprocess
import sys

from tether.providers.base import OfferQuery
from tether.providers.vast import VastClient, VastProvider


def test_emulator_runs_standalone_and_serves_searches() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tether.emulator", "--no-ssh", "--loading-seconds", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert "remote_root" not in info  # no sshd hosts: no workspace to point at
        p = VastProvider(VastClient(info["api_key"], info["url"]))
        offers = p.search(OfferQuery("gpu_ram>=24 reliability>0.95 num_gpus=1", disk_gb=60))
        assert offers and all(o.gpu_ram_gb >= 24 for o in offers)
        new_id = p.create(offers[0].id, image="img", disk_gb=60, label="cli")
        shown = p.show(new_id)
        assert shown is not None and shown.label == "cli"
        p.destroy(new_id)
        assert p.show(new_id) is None
        p.close()
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    assert proc.returncode == 0
