"""What runs on a server (and, for local runs, on this machine): ``python3 -m tether.server COMMAND``.

Standard library only, Python 3.8+: ``tether up`` copies this package (with ``tether.checkpoint`` and
``tether.errors``) to ``<remote_root>/.tether/lib`` and runs it with that folder on ``PYTHONPATH``, so a server needs
nothing but ``python3``.

Commands: ``run`` (the run wrapper), ``progress`` (every run's progress in one JSON document), ``manifest`` (path,
size, mtime and sha256 of result files), ``agents`` (the AGENT_STATUS.json registry), ``version``.
"""
