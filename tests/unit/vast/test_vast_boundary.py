"""The provider boundary holds: only the registry reaches into ``tether.providers.vast``, and the emulator models
the service without importing tether's client side."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import tether
from tether.providers import Provider, provider_class

SRC = Path(tether.__file__).resolve().parent


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_only_the_registry_imports_the_vast_package() -> None:
    offenders = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith("providers/vast/") or rel == "providers/__init__.py":
            continue
        if any(m == "tether.providers.vast" or m.startswith("tether.providers.vast.") for m in _imports(path)):
            offenders.append(rel)
    assert offenders == []


def test_the_emulator_imports_nothing_of_the_client() -> None:
    for path in (SRC / "emulator").glob("*.py"):
        tether_imports = {m for m in _imports(path) if m.startswith("tether.")}
        assert all(m.startswith(("tether.emulator", "tether.testing")) for m in tether_imports), (path, tether_imports)


def test_vast_implements_the_whole_abc() -> None:
    cls = provider_class("vast")
    assert issubclass(cls, Provider) and cls.name == "vast"
    assert not getattr(cls, "__abstractmethods__", None)


def test_unknown_provider_is_a_config_error() -> None:
    from tether.errors import ConfigError

    with pytest.raises(ConfigError, match="Unknown provider 'aws'"):
        provider_class("aws")
