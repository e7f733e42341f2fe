"""``tether up``, ``push``, ``pull``, ``sync``: servers reached over SSH (configured hosts and rented instances)."""

from __future__ import annotations

import time

import click

from tether import provision
from tether import pull as pulling
from tether.cli.common import context, emit_json, json_option, parse_every, say
from tether.cli.live import display, shown
from tether.errors import SyncError
from tether.fmt import count
from tether.hosts import resolve
from tether.progress import End, Step


@click.command()
@click.argument("name")
@click.option(
    "--no-env", is_flag=True, help="Do not upload the project's .env, now or on later pushes (until `push --env`)."
)
@click.option("--profile", default=None, help="Rent a Vast.ai server of this profile (api, inference, finetune...).")
@click.option("--offer", "offer_id", default=None, help="Rent this Vast.ai offer id.")
@click.option("--image", default=None, help="Docker image for a rented server.")
@click.option("--disk", "disk_gb", type=float, default=None, help="Disk size in GB for a rented server.")
@click.option("--max-price", type=float, default=None, metavar="USD_PER_HR", help="Refuse offers above this $/hr.")
@json_option
@click.pass_context
def up(
    ctx: click.Context,
    name: str,
    no_env: bool,
    profile: str | None,
    offer_id: str | None,
    image: str | None,
    disk_gb: float | None,
    max_price: float | None,
    as_json: bool,
) -> None:
    """Set up server NAME: setup.sh, tether's server side, the code, and the .env (mode 0600).

    NAME is a [hosts.NAME] entry, or a server to rent from Vast.ai with --profile/--offer (then tether rents the
    fitting offer with the lowest expected cost, and says why it passed over each cheaper one). Running it twice
    changes nothing and is fast.
    """
    ctx.obj["setting_up"] = name  # a Ctrl-C now says `tether up NAME` finishes the set-up
    with (
        context(ctx, needs="the code it uploads (the project's folder)") as c,
        shown(c, f"tether up {name}", enabled=not as_json),
    ):
        doc = provision.bring_up(
            c,
            name,
            env=not no_env,
            profile=profile,
            offer_id=offer_id,
            image=image,
            disk_gb=disk_gb,
            max_price=max_price,
        )
    if as_json:
        emit_json(doc)
        return
    say(
        f"{name} is ready: setup {doc['setup']}, server side {doc['server_side']}, "
        f"pushed {count(doc['push']['files'], 'file')} ({doc['push']['bytes']} bytes), .env {doc['env']} "
        f"in {doc['seconds']}s."
    )
    failed = doc.get("failed_rentals") or []
    if failed:
        spent = sum(f["cost_usd"] for f in failed)
        say(
            f"{len(failed)} host(s) failed their preflight before this one and were destroyed (verified), "
            f"${spent:.4f} in all; `tether machines` says why."
        )


@click.command()
@click.argument("name")
@click.option("--env", "env", is_flag=True, help="Upload the .env even after `tether up --no-env` (and from now on).")
@json_option
@click.pass_context
def push(ctx: click.Context, name: str, env: bool, as_json: bool) -> None:
    """Upload the project's code to NAME (rsync delta; excludes .git, caches, venvs, results, the env file,
    .tetherignore), then the .env (mode 0600) unless `tether up --no-env` said not to."""
    with context(ctx, needs="the code it uploads (the project's folder)") as c:
        target = resolve(c.project, name, c.state)
        doc = provision.push_code(c, target)
        doc["env"] = provision.push_env(c, target, force=env)
    if as_json:
        emit_json({"host": name, **doc})
        return
    held = doc["env"] == provision.ENV_HELD_BACK
    tail = "; .env not uploaded (`tether up --no-env`; `tether push --env` uploads it)" if held else ""
    say(f"Pushed {doc['files']} changed files ({doc['bytes']} bytes) to {name}{tail}.")


@click.command()
@click.argument("host", required=False)
@click.argument("experiments", nargs=-1)
@json_option
@click.pass_context
def pull(ctx: click.Context, host: str | None, experiments: tuple[str, ...], as_json: bool) -> None:
    """Bring results home from HOST (default: every server with runs) and verify them against the server."""
    with (
        context(ctx, needs="the results folders of its experiments") as c,
        shown(c, "tether pull", enabled=not as_json),
    ):
        reports = [r.to_json() for r in pulling.pull_all(c, host, experiments)]
    if as_json:
        emit_json({"pulls": reports})
        return
    if not reports:
        say("No server has runs yet; nothing to pull.")
    for r in reports:
        status = "verified" if r["verified"] else f"NOT verified ({count(len(r['mismatched']), 'file')} differ)"
        moved = count(r["bytes_transferred"], "byte")
        say(f"{r['host']}: {count(len(r['changed']), 'file')} changed, {moved} moved, {status}.")
        skipped = r["skipped_links"]
        if skipped:
            names = ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else "")
            say(f"{r['host']}: {len(skipped)} links that point outside the results folders were not copied: {names}.")
    if any(not r["verified"] for r in reports):
        raise SyncError("Some results did not arrive whole.", "Run `tether pull` again once the runs settle.")


@click.command()
@click.argument("host", required=False)
@click.option("--every", default="30m", show_default=True, help="How often to pull (e.g. 30m, 90s, 1h).")
@click.option("--once", is_flag=True, help="Pull once and exit (for cron).")
@json_option
@click.pass_context
def sync(ctx: click.Context, host: str | None, every: str, once: bool, as_json: bool) -> None:
    """Pull results on every tick and print what changed (run it in a tmux window; Ctrl-C stops)."""
    period = parse_every(every)
    report = ctx.with_resource(display("tether sync", enabled=not as_json))  # drawn until the command ends
    while True:
        with context(ctx, needs="the results folders of its experiments") as c:
            c.report = report
            tick = [outcome.to_json() for outcome in pulling.sync_tick(c, host)]
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        if as_json:
            emit_json({"time": stamp, "pulls": tick})
        else:
            for r in tick:
                if "error" in r:
                    say(f"{stamp} {r['host']}: pull failed: {r['error']}")
                else:
                    changed = ", ".join(r["changed"][:5]) + (" ..." if len(r["changed"]) > 5 else "")
                    say(f"{stamp} {r['host']}: {len(r['changed'])} changed {changed}".rstrip())
        if once:
            if any("error" in r for r in tick):
                raise SyncError("At least one pull failed.", "See the lines above.")
            return
        report(Step("next pull", f"at {time.strftime('%H:%M:%S', time.localtime(time.time() + period))}", idle=True))
        time.sleep(period)  # the tick period itself is what the user asked for
        report(End("next pull"))
