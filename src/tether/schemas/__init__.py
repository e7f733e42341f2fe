"""The JSON Schemas of every ``--json`` document tether prints, one file per command (``progress.json``,
``agents.json``...), shapes they share in ``defs.json``, and ``error.json``: every failure, of every command, is the
flat ``{"error", "hint", "kind", "exit_code"}``.

They ship with the package, so a script or a coding agent can check what it reads::

    from tether import schemas
    schemas.validate("progress", doc)        # needs the jsonschema package

Schemas list the keys a document always has and their types; documents may gain keys in later versions (objects
allow more properties), never lose or retype one without a new major version.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

#: The base of every schema's ``$id`` (a reserved name: it identifies, it is never fetched).
BASE_URI = "https://tether.invalid/schemas/"


def names() -> list[str]:
    """Every schema shipped, by name (``progress``, ``error``, ``defs``...)."""
    return sorted(p.name[: -len(".json")] for p in resources.files(__name__).iterdir() if p.name.endswith(".json"))


@cache
def load(name: str) -> dict[str, Any]:
    """The schema ``name`` (e.g. ``"progress"``) as a dict."""
    doc: dict[str, Any] = json.loads(resources.files(__name__).joinpath(f"{name}.json").read_text(encoding="utf-8"))
    return doc


def validate(name: str, document: Any) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``document`` has the shape schema ``name`` describes (references
    to ``defs.json`` are resolved from the package, never fetched). Needs the ``jsonschema`` package."""
    import jsonschema
    from referencing import Registry, Resource

    registry: Registry[Any] = Registry().with_resources(
        (BASE_URI + f"{n}.json", Resource.from_contents(load(n))) for n in names()
    )
    schema = load(name)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    cls(schema, registry=registry, format_checker=cls.FORMAT_CHECKER).validate(document)
