"""Is a rented host what its offer promised? A preflight before any user code runs.

:func:`run` sends :mod:`tether.server.preflight`'s text to the server's Python through stdin (nothing needs to be
installed yet: it runs before the set-up, so a bad host costs minutes, not a set-up) and reads its one JSON
document; :func:`problems` (pure) compares it with what the offer and the profile promise:

- as many GPUs as the offer's ``num_gpus``, named as the offer says, each with at least 90 % of its memory;
- the driver's CUDA version at least ``max(profile min_cuda)`` (the offer's ``cuda_max_good`` is what the host
  claims; the driver is what it has);
- free disk on the workspace at least the profile's ``min_disk_free_gb`` (default: half the rented disk);
- the download from the package index the set-up uses (its speed is reported; it must answer, at a tenth of the
  profile's ``min_inet_down`` at least, when the profile asks for one);
- the profile's ``preflight_command`` exited 0.

Figures from the server are read as data and shown; a report that is not the expected JSON is a problem of its
own, never a pass.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import resources
from typing import Any

from tether.errors import TetherError
from tether.hosts import Target
from tether.profiles import Profile

#: What ``--url`` fetches by default: the package index the set-up's ``pip install`` uses.
DEFAULT_URL = "https://pypi.org/simple/pip/"
GPU_MEMORY_SHARE = 0.9
#: A download this much slower than the profile's ``min_inet_down`` fails the preflight (hosts overstate).
DOWNLOAD_SHARE = 0.1


@dataclass(frozen=True)
class Expect:
    """What a host must show (from its offer and the profile)."""

    num_gpus: int = 0
    gpu_name: str | None = None
    gpu_ram_gb: float | None = None
    min_cuda: float | None = None
    min_disk_free_gb: float | None = None
    min_download_mbps: float | None = None
    command: str | None = None


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _version(text: Any) -> float | None:
    try:
        return float(str(text).strip()) if text is not None else None
    except ValueError:
        return None


def problems(report: Any, expect: Expect) -> list[str]:
    """Every way the host falls short, one sentence each (pure); ``[]`` when it is what was promised."""
    if not isinstance(report, dict):
        return ["the preflight printed no report (its output is not a JSON object)"]
    found: list[str] = []
    gpus = report.get("gpus")
    if expect.num_gpus > 0:
        if report.get("gpu_error"):
            found.append(f"nvidia-smi failed: {str(report['gpu_error'])[:200]}")
        elif not isinstance(gpus, list):
            found.append(f"no nvidia-smi: the offer promised {expect.num_gpus} GPU(s)")
        else:
            rows = [g for g in gpus if isinstance(g, dict)]
            if len(rows) < expect.num_gpus:
                found.append(f"it shows {len(rows)} GPU(s), the offer promised {expect.num_gpus}")
            if expect.gpu_name:
                wrong = sorted(
                    {str(g.get("name")) for g in rows if expect.gpu_name.lower() not in str(g.get("name", "")).lower()}
                )
                if wrong:
                    found.append(f"its GPUs are {', '.join(wrong)}, the offer promised {expect.gpu_name}")
            if expect.gpu_ram_gb:
                small = [
                    g for g in rows if (_num(g.get("memory_mib")) or 0) / 1024.0 < GPU_MEMORY_SHARE * expect.gpu_ram_gb
                ]
                if small:
                    mib = _num(small[0].get("memory_mib")) or 0
                    found.append(
                        f"a GPU shows {mib / 1024:.1f} GB of memory, the offer promised {expect.gpu_ram_gb:.1f} GB"
                    )
    if expect.min_cuda is not None:
        cuda = _version(report.get("cuda"))
        if cuda is None:
            found.append(f"its driver's CUDA version is unknown; the profile needs {expect.min_cuda:g}")
        elif cuda + 1e-9 < expect.min_cuda:
            found.append(f"its driver supports CUDA {cuda:g}, the profile needs {expect.min_cuda:g} (min_cuda)")
    free = _num(report.get("disk_free_gb"))
    if expect.min_disk_free_gb is not None:
        if free is None:
            found.append("its free disk could not be read")
        elif free < expect.min_disk_free_gb:
            found.append(f"its disk has {free:.1f} GB free, the profile needs {expect.min_disk_free_gb:.1f} GB")
    download = report.get("download")
    if isinstance(download, dict) and expect.min_download_mbps is not None:
        if download.get("error"):
            found.append(f"it could not download from {download.get('url')}: {str(download['error'])[:200]}")
        else:
            mbps = _num(download.get("mbps"))
            if mbps is None or mbps < DOWNLOAD_SHARE * expect.min_download_mbps:
                found.append(
                    f"it downloads at {mbps or 0:.1f} Mb/s, far below the {expect.min_download_mbps:g} Mb/s asked "
                    "(min_inet_down)"
                )
    cmd = report.get("command")
    if expect.command and isinstance(cmd, dict) and cmd.get("exit") != 0:
        tail = str(cmd.get("tail") or "").strip().splitlines()
        found.append(f"preflight_command exited {cmd.get('exit')}" + (f": {tail[-1][:200]}" if tail else ""))
    elif expect.command and not isinstance(cmd, dict):
        found.append("preflight_command did not run")
    return found


def expect_for(prof: Profile, meta: dict[str, Any]) -> Expect:
    """What a new rental must show: its offer's GPUs (the instance record's meta), the profile's CUDA (else the
    offer's ``cuda_max_good``), free disk (else half the rented disk), download speed and command."""
    cuda = prof.min_cuda if prof.min_cuda is not None else _num(meta.get("cuda_max_good"))
    disk = prof.min_disk_free_gb if prof.min_disk_free_gb is not None else prof.min_disk_gb / 2
    return Expect(
        num_gpus=int(meta.get("num_gpus") or 0),
        gpu_name=str(meta.get("gpu_name") or "") or None,
        gpu_ram_gb=_num(meta.get("gpu_ram_gb")),
        min_cuda=cuda,
        min_disk_free_gb=disk,
        min_download_mbps=prof.min_inet_down,
        command=prof.preflight_command,
    )


def figures(report: Any) -> dict[str, Any]:
    """The report's figures for ``up --json`` and ``tether ls`` (numbers only, never the server's text)."""
    if not isinstance(report, dict):
        return {}
    gpus = report.get("gpus")
    download = report.get("download") if isinstance(report.get("download"), dict) else {}
    return {
        "gpus": len(gpus) if isinstance(gpus, list) else None,
        "cuda": _version(report.get("cuda")),
        "disk_free_gb": _num(report.get("disk_free_gb")),
        "download_mbps": _num(download.get("mbps")) if download else None,
        "command_exit": report["command"].get("exit") if isinstance(report.get("command"), dict) else None,
    }


def source() -> bytes:
    """The server-side preflight's text, sent through stdin."""
    return resources.files("tether.server").joinpath("preflight.py").read_bytes()


def run(target: Target, *, url: str | None, command: str | None, timeout: float = 20.0) -> Any:
    """Run the preflight on ``target`` (one round trip) and return its report (or None when it printed none)."""
    argv = [target.python, "-", "--root", target.root, "--timeout", str(timeout)]
    if url:
        argv += ["--url", url]
    if command:
        argv += ["--command", command]
    try:
        result = target.transport.run(argv, input=source(), timeout=timeout * 2 + 330, check=False)
    except TetherError:
        return None
    try:
        return json.loads(result.text())
    except ValueError:
        return None
