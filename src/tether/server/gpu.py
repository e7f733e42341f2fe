"""GPU memory as ``nvidia-smi`` reports it (standard library only, Python 3.8+).

Two queries, each one short ``nvidia-smi`` call whose argv is built by a pure function:

- :func:`query_gpus`: ``--query-gpu=index,uuid,memory.total,memory.used --format=csv,noheader,nounits``,
  one line per GPU such as ``0, GPU-5f1e3b9a-..., 24564, 1`` (memory in MiB). ``None`` means there is no
  ``nvidia-smi``: a CPU-only server.
- :func:`query_compute_apps`: ``--query-compute-apps=gpu_uuid,pid,used_memory --format=csv,noheader,nounits``,
  the memory each process holds, so the registry can measure what an agent really uses. Inside containers this
  list is often empty (the pids live in another namespace); callers then fall back to the GPU's used memory.

A failing ``nvidia-smi`` or output that does not have the expected shape raises
:class:`tether.errors.RegistryError` naming the command and the offending line; nothing is guessed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from tether.errors import RegistryError

MIB_PER_GB = 1024.0
DEFAULT_TIMEOUT_S = 15.0
_NOT_AVAILABLE = ("[N/A]", "[Not Supported]", "N/A", "")


@dataclass(frozen=True)
class Gpu:
    """One GPU: its nvidia-smi index, UUID and memory in MiB."""

    index: int
    uuid: str
    total_mib: int
    used_mib: int

    @property
    def total_gb(self) -> float:
        return self.total_mib / MIB_PER_GB

    @property
    def used_gb(self) -> float:
        return self.used_mib / MIB_PER_GB


def gpu_query_argv(nvidia_smi: str) -> list[str]:
    """The argv that lists every GPU with its total and used memory."""
    return [nvidia_smi, "--query-gpu=index,uuid,memory.total,memory.used", "--format=csv,noheader,nounits"]


def apps_query_argv(nvidia_smi: str) -> list[str]:
    """The argv that lists the GPU memory held by each compute process."""
    return [nvidia_smi, "--query-compute-apps=gpu_uuid,pid,used_memory", "--format=csv,noheader,nounits"]


def find_nvidia_smi(search_path: str | None = None) -> str | None:
    """The nvidia-smi executable on ``search_path`` (default: ``$PATH``), or None on a CPU-only machine."""
    return shutil.which("nvidia-smi", path=search_path if search_path is not None else os.environ.get("PATH"))


def _run(argv: Sequence[str], timeout: float) -> str:
    try:
        proc = subprocess.run(list(argv), capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise RegistryError(
            f"nvidia-smi did not answer within {timeout:g} s ({' '.join(argv)}).",
            "Check the GPU driver with `nvidia-smi`; until it answers, GPU requests cannot be admitted.",
        ) from exc
    except OSError as exc:
        raise RegistryError(
            f"nvidia-smi could not be started ({argv[0]}: {exc.strerror}).",
            "Check that nvidia-smi is executable; until it runs, GPU requests cannot be admitted.",
        ) from exc
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).decode("utf-8", "replace").strip().splitlines()
        first = detail[0] if detail else "no output"
        raise RegistryError(
            f"nvidia-smi failed with exit code {proc.returncode}: {first}",
            "Check the GPU driver with `nvidia-smi`; until it works, GPU requests cannot be admitted.",
        )
    return proc.stdout.decode("utf-8", "replace")


def _unexpected(line: str, what: str) -> RegistryError:
    shown = line if len(line) <= 120 else line[:117] + "..."
    return RegistryError(
        f"nvidia-smi printed something unexpected for {what}: {shown!r}",
        "Check the driver with `nvidia-smi`; until its output is understood, GPU requests are not admitted.",
    )


def _mib(text: str, line: str, what: str, allow_na: bool) -> int:
    value = text.strip()
    if allow_na and value in _NOT_AVAILABLE:
        return 0
    try:
        number = float(value)
    except ValueError:
        raise _unexpected(line, what) from None
    if not number >= 0 or number > 1e9:
        raise _unexpected(line, what)
    return int(number)


def parse_gpus(output: str) -> list[Gpu]:
    """Parse ``--query-gpu=index,uuid,memory.total,memory.used`` CSV output (pure)."""
    gpus: list[Gpu] = []
    for raw in output.splitlines():
        line = raw.strip()
        if not line:
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4 or not parts[0].isdigit() or not parts[1]:
            raise _unexpected(line, "the GPU list")
        total = _mib(parts[2], line, "the GPU list", allow_na=False)
        used = _mib(parts[3], line, "the GPU list", allow_na=True)
        if total <= 0:
            raise _unexpected(line, "the GPU list")
        gpus.append(Gpu(index=int(parts[0]), uuid=parts[1], total_mib=total, used_mib=min(used, total)))
    if not gpus:
        raise RegistryError(
            "nvidia-smi listed no GPU.",
            "Check the GPU driver with `nvidia-smi`; a server without GPUs accepts only --gpu-gb 0.",
        )
    if len({g.index for g in gpus}) != len(gpus):
        raise _unexpected(output.strip().splitlines()[0], "the GPU list (repeated index)")
    return sorted(gpus, key=lambda g: g.index)


def parse_compute_apps(output: str) -> list[tuple[str, int, int]]:
    """Parse ``--query-compute-apps=gpu_uuid,pid,used_memory`` output into (uuid, pid, MiB) rows (pure)."""
    rows: list[tuple[str, int, int]] = []
    for raw in output.splitlines():
        line = raw.strip()
        if not line or line.lower().startswith("no running"):
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 3 or not parts[1].isdigit():
            raise _unexpected(line, "the process list")
        rows.append((parts[0], int(parts[1]), _mib(parts[2], line, "the process list", allow_na=True)))
    return rows


def query_gpus(nvidia_smi: str | None = None, timeout: float = DEFAULT_TIMEOUT_S) -> list[Gpu] | None:
    """The GPUs of this machine, or None if there is no nvidia-smi (a CPU-only server).

    ``nvidia_smi`` is the executable to run (default: ``nvidia-smi`` found on ``$PATH``).
    """
    exe = nvidia_smi if nvidia_smi is not None else find_nvidia_smi()
    if exe is None:
        return None
    return parse_gpus(_run(gpu_query_argv(exe), timeout))


def query_compute_apps(nvidia_smi: str, timeout: float = DEFAULT_TIMEOUT_S) -> dict[tuple[str, int], int]:
    """GPU memory (MiB) held per (gpu uuid, pid), summed when a process appears twice."""
    held: dict[tuple[str, int], int] = {}
    for uuid, pid, mib in parse_compute_apps(_run(apps_query_argv(nvidia_smi), timeout)):
        held[(uuid, pid)] = held.get((uuid, pid), 0) + mib
    return held
