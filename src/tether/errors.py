"""The one exception tree of tether.

Every error a user can see is a :class:`TetherError`. Each carries a one-sentence ``message`` (what went wrong)
and an optional ``hint`` (what to do next); the CLI renders both and exits with ``exit_code``. This module
imports nothing, so the stdlib-only parts of tether (the checkpoint library and the server side, which also run
on servers with a bare ``python3``) can use it too.

::

    TetherError                      exit 1 unless stated
    ├── ConfigError                  exit 2: tether.toml, .env, a bad flag or name
    ├── ProviderError                a provider (Vast.ai, ssh hosts) failed or said no
    │   ├── AuthError                missing or rejected API key
    │   ├── RateLimited              HTTP 429 past the retry budget, or a quota
    │   └── NoCapacity               no offer fits, an offer was taken, an instance never ran
    ├── RemoteError                  reaching or using a server failed
    │   ├── SSHError                 connection, authentication or host-key failure (ssh exit 255)
    │   ├── CommandFailed            a remote command ran and exited non-zero
    │   └── SyncError                rsync failed or a transfer could not be verified
    ├── PolicyRefusal                exit 3: refused by a safety rule (e.g. destroy with unsynced results)
    ├── RegistryError                AGENT_STATUS.json cannot be read, locked or admitted to
    │   └── AdmissionRefused         exit 4: not enough GPU memory free for the request
    │       └── NoRoom               the registry's refusal, with its figures in ``details``
    ├── CheckpointError              the checkpoint journal or results cannot be used as asked
    ├── StateError                   the local state database cannot be opened, read or written
    ├── RunFailed                    a run waited for (`run --wait`) ended other than completed
    └── NotifyError                  no notification URL answered (`tether notify --test`)
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_NO_ROOM = 4


class TetherError(Exception):
    """Base of every error tether raises on purpose."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} {self.hint}"
        return self.message


class ConfigError(TetherError):
    """tether.toml, the .env file, or a command-line value is missing or wrong."""

    exit_code = EXIT_USAGE


class ProviderError(TetherError):
    """A provider of instances failed or refused."""


class AuthError(ProviderError):
    """The provider's API key is missing or was rejected."""


class RateLimited(ProviderError):
    """The provider kept answering 429, or a quota is exhausted."""

    def __init__(self, message: str, hint: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, hint)
        self.retry_after = retry_after


class NoCapacity(ProviderError):
    """No offer fits, the chosen offer is gone, or an instance never became usable.

    ``instance_id`` names an instance the refused create made anyway (Vast.ai can make a stopped one while saying
    no): the caller destroys it.
    """

    def __init__(self, message: str, hint: str | None = None, instance_id: str | None = None) -> None:
        super().__init__(message, hint)
        self.instance_id = instance_id


class NoCredit(ProviderError):
    """The provider's account has too little credit to rent."""


class RemoteError(TetherError):
    """Reaching or using a server failed."""


class SSHError(RemoteError):
    """ssh could not connect, authenticate or verify the host key (``kind``: ``auth``, ``host_key``,
    ``unreachable``, ``unresolved`` or ``dropped``, when known)."""

    kind: str | None = None


class CommandFailed(RemoteError):
    """A command ran and exited non-zero."""

    def __init__(self, message: str, hint: str | None = None, returncode: int | None = None, output: str = "") -> None:
        super().__init__(message, hint)
        self.returncode = returncode
        self.output = output


class SyncError(RemoteError):
    """An rsync transfer failed or could not be verified."""


class PolicyRefusal(TetherError):
    """A safety rule refused the operation; a flag may override it where the message says so."""

    exit_code = EXIT_REFUSED


class RegistryError(TetherError):
    """The agent registry (AGENT_STATUS.json) cannot be read, locked or changed as asked."""


class AdmissionRefused(RegistryError):
    """The GPU has not enough free memory for the request."""

    exit_code = EXIT_NO_ROOM


class NoRoom(AdmissionRefused):
    """The agent registry's refusal; the message says what is free, what was asked and who holds the rest, and
    ``details`` holds the same figures (asked_gb, free_gb per GPU, holders, outside_gb, queued, reason)."""

    def __init__(self, message: str, hint: str | None = None, details: dict[str, object] | None = None) -> None:
        super().__init__(message, hint)
        self.details: dict[str, object] = details or {}


class CheckpointError(TetherError):
    """The checkpoint journal or results cannot be used as asked."""


class StateError(TetherError):
    """The local state database ($TETHER_HOME/state.db) cannot be opened, read or written: damaged, full, busy,
    or written by a newer tether."""


class RunFailed(TetherError):
    """A run that the command waited for ended failed, cancelled or dead."""


class NotifyError(TetherError):
    """No configured notification URL answered a test; the message names them redacted, never their tokens."""
