"""Registry fixtures (shared with the other registry test folder)."""

from tests.registry_fixtures import gpus, reg_path, registry

__all__ = ["gpus", "reg_path", "registry"]
