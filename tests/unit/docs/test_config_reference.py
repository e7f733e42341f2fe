"""The README's configuration reference and `tether init`'s starter file agree with the models' defaults, and
document every key of [policy], [vast] and [project]."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from tether import config
from tether.profiles import DEFAULT_PROFILES

README = Path(__file__).resolve().parents[3] / "README.md"


def _readme_reference() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Configuration", 1)[1]
    match = re.search(r"```toml\n(.*?)```", section, re.S)
    assert match, "the README's Configuration section has no toml block"
    return match.group(1)


def _uncomment(text: str) -> str:
    """Commented-out settings (`# key = value`) count as documented values too."""
    lines = []
    for line in text.splitlines():
        stripped = line.lstrip()
        if re.match(r"#\s*[a-z_]+\s*=", stripped) or re.match(r"#\s*\[[a-z_.]+\]", stripped):
            lines.append(re.sub(r"^#\s*", "", stripped))
        else:
            lines.append(line)
    return "\n".join(lines)


def _sections(text: str) -> dict[str, Any]:
    return tomllib.loads(_uncomment(text))


def _defaults(model: type[BaseModel]) -> dict[str, Any]:
    return {name: f.default for name, f in model.model_fields.items()}


# Keys whose README value is an example, not the default (the default is None or depends on the project).
EXAMPLES = {
    "max_total_usd",
    "idle_stop",
    "max_hourly_usd",
    "max_daily_usd",
    "url",
    "identity_file",
    "name",
    "remote_dir",
    "sync_excludes",
}


@pytest.mark.parametrize(
    ("source", "text"),
    [("README", _readme_reference()), ("tether init", config.starter("demo"))],
)
def test_documented_values_are_the_defaults(source: str, text: str) -> None:
    doc = _sections(text)
    for table, model in (("policy", config.PolicyConfig), ("vast", config.VastConfig)):
        defaults = _defaults(model)
        for key, value in doc.get(table, {}).items():
            assert key in defaults, f"{source}: [{table}] {key} is not a setting"
            if key not in EXAMPLES:
                assert value == defaults[key], f"{source}: [{table}] {key} = {value!r}, default {defaults[key]!r}"
    for name, values in doc.get("profiles", {}).items():
        base = DEFAULT_PROFILES[name]
        shown = {"query": base.query, "order": base.order, "disk_gb": base.min_disk_gb, "type": base.type}
        for key, value in values.items():
            if key in shown:
                assert value == shown[key], f"{source}: [profiles.{name}] {key} = {value!r}, default {shown[key]!r}"


def test_the_readme_documents_every_setting() -> None:
    doc = _sections(_readme_reference())
    for table, model in (
        ("policy", config.PolicyConfig),
        ("vast", config.VastConfig),
        ("project", config.ProjectConfig),
    ):
        missing = sorted(set(model.model_fields) - set(doc.get(table, {})))
        assert not missing, f"README's [{table}] reference lacks {missing}"
