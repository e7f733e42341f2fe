"""Entry point of the server side: ``python3 -m tether.server COMMAND ...``.

Commands: run, cancel, progress, manifest, journal, agents, watchdog, preflight, version.

Every command but ``watchdog`` marks the server as touched by tether (``<root>/.tether/touched``, when this package
runs from a server's ``<root>/.tether/lib``): the watchdog does not stop a server a tether command is using.
"""

from __future__ import annotations

import os
import sys


def _touch() -> None:
    """Mark ``<root>/.tether/touched`` when this package runs from ``<root>/.tether/lib`` (a server tether set up)."""
    lib = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    dot_tether = os.path.dirname(lib)
    if os.path.basename(lib) != "lib" or os.path.basename(dot_tether) != ".tether":
        return
    from tether.server import watchdog

    watchdog.touch(os.path.dirname(dot_tether))


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(
            "usage: python3 -m tether.server"
            " {run,cancel,progress,manifest,journal,agents,watchdog,preflight,version} ...",
            file=sys.stderr,
        )
        return 2 if not argv else 0
    command, rest = argv[0], argv[1:]
    if command == "watchdog":
        from tether.server import watchdog

        return watchdog.main(rest)
    _touch()
    if command == "run":
        from tether.server import wrapper

        return wrapper.main(rest)
    if command == "cancel":
        from tether.server import wrapper

        return wrapper.cancel_main(rest)
    if command == "progress":
        from tether.server import progress

        return progress.main(rest)
    if command == "manifest":
        from tether.server import manifest

        return manifest.main(rest)
    if command == "journal":
        from tether.server import journal_sync

        return journal_sync.main(rest)
    if command == "agents":
        from tether.server import registry_cli

        return registry_cli.main(rest)
    if command == "preflight":
        from tether.server import preflight

        return preflight.main(rest)
    if command == "version":
        import tether

        print(tether.__version__)
        return 0
    print(f"tether.server: unknown command {command!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
