"""What a user writes in tether.toml is checked before it is used, and errors say it once and literally.

Names become run ids, folders and file names; a results path becomes an rsync and a manifest argument. Each bad
value is refused at config load with the file, line and key, and nothing is created anywhere.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.helpers import tether, write_project
from tether.testing.sshd import SshdHost


def project_with(tmp_path: Path, body: str) -> Path:
    project = tmp_path / "proj"
    project.mkdir(parents=True)
    (project / "tether.toml").write_text(f'[project]\nname = "proj"\n\n{body}\n')
    return project


@pytest.mark.parametrize(
    ("body", "key", "line", "says"),
    [
        ('[experiments."../../escape"]\ncommand = "true"', 'experiments."../../escape"', 4, "is not a valid name"),
        ('[experiments."a/b"]\ncommand = "true"', 'experiments."a/b"', 4, "is not a valid name"),
        ('[experiments."-rf"]\ncommand = "true"', "experiments.-rf", 4, "not starting with '-'"),
        ('[experiments.".."]\ncommand = "true"', 'experiments.".."', 4, "a name of dots only"),
        ('[hosts."../lab1"]\naddress = "u@h"', 'hosts."../lab1"', 4, "is not a valid name"),
        ('[hosts."lab 1"]\naddress = "u@h"', 'hosts."lab 1"', 4, "is not a valid name"),
        ("[experiments.e]\ncommand = []", "experiments.e.command", 5, "command is empty"),
        ('[experiments.e]\ncommand = [""]', "experiments.e.command", 5, "command is empty"),
        ('[experiments.e]\ncommand = "true"\nresults = "-rf"', "experiments.e.results", 6, "must not start with '-'"),
        ('[experiments.e]\ncommand = "true"\nresults = "/etc"', "experiments.e.results", 6, "inside the project"),
        ('[experiments.e]\ncommand = "true"\nresults = "out/../../x"', "experiments.e.results", 6, "without '..'"),
        ('[experiments.e]\ncommand = "true"\nresults = "./"', "experiments.e.results", 6, "not the project folder"),
    ],
)
def test_bad_names_and_paths_are_refused_at_load(tmp_path: Path, body: str, key: str, line: int, says: str) -> None:
    project = project_with(tmp_path, body)
    text = (project / "tether.toml").read_text()
    result = tether("progress", "--json", cwd=project)
    assert result.returncode == 2, result.stderr
    doc = json.loads(result.stdout)
    assert set(doc) == {"error", "hint", "kind", "exit_code"} and doc["kind"] == "ConfigError"
    assert doc["error"].startswith(f"{project / 'tether.toml'}:{line}: {key}: ")
    assert says in doc["error"]
    assert "Value error" not in doc["error"]
    assert (project / "tether.toml").read_text() == text
    assert sorted(p.name for p in project.iterdir()) == ["tether.toml"]


def test_a_name_that_climbs_out_never_makes_a_run_folder(tmp_path: Path) -> None:
    project = project_with(tmp_path, '[experiments."../../../escape"]\ncommand = "true"\nkind = "local"')
    result = tether("run", "../../../escape", "--local", cwd=project)
    assert result.returncode == 2 and "is not a valid name" in result.stderr
    home = Path(os.environ["TETHER_HOME"])
    assert not (home / "local").exists()
    assert [p for base in (tmp_path, home) for p in base.rglob("escape*")] == []


def test_hints_and_names_with_markup_print_literally(tmp_path: Path) -> None:
    project = project_with(tmp_path, '[experiments."-old"]\ncommand = "true"')
    result = tether("progress", cwd=project)
    assert result.returncode == 2
    assert "e.g. [experiments.old]." in result.stderr
    assert "Rename [experiments.-old] to a name of" in result.stderr
    project = project_with(tmp_path / "two", '[experiments."[/bold]"]\ncommand = "true"')
    result = tether("progress", cwd=project)
    assert result.returncode == 2
    assert f"{project / 'tether.toml'}:4: experiments.\"[/bold]\": '[/bold]' is not a valid name" in result.stderr


def test_a_failed_pull_says_what_failed_once(tmp_path: Path, sshd_host: SshdHost) -> None:
    extra = (
        "[hosts.lab1]\n"
        f'address = "{sshd_host.address}"\n'
        f'identity_file = "{sshd_host.identity_file}"\n'
        f'remote_root = "{sshd_host.root_dir}"\n'
    )
    project = write_project(tmp_path / "proj", extra=extra)
    assert tether("up", "lab1", cwd=project).returncode == 0
    code = sshd_host.root_dir / "proj"
    (code / "results").mkdir()
    (code / "results" / "x").write_text("a file on the server")
    (project / "results" / "x").mkdir(parents=True)  # a folder with something in it here: rsync cannot replace it
    (project / "results" / "x" / "keep.txt").write_text("kept")
    result = tether("pull", "lab1", "--json", cwd=project)
    assert result.returncode == 1
    doc = json.loads(result.stdout)
    assert doc["kind"] == "SyncError"
    assert doc["error"] == (
        "Pulling results from lab1 failed with rsync exit code 23: could not make way for new regular file: x"
    )
    assert doc["hint"].startswith("The local copy was left as it was.")
    assert (project / "results" / "x" / "keep.txt").read_text() == "kept"
    human = tether("pull", "lab1", cwd=project)
    assert human.returncode == 1
    assert human.stderr.count("Pulling") == 1 and human.stderr.count("failed") == 1
