"""A target is where runs happen: this machine (``local``), a configured host, or a rented instance.

It bundles the transport that reaches it with the places tether uses there: the workspace ``root`` (``/workspace`` on
a server; ``$TETHER_HOME/local`` here), the project's code folder, and how to start tether's server side.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tether import vocab
from tether.config import Project
from tether.errors import ConfigError
from tether.paths import local_root
from tether.transport.base import Transport
from tether.transport.local import LocalTransport
from tether.transport.tmux import socket_name

if TYPE_CHECKING:
    from tether.state import State

LOCAL = "local"


@dataclass
class Target:
    name: str
    transport: Transport
    root: str
    code_dir: str
    server_argv: list[str]
    local: bool = False
    registry: str | None = None
    python: str = "python3"
    rented: bool = False
    """A server tether rented (from a provider), not a ``[hosts]`` entry."""

    @property
    def tmux_socket(self) -> str:
        """The tmux server (``-L``) of this target's root (worked out when asked: few commands need it)."""
        return socket_name(self.root)

    @property
    def lib_dir(self) -> str:
        return vocab.lib_dir(self.root)

    @property
    def in_process(self) -> bool:
        """Whether tether's server side can answer here in this process: this machine, with the server side of
        this very interpreter. Read-only calls (the progress scan, the agent registry) then skip starting a
        second Python, which is most of what `tether progress --local` would cost."""
        return self.local and self.server_argv == local_server_argv()


def local_server_argv() -> list[str]:
    """How tether's server side starts on this machine: this interpreter, with this tether."""
    return [sys.executable, "-m", "tether.server"]


def local_target(project: Project) -> Target:
    root = local_root()
    root.mkdir(parents=True, exist_ok=True)
    registry = os.environ.get("TETHER_AGENT_STATUS")
    return Target(
        name=LOCAL,
        transport=LocalTransport(),
        root=str(root),
        code_dir=str(project.root),
        server_argv=local_server_argv(),
        python=sys.executable,
        local=True,
        registry=registry,
    )


def remote_server_argv(root: str, python: str = "python3") -> list[str]:
    """How tether's server side starts on a server: the copy under ``<root>/.tether/lib``, stdlib only (``-S``
    skips site-packages, which costs tens of milliseconds on every progress scan)."""
    return ["env", f"PYTHONPATH={vocab.lib_dir(root)}", python, "-S", "-m", "tether.server"]


def host_target(project: Project, name: str, state: State | None = None) -> Target:
    """The target for a ``[hosts.NAME]`` entry or, failing that, an instance tether rented under that name."""
    from tether.transport.ssh import SSHTransport, known_hosts_dir, parse_address

    if name == LOCAL:
        return local_target(project)
    hosts = project.config.hosts
    if name in hosts:
        host = hosts[name]
        ssh = parse_address(host.address, identity_file=host.identity_file, label=name)
        root, python = host.remote_root, host.python
    else:
        rec = state.instance(name) if state is not None else None
        if rec is None or not rec.address:
            known = sorted(hosts) + ([r.name for r in state.instances() if not r.gone] if state is not None else [])
            raise ConfigError(
                f"Unknown host {name!r}: it is neither a [hosts.{name}] entry in {project.where} nor a server tether "
                "rented.",
                f'Known: {", ".join(known) or "none"}. Add [hosts.{name}] with address = "user@host[:port]", or '
                f"rent one with `tether up {name} --profile api`.",
            )
        # One known_hosts file per rented instance: a new rental under the same name has a new host key.
        ssh = parse_address(
            rec.address,
            identity_file=rec.meta.get("identity_file"),
            label=name,
            known_hosts=known_hosts_dir() / f"{rec.provider}-{rec.instance_id}",
        )
        root, python = rec.remote_root, "python3"
    rented = name not in hosts
    # `tether up` records the interpreter's real path: a pyenv-style shim can cost 100 ms per call.
    resolved = state.host_facts(name).python if state is not None else None
    return Target(
        name=name,
        transport=SSHTransport(ssh, label=name),
        root=root,
        code_dir=project.remote_dir(root),
        server_argv=remote_server_argv(root, resolved or python),
        python=python,
        rented=rented,
    )


def resolve(project: Project, name: str | None, state: State | None = None) -> Target:
    if name is None or name == LOCAL:
        return local_target(project)
    return host_target(project, name, state)
