"""Real test hosts for tether's tests and the Vast emulator.

- :class:`~tether.testing.sshd.SshdHost`: a real OpenSSH ``sshd`` on a loopback port with throwaway keys and its
  own root directory.
- :class:`~tether.testing.proxy.CutProxy`: a loopback TCP proxy that cuts connections on command.
- :class:`~tether.testing.llm_server.FakeLLMServer`: a loopback HTTP server speaking OpenAI chat-completions with
  a provider's rate limits (429 with Retry-After), for the batch runner's tests and ``bench/ratelimit.py``.
- :mod:`tether.testing.cloud`: the Vast emulator whose instances are real sshd hosts, the user's key on its account.
- :data:`FAKES`: a folder holding a fake ``nvidia-smi`` (the driver's real output formats; ``FAKE_NVIDIA_SMI``
  chooses the GPUs); put it first on ``PATH``.
- :mod:`tether.testing.pytest_plugin`: the fixtures ``sshd_host``, ``sshd_hosts``, ``cut_proxy``, ``make_cloud``,
  ``cloud``, ``vast_emulator``, ``vast_api_emulator``, ``gpus``, ``reg_path`` and
  ``registry``.
"""

from pathlib import Path

from tether.testing.proxy import CutProxy
from tether.testing.sshd import SshdHost, find_sshd

#: The fake nvidia-smi lives here.
FAKES = Path(__file__).resolve().parent / "fakes"

__all__ = ["FAKES", "CutProxy", "SshdHost", "find_sshd"]
