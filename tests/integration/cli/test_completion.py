"""Shell completion through the real command and a real bash: the scripts click writes for bash, zsh and fish,
command names completed from the lazy group (no command module imported for them), a command's options, and a
word being typed that names no command completing to nothing instead of printing an error into the prompt."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import tether

BASH = """\
eval "$(_TETHER_COMPLETE=bash_source tether)"
complete -p tether
for line in "tether prog" "tether progress --lo" "tether machines f" "tether prgress --x"; do
    read -r -a COMP_WORDS <<< "$line"
    [[ "$line" == *" " ]] && COMP_WORDS+=("")
    COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
    COMPREPLY=()
    _tether_completion tether
    echo "$line => ${COMPREPLY[*]}"
done
"""


@pytest.fixture
def on_path(tmp_path: Path) -> dict[str, str]:
    """An environment with a `tether` on PATH that runs these sources with this Python."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "tether"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m tether "$@"\n')
    script.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def test_bash_completes_command_names_and_options(tmp_path: Path, on_path: dict[str, str]) -> None:
    done = subprocess.run(["bash", "-c", BASH], cwd=tmp_path, env=on_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "complete -o nosort -F _tether_completion tether"
    assert lines[1:] == [
        "tether prog => progress",
        "tether progress --lo => --local",
        "tether machines f => forget",
        "tether prgress --x => ",
    ]
    assert done.stderr == ""  # nothing printed into the prompt


@pytest.mark.parametrize(
    ("shell", "marker"),
    [
        ("bash", "complete -o nosort -F _tether_completion tether"),
        ("zsh", "#compdef tether"),
        ("fish", "complete --no-files --command tether"),
    ],
)
def test_each_shell_gets_its_script(tmp_path: Path, shell: str, marker: str) -> None:
    done = tether(cwd=tmp_path, env={"_TETHER_COMPLETE": f"{shell}_source"})
    assert done.returncode == 0 and marker in done.stdout, done.stdout + done.stderr


#: Completes ARGV's last word as zsh does, then prints the tether.cli modules it imported.
PROBE = """\
import json, os, sys
os.environ.update({"_TETHER_COMPLETE": "zsh_complete", "COMP_WORDS": sys.argv[1], "COMP_CWORD": sys.argv[2]})
from tether.cli.main import main
try:
    main([])
except SystemExit:
    pass
print("MODULES " + json.dumps(sorted(m for m in sys.modules if m.startswith("tether.cli."))))
"""


def test_command_names_complete_with_their_summaries_and_import_no_command(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, "tether ", "1"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    out = done.stdout.splitlines()
    assert json.loads(out[-1].removeprefix("MODULES ")) == ["tether.cli.main"]
    items = dict(zip(out[1:-1:3], out[2:-1:3], strict=False))  # zsh: type, value, help, for each
    assert items["progress"] == "Every run's completed/total, rate, ETA and state: one round trip per host."
    assert {"run", "status", "machines", "forget"} <= set(items)
