"""``tether.toml``: the project, its experiments, GPU profiles, hosts and policies.

Secrets never live here: API keys stay in the project's ``.env`` (``[project] env_file``), which tether uploads with
mode 0600 and never prints. Every error names the file, the line and the key.

This module is light on purpose (no pydantic): finding the project costs a few ``stat`` calls. Every command in a
project checks its file first (:meth:`Project.check`), so a bad value is reported before anything is done; a file
that already passed, byte for byte, under this tether, is not validated again (its digest is kept in
``$TETHER_HOME``), and its values are read (:mod:`tether.config_models`, pydantic) the first time a command asks
for :attr:`Project.config`. Outside any project (no ``tether.toml`` at or above the current folder)
:func:`discover` gives the defaults, and a command that needs a real project says which part of it with
:meth:`Project.require`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from tether.errors import ConfigError
from tether.vocab import NAME_RULE, PROJECT_NAME_RULE, check_project_name

if TYPE_CHECKING:
    # Re-exported (explicitly, for mypy): at run time they come from __getattr__ below.
    from tether.config_models import ExperimentConfig as ExperimentConfig
    from tether.config_models import HostConfig as HostConfig
    from tether.config_models import Kind as Kind
    from tether.config_models import Name as Name
    from tether.config_models import PolicyConfig as PolicyConfig
    from tether.config_models import ProfileConfig as ProfileConfig
    from tether.config_models import ProjectConfig as ProjectConfig
    from tether.config_models import TetherConfig as TetherConfig
    from tether.config_models import VastConfig as VastConfig

__all__ = [
    "CONFIG_NAME",
    "NAME_RULE",
    "PROJECT_NAME_RULE",
    "ExperimentConfig",
    "HostConfig",
    "Kind",
    "Name",
    "PolicyConfig",
    "ProfileConfig",
    "Project",
    "ProjectConfig",
    "TetherConfig",
    "VastConfig",
    "check_project_name",
    "discover",
    "find_config",
    "folder_name",
    "load",
    "starter",
]

CONFIG_NAME = "tether.toml"


#: The models live in :mod:`tether.config_models` and are imported from there on first use.
_MODELS = (
    "ExperimentConfig",
    "HostConfig",
    "Kind",
    "Name",
    "PolicyConfig",
    "ProfileConfig",
    "ProjectConfig",
    "TetherConfig",
    "VastConfig",
)


def __getattr__(name: str) -> Any:
    if name in _MODELS:
        from tether import config_models

        return getattr(config_models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_T = TypeVar("_T")


def folder_name(folder: Path) -> str:
    """A project name made from a folder's name (what `tether init` writes, and the name outside a project)."""
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in folder.name)
    return re.sub(r"^[^A-Za-z0-9]+", "", cleaned) or "project"


class Project:
    """A project: its folder and its ``tether.toml`` (``path``), read and validated on first use of
    :attr:`config`. Outside any project ``path`` is None and :attr:`config` holds the defaults."""

    def __init__(self, root: Path, config: TetherConfig | None = None, path: Path | None = None) -> None:
        self.root = root
        self.path = path
        self._config = config

    @property
    def found(self) -> bool:
        """Whether there is a ``tether.toml`` (False: a folder outside any project, with the defaults)."""
        return self.path is not None

    @property
    def config(self) -> TetherConfig:
        if self._config is None:
            from tether import config_models

            if self.path is None:
                config = config_models.defaults(folder_name(self.root))
            else:
                config = config_models.validate(self.path)
            self._config = config_models.with_environment(config)
        return self._config

    @property
    def where(self) -> str:
        """Where the configuration comes from, for messages: the file, or that there is none."""
        return str(self.path) if self.path is not None else f"the defaults (no {CONFIG_NAME} found)"

    @property
    def name(self) -> str:
        return self.config.project.name

    @property
    def declared_name(self) -> str:
        """:attr:`name` without reading the whole file into its models (stdlib ``tomllib`` only): for a view that
        only names the project (``progress --json`` stays free of pydantic)."""
        if self._config is not None or self.path is None:
            return self.name
        import tomllib

        try:
            name = tomllib.loads(self.path.read_text(encoding="utf-8"))["project"]["name"]
        except (OSError, ValueError, KeyError, TypeError):
            return self.name
        return name if isinstance(name, str) else self.name

    def check(self) -> Project:
        """This project with its file known to be valid: validated now (ConfigError naming file, line and key),
        unless these very bytes passed before under this version of tether."""
        if self.path is None or self._config is not None:
            return self
        digest = _digest(self.path)
        if digest is not None and digest in _passed():
            return self
        _ = self.config
        if digest is not None:
            _remember(digest)
        return self

    def require(self, command: str, needs: str) -> Project:
        """This project, validated now; outside a project a ConfigError saying that ``command`` needs ``needs``."""
        if self.path is None:
            raise ConfigError(
                f"`{command}` needs a project for {needs}, and there is no {CONFIG_NAME} in {self.root} or any "
                "folder above it.",
                "Run it in the project's folder, pass --config PATH, or write one with `tether init`.",
            )
        _ = self.config  # validated now: a bad file is reported before anything is done
        return self

    def experiment(self, name: str) -> ExperimentConfig:
        return self._entry(self.config.experiments, "experiment", name, "")

    def host(self, name: str) -> HostConfig:
        return self._entry(
            self.config.hosts, "host", name, f'; add one as [hosts.{name}] with address = "user@host[:port]"'
        )

    def _entry(self, table: dict[str, _T], what: str, name: str, advice: str) -> _T:
        """``table[name]``, or a ConfigError naming the file and what is known."""
        if name in table:
            return table[name]
        from tether.fmt import did_you_mean

        known = ", ".join(sorted(table)) or "none"
        raise ConfigError(
            f"Unknown {what} {name!r} in {self.where}.{did_you_mean(name, table)}", f"Known {what}s: {known}{advice}."
        )

    def remote_dir(self, remote_root: str) -> str:
        return self.config.project.remote_dir or f"{remote_root.rstrip('/')}/{self.name}"

    def env_file(self) -> Path:
        return self.root / self.config.project.env_file


def find_config(start: Path | None = None) -> Path | None:
    """The nearest ``tether.toml`` at or above ``start`` (default: the current folder), or None."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / CONFIG_NAME
        if candidate.is_file():
            return candidate
    return None


def discover(path: Path | None = None) -> Project:
    """The project of ``path`` (``--config``), else of the nearest ``tether.toml``, else the current folder with
    the defaults; its file checked (:meth:`Project.check`), its values read on first use of :attr:`Project.config`."""
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"{path} does not exist.", "Run `tether init` to write a starter tether.toml.")
        return Project(path.parent.resolve(), None, path).check()
    found = find_config()
    if found is None:
        return Project(Path.cwd().resolve(), None, None)
    return Project(found.parent.resolve(), None, found).check()


#: The file under $TETHER_HOME that lists the digests of tether.toml files that passed validation.
PASSED_FILE = "config-passed"
_PASSED_KEEP = 64


def _digest(path: Path) -> str | None:
    """A 64-bit digest (crc32 and adler32) of the file's bytes, of tether's version and of the models' source (a
    changed rule checks again). Not hashlib: loading it costs more than a quick command's whole check, and a
    digest here only spares a validation, it protects nothing."""
    import zlib

    import tether

    try:
        data = path.read_bytes()
        models = Path(__file__).with_name("config_models.py").stat()
    except OSError:
        return None  # validation itself will say what is wrong
    salt = f"{tether.__version__}:{models.st_size}:{models.st_mtime_ns}:".encode()
    whole = salt + data
    return f"{zlib.crc32(whole):08x}{zlib.adler32(whole):08x}-{len(whole)}"


def _passed() -> list[str]:
    from tether.paths import tether_home

    try:
        return (tether_home() / PASSED_FILE).read_text(encoding="utf-8").split()
    except OSError:
        return []


def _remember(digest: str) -> None:
    """Add ``digest`` to the passed list (best effort: a read-only home only means validating every time)."""
    from tether.atomic import atomic_write
    from tether.paths import PRIVATE_FILE, private_home

    try:
        home = private_home()
        kept = [*[d for d in _passed() if d != digest][-(_PASSED_KEEP - 1) :], digest]
        atomic_write(home / PASSED_FILE, "\n".join(kept) + "\n", durable=False, mode=PRIVATE_FILE)
    except OSError:
        pass


def load(path: Path | None = None) -> Project:
    """Load and validate ``tether.toml`` (``path``, else the nearest one); errors name the file, line and key."""
    config_path = path if path is not None else find_config()
    if config_path is None:
        here = Path.cwd().resolve()
        raise ConfigError(
            f"No {CONFIG_NAME} found in {here} or any folder above it.",
            "Run `tether init` in the project's root folder to write a starter file.",
        )
    from tether import config_models

    return Project(config_path.parent.resolve(), config_models.validate(config_path), config_path)


STARTER = """\
# tether.toml: how tether runs this project's experiments. Reference: the README's "Configuration" section.
# Secrets (API keys) never go here: keep them in .env, which tether uploads with mode 0600 and never prints.

[project]
name = "{name}"
# remote_dir = "/workspace/{name}"   # where the code lives on a server (default: <remote_root>/<name>)
# env_file = ".env"                  # uploaded with mode 0600, never printed
# sync_excludes = ["data/raw"]       # also excluded from `tether push` (.git, caches, venvs, results always are)

# One table per experiment. `command` runs from the project root; args after `--` on `tether run` are appended.
# `tether init` wrote example_experiment.py next to this file: `tether run example --local --follow` runs it.
[experiments.example]
command = "python3 -m example_experiment"
kind = "local"          # api | inference | finetune | local: picks the GPU profile and where it runs
items = 100             # how many items one run processes (for plans and ETAs)
item_seconds = 0.01     # seconds one item takes (for plans and cost estimates)
concurrency = 1         # items in flight at once
gpu_gb = 0              # GPU memory the run needs; 0 = API-only / CPU
results = "results"     # folder (inside the project) where the checkpoint library writes

# GPU profiles (defaults shown; override any of them):
# [profiles.inference]
# query = "gpu_ram>=24 reliability>0.95 num_gpus=1"
# order = "dph+"
# disk_gb = 60

# Servers you already have:
# [hosts.lab1]
# address = "root@gpu-box.example.org:2222"   # user@host[:port]; ~/.ssh/config aliases work too
# remote_root = "/workspace"

[policy]
idle_stop_minutes = 30          # stop a rented server idle this long
destroy_after_idle_hours = 24   # destroy it (after pulling results) when idle or stopped this long
# max_total_usd = 50            # refuse new rentals past this total
# max_hourly_usd = 2.0          # refuse new rentals past this burn rate
# max_daily_usd = 10            # refuse new rentals past this spend today (UTC)
allow_spending = false          # `tether run` may rent a server only if this is true (or with --provision)
"""


def starter(name: str) -> str:
    return STARTER.format(name=name)


#: The module the starter's [experiments.example] runs (``python3 -m example_experiment`` from the project root).
EXAMPLE_FILE = "example_experiment.py"

EXAMPLE = '''\
"""The starter experiment: 100 items, each result checkpointed by tether's library as it arrives.

Run it with `tether run example --local --follow`; kill it at any moment and run it again: finished items are kept.
Arguments after `--` reach it: `tether run example --local -- --items 20 --delay 0.1`. Replace `work` with your own.
"""

import argparse
import os
import time

from tether.checkpoint import run_batch


def work(item, delay):
    time.sleep(delay)  # stands in for an API call or a model forward pass
    return {"id": item["id"], "x": item["x"], "square": item["x"] ** 2}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=100)
    parser.add_argument("--delay", type=float, default=0.01)
    args = parser.parse_args()
    items = [{"id": "item-%04d" % i, "x": i} for i in range(args.items)]
    summary = run_batch(
        lambda item: work(item, args.delay),
        items,
        results_dir=os.environ.get("TETHER_RESULTS_DIR", "results"),
        key=lambda item: item["id"],
        config={"experiment": "example", "items": args.items},
    )
    print(summary)


if __name__ == "__main__":
    main()
'''
