"""This machine as a transport, so a local run takes the same path as a remote one.

``run`` starts the argv directly (no shell); ``put_bytes`` writes a temp file in the target's directory, applies
the mode and renames it into place; ``push``/``pull`` are local rsync runs with the same safety options as remote
ones (see :mod:`tether.transport.rsync`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tether.atomic import atomic_write
from tether.transport.base import Backoff, Completed, Runner, SyncStats, command_failed, run_process

if TYPE_CHECKING:  # rsync is imported by a push or a pull: a command that only reads runs none
    from tether.transport.rsync import Direction


class LocalTransport:
    """A :class:`~tether.transport.base.Transport` for this machine; ``env`` is added to every command's env."""

    def __init__(
        self, *, label: str = "local", env: Mapping[str, str] | None = None, runner: Runner | None = None
    ) -> None:
        self.label = label
        self.env = dict(env or {})
        self.runner: Runner = runner or run_process

    def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        timeout: float | None = None,
        check: bool = True,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Completed:
        merged = {**self.env, **(env or {})}
        if "PATH" in merged and argv and "/" not in argv[0]:
            # Resolve the program with the PATH the command will get, as `env PATH=… prog` does remotely.
            found = _which(argv[0], merged["PATH"])
            argv = [found or argv[0], *argv[1:]]
            if found is None:
                result = Completed(127, b"", f"{argv[0]}: command not found\n".encode())
                if check:
                    raise command_failed(argv, result, self.label)
                return result
        result = self.runner(list(argv), input=input, timeout=timeout, env=merged or None, cwd=cwd)
        if check and result.returncode != 0:
            raise command_failed(argv, result, self.label)
        return result

    def put_bytes(self, data: bytes, path: str, mode: int = 0o600) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, data, mode=mode)

    def push(
        self, local_dir: Path, remote_dir: str, *, excludes: Sequence[str] = (), delete: bool = False
    ) -> SyncStats:
        from tether.transport import rsync as rsync_mod

        Path(remote_dir).mkdir(parents=True, exist_ok=True)
        argv = rsync_mod.push_argv(
            local_dir.absolute(), str(Path(remote_dir).absolute()), excludes=excludes, delete=delete
        )
        return self._rsync(argv, "push")

    def pull(
        self, remote_dir: str, local_dir: Path, *, includes: Sequence[str] = (), excludes: Sequence[str] = ()
    ) -> SyncStats:
        from tether.transport import rsync as rsync_mod

        local_dir.mkdir(parents=True, exist_ok=True)
        argv = rsync_mod.pull_argv(
            str(Path(remote_dir).absolute()), local_dir.absolute(), includes=includes, excludes=excludes
        )
        return self._rsync(argv, "pull")

    def _rsync(self, argv: list[str], direction: Direction) -> SyncStats:
        from tether.transport import rsync as rsync_mod

        return rsync_mod.run_rsync(
            argv,
            runner=self.runner,
            backoff=Backoff(retries=0),
            direction=direction,
            where=self.label,
            remote=False,
        )

    def interactive_argv(self, argv: Sequence[str]) -> list[str]:
        return list(argv)

    def close(self) -> None:
        """Nothing to release for this machine."""


def _which(program: str, path: str) -> str | None:
    for folder in path.split(os.pathsep):
        candidate = os.path.join(folder or ".", program)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None
