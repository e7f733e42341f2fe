"""The models of ``tether.toml`` (pydantic) and its validation with file, line and key.

Imported only when a command reads the configuration (:attr:`tether.config.Project.config`): a command that needs
only the project's folder, or no project at all, never pays for pydantic. :mod:`tether.config` re-exports every
model, so ``from tether.config import PolicyConfig`` keeps working.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import tomllib
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from tether.errors import ConfigError
from tether.fmt import close_matches
from tether.vocab import NAME_RULE, check_project_name

Kind = Literal["api", "inference", "finetune", "local"]


_NAME = re.compile(r"[A-Za-z0-9._][A-Za-z0-9._-]*")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _valid_name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid name (use {NAME_RULE})")
    if set(value) == {"."}:
        raise ValueError(f"{value!r} is not a valid name (a name of dots only names a folder)")
    return value


#: An experiment or host name: a run folder named after it cannot leave the state folder or the server's root.
Name = Annotated[str, AfterValidator(_valid_name)]


def _valid_project_name(value: str) -> str:
    problem = check_project_name(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def _suggest(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip("-").strip(".") or "renamed"


def _toml_key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else json.dumps(name)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProjectConfig(_Strict):
    name: Annotated[str, AfterValidator(_valid_project_name)]
    remote_dir: str | None = None
    env_file: str = ".env"
    sync_excludes: list[str] = []
    setup_packages: list[str] = [
        "openai",
        "anthropic",
        "google-genai",
        "requests",
        "python-dotenv",
        "tqdm",
        "pydantic",
    ]
    apt_packages: list[str] = ["tmux", "rsync"]


class ExperimentConfig(_Strict):
    command: list[str]
    kind: Kind = "api"
    items: Annotated[int, Field(ge=0)] | None = None
    item_seconds: Annotated[float, Field(ge=0)] | None = None
    concurrency: Annotated[int, Field(ge=1)] = 1
    gpu_gb: Annotated[float, Field(ge=0, le=2048)] = 0
    results: str = "results"
    figures: bool = False

    @field_validator("command", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            parts = shlex.split(value)
            if not parts:
                raise ValueError("command is empty")
            return parts
        if not isinstance(value, list) or not all(isinstance(part, str) for part in value):
            raise ValueError("command must be a string (split as a shell would) or a list of strings")
        return value

    @field_validator("command")
    @classmethod
    def _not_empty(cls, value: list[str]) -> list[str]:
        if not value or not value[0].strip():
            raise ValueError("command is empty: give the program to run and its arguments")
        return value

    @field_validator("results")
    @classmethod
    def _relative(cls, value: str) -> str:
        parts = PurePosixPath(value).parts
        if value.startswith("/") or ".." in parts:
            raise ValueError("results must be a folder inside the project (a relative path without '..')")
        if value.startswith("-"):
            raise ValueError("results must not start with '-' (it would read as an option); write ./" + value)
        if not parts or all(part == "." for part in parts):
            raise ValueError("results must be a folder inside the project, not the project folder itself")
        return value


class ProfileConfig(_Strict):
    """Overrides of a GPU profile (api, inference, finetune) or a new one; unset keys keep the defaults."""

    query: str | None = None
    order: str | None = None
    disk_gb: Annotated[float, Field(gt=0)] | None = None
    image: str | None = None
    type: Literal["on-demand", "bid", "reserved"] = "on-demand"
    # An interruptible (type = "bid") rental bids bid_usd $/hr for the machine, or the offer's min_bid raised by
    # bid_margin (0.1 = 10% over); with neither, the offer's min_bid.
    bid_usd: Annotated[float, Field(gt=0)] | None = None
    bid_margin: Annotated[float, Field(ge=0, le=10)] | None = None
    # A host that works (README "Rent hosts that work"): search filters, and what the preflight checks after every
    # rental before any code runs (a failed preflight destroys the rental and tries the next offer).
    min_inet_down: Annotated[float, Field(gt=0)] | None = None
    direct_ssh: bool = False
    verified: bool | None = None
    min_cuda: Annotated[float, Field(gt=0)] | None = None
    min_disk_free_gb: Annotated[float, Field(ge=0)] | None = None
    preflight_command: str | None = None


class VastConfig(_Strict):
    """``[vast]``: where the API is and how rented servers are reached. The API key is never in this file."""

    url: str | None = None
    identity_file: str | None = None
    image: str = "pytorch/pytorch:latest"
    remote_root: str = "/workspace"
    wait_minutes: Annotated[float, Field(gt=0)] = 15
    poll_seconds: Annotated[float, Field(gt=0)] = 5
    retries: Annotated[int, Field(ge=0, le=20)] = 5
    backoff_seconds: Annotated[float, Field(gt=0)] = 1.0
    ssh_wait_seconds: Annotated[float, Field(gt=0)] = 90
    # A machine whose rental failed its preflight or vanished is skipped this many days (README
    # "Rent hosts that work"); `tether machines forget ID` clears one.
    avoid_days: Annotated[float, Field(ge=0)] = 7
    # What a new rental's preflight downloads to measure its network, when the set-up installs packages (the
    # package index the set-up's pip uses).
    preflight_url: str = "https://pypi.org/simple/pip/"
    # Rentals in a row whose preflight fails before `up` gives up (each destroyed, verified, its machine avoided).
    preflight_attempts: Annotated[int, Field(ge=1, le=20)] = 5


class HostConfig(_Strict):
    address: str
    remote_root: str = "/workspace"
    identity_file: str | None = None
    python: str = "python3"


class PolicyConfig(_Strict):
    idle_stop_minutes: Annotated[float, Field(gt=0)] = 30
    # The server's own watchdog (README "Laptop-free"): minutes with no run, no agent and no tether command on a
    # server before it stops itself (rented) or says so (owned); "never" turns it off; unset: idle_stop_minutes.
    idle_stop: Annotated[float, Field(gt=0)] | Literal["never"] | None = None
    destroy_after_idle_hours: Annotated[float, Field(gt=0)] = 24
    more_work_within_hours: Annotated[float, Field(ge=0)] = 24
    # The learned idle timers (README "Money"): what a stop and a later start, or a destroy and a later re-rental,
    # is worth in minutes of the server's full rate, and how many of a server's recent gaps between runs to learn
    # from (0: learn nothing, the fixed timers above only).
    restart_cost_minutes: Annotated[float, Field(ge=0)] = 5
    recreate_cost_minutes: Annotated[float, Field(ge=0)] = 30
    gap_history: Annotated[int, Field(ge=0)] = 20
    max_total_usd: Annotated[float, Field(ge=0)] | None = None
    max_hourly_usd: Annotated[float, Field(ge=0)] | None = None
    max_daily_usd: Annotated[float, Field(ge=0)] | None = None
    budget_warn_fraction: Annotated[float, Field(gt=0, le=1)] = 0.8
    local_busy: bool = False
    allow_spending: bool = False
    local_max_minutes: Annotated[float, Field(gt=0)] = 30
    local_gpu_gb: Annotated[float, Field(ge=0)] = 0


class NotifyConfig(_Strict):
    """``[notify]``: where notifications go (Apprise URLs; they hold tokens, so never printed). ``TETHER_NOTIFY_URLS``
    in the environment adds more."""

    urls: list[str] = []


class TetherConfig(_Strict):
    project: ProjectConfig
    experiments: dict[Name, ExperimentConfig] = {}
    profiles: dict[str, ProfileConfig] = {}
    hosts: dict[Name, HostConfig] = {}
    policy: PolicyConfig = PolicyConfig()
    vast: VastConfig = VastConfig()
    notify: NotifyConfig = NotifyConfig()


def _line_of(text: str, loc: tuple[int | str, ...]) -> int | None:
    """Best-effort line number (1-based) of a key path such as ('experiments', 'A5', 'kind')."""
    keys = [str(k) for k in loc if not isinstance(k, int)]
    if not keys:
        return None
    lines = text.splitlines()
    header_re = re.compile(r"^\s*\[\[?\s*(.+?)\s*\]\]?\s*(#.*)?$")
    key_re = re.compile(
        r"^\s*((?:\"[^\"]*\"|'[^']*'|[A-Za-z0-9_-]+)(?:\s*\.\s*(?:\"[^\"]*\"|'[^']*'|[A-Za-z0-9_-]+))*)\s*="
    )
    table: list[str] = []
    best: int | None = None
    for number, line in enumerate(lines, start=1):
        header = header_re.match(line)
        if header:
            table = _dotted(header.group(1))
            if table == keys or (best is None and table[: len(keys)] == keys):
                best = number  # the table itself, else the first table inside it ([experiment.x] for experiment)
            continue
        key = key_re.match(line)
        if key:
            path = table + _dotted(key.group(1))
            if path == keys:
                return number
            if best is None and (keys[: len(path)] == path or path[: len(keys)] == keys):
                best = number
    if best is None and len(keys) > 1:
        return _line_of(text, tuple(keys[:-1]))
    return best


def _dotted(key: str) -> list[str]:
    """The parts of a TOML dotted key (``experiments."a.b"`` -> ``['experiments', 'a.b']``)."""
    return [next(g for g in m.groups() if g is not None) for m in _KEY_PART.finditer(key)]


_KEY_PART = re.compile(r"\s*(?:\"((?:[^\"\\]|\\.)*)\"|'([^']*)'|([^.\s\"']+))\s*(?:\.|$)")


def validate(config_path: Path) -> TetherConfig:
    """Read and validate ``config_path``; errors name the file, line and key."""
    try:
        text = config_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{config_path} does not exist.", "Run `tether init` to write a starter tether.toml."
        ) from None
    except OSError as exc:
        raise ConfigError(f"Cannot read {config_path}: {exc.strerror}.") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"{config_path} is not valid TOML: {exc}.",
            "Fix the line it names; `tether init --print` shows a valid file.",
        ) from None
    try:
        return TetherConfig.model_validate(raw)
    except ValidationError as exc:
        problems = _problems(config_path, text, exc)
    if len(problems) == 1:
        where, message, hint = problems[0]
        raise ConfigError(f"{where}: {message}" + ("" if message.endswith("?") else "."), hint) from None
    lines = "\n".join(f"  {where}: {message}" for where, message, _ in problems)
    hints = list(dict.fromkeys(hint for _, _, hint in problems if hint != _REFERENCE))
    raise ConfigError(f"{config_path} has {len(problems)} problems:\n{lines}", " ".join([*hints, _REFERENCE])) from None


_REFERENCE = "See the config reference in the README."

#: The model of each table: [project], [policy], [vast], and the entries of [experiments.*], [profiles.*], [hosts.*].
_SECTIONS: dict[str, type[BaseModel]] = {"project": ProjectConfig, "policy": PolicyConfig, "vast": VastConfig}
_ENTRIES: dict[str, type[BaseModel]] = {"experiments": ExperimentConfig, "profiles": ProfileConfig, "hosts": HostConfig}


def _keys_of(table: tuple[str, ...]) -> list[str]:
    """The keys the table at ``table`` may hold (for "did you mean"); none when it is not a known table."""
    if not table:
        return list(TetherConfig.model_fields)
    if len(table) == 1 and table[0] in _SECTIONS:
        return list(_SECTIONS[table[0]].model_fields)
    if len(table) == 2 and table[0] in _ENTRIES:
        return list(_ENTRIES[table[0]].model_fields)
    return []


def _problems(config_path: Path, text: str, exc: ValidationError) -> list[tuple[str, str, str]]:
    """Every problem of the file as (file:line, "key: what is wrong, in words", hint), in the file's order."""
    found: dict[tuple[str, ...], tuple[int, str, str, str]] = {}
    for error in exc.errors():
        raw_loc = tuple(str(p) for p in error["loc"])
        # A bad table name: point at the table itself. Union members and the like are not keys of the file.
        loc = tuple(p for p in raw_loc if p != "[key]")
        if loc in found:
            continue
        key = ".".join(_toml_key(p) for p in loc) or "(top level)"
        line = _line_of(text, loc)
        message = error["msg"].removeprefix("Value error, ")
        hint = _REFERENCE
        if error["type"] == "missing":
            message = "this key is required"
        elif error["type"] == "extra_forbidden":
            known = _keys_of(loc[:-1])
            close = close_matches(loc[-1], known)
            message = f"unknown key; did you mean {close}?" if close else "unknown key"
            if known and not close:
                table = "[" + ".".join(map(_toml_key, loc[:-1])) + "]" if loc[:-1] else "the top level"
                hint = f"Known keys in {table}: {', '.join(known)}."
        elif "[key]" in raw_loc and len(loc) == 2:
            section, name = loc[0], loc[1]
            hint = f"Rename [{section}.{_toml_key(name)}] to a name of {NAME_RULE}, e.g. [{section}.{_suggest(name)}]."
        found[loc] = (line or 0, f"{config_path}:{line}" if line else str(config_path), f"{key}: {message}", hint)
    ordered = sorted(found.values(), key=lambda p: p[0])
    return [(where, message, hint) for _, where, message, hint in ordered]


#: Overrides ``[vast] remote_root`` (same ``{instance_id}`` template): where a rented server's workspace is, for this
#: shell. The Vast emulator writes it (every emulated instance is a folder of this machine, not its ``/workspace``).
REMOTE_ROOT_ENV = "TETHER_VAST_REMOTE_ROOT"


def with_environment(config: TetherConfig) -> TetherConfig:
    """``config`` with what the environment overrides: ``TETHER_VAST_REMOTE_ROOT`` (an absolute path) replaces
    ``[vast] remote_root``. ConfigError for a value that is not an absolute path."""
    root = os.environ.get(REMOTE_ROOT_ENV, "")
    if not root:
        return config
    if not root.startswith("/"):
        raise ConfigError(
            f"{REMOTE_ROOT_ENV} must be an absolute path on the server (it is {root!r}).",
            'Set it like [vast] remote_root, e.g. "/workspace", or unset it.',
        )
    return config.model_copy(update={"vast": config.vast.model_copy(update={"remote_root": root})})


def defaults(name: str) -> TetherConfig:
    """The configuration of a folder without ``tether.toml``: every table at its defaults, no experiments or
    hosts."""
    return TetherConfig(project=ProjectConfig(name=name))
