"""``tether dashboard``: one live page of every run, server, GPU and dollar."""

from __future__ import annotations

import click

from tether.cli.common import load_project, parse_every, say, warn


@click.command()
@click.option("--port", type=int, default=8787, show_default=True, help="Port to serve on (0: any free one).")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Interface to listen on. Anything but loopback exposes the page to your network (the token still guards it).",
)
@click.option(
    "--poll",
    default="5s",
    show_default=True,
    help="How often to scan every host's runs (one round trip each, as `progress`); servers, GPUs and the "
    "provider every 30s; local changes at once.",
)
@click.option(
    "--open",
    "open_browser",
    is_flag=True,
    help="Open the page in a browser (through a file only you can read: the token is never on a command line).",
)
@click.option("--all", "every_project", is_flag=True, help="Every project's runs, not only this project's.")
@click.pass_context
def dashboard(ctx: click.Context, port: int, host: str, poll: str, open_browser: bool, every_project: bool) -> None:
    """Serve a live page of every run, server, GPU and dollar on 127.0.0.1 behind a random token (Ctrl-C stops).

    The URL with its token is printed on stdout. All pages share one poller: each host is asked once per --poll.
    """
    from tether.dashboard.server import Dashboard
    from tether.scope import Scope

    project = load_project(ctx)
    scope = Scope.of(project, every_project)
    if host not in ("127.0.0.1", "localhost", "::1"):
        warn(f"serving on {host}: other machines on that network can reach the page (the token still guards it).")
    board = Dashboard(project, host=host, port=port, poll_s=parse_every(poll), scope=scope)

    def ready(url: str) -> None:
        click.echo(url)
        say(f"Dashboard of {scope.label} at {url} (every host observed each {poll}; Ctrl-C stops).")
        if open_browser:
            import webbrowser

            opener = board.write_opener()
            if not webbrowser.open(opener.as_uri()):
                warn(f"no browser could be started; open {opener.as_uri()} (or the URL above) yourself.")

    try:
        board.serve(ready)
    except KeyboardInterrupt:
        say("Dashboard stopped.")
