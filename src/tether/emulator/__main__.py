"""``python -m tether.emulator``: run the Vast.ai emulator on real time until interrupted.

It prints the URL and the API key to use (``VAST_URL``, ``VAST_API_KEY``) on stdout as JSON, one line.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import sys
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
    parser.add_argument("--state-dir", type=Path, default=None, help="where instance hosts keep their files")
    parser.add_argument("--no-ssh", action="store_true", help="instances get an address but no sshd")
    args = parser.parse_args(argv)

    if args.api_key_file is not None:
        key = args.api_key_file.read_text(encoding="utf-8").strip()
    else:
        key = os.environ.get("VAST_EMULATOR_KEY") or secrets.token_hex(16)
    factory: HostFactory | None
    if args.no_ssh:
        factory = null_host_factory
    elif args.state_dir is not None:
        args.state_dir.mkdir(parents=True, exist_ok=True)
        factory = sshd_host_factory(args.state_dir)
    else:
        factory = None
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
        print(json.dumps({"url": emu.url, "api_key": key}), flush=True)
        done.wait()
    finally:
        emu.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
