"""Helpers for the transport integration tests: transports that are closed after each test, argv recording."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tether.testing.sshd import SshdHost
from tether.transport.base import Backoff, Completed, run_process
from tether.transport.ssh import SSHTransport, parse_address

#: Short waits between retries so fault tests stay fast; the bound is what is under test.
FAST = Backoff(retries=2, first=0.05, factor=2.0)


class Recorder:
    """Wraps the real process runner and keeps every argv (and stdin) it starts."""

    def __init__(self) -> None:
        self.argvs: list[list[str]] = []
        self.inputs: list[bytes | None] = []

    def __call__(self, argv: list[str], **kwargs: Any) -> Completed:
        self.argvs.append(list(argv))
        self.inputs.append(kwargs.get("input"))
        return run_process(argv, **kwargs)


Connect = Callable[..., SSHTransport]


@pytest.fixture
def recorder() -> Recorder:
    """A fresh :class:`Recorder` (pass it as ``runner=`` to a transport)."""
    return Recorder()


@pytest.fixture
def connect() -> Iterator[Connect]:
    """``connect(host_or_address, identity_file=None, **SSHTransport options)``; control masters end after the test."""
    made: list[SSHTransport] = []

    def make(host: SshdHost | str, identity_file: Path | None = None, **options: Any) -> SSHTransport:
        options.setdefault("backoff", FAST)
        if isinstance(host, SshdHost):
            target = parse_address(host.address, identity_file=identity_file or host.identity_file)
        else:
            target = parse_address(host, identity_file=identity_file)
        transport = SSHTransport(target, **options)
        made.append(transport)
        return transport

    try:
        yield make
    finally:
        for transport in made:
            transport.close()
