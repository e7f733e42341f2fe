"""Getting a server ready for runs: setup.sh, tether's server side, the code (rsync delta) and the .env (0600).

A rented Vast.ai instance is such a server too, once its provider has told us its address. Bringing results home
is :mod:`tether.pull`.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import tether
from tether import setup_script, vocab, watchdogs
from tether.config import Project
from tether.context import Ctx
from tether.cost import FREE_STATES
from tether.errors import CommandFailed, ConfigError, NoCapacity, PolicyRefusal, RemoteError, SyncError
from tether.hosts import Target, remote_server_argv
from tether.ledger import Budget
from tether.machines import Outcome
from tether.paths import tether_home
from tether.progress import End, Step
from tether.server.notify import NOTIFY_FILE
from tether.transport.ssh import put_bytes_argv

#: Never pushed: version control, caches, virtualenvs, secrets (uploaded separately), tether's own files. The
#: ``env_file`` named in ``[project]`` is excluded too (:func:`env_exclude`).
ALWAYS_EXCLUDED = [
    ".git/",
    ".hg/",
    "__pycache__/",
    "*.pyc",
    ".venv/",
    "venv/",
    ".mypy_cache/",
    ".pytest_cache/",
    ".ruff_cache/",
    "node_modules/",
    "*.egg-info/",
    ".tether/",
    ".env",
]
IGNORE_FILE = ".tetherignore"
SERVER_PARTS = ("__init__.py", "atomic.py", "errors.py", "vocab.py", "retry.py", "py.typed", "checkpoint", "server")


def _rsync_literal(path: str) -> str:
    """``path`` as an rsync pattern that matches only itself (wildcard characters escaped)."""
    return "".join("\\" + ch if ch in "*?[\\" else ch for ch in path)


def env_exclude(project: Project) -> str | None:
    """The anchored exclude for the ``env_file`` of ``[project]`` when it lies inside the project (else None)."""
    root = project.root
    path = Path(os.path.normpath(project.env_file()))
    for candidate in (path, path.resolve()):
        try:
            rel = candidate.relative_to(root)
        except ValueError:
            continue
        if rel.parts:
            return "/" + _rsync_literal(rel.as_posix())
    return None


def push_excludes(project: Project) -> list[str]:
    """rsync exclude patterns for a code push: the defaults, the env file, results folders and ``.tetherignore``."""
    patterns = list(ALWAYS_EXCLUDED)
    secret = env_exclude(project)
    if secret is not None and secret != "/.env":
        patterns.append(secret)
    patterns += sorted({f"/{exp.results.strip('/')}/" for exp in project.config.experiments.values()})
    patterns += project.config.project.sync_excludes
    ignore = project.root / IGNORE_FILE
    if ignore.is_file():
        for line in ignore.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                patterns.append(line)
    return patterns


def _excluded(rel: str, is_dir: bool, patterns: Sequence[str]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    for pat in patterns:
        dir_only = pat.endswith("/")
        core = pat.rstrip("/")
        if dir_only and not is_dir:
            continue
        if core.startswith("/"):
            if fnmatch.fnmatch(rel, core[1:]):
                return True
        elif fnmatch.fnmatch(name, core) or fnmatch.fnmatch(rel, core):
            return True
    return False


def code_fingerprint(project: Project) -> str:
    """A hash of the names, sizes and mtimes of the files a push would send (to skip pushing unchanged code)."""
    patterns = push_excludes(project)
    digest = hashlib.sha256()
    root = project.root
    for folder, dirs, files in os.walk(root):
        rel_folder = os.path.relpath(folder, root)
        rel_folder = "" if rel_folder == "." else rel_folder + "/"
        dirs[:] = sorted(d for d in dirs if not _excluded(rel_folder + d, True, patterns))
        for name in sorted(files):
            rel = rel_folder + name
            if _excluded(rel, False, patterns):
                continue
            try:
                st = os.stat(os.path.join(folder, name))
            except OSError:
                continue
            digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def server_lib_stage() -> tuple[Path, str]:
    """A folder holding only the stdlib-only parts of tether that run on servers, and their content hash."""
    package = Path(tether.__file__).parent
    files: list[Path] = []
    for part in SERVER_PARTS:
        path = package / part
        if path.is_dir():
            files += sorted(p for p in path.rglob("*.py"))
        elif path.exists():
            files.append(path)
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    version = digest.hexdigest()[:16]
    stage = tether_home() / "serverlib" / version
    if not (stage / "tether" / ".complete").exists():
        # A folder of its own per staging (several set-ups run side by side in one process: the managed
        # controller's shards), and a complete stage is never removed: the first one there is used by all.
        stage.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=stage.parent))
        try:
            for path in files:
                dest = tmp / "tether" / path.relative_to(package)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, dest)
            (tmp / "tether" / ".complete").write_text(version)
            if stage.exists() and not (stage / "tether" / ".complete").exists():
                shutil.rmtree(stage, ignore_errors=True)  # an unfinished stage an older tether left
            with contextlib.suppress(OSError):  # another staging got there first: its stage is the same
                os.replace(tmp, stage)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return stage, version


def check_python(target: Target) -> tuple[str, str]:
    """The server's Python version and the real path of its interpreter (RemoteError if it is missing or old)."""
    python = target.python
    probe = "import sys; print('%d.%d' % sys.version_info[:2]); print(sys.executable)"
    result = target.transport.run([python, "-c", probe], check=False)
    if result.returncode == 127:
        raise RemoteError(
            f"{python} is not installed on {target.name}.",
            f'Install it there (e.g. `apt-get install -y python3`) or set python = "..." under [hosts.{target.name}].',
        )
    if result.returncode != 0:
        raise CommandFailed(f"{python} does not run on {target.name}.", result.output_tail(), result.returncode)
    lines = result.text().split("\n")
    version, executable = lines[0].strip(), (lines[1].strip() if len(lines) > 1 else "") or python
    major, _, minor = version.partition(".")
    if (int(major), int(minor or 0)) < (3, 8):
        raise RemoteError(f"{target.name} has Python {version}; tether's server side needs 3.8 or newer.")
    return version, executable


def _disk_full(exc: Exception, target: Target, step: str) -> RemoteError | None:
    text = str(getattr(exc, "output", "")) + str(exc)
    if "No space left on device" in text or "disk full" in text.lower():
        return RemoteError(
            f"The disk on {target.name} is full ({step} stopped).",
            "Free space there (`du -sh /workspace/*`) or rent a bigger disk; nothing local was changed.",
        )
    return None


def install_server_side(target: Target) -> str:
    """Copy tether's server side to ``<root>/.tether/lib`` (no internet needed) and check it runs."""
    stage, version = server_lib_stage()
    try:
        target.transport.push(stage / "tether", f"{target.lib_dir}/tether", delete=True)
    except (SyncError, CommandFailed) as exc:
        raise _disk_full(exc, target, "installing tether's server side") or exc from None
    result = target.transport.run([*target.server_argv, "version"], check=False)
    if result.returncode != 0 or result.text().strip() != tether.__version__:
        raise RemoteError(f"tether's server side does not run on {target.name}.", result.output_tail() or "No output.")
    return version


def setup_argv(path: str) -> list[str]:
    """Store setup.sh (given on stdin) at ``path`` with mode 0700, atomically, and run it: one round trip."""
    argv = put_bytes_argv(path, 0o700)
    argv[2] += '; exec bash -- "$dest"'
    return argv


def run_setup(project: Project, target: Target) -> bool:
    """Run setup.sh on the target; True if it did work, False if it had run before (same script)."""
    script = setup_script.render(project, target.root, target.python, no_auto_tmux=target.rented)
    path = f"{target.root}/{vocab.SETUP_SCRIPT}"
    try:
        result = target.transport.run(setup_argv(path), input=script.encode(), timeout=3600)
    except CommandFailed as exc:
        raise _disk_full(exc, target, "setup") or CommandFailed(
            f"setup.sh failed on {target.name}.", (exc.output or "")[-2000:], exc.returncode, exc.output
        ) from None
    return "already done" not in result.text()


def env_source(project: Project) -> Path | None:
    """The .env to upload; None when the default ``.env`` is absent; ConfigError when a named env_file is missing."""
    path = project.env_file()
    if path.is_file():
        return path
    if project.config.project.env_file != ".env":
        raise ConfigError(
            f"The env file {path} named in {project.path} does not exist; nothing was uploaded.",
            "Create it, or fix env_file under [project].",
        )
    return None


def upload_env(project: Project, target: Target) -> bool:
    """Upload the project's .env with mode 0600 through stdin. Returns False when there is none to upload."""
    path = env_source(project)
    if path is None:
        return False
    target.transport.put_bytes(path.read_bytes(), f"{target.code_dir}/.env", 0o600)
    return True


ENV_UPLOADED = "uploaded (mode 0600)"
ENV_HELD_BACK = "not uploaded (`tether up --no-env`)"


def push_env(ctx: Ctx, target: Target, *, force: bool = False) -> str:
    """Upload the .env after a push unless ``tether up --no-env`` said not to for this host; ``force``
    (``tether push --env``) uploads it anyway and lifts that. Says what happened: uploaded, held back or none."""
    if not force and ctx.state.host_facts(target.name).no_env:
        return ENV_HELD_BACK
    uploaded = upload_env(ctx.project, target)
    if force:
        ctx.state.set_host_facts(target.name, no_env=False)
    return ENV_UPLOADED if uploaded else "none"


def upload_notify(ctx: Ctx, target: Target) -> None:
    """Write ``<root>/.tether/notify.json`` (mode 0600, through stdin like the .env): the notification URLs the
    server's run wrapper and watchdog announce with (an empty list when none are configured: they stay silent)."""
    from tether import notify

    doc = notify.server_document(ctx.project, target.name, target.code_dir)
    target.transport.put_bytes(doc, f"{target.root}/{NOTIFY_FILE}", 0o600)


def push_code(ctx: Ctx, target: Target) -> dict[str, Any]:
    """The code by rsync delta, and the notification URLs beside it (:func:`upload_notify`)."""
    project = ctx.project
    try:
        stats = target.transport.push(project.root, target.code_dir, excludes=push_excludes(project))
        upload_notify(ctx, target)
    except (SyncError, CommandFailed) as exc:
        raise _disk_full(exc, target, "the push") or exc from None
    ctx.state.set_host_facts(target.name, pushed_fingerprint=code_fingerprint(project))
    return {"files": stats.files_transferred, "bytes": stats.bytes_transferred, "total": stats.total_size}


def root_taken_by(found: Any, mine: tuple[str, str], live: dict[tuple[str, str], str]) -> str | None:
    """Whose root a rented server's root is (pure): the name of another rental this machine holds, alive, that
    ``found`` (the root's :data:`~tether.vocab.RENTAL_FILE`, parsed) names; None when the root is free, this
    rental's own, or left by a rental that is gone (a reused disk)."""
    if not isinstance(found, dict):
        return None
    owner = (str(found.get("provider")), str(found.get("instance_id")))
    return None if owner == mine else live.get(owner)


def claim_root(ctx: Ctx, target: Target) -> None:
    """Make a rented server's root this rental's before anything is installed there: two rentals must never
    share one folder (their runs, results and watchdog keys would mix; emulated instances on one machine do
    unless each has its own root). PolicyRefusal when another live rental's mark is there."""
    rec = ctx.state.instance(target.name)
    if rec is None or rec.instance_id is None:
        return
    mark = f"{target.root.rstrip('/')}/{vocab.RENTAL_FILE}"
    mine = (rec.provider, str(rec.instance_id))
    doc = {"provider": mine[0], "instance_id": mine[1], "name": target.name}
    # One round trip: the mark there is read, or (on a fresh server) this rental's is written.
    seen = target.transport.run(claim_argv(mark), input=json.dumps(doc).encode())
    try:
        found = json.loads(seen.text()) if seen.text().strip() else doc
    except ValueError:
        found = None
    live = {
        (r.provider, str(r.instance_id)): r.name
        for r in ctx.state.instances()
        if r.instance_id is not None and r.state not in FREE_STATES and r.name != rec.name
    }
    other = root_taken_by(found, mine, live)
    if other is not None:
        from tether.config_models import REMOTE_ROOT_ENV

        raise PolicyRefusal(
            f"{target.name}'s workspace {target.root} is already {other}'s, which is still rented: the two servers "
            "share one folder (as the Vast emulator's instances do unless each is given its own), so their runs and "
            f"results would mix; nothing was set up on {target.name}.",
            f"Give each rental its own root (export the {REMOTE_ROOT_ENV} that the emulator's --env-file writes, "
            f'or [vast] remote_root with "{{instance_id}}"), then `tether destroy {target.name}` and `tether up '
            f"{target.name}` again.",
        )
    if found != doc:  # a mark left by a rental that is gone (a reused disk), or unreadable: this rental's now
        target.transport.put_bytes(json.dumps(doc).encode(), mark, 0o644)


def claim_argv(mark: str) -> list[str]:
    """The remote argv that prints the rental mark at ``mark`` when there is one, else stores its stdin there
    (atomically, mode 0644) and prints nothing."""
    script = (
        'set -e; mark=$1; if [ -f "$mark" ]; then cat -- "$mark"; exit 0; fi; dir=$(dirname -- "$mark"); '
        'mkdir -p -- "$dir"; tmp=$(mktemp "$dir/.tether-put.XXXXXX"); trap \'rm -f -- "$tmp"\' EXIT; '
        'cat > "$tmp"; chmod 644 "$tmp"; mv -f -- "$tmp" "$mark"; trap - EXIT'
    )
    return ["sh", "-c", script, "sh", mark]


def up(ctx: Ctx, target: Target, *, env: bool = True) -> dict[str, Any]:
    """Everything a server needs before runs: setup.sh, tether's server side, the code, the .env."""
    project, state = ctx.project, ctx.state
    if env:
        env_source(project)  # a missing named env file is refused before anything changes on the server
    t0 = time.monotonic()
    row = target.name
    if target.rented:
        ctx.report(Step(row, "checking the server's folder is its own"))
        claim_root(ctx, target)
    ctx.report(Step(row, f"checking {target.python}"))
    python, executable = check_python(target)
    if not target.local:
        state.set_host_facts(target.name, python=executable)
        target.server_argv = remote_server_argv(target.root, executable)
    ctx.report(Step(row, "setup.sh (SETUP_LOG.txt on the server)"))
    did_setup = run_setup(project, target)  # first: it may install rsync, which the next two steps use
    # tether's server side and the code are independent copies: side by side over the shared connection.
    ctx.report(Step(row, "installing tether's server side and pushing the code"))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="up") as pool:
        server_side = pool.submit(install_server_side, target)
        pushed = push_code(ctx, target)  # here: it writes local state, whose connection belongs to this thread
        version = server_side.result()
    if env:
        ctx.report(Step(row, "uploading the .env"))
    env_uploaded = upload_env(project, target) if env else False
    # Remembered: later pushes and `run --on` hold the .env back until `up` without --no-env or `push --env`.
    state.set_host_facts(target.name, server_version=version, no_env=not env)
    if not target.local:
        ctx.report(Step(row, "starting the watchdog"))
    dog = None if target.local else watchdogs.start(project, target)
    if not (target.local or target.rented):
        ctx.report(Step(row, "preflight (GPUs, CUDA, disk, network)"))
    checked = None if target.local or target.rented else owned_preflight(ctx, target)
    ctx.report(End(row))
    return {
        "host": target.name,
        "python": python,
        "setup": "ran" if did_setup else "already done",
        "server_side": version,
        "push": pushed,
        "env": ENV_UPLOADED if env_uploaded else ("none" if env else "not uploaded (--no-env, remembered for pushes)"),
        "watchdog": dog,
        **({"preflight": checked} if checked is not None else {}),
        "seconds": round(time.monotonic() - t0, 2),
    }


def ensure_pushed(ctx: Ctx, target: Target) -> bool:
    """Before a remote run: refuse if the host was never set up; push the code if it changed. True if pushed."""
    project = ctx.project
    facts = ctx.state.host_facts(target.name)
    if facts.server_version is None:
        raise ConfigError(f"{target.name} has not been set up by tether yet.", f"Run `tether up {target.name}` first.")
    if facts.pushed_fingerprint == code_fingerprint(project):
        return False
    push_code(ctx, target)
    push_env(ctx, target)
    return True


def bring_up(
    ctx: Ctx,
    name: str,
    *,
    env: bool = True,
    profile: str | None = None,
    offer_id: str | None = None,
    image: str | None = None,
    disk_gb: float | None = None,
    max_price: float | None = None,
) -> dict[str, Any]:
    """``tether up NAME``: rent NAME first when it is not a configured host (cheapest fitting offer, or the
    instance tether already has under that name), then :func:`up`. Returns ``up``'s document, with ``rented``."""
    from tether.hosts import LOCAL, resolve

    project, state = ctx.project, ctx.state
    if name == LOCAL:
        raise ConfigError("`local` is this machine: it needs no `tether up`.", "Run `tether run EXP --local`.")
    doc: dict[str, Any] = {}
    passed: dict[str, Any] | None = None
    if name not in project.config.hosts:
        doc["rented"], passed, doc["failed_rentals"] = rent_a_working_host(
            ctx, name, profile=profile, offer_id=offer_id, image=image, disk_gb=disk_gb, max_price=max_price
        )
        doc["preflight"] = passed["figures"] if passed else None
    elif profile or offer_id:
        raise ConfigError(f"{name} is a configured host ([hosts.{name}]); --profile and --offer are for rentals.")
    ctx.say(f"Setting up {name}...")
    t0 = time.time()
    try:
        doc.update(up(ctx, resolve(project, name, state), env=env))
    finally:
        remember_passed(state, passed, (time.time() - t0) / 60 if "seconds" in doc else None)
    return doc


def owned_preflight(ctx: Ctx, target: Target) -> dict[str, Any]:
    """A server the user owns gets the same look as a rental (GPUs, CUDA, free disk, network): what falls short is
    said as a warning, never acted on. Its figures."""
    from tether import preflight

    project = ctx.project
    url = project.config.vast.preflight_url if project.config.project.setup_packages else None
    report = preflight.run(target, url=url or None, command=None)
    for problem in preflight.problems(report, preflight.Expect(min_disk_free_gb=1.0)):
        ctx.say(f"warning: {target.name}: {problem}.")
    return preflight.figures(report)


def remember_passed(state: Any, passed: dict[str, Any] | None, setup_minutes: float | None) -> None:
    """Put a rental whose preflight passed in the memory of machines, with its minutes to running and set-up."""
    if passed is None or passed["machine_id"] is None:
        return
    outcome = Outcome(
        int(passed["machine_id"]),
        "vast",
        time.time(),
        "passed",
        None,
        passed["instance_id"],
        passed["minutes_to_running"],
        setup_minutes,
    )
    state.add_machine_outcome(outcome)


def rent_a_working_host(
    ctx: Ctx,
    name: str,
    *,
    profile: str | None,
    offer_id: str | None,
    image: str | None,
    disk_gb: float | None,
    max_price: float | None,
    budget: Budget | None = None,
) -> tuple[dict[str, Any], dict[str, Any] | None, list[dict[str, Any]]]:
    """Rent ``name`` and run the preflight on the new host before anything is installed: a host that is not what
    its offer promised is destroyed (verified), its machine remembered and skipped, and the next offer tried, at
    most ``[vast] preflight_attempts`` rentals. Returns the rental, what passed (None for a server rented before),
    and the failed rentals (why, and what each cost)."""
    from tether import preflight, rentals
    from tether.hosts import resolve
    from tether.renting import remark_taken

    project, state = ctx.project, ctx.state
    failed: list[dict[str, Any]] = []
    skip: dict[int, str] = {}
    vast = project.config.vast
    for _attempt in range(vast.preflight_attempts):
        t0 = time.time()
        rented = rentals.ensure_rented(
            project,
            state,
            name,
            profile=profile,
            offer_id=offer_id,
            image=image,
            disk_gb=disk_gb,
            max_price=max_price,
            say=ctx.say,
            skip=skip,
            budget=budget,
            report=ctx.report,
        )
        if rented.get("reused") or "machine_id" not in rented:
            return rented, None, failed  # a server rented before (or started again): it passed when it came
        minutes = (time.time() - t0) / 60
        rec = state.instance(name)
        assert rec is not None and rec.instance_id is not None
        prof = rentals.profile_for(project, str(rec.meta.get("profile") or profile or "api"), disk_gb=disk_gb)
        target = resolve(project, name, state)
        ctx.say(f"{name}: preflight (GPUs, CUDA, disk, network) before anything is installed...")
        ctx.report(Step(name, "preflight (GPUs, CUDA, disk, network)"))
        url = vast.preflight_url if project.config.project.setup_packages else None
        report = preflight.run(target, url=url or None, command=prof.preflight_command)
        problems = preflight.problems(report, preflight.expect_for(prof, rec.meta))
        figures = {**preflight.figures(report), "minutes_to_running": round(minutes, 2)}
        state.merge_instance_meta(name, {"preflight": figures})
        mid = rented.get("machine_id")
        if not problems:
            return (
                rented,
                {"figures": figures, "machine_id": mid, "instance_id": rec.instance_id, "minutes_to_running": minutes},
                failed,
            )
        why = "; ".join(problems)
        ctx.say(
            f"{name}: instance {rec.instance_id} on machine {mid} failed its preflight: {why}; destroying it "
            "(verified) and trying the next offer."
        )
        target.transport.close()
        if isinstance(rented.get("offer_id"), int):
            # Marked before the destroy, so the destroy does not free it: a rental in flight beside this one (its
            # offers listed before this machine was remembered) passes it over too.
            remark_taken(rented["offer_id"], "failed")
        ctx.report(Step(name, f"destroying instance {rec.instance_id} (failed its preflight)"))
        gone = rentals.destroy(project, state, name)
        spent = _instance_cost(state, rec.instance_id)
        if mid is not None:
            state.add_machine_outcome(Outcome(int(mid), "vast", time.time(), "failed", why, rec.instance_id, minutes))
            skip[int(mid)] = f"failed its preflight just now ({why})"
        failed.append(
            {"instance_id": rec.instance_id, "machine_id": mid, "why": why, "cost_usd": spent, "state": gone.state}
        )
        if offer_id:
            break
    spent = sum(f["cost_usd"] for f in failed)
    raise NoCapacity(
        f"{len(failed)} rental(s) in a row failed their preflight (each destroyed, verified; ${spent:.4f} spent): "
        + "; ".join(f"machine {f['machine_id']}: {f['why']}" for f in failed)
        + ".",
        "`tether machines` lists them; loosen the query, or try again later.",
    )


def _instance_cost(state: Any, instance_id: str) -> float:
    """What one instance cost, from the ledger's events of that instance alone."""
    from tether import cost

    events = [e for e in state.event_log() if e.get("instance_id") == instance_id]
    return round(cost.ledger(events, time.time()).total_usd, 6)
