"""A rented host's health, looked at before any user code runs: ``python3 - --root R [...]`` with this file's text
on stdin (it needs nothing installed: it runs before set-up), or ``python3 -m tether.server preflight ...``.

Stdlib only, Python 3.8. Prints one JSON document; judging it is the controller's job (:mod:`tether.preflight`):

- ``gpus``: every GPU ``nvidia-smi --query-gpu=index,name,memory.total,driver_version`` lists (``[]`` when it finds
  none, ``null`` without nvidia-smi), ``gpu_error`` when it failed; ``cuda``: the driver's CUDA version from the
  header of plain ``nvidia-smi``;
- ``disk_free_gb``: free space on the file system holding ``--root`` (``df -Pk``, else ``statvfs``);
- ``download``: a bounded fetch of ``--url`` (at most ``--max-bytes``, ``--timeout`` seconds): bytes, seconds, Mb/s;
- ``command``: the profile's ``preflight_command`` (``--command``, run by ``/bin/sh -c`` in ``--root``, with a
  deadline): exit code, seconds and the last lines of its output.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from typing import Any

GPU_QUERY = "--query-gpu=index,name,memory.total,driver_version"
TAIL_LINES = 15


def _run(argv: list[str], timeout: float, cwd: str | None = None) -> tuple[int, str]:
    try:
        done = subprocess.run(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout, cwd=cwd, check=False
        )
    except subprocess.TimeoutExpired:
        return 124, f"no answer within {timeout:g} s"
    except OSError as exc:
        return 127, str(exc)
    return done.returncode, done.stdout.decode("utf-8", "replace")


def gpus(timeout: float = 20.0) -> dict[str, Any]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {"gpus": None, "gpu_error": None, "cuda": None}
    code, text = _run([exe, GPU_QUERY, "--format=csv,noheader,nounits"], timeout)
    found: list[dict[str, Any]] = []
    error = None
    if code == 0:
        for line in text.splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) != 4 or not parts[0].isdigit():
                error = f"nvidia-smi printed a line it never prints: {line[:200]!r}"
                break
            memory = int(parts[2]) if parts[2].isdigit() else None
            found.append({"index": int(parts[0]), "name": parts[1], "memory_mib": memory, "driver": parts[3]})
    elif "No devices were found" in text:
        found = []
    else:
        error = f"nvidia-smi exited {code}: {text.strip()[-300:]}"
    _code, header = _run([exe], timeout)
    match = re.search(r"CUDA Version:\s*([0-9]+(?:\.[0-9]+)?)", header)
    return {"gpus": None if error else found, "gpu_error": error, "cuda": match.group(1) if match else None}


def disk_free_gb(root: str, timeout: float = 20.0) -> float | None:
    path = root if os.path.isdir(root) else os.path.dirname(root.rstrip("/")) or "/"
    if shutil.which("df"):
        code, text = _run(["df", "-Pk", path], timeout)
        lines = text.strip().splitlines()
        if code == 0 and len(lines) >= 2:
            fields = lines[-1].split()
            if len(fields) >= 4 and fields[3].isdigit():
                return int(fields[3]) / (1024.0 * 1024.0)
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize / 1024.0**3


def download(url: str, max_bytes: int, timeout: float) -> dict[str, Any]:
    start = time.monotonic()
    got = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            while got < max_bytes and time.monotonic() - start < timeout:
                chunk = answer.read(min(65536, max_bytes - got))
                if not chunk:
                    break
                got += len(chunk)
    except (OSError, ValueError) as exc:
        return {"url": url, "error": f"{type(exc).__name__}: {exc}"[:300], "bytes": got}
    seconds = max(time.monotonic() - start, 1e-6)
    return {"url": url, "bytes": got, "seconds": round(seconds, 3), "mbps": round(got * 8 / seconds / 1e6, 3)}


def command(cmd: str, root: str, timeout: float) -> dict[str, Any]:
    start = time.monotonic()
    code, text = _run(["/bin/sh", "-c", cmd], timeout, cwd=root if os.path.isdir(root) else None)
    tail = "\n".join(text.splitlines()[-TAIL_LINES:])
    return {"exit": code, "seconds": round(time.monotonic() - start, 3), "tail": tail}


USAGE = "usage: preflight --root DIR [--url URL] [--max-bytes N] [--timeout S] [--command CMD] [--command-timeout S]"


def main(argv: list[str]) -> int:
    opts: dict[str, str] = {}
    args = list(argv)
    while args:
        flag = args.pop(0)
        if flag in ("--root", "--url", "--max-bytes", "--timeout", "--command", "--command-timeout") and args:
            opts[flag[2:]] = args.pop(0)
        else:
            print(USAGE, file=sys.stderr)
            return 2
    if "root" not in opts:
        print(USAGE, file=sys.stderr)
        return 2
    try:
        timeout = float(opts.get("timeout", "20"))
        max_bytes = int(opts.get("max-bytes", str(8 * 1024 * 1024)))
        command_timeout = float(opts.get("command-timeout", "300"))
    except ValueError:
        print(USAGE, file=sys.stderr)
        return 2
    root = opts["root"]
    report: dict[str, Any] = {"host": os.uname().nodename, "time": time.time()}
    report.update(gpus())
    report["disk_free_gb"] = disk_free_gb(root)
    report["download"] = download(opts["url"], max_bytes, timeout) if opts.get("url") else None
    report["command"] = command(opts["command"], root, command_timeout) if opts.get("command") else None
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
