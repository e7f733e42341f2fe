"""``tether notify``: the notification URLs (redacted) and ``--test``, which sends one to each and says which
answered."""

from __future__ import annotations

import click

from tether.cli.common import emit_json, json_option, load_project, new_table, out, say
from tether.errors import ConfigError, NotifyError


@click.command()
@click.option("--test", "test", is_flag=True, help="Send a test notification to every URL and say which answered.")
@json_option
@click.pass_context
def notify(ctx: click.Context, test: bool, as_json: bool) -> None:
    """The notification URLs ([notify] urls in tether.toml and TETHER_NOTIFY_URLS), shown redacted, and which of
    them servers send to themselves; --test sends one to each.

    Exit codes with --test: 0 when at least one answered, 1 when none did, 2 when none is configured.
    """
    from tether import notify as notifying
    from tether.server import notify as server_notify

    project = load_project(ctx)
    urls = notifying.configured_urls(project)
    if test and not urls:
        raise ConfigError(
            "No notification URL is configured.",
            f"Add [notify] urls = [...] to tether.toml or set {notifying.ENV_URLS}, e.g. ntfy://ntfy.sh/YOUR_TOPIC.",
        )
    answers = notifying.send_test(project) if test else []
    rows = []
    for i, url in enumerate(urls):
        row: dict[str, object] = {"url": notifying.redact(url), "server": server_notify.supports(url)}
        if test:
            row.update(answered=answers[i].answered, error=answers[i].error)
        rows.append(row)
    doc = {"tested": test, "urls": rows}
    answered = sum(1 for a in answers if a.answered)
    if test and not answered:
        raise NotifyError(
            f"None of the {len(urls)} notification URL(s) answered: "
            + "; ".join(f"{a.url}: {a.error}" for a in answers)
            + ".",
            "Check each URL's service and token (`tether notify` lists them redacted).",
        )
    if as_json:
        emit_json(doc)
        return
    if not urls:
        say(f"No notification URL is configured: add [notify] urls = [...] to tether.toml or set {notifying.ENV_URLS}.")
        return
    table = new_table()
    for column in ("url", "sent from servers", *(("answered", "why not") if test else ())):
        table.add_column(column)
    for row in rows:
        cells = [str(row["url"]), "yes" if row["server"] else "no (from this machine)"]
        if test:
            cells += ["yes" if row["answered"] else "no", str(row["error"] or "")]
        table.add_row(*cells)
    out.print(table)
    if test:
        say(f"{answered} of {len(urls)} notification URL(s) answered.")
