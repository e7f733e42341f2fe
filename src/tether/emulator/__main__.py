"""``python -m tether.emulator``: run the Vast.ai emulator on real time until interrupted.

It prints what points tether at it on stdout as JSON, one line: the URL and the API key (``VAST_URL``,
``VAST_API_KEY``) and, when its instances are sshd hosts, ``remote_root``: the template of each instance's own
workspace (``<state dir>/instance-{instance_id}/root``), what ``TETHER_VAST_REMOTE_ROOT`` must be set to. Every
emulated instance logs in as the user running the emulator on this very machine, so the service's ``/workspace``
would be one folder shared by all of them. ``--env-file PATH`` writes the three as shell ``export`` lines once it
serves (mode 0600: it holds the key), and removes the file when it stops.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path

from tether.emulator.vast import (
    Clock,
    HostFactory,
    VastEmulator,
    load_offer_book,
    null_host_factory,
    sshd_host_factory,
)

#: The environment variable tether reads for where a rented server's workspace is (``[vast] remote_root``).
REMOTE_ROOT_ENV = "TETHER_VAST_REMOTE_ROOT"


def root_template(state_dir: Path) -> str:
    """Where each instance's workspace is: ``sshd_host_factory``'s ``<state_dir>/instance-<id>/root``."""
    return f"{state_dir}/instance-{{instance_id}}/root"


def env_lines(settings: dict[str, str]) -> str:
    """The settings as ``export NAME=value`` lines a POSIX shell sources."""
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in settings.items())


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically with mode 0600 (a reader never sees a half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tether.emulator", description="A local Vast.ai emulator.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: a free one)")
    parser.add_argument("--offers", type=Path, default=None, help="offer book JSON (default: the shipped one)")
    parser.add_argument(
        "--api-key-file",
        type=Path,
        default=None,
        help="file holding the key clients must send (default: env VAST_EMULATOR_KEY, else a random key)",
    )
    parser.add_argument("--loading-seconds", type=float, default=3.0, help="time from create to running")
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where instance hosts keep their files, instance-<id>/root being each one's workspace "
        "(default: a temporary folder, removed at exit)",
    )
    parser.add_argument("--no-ssh", action="store_true", help="instances get an address but no sshd")
    parser.add_argument(
        "--env-file",
        type=Path,
        default=None,
        help="once serving, write VAST_URL, VAST_API_KEY and TETHER_VAST_REMOTE_ROOT there as shell exports "
        "(mode 0600; removed at exit)",
    )
    args = parser.parse_args(argv)

    if args.api_key_file is not None:
        key = args.api_key_file.read_text(encoding="utf-8").strip()
    else:
        key = os.environ.get("VAST_EMULATOR_KEY") or secrets.token_hex(16)
    factory: HostFactory
    made_dir: Path | None = None
    template: str | None = None
    if args.no_ssh:
        factory = null_host_factory
    else:
        state_dir = args.state_dir
        if state_dir is None:
            state_dir = made_dir = Path(tempfile.mkdtemp(prefix="tether-vast-emulator-"))
        state_dir.mkdir(parents=True, exist_ok=True)
        state_dir = state_dir.resolve()  # the paths tether is told are the paths the hosts use, byte for byte
        factory = sshd_host_factory(state_dir)
        template = root_template(state_dir)
    emu = VastEmulator(
        load_offer_book(args.offers),
        api_key=key,
        loading_s=args.loading_seconds,
        clock=Clock(realtime=True),
        host_factory=factory,
        host=args.host,
        port=args.port,
    )
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    emu.start()
    try:
        settings = {"VAST_URL": emu.url, "VAST_API_KEY": key}
        if template is not None:
            settings[REMOTE_ROOT_ENV] = template
            print(
                f"Each emulated instance is a folder of this machine: its workspace is {template}, not /workspace "
                f"(which every instance would share). Point tether at it with {REMOTE_ROOT_ENV} "
                "(--env-file writes it with VAST_URL and VAST_API_KEY).",
                file=sys.stderr,
                flush=True,
            )
        if args.env_file is not None:
            write_private(args.env_file, env_lines(settings))
        print(
            json.dumps({"url": emu.url, "api_key": key, **({"remote_root": template} if template else {})}),
            flush=True,
        )
        done.wait()
    finally:
        if args.env_file is not None:
            args.env_file.unlink(missing_ok=True)
        emu.stop()
        for inst in emu.instances.values():
            # The tmux servers tether's runs used there: a container takes them down with it.
            kill_tmux = getattr(inst.host, "kill_tmux", None)
            if kill_tmux is not None:
                with contextlib.suppress(OSError, ValueError):
                    kill_tmux()
        if made_dir is not None:
            shutil.rmtree(made_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
