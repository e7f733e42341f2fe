"""The examples every command's ``--help`` ends with: lines to paste, written for the project ``tether init`` makes
(its experiment is ``example``; ``gpu1`` is a rented server, ``lab1`` a ``[hosts.lab1]`` of your own).

One table, so each command's own module stays about what it does, ``tether --help`` still imports no command
module, and a test checks that every command has examples and that each one parses as that command's arguments.
"""

from __future__ import annotations

import click

#: A command's path (``tether``, ``tether run``, ``tether machines forget``) -> its examples, each with what it does.
EXAMPLES: dict[str, tuple[tuple[str, str], ...]] = {
    "tether": (
        ("tether init", "a starter tether.toml and its example experiment"),
        ("tether run example --local --follow", "run it here and watch it"),
        ("tether progress", "every run's done/total, rate and ETA"),
    ),
    "tether init": (
        ("tether init", "write tether.toml and example_experiment.py here"),
        ("tether init --name my-study --print", "show the starter file, write nothing"),
    ),
    "tether run": (
        ("tether run example --local", "start it on this machine, detached"),
        ("tether run example --local --follow -- --items 20", "arguments after -- go to the experiment"),
        ("tether run example --on lab1", "on a server of your own"),
        ("tether run example --managed --shards 2 --max-usd 5", "rented servers, kept going, within $5"),
    ),
    "tether progress": (
        ("tether progress", "this project's runs on every host"),
        ("tether progress --all", "every project's runs"),
        ("tether progress --local --json", "this machine only, as JSON"),
    ),
    "tether logs": (
        ("tether logs example", "the latest run of example"),
        ("tether logs example -f", "keep printing until the run ends"),
    ),
    "tether attach": (("tether attach example", "its tmux window (Ctrl-B D leaves it running)"),),
    "tether cancel": (("tether cancel example", "stop the latest run of example"),),
    "tether up": (
        ("tether up gpu1 --profile inference --max-price 0.40", "rent a server and set it up"),
        ("tether up lab1", "set up a [hosts.lab1] server of your own"),
    ),
    "tether push": (("tether push gpu1", "send the code again (rsync delta)"),),
    "tether pull": (
        ("tether pull", "results home from every server with runs"),
        ("tether pull gpu1 example", "one server, one experiment"),
    ),
    "tether sync": (
        ("tether sync --every 10m", "pull every 10 minutes (Ctrl-C stops)"),
        ("tether sync --once", "one pull, for cron"),
    ),
    "tether agents": (
        ("tether agents", "this machine's GPU registry"),
        ("tether agents gpu1 register --id agent-1 --experiment example --gpu-gb 20", "reserve 20 GB on gpu1"),
        ("tether agents gpu1 done agent-1", "and release it"),
    ),
    "tether offers": (
        ("tether offers --profile inference", "the cheapest offers for a profile"),
        ("tether offers --query 'gpu_ram>=24 num_gpus=1' --for example", "with what example would cost"),
    ),
    "tether ls": (
        ("tether ls", "live rented servers with their state and $/hr"),
        ("tether ls --all", "destroyed ones too"),
        ("tether ls --no-refresh --json", "as last recorded, as JSON"),
    ),
    "tether stop": (("tether stop gpu1", "results home, then stop billing the GPU"),),
    "tether start": (("tether start gpu1", "start it again"),),
    "tether destroy": (("tether destroy gpu1", "results verified home, then destroyed"),),
    "tether plan": (
        ("tether plan", "every experiment: where, how long, how much"),
        ("tether plan example --offline", "without asking for today's prices"),
    ),
    "tether cost": (
        ("tether cost", "spent per server, per experiment, per day"),
        ("tether cost --since 2026-01-01 --json", "since a date, as JSON"),
    ),
    "tether down": (("tether down gpu1", "stop or destroy, as the runbook decides"),),
    "tether autopilot": (
        ("tether autopilot --once --dry-run", "what the policies would do now"),
        ("tether autopilot --every 5m", "apply them every 5 minutes"),
    ),
    "tether status": (
        ("tether status", "servers, this project's runs, agents, money, warnings"),
        ("tether status --all", "every project's runs"),
        ("tether status --json", "the same as JSON"),
    ),
    "tether dashboard": (("tether dashboard --open", "serve the page and open it"),),
    "tether notify": (
        ("tether notify", "the notification URLs, redacted"),
        ("tether notify --test", "send a test to each"),
    ),
    "tether machines": (("tether machines", "rentals per machine, and those avoided"),),
    "tether machines forget": (("tether machines forget 41234", "rent on machine 41234 again"),),
    "tether runs": (
        ("tether runs", "this project's past runs, newest first"),
        ("tether runs example --limit 10", "the last 10 of one experiment"),
    ),
    "tether forget": (("tether forget --finished-before 2026-01-01", "forget older records (results stay)"),),
}


def epilog(path: str) -> str | None:
    """The ``Examples:`` block of the command at ``path``, kept line by line by click (``\\b``), or None."""
    examples = EXAMPLES.get(path)
    if not examples:
        return None
    return "\b\nExamples:\n" + "\n".join(f"  # {what}\n  {line}" for line, what in examples)


def attach(command: click.Command, path: str) -> None:
    """Give ``command`` and its subcommands (a group's) their examples, unless one has an epilog of its own."""
    if command.epilog is None:
        command.epilog = epilog(path)
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            attach(sub, f"{path} {name}")
