"""The ``tether`` command: the group, and the one place where errors become a sentence and an exit code.

Subcommands are loaded lazily: the group knows each one's module by name (:data:`COMMANDS`) and imports it only
when that command runs (or when ``--help`` lists them all), so ``tether --version`` imports click alone and
``tether progress --json`` never imports rich, pydantic or httpx.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from typing import TYPE_CHECKING, Any, NoReturn

import click

from tether import __version__
from tether.errors import EXIT_FAILED, TetherError
from tether.fmt import did_you_mean

if TYPE_CHECKING:
    from click.shell_completion import CompletionItem

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
    "notify": ("notify_cmd", "notify"),
    "machines": ("machines_cmd", "machines_cmd"),
    "runs": ("history_cmd", "runs_history"),
    "forget": ("history_cmd", "forget"),
}

#: What `tether --help` lists for each command: its docstring's first sentence as click shortens it to 96 characters
#: (a test keeps the two equal), so the listing imports no command module.
SUMMARY_LIMIT = 96
SUMMARIES: dict[str, str] = {
    "agents": "Who uses a server's GPU: list, register, heartbeat, release, repair.",
    "attach": "Open RUN's tmux window (detach again with Ctrl-B D; the run keeps going).",
    "autopilot": "Apply the stop/destroy policies to every rented server, logging each decision with its reason.",
    "cancel": "Stop RUN (SIGTERM to the experiment; the checkpoint journal keeps every finished item).",
    "cost": "Money spent per server, per experiment and per day; what burns now and the next 24 h projected.",
    "dashboard": "Serve a live page of every run, server, GPU and dollar on 127.0.0.1 behind a random token...",
    "destroy": "Destroy a rented server (irreversible; safe to run twice).",
    "down": "Apply the runbook's decision tree to NAME now: more work planned within [policy]...",
    "forget": "Forget run records (never results: files here and on servers stay; a live run is never...",
    "init": "Write a commented starter tether.toml in the current folder, and the example experiment it runs.",
    "logs": "Show the output of RUN (a run id, an experiment name for its latest run, or a prefix of one...",
    "ls": "Servers tether rented: state, $/hr, address, age.",
    "machines": "The machines tether rented on, how each rental went, and which are avoided now (and why).",
    "notify": "The notification URLs ([notify] urls in tether.toml and TETHER_NOTIFY_URLS), shown redacted,...",
    "offers": "Live offers, cheapest first, with $/hr including the disk asked for (no project needed, but...",
    "plan": "Where each experiment should run and why, with its estimated duration and cost.",
    "progress": "Every run's completed/total, rate, ETA and state: one round trip per host.",
    "pull": "Bring results home from HOST (default: every server with runs) and verify them against the...",
    "push": "Upload the project's code to NAME (rsync delta; excludes .git, caches, venvs, results, the...",
    "run": "Start EXPERIMENT detached (in tmux) and print its run id at once.",
    "runs": "Past runs, newest first, with the figures each ended with (frozen when it ended).",
    "start": "Start a stopped rented server and re-read its SSH address (it changes across a restart).",
    "status": "One screen for the project: servers, runs, agents, money and warnings.",
    "stop": "Stop a rented server: the GPU stops billing, the disk is kept (and billed as storage).",
    "sync": "Pull results on every tick and print what changed (run it in a tmux window; Ctrl-C stops).",
    "up": "Set up server NAME: setup.sh, tether's server side, the code, and the .env (mode 0600).",
}


def _shorten(text: str, limit: int) -> str:
    """``text`` cut at a word to fit ``limit`` characters, with "..." when cut."""
    text = text.removesuffix("...")
    if len(text) <= limit:
        return text
    cut = text[: max(0, limit - 3)].rsplit(" ", 1)[0]
    return cut.rstrip(" ,;:") + "..."


class LazyGroup(click.Group):
    """A group whose subcommands are imported when they are asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *self.commands})

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The commands and their summaries (:data:`SUMMARIES`), as click lists them, with no command imported."""
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(n) for n in names)
        rows = [(n, _shorten(SUMMARIES.get(n, ""), limit)) for n in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands or cmd_name not in COMMANDS:
            return self.commands.get(cmd_name)
        module, attr = COMMANDS[cmd_name]
        command = getattr(importlib.import_module(f"tether.cli.{module}"), attr)
        assert isinstance(command, click.Command)
        from tether.cli import examples

        examples.attach(command, f"tether {cmd_name}")
        self.commands[cmd_name] = command
        return command

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """`tether --help` ends with examples too (tether.cli.examples; no command module imported)."""
        from tether.cli import examples

        self.epilog = self.epilog or examples.epilog("tether")
        super().format_epilog(ctx, formatter)

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list[CompletionItem]:
        """Shell completion of command names with their summaries (:data:`SUMMARIES`: no command module imported),
        then of the group's options."""
        from click.shell_completion import CompletionItem

        names = [n for n in self.list_commands(ctx) if n.startswith(incomplete)]
        return [CompletionItem(n, help=SUMMARIES.get(n)) for n in names] + click.Command.shell_complete(
            self, ctx, incomplete
        )

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        """An unknown command is a usage error that names the close ones (`tether prgress`: did you mean
        'progress'?)."""
        name = args[0] if args else ""
        if ctx.resilient_parsing:  # shell completion: a word being typed is not an error to print
            return super().resolve_command(ctx, args)
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            ctx.fail(f"No such command {name!r}.{did_you_mean(name, self.list_commands(ctx))}")
        return super().resolve_command(ctx, args)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tether")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Path to tether.toml (default: the nearest one at or above the current folder).",
)
@click.option("--debug", is_flag=True, help="On an error, show its traceback and the failed command's output.")
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


class _Terminated(KeyboardInterrupt):
    """SIGTERM (``kill PID``, a harness's timeout) is unwound as Ctrl-C is: the live display gives the terminal back,
    the report says what keeps running or billing, and the exit is 143 (128 + SIGTERM)."""


def _on_sigterm(signum: int, frame: object) -> NoReturn:
    raise _Terminated


def main(argv: list[str] | None = None) -> None:
    """Run the ``tether`` command. Every failure ends here: one sentence (and a hint) on stderr, the exit code, and
    with ``--json`` also the flat ``{"error", "hint", "kind", "exit_code"}`` on stdout (schemas/error.json)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():  # in-process callers (tests) on a thread
        _main(argv)
        return
    before = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        _main(argv)
    finally:
        signal.signal(signal.SIGTERM, before)


def _main(argv: list[str] | None) -> None:
    started = time.time()
    args = sys.argv[1:] if argv is None else argv
    ours = args[: args.index("--")] if "--" in args else args  # what follows `--` belongs to the experiment
    debug = "--debug" in ours
    as_json = "--json" in ours
    shared: dict[str, Any] = {}  # the commands' ctx.obj: what they tell this edge (e.g. the server being set up)
    try:
        cli.main(args=args, prog_name="tether", standalone_mode=False, obj=shared)
    except click.exceptions.Abort as raised:  # click's form of Ctrl-C (and of SIGTERM, see _Terminated)
        _interrupted(as_json, started, shared, 143 if isinstance(raised.__context__, _Terminated) else 130)
    except click.ClickException as raised:
        exc = _with_suggestions(raised)
        hint = None
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            hint = f"See `{exc.ctx.command_path} --help`."
        _report(_sentence(exc.format_message()), hint, exc.exit_code, as_json, type(exc).__name__, quiet=True)
        exc.show()
        sys.exit(exc.exit_code)
    except TetherError as exc:
        output = getattr(exc, "output", "")
        if debug:
            import traceback

            traceback.print_exc()
            if output:
                click.echo(f"Its output (last lines):\n{output}", err=True)
        _report(exc.message, exc.hint, exc.exit_code, as_json, type(exc).__name__)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt as raised:
        _interrupted(as_json, started, shared, 143 if isinstance(raised, _Terminated) else 130)
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


def _interrupted(as_json: bool, started: float, shared: dict[str, Any], code: int) -> NoReturn:
    """Ctrl-C or SIGTERM: say what keeps running or billing (servers with their $/hr, runs left running) and the
    commands that pick each up or stop it, from local state (:mod:`tether.leftovers`); exit ``code`` (130 or 143)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut this report short
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # nor a second SIGTERM
    left = None
    try:
        from tether.leftovers import Leftovers, gather
        from tether.paths import tether_home
        from tether.state import open_state

        if not (tether_home() / "state.db").exists():
            left = Leftovers()  # tether never recorded anything here: nothing it started can bill
        else:
            st = open_state()
            try:
                left = gather(st, since=started, pid=os.getpid(), setting_up=shared.get("setting_up"))
            finally:
                st.close()
    except Exception:  # the state cannot be read now: say where to look instead of failing the interruption
        left = None
    if left is None:
        message = "Interrupted; what keeps running or billing could not be read from tether's state."
        hint: str | None = "See `tether status` for every server and its $/hr, and `tether progress` for runs."
    else:
        message = left.sentence()
        hint = "\n".join(left.lines()) or None
    if as_json:
        import json

        doc: dict[str, Any] = {"error": message, "hint": hint, "kind": "Interrupted", "exit_code": code}
        doc["left"] = left.to_json() if left is not None else None
        _write_or_drop(sys.stdout, json.dumps(doc) + "\n")
    _write_or_drop(sys.stderr, message + "\n" + (hint + "\n" if hint else ""))
    import threading

    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        # A job still in flight (a managed run's rental or set-up) would hold the exit until it ends: Ctrl-C
        # means now. Its work is recorded as it goes (the rental before its create), as for a killed process.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _write_or_drop(stream: Any, text: str) -> None:
    """Write and flush; a reader that is gone (Ctrl-C reached the whole pipeline: `tether ... --json | jq`) drops
    the text, and the stream is pointed at /dev/null so that exiting does not fail on it again."""
    try:
        stream.write(text)
        stream.flush()
    except (BrokenPipeError, ValueError):  # ValueError: the stream is closed
        import contextlib

        with contextlib.suppress(OSError, ValueError):  # no descriptor to redirect: nothing more to lose
            os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())


def _with_suggestions(exc: click.ClickException) -> click.ClickException:
    """An unknown option with "did you mean" among the command's own visible options, best match first (click's
    own list includes hidden options and comes in its own punctuation)."""
    if not isinstance(exc, click.NoSuchOption) or exc.ctx is None:
        return exc
    names = [
        name
        for param in exc.ctx.command.get_params(exc.ctx)
        if isinstance(param, click.Option) and not param.hidden
        for name in (*param.opts, *param.secondary_opts)
        if name.startswith("--")
    ]
    name = exc.option_name
    return click.NoSuchOption(name, f"No such option {name!r}.{did_you_mean(name, names)}", ctx=exc.ctx)


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
