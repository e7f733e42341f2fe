"""Fixtures of the adversarial suite: the Vast emulator with real sshd hosts (shared with the e2e tests)."""

from tests.e2e.conftest import cloud, make_cloud

__all__ = ["cloud", "make_cloud"]
