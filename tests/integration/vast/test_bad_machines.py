"""The marketplace's bad machines, as the emulator plays them, and the preflight that catches each one on a real
SSH host before any user code runs: fewer GPUs than promised, an old driver, a nearly full disk, a failing
preflight command, a slow start and a machine that vanishes after starting."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.integration.vast.test_vast_rent import offers_for
from tether import preflight
from tether.emulator.vast import VastEmulator
from tether.hosts import Target
from tether.providers.base import Offer
from tether.providers.vast import VastProvider
from tether.testing.sshd import SshdHost

MP = Callable[..., VastProvider]


class _Blob(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_GET(self) -> None:
        data = b"x" * 200_000
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def index_url() -> Iterator[str]:
    """A loopback stand-in for the package index the preflight downloads from."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Blob)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple/pip/"
    finally:
        server.shutdown()
        server.server_close()


def _rent(emu: VastEmulator, p: VastProvider, offer: Offer) -> tuple[int, Target]:
    iid = int(p.create(offer.id, image="img", disk_gb=20.0, label="pf"))
    emu.clock.advance(60)
    emu.settle()
    host = emu.instances[iid].host
    assert isinstance(host, SshdHost)
    root = str(host.root_dir)
    target = Target(name="pf", transport=host.transport(), root=root, code_dir=root, server_argv=[], rented=True)
    return iid, target


def _expect(offer: Offer, **kw: Any) -> preflight.Expect:
    base: dict[str, Any] = {"num_gpus": offer.num_gpus, "gpu_name": offer.gpu_name, "gpu_ram_gb": offer.gpu_ram_gb}
    return preflight.Expect(**{**base, **kw})


def test_a_good_machine_passes_and_reports_its_figures(
    make_provider: MP, vast_emulator: VastEmulator, index_url: str
) -> None:
    p = make_provider(vast_emulator)
    offer = offers_for(p, "inference")[0]
    _iid, target = _rent(vast_emulator, p, offer)
    try:
        report = preflight.run(target, url=index_url, command="echo ok")
        assert preflight.problems(report, _expect(offer, min_cuda=11.8, min_disk_free_gb=1.0, command="x")) == []
        figures = preflight.figures(report)
        assert figures["gpus"] == offer.num_gpus and figures["cuda"] == offer.cuda_max_good
        assert figures["download_mbps"] and figures["download_mbps"] > 0 and figures["command_exit"] == 0
    finally:
        target.transport.close()


@pytest.mark.parametrize(
    ("trouble", "expect_kw", "says"),
    [
        ({"gpus_shown": 0}, {}, "shows 0 GPU(s), the offer promised 1"),
        ({"cuda": "11.2"}, {"min_cuda": 12.1}, "supports CUDA 11.2, the profile needs 12.1"),
        ({"disk_free_gb": 0.5}, {"min_disk_free_gb": 10.0}, "has 0.5 GB free, the profile needs 10.0 GB"),
        ({}, {"command": "exit 3"}, "preflight_command exited 3"),
    ],
)
def test_a_bad_machine_is_caught(
    make_provider: MP,
    vast_emulator: VastEmulator,
    trouble: dict[str, Any],
    expect_kw: dict[str, Any],
    says: str,
) -> None:
    p = make_provider(vast_emulator)
    offer = offers_for(p, "inference")[0]
    assert offer.machine_id is not None
    vast_emulator.bad_machine(offer.machine_id, **trouble)
    _iid, target = _rent(vast_emulator, p, offer)
    try:
        report = preflight.run(target, url=None, command=expect_kw.get("command"))
        found = preflight.problems(report, _expect(offer, **expect_kw))
        assert any(says in line for line in found), found
    finally:
        target.transport.close()


def test_a_slow_machine_loads_for_minutes_and_a_vanishing_one_goes(
    make_provider: MP, vast_emulator: VastEmulator
) -> None:
    emu = vast_emulator
    p = make_provider(emu)
    slow, gone = offers_for(p, "api")[:2]
    assert slow.machine_id is not None and gone.machine_id is not None
    emu.bad_machine(slow.machine_id, loading_s=600.0)
    emu.bad_machine(gone.machine_id, vanish_after_s=120.0)
    slow_id = int(p.create(slow.id, image="img", disk_gb=20.0, label="slow"))
    gone_id = int(p.create(gone.id, image="img", disk_gb=20.0, label="gone"))
    emu.clock.advance(60)
    assert p.show(str(slow_id)).state == "loading"  # type: ignore[union-attr]
    assert p.show(str(gone_id)).state == "running"  # type: ignore[union-attr]
    emu.clock.advance(600)
    assert p.show(str(slow_id)).state == "running"  # type: ignore[union-attr]
    assert p.show(str(gone_id)) is None  # the machine left the market with the instance
    assert gone_id not in {int(i.id) for i in p.list_instances()}
    billed = emu.instances[gone_id].accrued
    emu.clock.advance(3600)
    emu.settle()
    assert emu.instances[gone_id].accrued == billed  # nothing more is billed for it


@pytest.mark.parametrize(
    "report",
    [None, [], "text", {"gpus": "many"}, {"gpus": [{"name": 7}], "cuda": "x", "disk_free_gb": float("nan")}],
)
def test_a_malformed_report_never_passes(report: Any) -> None:
    expect = preflight.Expect(num_gpus=1, gpu_name="RTX", min_cuda=12.0, min_disk_free_gb=1.0)
    assert preflight.problems(report, expect) != []
