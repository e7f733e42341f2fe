"""The CLI's contract through the real command: what works outside a project and what says it needs one, what a
fast command imports, and that every ``--json`` document (failures included) has the shape its shipped schema
describes."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import click
import pytest

from tests.helpers import tether, tether_checked, tether_json, wait_status, write_project
from tether import schemas
from tether.cli.main import COMMANDS
from tether.emulator.vast import VastEmulator, load_offer_book, null_host_factory

HEAVY = ("rich", "pydantic", "httpx")

#: A script that runs `tether ARGS` in this process and then prints the top-level modules it imported, last.
PROBE = """\
import json, sys
sys.argv = ["tether", *json.loads(sys.argv[1])]
from tether.cli.main import main
try:
    main()
except SystemExit:
    pass
sys.stdout.write("\\nMODULES " + json.dumps(sorted({m.split(".")[0] for m in sys.modules})) + "\\n")
"""


def imported(*args: str, cwd: Path) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(args)], cwd=cwd, capture_output=True, text=True, check=False
    )
    last = result.stdout.rstrip().splitlines()[-1]
    assert last.startswith("MODULES "), result.stdout + result.stderr
    return set(json.loads(last.removeprefix("MODULES ")))


def test_version_imports_neither_rich_nor_pydantic_nor_httpx(tmp_path: Path) -> None:
    assert not imported("--version", cwd=tmp_path) & set(HEAVY)
    assert tether("--version", cwd=tmp_path).stdout.startswith("tether, version ")


@pytest.mark.parametrize("inside", [True, False], ids=["in-a-project", "no-project"])
def test_agents_and_progress_json_import_only_what_they_use(tmp_path: Path, inside: bool) -> None:
    cwd = write_project(tmp_path / "p") if inside else tmp_path
    tether_json("progress", "--local", cwd=cwd)  # the first command in a project checks its tether.toml
    for args in (("agents", "--local", "--json"), ("progress", "--local", "--json")):
        assert not imported(*args, cwd=cwd) & set(HEAVY), args


def test_a_changed_tether_toml_is_checked_again(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p")
    tether_json("progress", "--local", cwd=project)
    toml = project / "tether.toml"
    toml.write_text(toml.read_text().replace("concurrency", "concurrency").replace('kind = "api"', 'kind = "gpu"'))
    bad = tether_checked("progress", "--local", schema="progress", cwd=project, code=2)
    assert bad["kind"] == "ConfigError" and f"{toml}:" in bad["error"] and "kind" in bad["error"]


def test_every_command_is_loaded_lazily_and_listed_in_help(tmp_path: Path) -> None:
    modules = {module for module, _ in COMMANDS.values()}
    found = {
        (module, name): value
        for module in modules
        for name, value in vars(importlib.import_module(f"tether.cli.{module}")).items()
        if isinstance(value, click.Command)
    }
    # A group's subcommands are reached through their group, not listed at the top.
    nested = {
        key for key, cmd in found.items() if any(cmd in getattr(g, "commands", {}).values() for g in found.values())
    }
    assert set(found) - nested == set(COMMANDS.values())
    shown = tether("--help", cwd=tmp_path).stdout
    assert all(f"  {name} " in shown for name in COMMANDS)


def test_help_lists_every_command_with_its_own_summary_and_imports_none() -> None:
    from tether.cli.main import SUMMARIES, SUMMARY_LIMIT

    for name, (module, attr) in COMMANDS.items():
        command = getattr(importlib.import_module(f"tether.cli.{module}"), attr)
        assert SUMMARIES[name] == command.get_short_help_str(limit=SUMMARY_LIMIT), name
    assert set(SUMMARIES) == set(COMMANDS)
    probe = (
        "import sys\n"
        "from tether.cli.main import cli\n"
        "try:\n"
        "    cli.main(['--help'], prog_name='tether', standalone_mode=False)\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('tether.cli.')))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip().splitlines()[-1] == "['tether.cli.examples', 'tether.cli.main']"  # its examples


def test_every_json_command_has_a_schema_and_every_schema_a_command() -> None:
    with_json = set()
    for name, (module, attr) in COMMANDS.items():
        command = getattr(importlib.import_module(f"tether.cli.{module}"), attr)
        if any(isinstance(p, click.Option) and "--json" in p.opts for p in command.params):
            with_json.add(name)
    assert with_json == set(schemas.names()) - {"defs", "error"}
    for name in schemas.names():
        assert schemas.load(name)["$id"] == f"{schemas.BASE_URI}{name}.json"


def test_outside_a_project_the_read_commands_work_with_the_defaults(tmp_path: Path) -> None:
    empty = tmp_path / "nowhere"
    empty.mkdir()
    progress = tether_checked("progress", "--local", schema="progress", cwd=empty)
    assert [{k: h[k] for k in ("host", "runs", "error")} for h in progress["hosts"]] == [
        {"host": "local", "runs": [], "error": None}
    ]
    listing = tether_checked("agents", "--local", schema="agents", cwd=empty)
    assert listing["entries"] == []
    admitted = tether_checked(
        "agents", "--local", "register", "--id", "a1", "--experiment", "e", "--gpu-gb", "0", schema="agents", cwd=empty
    )
    assert admitted["entry"]["status"] == "running"
    assert tether_checked("agents", "heartbeat", "a1", schema="agents", cwd=empty)["entry"]["id"] == "a1"
    assert [e["id"] for e in tether_checked("agents", schema="agents", cwd=empty)["entries"]] == ["a1"]
    assert tether_checked("agents", "done", "a1", schema="agents", cwd=empty)["entry"]["status"] == "completed"
    assert tether_checked("agents", "repair", schema="agents", cwd=empty)["entries"][0]["id"] == "a1"
    assert tether_checked("ls", schema="ls", cwd=empty) == {"instances": []}
    assert tether_checked("cost", schema="cost", cwd=empty)["total_usd"] == 0
    status = tether_checked("status", schema="status", cwd=empty)
    assert status["servers"] == [] and status["runs"] == []
    assert sorted(p.name for p in empty.iterdir()) == []  # nothing written where the user stands


def test_offers_outside_a_project_ask_the_provider_with_the_default_profile(tmp_path: Path) -> None:
    with VastEmulator(load_offer_book(), host_factory=null_host_factory) as emu:
        env = {"VAST_URL": emu.url, "VAST_API_KEY": emu.api_key}
        doc = tether_checked("offers", "--limit", "3", schema="offers", cwd=tmp_path, env=env)
        assert doc["profile"] == "api" and len(doc["offers"]) == 3
        prices = [o["dph_total"] for o in doc["offers"]]
        assert prices == sorted(prices)
        gpu = tether_checked("offers", "--profile", "inference", schema="offers", cwd=tmp_path, env=env)
        assert all(o["gpu_ram_gb"] >= 24 for o in gpu["offers"])


@pytest.mark.parametrize(
    ("args", "part"),
    [
        (("run", "exp", "--local"), "its [experiments.NAME] table"),
        (("up", "box", "--profile", "api"), "the code it uploads"),
        (("push", "box"), "the code it uploads"),
        (("pull",), "the results folders"),
        (("sync", "--once"), "the results folders"),
        (("plan",), "the [experiments] it plans"),
        (("down", "box"), "the results folders it pulls into first"),
        (("stop", "box"), "the results folders it pulls into first"),
        (("destroy", "box"), "the results folders it pulls into first"),
        (("autopilot", "--once"), "the results folders it pulls into first"),
        (("offers", "--for", "exp"), "the [experiments.exp] table that --for names"),
    ],
)
def test_commands_that_need_a_project_say_which_part(tmp_path: Path, args: tuple[str, ...], part: str) -> None:
    doc = tether_checked(*args, schema="error", cwd=tmp_path, code=2)
    assert doc["kind"] == "ConfigError"
    assert doc["error"].startswith(f"`tether {args[0]}` needs a project for {part}")
    assert f"no tether.toml in {tmp_path.resolve()}" in doc["error"] and doc["error"].count(". ") == 0
    assert "tether init" in doc["hint"]
    shown = tether(*args, cwd=tmp_path)
    assert shown.stdout == "" and shown.stderr.startswith(f"error: `tether {args[0]}` needs a project")
    assert list(tmp_path.iterdir()) == []


def test_local_json_documents_and_failures_have_their_schemas(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", items=2000)
    result = tether("run", "exp", "--local", "--json", "--", "--delay", "0.05", cwd=project)
    assert result.returncode == 0, result.stderr
    started = json.loads(result.stdout)
    schemas.validate("run", started)
    wait_status(project, started["run_id"], {"running"})
    progress = tether_checked("progress", schema="progress", cwd=project)
    assert progress["hosts"][0]["runs"][0]["id"] == started["run_id"]
    cancelled = tether_checked("cancel", started["run_id"], schema="cancel", cwd=project)
    assert cancelled["cancelled"] is True
    tether_checked("progress", "--local", schema="progress", cwd=project)
    tether_checked("plan", "--offline", schema="plan", cwd=project)
    tether_checked("status", schema="status", cwd=project)
    tether_checked("cost", "--no-refresh", schema="cost", cwd=project)
    # Failures: a config error, a usage error, a refused registration, an unknown run, an unknown host.
    assert tether_checked("run", "nope", "--local", schema="run", cwd=project, code=2)["kind"] == "ConfigError"
    assert tether_checked("ls", "--bogus", schema="ls", cwd=project, code=2)["kind"] == "NoSuchOption"
    no_room = tether_checked(
        "agents",
        "register",
        "--id",
        "g",
        "--experiment",
        "e",
        "--gpu-gb",
        "8",
        schema="agents",
        cwd=project,
        env={"PATH": "/usr/bin:/bin"},
        code=4,
    )
    assert no_room["kind"] == "NoRoom" and "no GPU" in no_room["error"]
    assert tether_checked("cancel", "no-such-run", schema="cancel", cwd=project, code=2)["error"]
    assert tether_checked("progress", "nohost", schema="progress", cwd=project, code=2)["kind"] == "ConfigError"
