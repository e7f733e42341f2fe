"""Real test hosts for tether's tests and the Vast emulator.

- :class:`~tether.testing.sshd.SshdHost`: a real OpenSSH ``sshd`` on a loopback port with throwaway keys and its
  own root directory.
- :class:`~tether.testing.proxy.CutProxy`: a loopback TCP proxy that cuts connections on command.
- :class:`~tether.testing.llm_server.FakeLLMServer`: a loopback HTTP server speaking OpenAI chat-completions with
  a provider's rate limits (429 with Retry-After), for the batch runner's tests and ``bench/ratelimit.py``.
- :mod:`tether.testing.pytest_plugin`: the fixtures ``sshd_host``, ``sshd_hosts`` and ``cut_proxy``.
"""

from tether.testing.proxy import CutProxy
from tether.testing.sshd import SshdHost, find_sshd

__all__ = ["CutProxy", "SshdHost", "find_sshd"]
