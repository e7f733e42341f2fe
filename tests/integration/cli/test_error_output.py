"""A failed command's output: `--debug` shows it, as its help says (the core's hint speaks of no terminal option,
so a page never shows one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import tether, write_project
from tether.cli import main as cli_main
from tether.config import PASSED_FILE
from tether.errors import CommandFailed
from tether.paths import private_home
from tether.transport.base import Completed, command_failed


def _fail(*_args: object, **_kwargs: object) -> None:
    raise CommandFailed("`sh` exited with code 3 on lab1: boom", "Fix the cause and run it again.", 3, "line 1\nboom\n")


@pytest.mark.parametrize("debug", [False, True])
def test_debug_shows_the_output_the_error_points_to(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], debug: bool
) -> None:
    monkeypatch.setattr(cli_main.cli, "main", _fail)
    with pytest.raises(SystemExit):
        cli_main.main(["--debug", "ls"] if debug else ["ls"])
    err = capsys.readouterr().err
    assert "error: `sh` exited with code 3 on lab1: boom" in err
    assert "Fix the cause and run it again." in err and "--debug" not in err
    assert ("Its output (last lines):\nline 1\nboom" in err) is debug


def test_the_cores_hint_speaks_of_no_terminal_option() -> None:
    exc = command_failed(["sh", "-c", "exit 3"], Completed(3, b"", b"boom\n"), "lab1")
    assert exc.output.strip() == "boom" and "--debug" not in str(exc)


def test_a_config_that_passed_is_checked_again_once_its_bytes_change(tmp_path: Path) -> None:
    """A tether.toml is validated once per content: the same bytes are not validated again (their digest is kept
    under TETHER_HOME), and any change, a broken one above all, is validated at the next command."""
    project = write_project(tmp_path / "proj", items=2)
    toml = project / "tether.toml"
    assert tether("progress", "--local", "--json", cwd=project).returncode == 0
    kept = (private_home() / PASSED_FILE).read_text().split()
    assert len(kept) == 1
    assert tether("progress", "--local", "--json", cwd=project).returncode == 0
    assert (private_home() / PASSED_FILE).read_text().split() == kept  # the same bytes: nothing new to remember
    toml.write_text(toml.read_text().replace("[project]", "[project]\nnmae = 'typo'", 1))
    broken = tether("progress", "--local", "--json", cwd=project)
    assert broken.returncode == 2 and "nmae" in broken.stderr, broken.stderr
    assert (private_home() / PASSED_FILE).read_text().split() == kept  # a file that failed is not remembered
