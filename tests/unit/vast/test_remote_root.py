"""Where a rented server's workspace is: ``TETHER_VAST_REMOTE_ROOT`` over ``[vast] remote_root``, and the rule that
two live rentals never share one root."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tether.config_models import REMOTE_ROOT_ENV, defaults, with_environment
from tether.emulator import __main__ as emulator_main
from tether.errors import ConfigError
from tether.provision import claim_argv, root_taken_by


def test_the_environment_overrides_remote_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REMOTE_ROOT_ENV, raising=False)
    assert with_environment(defaults("p")).vast.remote_root == "/workspace"
    monkeypatch.setenv(REMOTE_ROOT_ENV, "/srv/emu/instance-{instance_id}/root")
    assert with_environment(defaults("p")).vast.remote_root == "/srv/emu/instance-{instance_id}/root"
    monkeypatch.setenv(REMOTE_ROOT_ENV, "")
    assert with_environment(defaults("p")).vast.remote_root == "/workspace"


def test_a_relative_override_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REMOTE_ROOT_ENV, "workspace")
    with pytest.raises(ConfigError, match=f"{REMOTE_ROOT_ENV} must be an absolute path"):
        with_environment(defaults("p"))


def test_the_emulator_names_the_variable_tether_reads() -> None:
    assert emulator_main.REMOTE_ROOT_ENV == REMOTE_ROOT_ENV


def test_the_emulator_env_lines_quote_the_template() -> None:
    text = emulator_main.env_lines({"VAST_URL": "http://127.0.0.1:1", REMOTE_ROOT_ENV: "/a b/instance-{instance_id}"})
    assert text == (f"export VAST_URL=http://127.0.0.1:1\nexport {REMOTE_ROOT_ENV}='/a b/instance-{{instance_id}}'\n")


LIVE = {("vast", "1"): "a", ("vast", "2"): "b"}


@pytest.mark.parametrize(
    ("found", "mine", "taken_by"),
    [
        (None, ("vast", "2"), None),  # a fresh root
        ("not json", ("vast", "2"), None),
        ({"provider": "vast", "instance_id": "2", "name": "b"}, ("vast", "2"), None),  # its own
        ({"provider": "vast", "instance_id": "1", "name": "a"}, ("vast", "2"), "a"),  # a live rental's
        ({"provider": "vast", "instance_id": "9", "name": "old"}, ("vast", "2"), None),  # a gone one's (reused disk)
        ({"provider": "other", "instance_id": "1", "name": "a"}, ("vast", "2"), None),
    ],
)
def test_whose_root_it_is(found: object, mine: tuple[str, str], taken_by: str | None) -> None:
    assert root_taken_by(found, mine, LIVE) == taken_by


def test_the_rental_mark_is_read_or_claimed_in_one_call(tmp_path: Path) -> None:
    mark = tmp_path / "root" / ".tether" / "rental.json"
    first = subprocess.run(claim_argv(str(mark)), input=b'{"a": 1}', capture_output=True, check=True)
    assert first.stdout == b"" and mark.read_bytes() == b'{"a": 1}' and oct(mark.stat().st_mode & 0o777) == "0o644"
    second = subprocess.run(claim_argv(str(mark)), input=b'{"b": 2}', capture_output=True, check=True)
    assert second.stdout == b'{"a": 1}' and mark.read_bytes() == b'{"a": 1}'  # read, never overwritten here
    assert [p.name for p in mark.parent.iterdir()] == ["rental.json"]  # no temporary file left
