"""The ``tether`` command: the group, and the one place where errors become a sentence and an exit code.

Subcommands are loaded lazily: the group knows each one's module by name (:data:`COMMANDS`) and imports it only
when that command runs (or when ``--help`` lists them all), so ``tether --version`` imports click alone and
``tether progress --json`` never imports rich, pydantic or httpx.
"""

from __future__ import annotations

import importlib
import sys

import click

from tether import __version__
from tether.errors import EXIT_FAILED, TetherError

#: Every subcommand: its name -> (module under tether.cli, the click command's attribute there).
COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("runs_cmd", "init"),
    "run": ("runs_cmd", "run"),
    "progress": ("runs_cmd", "progress"),
    "logs": ("runs_cmd", "logs"),
    "attach": ("runs_cmd", "attach"),
    "cancel": ("runs_cmd", "cancel"),
    "up": ("remote_cmd", "up"),
    "push": ("remote_cmd", "push"),
    "pull": ("remote_cmd", "pull"),
    "sync": ("remote_cmd", "sync"),
    "agents": ("agents_cmd", "agents"),
    "offers": ("vast_cmd", "offers"),
    "ls": ("vast_cmd", "ls_cmd"),
    "stop": ("vast_cmd", "stop"),
    "start": ("vast_cmd", "start"),
    "destroy": ("vast_cmd", "destroy"),
    "plan": ("money_cmd", "plan_cmd"),
    "cost": ("money_cmd", "cost_cmd"),
    "down": ("money_cmd", "down"),
    "autopilot": ("money_cmd", "autopilot_cmd"),
    "status": ("money_cmd", "status"),
    "dashboard": ("dashboard_cmd", "dashboard"),
    "machines": ("machines_cmd", "machines_cmd"),
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported when they are asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands or cmd_name not in COMMANDS:
            return self.commands.get(cmd_name)
        module, attr = COMMANDS[cmd_name]
        command = getattr(importlib.import_module(f"tether.cli.{module}"), attr)
        assert isinstance(command, click.Command)
        self.commands[cmd_name] = command
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tether")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Path to tether.toml (default: the nearest one at or above the current folder).",
)
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, debug: bool) -> None:
    """Run research experiments on this machine, your own servers, or rented Vast.ai GPUs, without losing a
    result or a dollar.

    Start with `tether init`, then `tether run EXPERIMENT --local`. Outside a project, offers, agents, ls, cost,
    status and progress work with the defaults. Every --json document has a schema in tether/schemas/.
    """
    ctx.ensure_object(dict)
    ctx.obj["config"] = config_path  # a str: tether.cli.common.load_project makes it a Path (pathlib costs ms)
    ctx.obj["debug"] = debug


def main(argv: list[str] | None = None) -> None:
    """Run the ``tether`` command. Every failure ends here: one sentence (and a hint) on stderr, the exit code, and
    with ``--json`` also the flat ``{"error", "hint", "kind", "exit_code"}`` on stdout (schemas/error.json)."""
    args = sys.argv[1:] if argv is None else argv
    ours = args[: args.index("--")] if "--" in args else args  # what follows `--` belongs to the experiment
    debug = "--debug" in ours
    as_json = "--json" in ours
    try:
        cli.main(args=args, prog_name="tether", standalone_mode=False)
    except click.exceptions.Abort:
        _report("Aborted.", None, 130, as_json, "Aborted", quiet=True)
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        hint = None
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            hint = f"See `{exc.ctx.command_path} --help`."
        _report(_sentence(exc.format_message()), hint, exc.exit_code, as_json, type(exc).__name__, quiet=True)
        exc.show()
        sys.exit(exc.exit_code)
    except TetherError as exc:
        if debug:
            import traceback

            traceback.print_exc()
        _report(exc.message, exc.hint, exc.exit_code, as_json, type(exc).__name__)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _report("Interrupted.", None, 130, as_json, "KeyboardInterrupt", quiet=True)
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except OSError as exc:
        if debug:
            import traceback

            traceback.print_exc()
        _report(
            f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "") + ".",
            None,
            EXIT_FAILED,
            as_json,
            type(exc).__name__,
        )
        sys.exit(EXIT_FAILED)


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."


def _report(message: str, hint: str | None, code: int, as_json: bool, kind: str, *, quiet: bool = False) -> None:
    """The error as JSON on stdout (``as_json``) and, unless ``quiet`` (the caller shows it), on stderr."""
    import json

    if as_json:
        sys.stdout.write(json.dumps({"error": message, "hint": hint, "kind": kind, "exit_code": code}) + "\n")
        sys.stdout.flush()
    if quiet:
        return
    click.echo(f"error: {message}", err=True)
    if hint:
        click.echo(hint, err=True)
