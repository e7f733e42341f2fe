"""Reaching a host: run commands, write secrets, push code, pull results, run detached tmux sessions.

- :mod:`tether.transport.base`: :class:`Transport` protocol, :class:`Completed`, :class:`SyncStats`.
- :mod:`tether.transport.ssh`: OpenSSH argv builders and :class:`SSHTransport`.
- :mod:`tether.transport.local`: :class:`LocalTransport` (this machine).
- :mod:`tether.transport.rsync`: rsync argv builders, stats, exit-code classification.
- :mod:`tether.transport.tmux`: tmux argv builders and :class:`TmuxSessions`.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tether.transport.base import Backoff as Backoff
    from tether.transport.base import Completed as Completed
    from tether.transport.base import SyncStats as SyncStats
    from tether.transport.base import Transport as Transport
    from tether.transport.base import run_process as run_process
    from tether.transport.local import LocalTransport as LocalTransport
    from tether.transport.ssh import SSHTarget as SSHTarget
    from tether.transport.ssh import SSHTransport as SSHTransport
    from tether.transport.ssh import parse_address as parse_address
    from tether.transport.tmux import TmuxSessions as TmuxSessions
    from tether.transport.tmux import socket_name as socket_name

#: Where each name lives: imported on first use, so importing one transport does not import them all.
_WHERE = {
    "Backoff": "base",
    "Completed": "base",
    "SyncStats": "base",
    "Transport": "base",
    "run_process": "base",
    "LocalTransport": "local",
    "SSHTarget": "ssh",
    "SSHTransport": "ssh",
    "parse_address": "ssh",
    "TmuxSessions": "tmux",
    "socket_name": "tmux",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"tether.transport.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Backoff",
    "Completed",
    "LocalTransport",
    "SSHTarget",
    "SSHTransport",
    "SyncStats",
    "TmuxSessions",
    "Transport",
    "parse_address",
    "run_process",
    "socket_name",
]
