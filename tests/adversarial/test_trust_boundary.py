"""What a server sends back is data, never an instruction: links, odd file names and log text, through the CLI.

Every test drives `tether` as a subprocess against a real sshd (same machine, so an absolute link on the server
names the very file a local pull could overwrite) and checks the message and that nothing outside the results
folders changed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.helpers import tether, write_project
from tether.testing.sshd import SshdHost


def host_block(name: str, host: SshdHost) -> str:
    return (
        f"[hosts.{name}]\n"
        f'address = "{host.address}"\n'
        f'identity_file = "{host.identity_file}"\n'
        f'remote_root = "{host.root_dir}"\n'
    )


NESTED = '[experiments.inner]\ncommand = "python3 exp.py"\nresults = "results/inner"\n'


def set_up(tmp_path: Path, host: SshdHost, extra: str = "") -> tuple[Path, Path]:
    """A project on ``lab1``, set up; returns (local project, its code folder on the server)."""
    project = write_project(tmp_path / "proj", extra=host_block("lab1", host) + extra)
    up = tether("up", "lab1", cwd=project)
    assert up.returncode == 0, up.stderr
    code = host.root_dir / "proj"
    (code / "results").mkdir(exist_ok=True)
    return project, code


def snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every entry under ``folder``: a file's bytes, a link's target (links are never followed)."""
    out: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(folder))
            if path.is_symlink():
                out[rel] = "-> " + os.readlink(path)
            elif path.is_file():
                out[rel] = path.read_bytes()
    return out


def test_links_on_the_server_never_make_a_pull_write_outside_the_results(tmp_path: Path, sshd_host: SshdHost) -> None:
    project, code = set_up(tmp_path, sshd_host, NESTED)
    # What must not change: a file outside the project, and a folder beside it that a relative link can reach.
    precious = tmp_path / "bashrc"
    precious.write_text("precious\n")
    beside = tmp_path / "X"
    beside.mkdir()
    (beside / "victim.txt").write_text("precious\n")
    # On the server: one real result, and links out of the results folder, absolute and relative.
    (code / "results" / "ok.json").write_text('{"ok": 1}')
    evil_src = sshd_host.root_dir / "X"
    evil_src.mkdir()
    (evil_src / "victim.txt").write_text("evil payload\n")
    (code / "results" / "inner").symlink_to("../../X")  # the nested results folder is a link out of the tree
    (code / "results" / "bashrc").symlink_to(precious)  # absolute: the very file this machine keeps
    (code / "results" / "up").symlink_to("../../../../../outside")
    (code / "results" / "latest").symlink_to("ok.json")  # a link inside the results folder is fine
    outside_before = snapshot(tmp_path / "X"), precious.read_text()

    for _ in range(2):  # the second pull meets whatever the first one left locally
        result = tether("pull", "lab1", "--json", cwd=project)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)["pulls"][0]
        assert report["verified"] is True
        assert (snapshot(tmp_path / "X"), precious.read_text()) == outside_before
    assert (project / "results" / "ok.json").read_text() == '{"ok": 1}'
    assert report["links"] == {
        "results/bashrc": str(precious),
        "results/inner": "../../X",
        "results/latest": "ok.json",
        "results/up": "../../../../../outside",
    }
    local = snapshot(project / "results")
    # Links that leave the results folder are not made here; the one inside it is a link, as on the server.
    assert local == {"ok.json": b'{"ok": 1}', "latest": "-> ok.json"}
    human = tether("pull", "lab1", cwd=project)
    assert human.returncode == 0, human.stderr
    assert report["skipped_links"] == ["results/bashrc", "results/inner", "results/up"]
    assert "3 links that point outside the results folders were not copied" in human.stderr


def test_a_link_left_here_by_an_earlier_pull_is_replaced_not_written_through(
    tmp_path: Path, sshd_host: SshdHost
) -> None:
    project, code = set_up(tmp_path, sshd_host, NESTED)
    beside = tmp_path / "X"
    beside.mkdir()
    (beside / "victim.txt").write_text("precious\n")
    # An earlier tether copied a server's link into the results folder; the server now has a real folder there.
    (project / "results").mkdir()
    (project / "results" / "inner").symlink_to("../../X")
    (code / "results" / "inner").mkdir()
    (code / "results" / "inner" / "victim.txt").write_text("evil payload\n")
    result = tether("pull", "lab1", "--json", cwd=project)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["pulls"][0]["verified"] is True
    assert (beside / "victim.txt").read_text() == "precious\n"
    inner = project / "results" / "inner"
    assert not inner.is_symlink() and (inner / "victim.txt").read_text() == "evil payload\n"


def test_a_results_folder_that_is_a_link_here_is_refused(tmp_path: Path, sshd_host: SshdHost) -> None:
    extra = '[experiments.deep]\ncommand = "python3 exp.py"\nresults = "out/deep"\n'
    project, code = set_up(tmp_path, sshd_host, extra)
    (code / "out" / "deep").mkdir(parents=True)
    (code / "out" / "deep" / "victim.txt").write_text("evil payload\n")
    beside = tmp_path / "X"
    beside.mkdir()
    (beside / "victim.txt").write_text("precious\n")
    (project / "out").symlink_to("../X")  # a pull through it would write tmp_path/X/deep
    result = tether("pull", "lab1", "deep", "--json", cwd=project)
    assert result.returncode == 1, result.stderr
    doc = json.loads(result.stdout)
    assert doc["kind"] == "SyncError" and doc["exit_code"] == 1
    assert f"{project / 'out'} is a symbolic link" in doc["error"]
    assert doc["error"].count("Pulling") == 1
    assert (beside / "victim.txt").read_text() == "precious\n"
    assert [p.name for p in beside.iterdir()] == ["victim.txt"]


def test_a_file_name_that_is_not_utf8_is_pulled_with_every_other_file(tmp_path: Path, sshd_host: SshdHost) -> None:
    project, code = set_up(tmp_path, sshd_host)
    odd = os.fsencode(code / "results") + b"/caf\xe9.json"
    with open(odd, "wb") as fh:
        fh.write(b"latin-1 name")
    (code / "results" / "ok.json").write_text("{}")
    result = tether("pull", "lab1", "--json", cwd=project)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)["pulls"][0]
    assert report["verified"] is True
    assert sorted(report["changed"]) == ["results/caf\\xe9.json", "results/ok.json"]
    with open(os.fsencode(project / "results") + b"/caf\xe9.json", "rb") as fh:
        assert fh.read() == b"latin-1 name"
    assert (project / "results" / "ok.json").read_text() == "{}"
    (code / "results" / "ok.json").write_text('{"again": 1}')
    synced = tether("sync", "lab1", "--once", cwd=project)
    assert synced.returncode == 0, synced.stderr
    assert "lab1: 1 changed results/ok.json" in synced.stderr
    again = tether("pull", "lab1", cwd=project)
    assert again.returncode == 0 and "verified" in again.stderr


def test_a_log_tail_with_markup_prints_literally(tmp_path: Path) -> None:
    extra = '[experiments.loud]\ncommand = "python3 loud.py"\nkind = "local"\nresults = "r_loud"\n'
    project = write_project(tmp_path / "proj", extra=extra)
    (project / "loud.py").write_text(
        "print('[/bold] closing tag [experiments.old] [red]x[/red]')\nraise SystemExit(3)\n"
    )
    literal = "[/bold] closing tag [experiments.old] [red]x[/red]"
    started = tether("run", "loud", "--local", cwd=project)
    assert started.returncode == 1 and "failed at once (exit code 3)" in started.stderr
    assert literal in started.stderr
    shown = tether("progress", cwd=project)
    assert shown.returncode == 0, shown.stderr
    assert "(failed): its log: `tether logs" in shown.stderr  # its tail was shown once, by `run` itself
    logs = tether("logs", "loud", cwd=project)
    assert logs.returncode == 0 and literal in logs.stdout
