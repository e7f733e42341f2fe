"""``setup.sh``: the runbook's one-time server setup, rendered from the config and safe to run twice.

On a rented Vast.ai server it first turns off the image's auto-tmux login (``~/.no_auto_tmux``). It installs the
apt packages that are missing (tmux, rsync), pip-installs the project's packages, and writes
``<root>/SETUP_LOG.txt`` (date, ``pip freeze``, ``nvidia-smi`` or "No GPU") for any agent to check. No secret is
ever part of it or of its log. A stamp file named after the script's hash makes a second run a no-op.
"""

from __future__ import annotations

import hashlib
import shlex

from tether import vocab
from tether.config import Project


def render(project: Project, root: str, python: str = "python3", *, no_auto_tmux: bool = False) -> str:
    """The script; ``no_auto_tmux`` (a rented Vast.ai server) also creates ``~/.no_auto_tmux``."""
    cfg = project.config.project
    apt = " ".join(shlex.quote(p) for p in cfg.apt_packages)
    pip = " ".join(shlex.quote(p) for p in cfg.setup_packages)
    q_root = shlex.quote(root)
    lines = [
        "#!/bin/bash",
        "# setup.sh (written by `tether up`): run once after a server is created; running it again changes nothing.",
        "set -euo pipefail",
        f"root={q_root}",
        'mkdir -p "$root/.tether"',
        'stamp="$root/.tether/setup.$(sha256sum "$0" | cut -c1-16).done"',
    ]
    if no_auto_tmux:
        # A Vast.ai image starts tmux on every SSH login unless this file exists; tether runs its own tmux server.
        lines.append(f'touch "$HOME/{vocab.NO_AUTO_TMUX}" 2>/dev/null || true')
    lines += [
        'if [ -e "$stamp" ]; then echo "setup: already done ($stamp)"; exit 0; fi',
    ]
    if cfg.apt_packages:
        lines += [
            "missing=()",
            f'for pkg in {apt}; do command -v "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done',
            "if [ ${#missing[@]} -gt 0 ]; then",
            "  if command -v apt-get >/dev/null 2>&1; then",
            "    export DEBIAN_FRONTEND=noninteractive",
            '    apt-get update -qq && apt-get install -y -qq "${missing[@]}"',
            "  else",
            '    echo "setup: missing ${missing[*]} and no apt-get to install them" >&2; exit 3',
            "  fi",
            "fi",
        ]
    if cfg.setup_packages:
        lines.append(f"{shlex.quote(python)} -m pip install -q {pip}")
    lines += [
        'log="$root/SETUP_LOG.txt"',
        'echo "Setup completed: $(date)" > "$log.tmp"',
        f'{shlex.quote(python)} -m pip freeze >> "$log.tmp" 2>/dev/null || echo "pip not available" >> "$log.tmp"',
        'nvidia-smi >> "$log.tmp" 2>/dev/null || echo "No GPU" >> "$log.tmp"',
        'mv -f "$log.tmp" "$log"',
        'touch "$stamp"',
        'echo "setup: done"',
    ]
    return "\n".join(lines) + "\n"


def fingerprint(script: str) -> str:
    return hashlib.sha256(script.encode()).hexdigest()[:16]
