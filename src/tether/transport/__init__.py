"""Reaching a host: run commands, write secrets, push code, pull results, run detached tmux sessions.

- :mod:`tether.transport.base`: :class:`Transport` protocol, :class:`Completed`, :class:`SyncStats`.
- :mod:`tether.transport.ssh`: OpenSSH argv builders and :class:`SSHTransport`.
- :mod:`tether.transport.local`: :class:`LocalTransport` (this machine).
- :mod:`tether.transport.rsync`: rsync argv builders, stats, exit-code classification.
- :mod:`tether.transport.tmux`: tmux argv builders and :class:`TmuxSessions`.
"""

from tether.transport.base import Backoff, Completed, SyncStats, Transport, run_process
from tether.transport.local import LocalTransport
from tether.transport.ssh import SSHTarget, SSHTransport, parse_address
from tether.transport.tmux import TmuxSessions, socket_name

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
