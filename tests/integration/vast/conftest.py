"""The emulator fixtures (``vast_emulator``, ``vast_api_emulator``, ``sleeps``, ``make_provider``) come from
``tether.testing.pytest_plugin``; ``Sleeps`` is named here for the tests that build one themselves."""

from tether.testing.pytest_plugin import Sleeps

__all__ = ["Sleeps"]
