"""One test command: the README's, CONTRIBUTING's and CI's are the same, it runs the suite in xdist workers that the
dev extras install, and every tier the conftest marks is registered."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from tests.conftest import TIERS, tier_of

ROOT = Path(__file__).resolve().parents[3]


def pytest_commands(text: str) -> set[str]:
    return {m.group(0).strip() for m in re.finditer(r"python -m pytest -q[^\n#`]*", text)}


def test_readme_contributing_and_ci_run_the_same_command_with_xdist() -> None:
    readme = pytest_commands((ROOT / "README.md").read_text())
    contributing = pytest_commands((ROOT / "CONTRIBUTING.md").read_text())
    ci = pytest_commands((ROOT / ".ci" / "run").read_text())
    assert len(ci) == 1 and readme == ci and ci <= contributing, (readme, contributing, ci)
    assert " -n " in next(iter(ci))
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    assert any(dep.startswith("pytest-xdist") for dep in extras)


def test_every_tier_is_registered_and_set_by_folder() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    registered = {line.split(":")[0] for line in config["markers"]}
    assert set(TIERS) <= registered
    here = Path(__file__)
    assert tier_of(here) == "unit"
    assert tier_of(ROOT / "tests" / "e2e" / "test_x.py") == "e2e"
    assert tier_of(ROOT / "tests" / "helpers.py") is None
