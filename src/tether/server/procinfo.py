"""Process identity that survives pid reuse: pid + process start time + boot id (Linux ``/proc``).

Stdlib only, Python 3.8+: the run wrapper, the progress scan and the agent registry use it on servers.
"""

from __future__ import annotations

import os
from typing import Any


def boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            return fh.read().strip() or None
    except OSError:
        return None


def proc_stat(pid: int) -> tuple[int, str, int] | None:
    """(start time in ticks, state letter, parent pid) of ``pid`` from ``/proc``, or None if there is none."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            data = fh.read()
    except OSError:
        return None
    fields = data[data.rfind(")") + 2 :].split()
    try:
        return int(fields[19]), fields[0], int(fields[1])
    except (IndexError, ValueError):
        return None


def have_proc() -> bool:
    return os.path.isdir("/proc/self")


def pid_start(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None (no such process, or no /proc)."""
    stat = proc_stat(pid)
    return stat[0] if stat else None


def owner_gone(pid: int, start: int | None, boot: str | None) -> str | None:
    """Why the process that registered as (pid, start, boot) is no longer running, or None while it runs."""
    current_boot = boot_id()
    if boot and current_boot and boot != current_boot:
        return f"the server rebooted since process {pid} started"
    if not have_proc():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return f"process {pid} is gone"
        except PermissionError:
            return None
        return None
    stat = proc_stat(pid)
    if stat is None:
        return f"process {pid} is gone"
    if start is not None and stat[0] != start:
        return f"process {pid} is gone (the pid now belongs to a newer process)"
    if stat[1] in ("Z", "X"):
        return f"process {pid} has exited"
    return None


def parent_pid(pid: int) -> int | None:
    stat = proc_stat(pid)
    return stat[2] if stat else None


def identity(pid: int | None = None) -> dict[str, Any]:
    """What to record so that a later check can tell whether this very process still runs."""
    pid = os.getpid() if pid is None else pid
    return {"pid": pid, "pid_start": pid_start(pid), "boot_id": boot_id()}


def is_alive(pid: int, start: int | None, boot: str | None) -> bool:
    return pid > 0 and owner_gone(pid, start, boot) is None
