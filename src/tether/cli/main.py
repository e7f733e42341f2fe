"""The ``tether`` command: the group, and the one place where errors become a sentence and an exit code."""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

import click

from tether import __version__
from tether.errors import EXIT_FAILED, TetherError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tether")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Path to tether.toml (default: the nearest one at or above the current folder).",
)
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, debug: bool) -> None:
    """Run research experiments on this machine, your own servers, or rented Vast.ai GPUs, without losing a
    result or a dollar.

    Start with `tether init`, then `tether run EXPERIMENT --local`.
    """
    ctx.ensure_object(dict)
    ctx.obj["config"] = config_path
    ctx.obj["debug"] = debug


def _register() -> None:
    from tether.cli import agents_cmd, dashboard_cmd, money_cmd, remote_cmd, runs_cmd, vast_cmd

    for module in (runs_cmd, remote_cmd, agents_cmd, vast_cmd, money_cmd, dashboard_cmd):
        module.register(cli)


_register()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    as_json = "--json" in args
    try:
        cli.main(args=args, prog_name="tether", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except TetherError as exc:
        if debug:
            traceback.print_exc()
        _report(exc.message, exc.hint, exc.exit_code, as_json, type(exc).__name__)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except OSError as exc:
        if debug:
            traceback.print_exc()
        _report(
            f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "") + ".",
            None,
            EXIT_FAILED,
            as_json,
            type(exc).__name__,
        )
        sys.exit(EXIT_FAILED)


def _report(message: str, hint: str | None, code: int, as_json: bool, kind: str) -> None:
    import json

    if as_json:
        sys.stdout.write(json.dumps({"error": message, "hint": hint, "kind": kind, "exit_code": code}) + "\n")
    click.echo(f"error: {message}", err=True)
    if hint:
        click.echo(hint, err=True)
