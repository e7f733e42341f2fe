"""The Vast.ai emulator's fixtures (real sshd instances), shared with the end-to-end tests."""

from tests.e2e.conftest import cloud, make_cloud  # noqa: F401
