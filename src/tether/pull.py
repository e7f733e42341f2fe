"""Bringing results home: rsync the results folders, then prove every file arrived whole against the server's
sha256 manifest; and telling which results on a server are not home yet (the destroy guard's question).

Results belong to their run. Local state remembers, per local result file, the host and run whose pull brought it
and its sha256 (``result_files``). A pull that would replace a local file that the same run on the same host did
not bring as it is now (another run's result, one nobody pulled, or one edited here) first moves it aside to
``<name>.before-<run id>`` (:func:`keep_aside`, which the managed merge uses too) and lists it in ``kept_aside``.
The run that brings a file is the latest run tether started on that host whose results folder holds it.

A pull writes only inside the results folders. Symbolic links are never followed, on either side: the server's
manifest reports links as links (nothing behind one is hashed), rsync does not make a link here that points outside
the folder being pulled (``--safe-links``), a results folder is never pulled through a link on this machine, and a
local copy is verified without following a link. Results folders nested in one another are pulled once, as the
outer one. File names that are not UTF-8 travel as ``surrogateescape`` strings and are shown with ``\\xNN`` escapes.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tether import fmt
from tether.config import Project
from tether.context import Ctx
from tether.errors import ConfigError, RemoteError, SyncError, TetherError
from tether.hosts import LOCAL, Target, resolve
from tether.progress import Count, End, Step
from tether.server.manifest import digest_of, sha256_file
from tether.server.manifest import link_on_the_way as _server_link
from tether.state import State


@dataclass
class PullReport:
    host: str
    paths: list[str]
    files: int = 0
    bytes_transferred: int = 0
    total_bytes: int = 0
    verified: bool = False
    mismatched: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    links: dict[str, str] = field(default_factory=dict)
    """Symbolic links the server has in the results folders (path -> target); never followed."""
    skipped_links: list[str] = field(default_factory=list)
    """Those of ``links`` that point outside their results folder, so were not made here."""
    kept_aside: list[dict[str, Any]] = field(default_factory=list)
    """Local files this pull would have replaced that another run made (or nobody pulled): each moved beside the
    new one (:func:`keep_aside`): ``{"path", "kept_as", "made_by", "made_on", "replaced_by"}``."""

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


def shown(name: str) -> str:
    """A path as text that prints anywhere: bytes that are not UTF-8 become ``\\xNN``."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class RemoteManifest:
    """What ``manifest`` said: the files (None when nothing changed since ``unless_digest``) and the links."""

    files: dict[str, list[Any]] | None
    links: dict[str, str]


def _inside(rel: str, paths: Sequence[str], *, or_above: bool = False) -> bool:
    """Whether ``rel`` is a clean relative path in one of ``paths`` (or, ``or_above``, on the way to one)."""
    parts = rel.split("/")
    if rel.startswith("/") or any(part in ("", ".", "..") for part in parts):
        return False
    return any(rel == p or rel.startswith(p + "/") or (or_above and p.startswith(rel + "/")) for p in paths)


def remote_manifest(
    target: Target, base: str, paths: Sequence[str], unless_digest: str | None = None
) -> RemoteManifest:
    """The server's manifest of ``paths`` (its ``files`` are None when ``unless_digest`` matches)."""
    argv = [*target.server_argv, "manifest", "--base", base]
    if unless_digest:
        argv += ["--unless-digest", unless_digest]
    result = target.transport.run([*argv, "--", *paths])
    try:
        doc = json.loads(result.text())
        links = {str(k): str(v) for k, v in dict(doc.get("links") or {}).items()}
        files: dict[str, list[Any]] | None = None if doc.get("unchanged") else dict(doc["files"])
    except (ValueError, KeyError, TypeError, AttributeError):
        raise RemoteError(f"The manifest from {target.name} is not readable.", result.output_tail()) from None
    outside = [rel for rel in files or {} if not _inside(rel, paths)]
    outside += [rel for rel in links if not _inside(rel, paths, or_above=True)]
    if outside:
        raise RemoteError(
            f"The manifest from {target.name} names {shown(outside[0])!r}, which is not inside the results folders.",
            "Nothing was pulled; check tether's server side there (`tether up` installs it again).",
        )
    return RemoteManifest(files, links)


def _unsafe_link(rel: str, link_target: str, top: str) -> bool:
    """Whether a link at ``rel`` points outside the pulled folder ``top`` (rsync's ``--safe-links`` rule)."""
    if not link_target or link_target.startswith("/") or rel == top or not rel.startswith(top + "/"):
        return True
    depth = rel[len(top) + 1 :].count("/")
    for part in link_target.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


def _skipped(links: dict[str, str], paths: Sequence[str]) -> list[str]:
    tops = sorted(paths, key=len, reverse=True)
    out = []
    for rel, link_target in links.items():
        top = next((p for p in tops if rel == p or rel.startswith(p + "/")), "")
        if _unsafe_link(rel, link_target, top):
            out.append(rel)
    return sorted(out)


def _shown_links(report: PullReport, links: dict[str, str], paths: Sequence[str]) -> None:
    report.links = {shown(k): shown(v) for k, v in sorted(links.items())}
    report.skipped_links = [shown(rel) for rel in _skipped(links, paths)]


def local_link_on_the_way(root: Path, rel: str) -> Path | None:
    """The first of ``root/a``, ``root/a/b``, ... down to ``root/rel`` that is a symbolic link here, or None."""
    found = _server_link(str(root), rel)
    return root / found if found is not None else None


def keep_aside(path: Path, new_sha: str, run_label: str) -> Path | None:
    """The one keep-aside rule (pulls and the managed merge): a file at ``path`` about to be replaced by one of
    sha256 ``new_sha``, brought by run ``run_label``, is moved to ``<name>.before-<run_label>`` (``-2``, ``-3``...
    when that name is taken) and that path returned. Nothing moves (None) when no regular file is there or it holds
    those bytes already."""
    try:
        if not path.is_file() or path.is_symlink() or sha256_file(str(path)) == new_sha:
            return None
    except OSError:
        return None
    label = "".join(c if c.isalnum() or c in "._-" else "_" for c in run_label)
    base = f"{path.name}.before-{label}"
    for n in range(1, 10_000):
        aside = path.with_name(base if n == 1 else f"{base}-{n}")
        try:
            # A hard link never replaces a name another pull (or the managed merge) took meanwhile.
            os.link(path, aside, follow_symlinks=False)
        except FileExistsError:
            continue
        except FileNotFoundError:
            return None  # another process moved it aside first
        except OSError:
            if aside.exists() or aside.is_symlink():  # no hard links here: the best check there is
                continue
            try:
                os.replace(path, aside)
            except FileNotFoundError:
                return None
            except OSError as exc:
                raise SyncError(
                    f"Could not keep the earlier {path} aside as {aside.name}: {exc.strerror or exc}.",
                    "Nothing replaced it. Move it away yourself, then run the command again.",
                ) from None
            return aside
        return aside if _drop_original(path, aside) else None
    raise SyncError(f"{path} has too many earlier versions kept beside it.", "Move the .before-* files away.")


def _drop_original(path: Path, aside: Path) -> bool:
    """After ``aside`` was made a second name of ``path``: remove ``path`` and say True; or, when another process
    moved that file aside meanwhile (``path`` is gone), remove this second name and say False (one copy is kept)."""
    try:
        here, kept = os.lstat(path), os.lstat(aside)
    except FileNotFoundError:
        with contextlib.suppress(FileNotFoundError):
            if path.exists() or path.is_symlink():
                return True  # the name we made vanished: nothing of ours to undo
            os.unlink(aside)
        return False
    if (here.st_ino, here.st_dev) != (kept.st_ino, kept.st_dev):
        return True  # a new file took the name already: the earlier one lives on as ``aside``
    try:
        os.unlink(path)
    except FileNotFoundError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(aside)
        return False
    return True


def _stats(root: Path, folders: Sequence[str]) -> dict[str, tuple[int, int, int]]:
    """Every regular file under ``folders`` (relative to ``root``) with its size, mtime (ns) and inode."""
    out: dict[str, tuple[int, int, int]] = {}
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(root / folder):
            dirnames[:] = [d for d in dirnames if not (Path(dirpath) / d).is_symlink()]
            for name in filenames:
                full = Path(dirpath) / name
                try:
                    st = full.lstat()
                except OSError:
                    continue
                if full.is_file() and not full.is_symlink():
                    out[full.relative_to(root).as_posix()] = (st.st_size, st.st_mtime_ns, st.st_ino)
    return out


class _Provenance:
    """Which run brings each result file from one host, and which local files this pull has written."""

    def __init__(self, state: State, target: Target) -> None:
        self.state, self.host = state, target.name
        prefix = target.code_dir.rstrip("/") + "/"
        self.folders = sorted(
            (
                (r.results_dir[len(prefix) :].strip("/"), r.started, r.id)
                for r in state.runs(host=target.name)
                if r.results_dir.startswith(prefix)
            ),
            key=lambda t: (len(t[0]), t[1]),
        )
        self.before: dict[str, tuple[int, int, int]] = {}
        self.seen: set[str] = set()

    def run_of(self, rel: str) -> str | None:
        """The run that made ``rel`` on the host: the latest run whose results folder holds it (the innermost)."""
        found = [(len(f), started, rid) for f, started, rid in self.folders if rel.startswith(f + "/")]
        return max(found)[2] if found else None

    def remember(self, root: Path, folders: Sequence[str]) -> None:
        """What the local folders held before this pull first wrote into them."""
        fresh = [f for f in folders if f not in self.seen]
        self.seen.update(fresh)
        self.before.update(_stats(root, fresh))

    def written(self, rel: str, now: dict[str, tuple[int, int, int]]) -> bool:
        return rel in now and self.before.get(rel) != now[rel]

    def keep_earlier(self, root: Path, manifest: dict[str, list[Any]], report: PullReport) -> None:
        """Move aside every local file the coming rsync would replace that this run did not bring (see module)."""
        now = _stats(root, sorted(self.seen))
        for rel, (size, mtime, sha) in sorted(manifest.items()):
            local = root / rel
            if rel not in now or self.written(rel, now):
                continue  # nothing there, or this pull brought it already (a file that changed while pulled)
            try:
                st = local.lstat()
                if st.st_size == size and abs(st.st_mtime - float(mtime)) < 1e-3:
                    continue  # what the server has (rsync keeps mtimes): rsync leaves it as it is
                local_sha = sha256_file(str(local))
            except OSError:
                continue
            if local_sha == sha:
                continue
            run = self.run_of(rel)
            prov = self.state.result_file(local.absolute())
            ours = prov is not None and prov.sha256 == local_sha
            if ours and prov is not None and prov.host == self.host and prov.run_id == run:
                continue  # the same run updating the file it brought: no earlier result to keep
            label = run or f"{self.host}-{time.strftime('%Y%m%d-%H%M%S')}"
            aside = keep_aside(local, sha, label)
            if aside is not None:
                report.kept_aside.append(
                    {
                        "path": shown(rel),
                        "kept_as": shown(aside.relative_to(root).as_posix()),
                        "made_by": prov.run_id if ours and prov is not None else None,
                        "made_on": prov.host if ours and prov is not None else None,
                        "replaced_by": run,
                    }
                )

    def record(self, root: Path, manifest: dict[str, list[Any]]) -> None:
        """Remember where every local file this pull wrote came from, by the bytes it wrote (a live file may have
        changed on the server since the manifest), and any pulled file not known yet."""
        now = _stats(root, sorted(self.seen))
        files: list[tuple[Path, str | None, str]] = []
        for rel in now:
            path = (root / rel).absolute()
            written = self.written(rel, now)
            if not written and rel not in manifest:
                continue
            prov = None if written else self.state.result_file(path)
            if prov is not None and prov.sha256 == manifest[rel][2]:
                continue  # known, and what the server has
            try:
                sha = sha256_file(str(path))
            except OSError:
                continue
            if written or sha == manifest[rel][2]:
                # Written by this pull, or what the server has but not known as such (a pull killed before it
                # could record what it brought): this run's file now.
                files.append((path, self.run_of(rel), sha))
        if files:
            self.state.set_result_files(self.host, files)


def _last_verified(state: State, host: str, paths: Sequence[str]) -> dict[str, list[Any]] | None:
    last = state.last_pull(host)
    if last and last.verified and sorted(last.paths) == sorted(paths):
        manifest: dict[str, list[Any]] = last.manifest
        return manifest
    return None


def verify_local(root: Path, manifest: dict[str, list[Any]]) -> list[str]:
    """Paths of the manifest whose local copy is missing or differs (by size, then sha256), or is reached through
    a symbolic link (a link is never followed: its target is not a result that came home)."""
    bad = []
    links: dict[str, bool] = {}
    for rel, (size, _mtime, sha) in manifest.items():
        path = root / rel
        parts = rel.split("/")
        through_link = False
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            if prefix not in links:
                links[prefix] = (root / prefix).is_symlink()
            through_link = through_link or links[prefix]
        try:
            if through_link or path.lstat().st_size != size or sha256_file(str(path)) != sha:
                bad.append(rel)
        except OSError:
            bad.append(rel)
    return bad


def results_paths(project: Project, experiments: Sequence[str] = ()) -> list[str]:
    """The results folders of ``experiments`` (default: all); one nested in another is covered by the outer one."""
    names = list(experiments) or sorted(project.config.experiments)
    folders = sorted({project.experiment(n).results.strip("/") for n in names})
    return [f for f in folders if not any(f.startswith(outer + "/") for outer in folders)]


def pull(
    ctx: Ctx, target: Target, experiments: Sequence[str] = (), *, attempts: int = 3, into: Path | None = None
) -> PullReport:
    """Bring the results folders home by rsync and verify them against the server's manifest.

    A local file is never replaced by a partial one (rsync's delayed updates); a cut connection is retried by the
    transport. Files that change on the server while we pull (a live journal) are pulled again, a bounded number of
    times; the report says whether every file arrived whole. ``into``: the folder that stands for the project here
    (a managed shard's local copy): the results folders are pulled under it, never through a link, always in full.
    """
    project, state = ctx.project, ctx.state
    root = into if into is not None else project.root
    paths = results_paths(project, experiments)
    report = PullReport(host=target.name, paths=paths)
    if target.local:
        report.verified = True
        return report
    last = state.last_pull(target.name)
    before = {rel: sha for rel, (_s, _m, sha) in (last.manifest if last else {}).items()}
    previous = _last_verified(state, target.name, paths) if into is None else None
    # A managed shard's private copy has no earlier result of another run to keep: provenance is the project's.
    provenance = _Provenance(state, target) if into is None else None
    manifest: dict[str, list[Any]] = {}
    row = target.name
    for attempt in range(attempts):
        ctx.report(Step(row, "reading the server's manifest (sha256 of every result file)"))
        fresh = remote_manifest(
            target, target.code_dir, paths, digest_of(previous) if previous is not None and attempt == 0 else None
        )
        _shown_links(report, fresh.links, paths)
        if fresh.files is None and previous is not None:
            # Nothing changed on the server since the last verified pull: nothing to move or check again.
            report.verified = True
            report.total_bytes = sum(int(v[0]) for v in previous.values())
            state.add_pull(target.name, paths, previous, 0, True)
            ctx.report(End(row))
            return report
        manifest = fresh.files or {}
        wanted = [p for p in paths if any(rel == p or rel.startswith(p + "/") for rel in manifest)]
        _refuse_local_links(root, wanted, target.name)
        if provenance is not None:
            provenance.remember(project.root, wanted)
            provenance.keep_earlier(project.root, manifest, report)
        for rel in wanted:
            local = root / rel
            inside = [v for k, v in manifest.items() if k == rel or k.startswith(rel + "/")]
            on_server = f"{fmt.count(len(inside), 'file')}, {fmt.size(sum(int(v[0]) for v in inside))} on the server"
            ctx.report(Step(row, f"copying {rel} ({on_server})"))
            try:
                stats = target.transport.pull(f"{target.code_dir}/{rel}", local, excludes=[".*.tmp"])
            except SyncError as exc:
                raise _pull_failed(exc, rel, target.name, report.kept_aside) from None
            report.files += stats.files_transferred
            report.bytes_transferred += stats.bytes_transferred
            ctx.report(Count(row, report.files, unit="files moved", nbytes=report.bytes_transferred))
        ctx.report(Step(row, f"verifying {fmt.count(len(manifest), 'file')} against the server's sha256"))
        report.mismatched = verify_local(root, manifest)
        if not report.mismatched:
            break
        if attempt + 1 < attempts:
            time.sleep(0.2 * (attempt + 1))  # a file changed on the server while it was copied; copy it again
    report.total_bytes = sum(int(v[0]) for v in manifest.values())
    report.verified = not report.mismatched
    report.changed = sorted(shown(rel) for rel, v in manifest.items() if before.get(rel) != v[2])
    if provenance is not None:
        provenance.record(project.root, manifest)
    for kept in report.kept_aside:  # every caller says it: pull, sync, and the pull before a stop or destroy
        made = f"run {kept['made_by']} on {kept['made_on']}" if kept["made_by"] else "no run tether pulled"
        ctx.say(
            f"{target.name}: kept the earlier {kept['path']} (made by {made}) as {kept['kept_as']}: "
            f"{'run ' + kept['replaced_by'] if kept['replaced_by'] else 'this pull'} brought a different one."
        )
    state.add_pull(target.name, paths, manifest, report.bytes_transferred, report.verified)
    report.mismatched = [shown(rel) for rel in report.mismatched]
    ctx.report(End(row))
    return report


def _refuse_local_links(root: Path, wanted: Sequence[str], host: str) -> None:
    """A results folder here that is (or lies under) a symbolic link would be written through: refuse, copy nothing."""
    for rel in wanted:
        link = local_link_on_the_way(root, rel)
        if link is not None:
            raise SyncError(
                f"Pulling {rel} from {host} failed: {link} is a symbolic link (to {shown(os.readlink(link))}), "
                "and tether never pulls through a link.",
                "Nothing was copied. Make it a real folder inside the project (move what it points to there), "
                "then run `tether pull` again.",
            )


def _pull_failed(exc: SyncError, rel: str, host: str, kept: Sequence[dict[str, Any]] = ()) -> SyncError:
    """The transport's error, naming the folder once: ``Pulling results from lab1 failed ...``; and what was kept
    aside before the copy began."""
    said = f"Pulling from {host}"
    if exc.message.startswith(said):
        message = f"Pulling {rel} from {host}{exc.message[len(said) :]}"
    else:
        message = f"Pulling {rel} from {host} failed: {exc.message}"
    hint = exc.hint or "Run `tether pull` again."
    if kept:
        moved = ", ".join(f"{k['path']} as {k['kept_as']}" for k in kept)
        return SyncError(message, f"Earlier results were kept aside first ({moved}); nothing else changed. {hint}")
    return SyncError(message, f"The local copy was left as it was. {hint}")


def unsynced(ctx: Ctx, target: Target, experiments: Sequence[str] = ()) -> list[str]:
    """Result files on the server that are newer than (or missing from) the last verified pull."""
    paths = results_paths(ctx.project, experiments)
    pulled = _last_verified(ctx.state, target.name, paths)
    manifest = remote_manifest(target, target.code_dir, paths, digest_of(pulled) if pulled is not None else None).files
    if manifest is None:
        return []
    pulled = pulled or {}
    return sorted(shown(rel) for rel, v in manifest.items() if rel not in pulled or pulled[rel][2] != v[2])


def hosts_to_pull(state: State, host: str | None = None) -> list[str]:
    """``host``, or every server with runs except this machine and rented servers already destroyed."""
    gone = {r.name for r in state.instances() if r.state == "gone"}
    if host in gone:
        raise ConfigError(
            f"{host} was destroyed: nothing is left on it to pull.",
            "What was pulled before it was destroyed is in the results folders; `tether ls` lists servers that exist.",
        )
    if host:
        return [host]
    return sorted({r.host for r in state.runs()} - {LOCAL} - gone)


@dataclass(frozen=True)
class PullOutcome:
    """One host's pull on a ``sync`` tick: its report, or why it failed."""

    host: str
    report: PullReport | None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return self.report.to_json() if self.report is not None else {"host": self.host, "error": self.error}


def pull_all(ctx: Ctx, host: str | None = None, experiments: Sequence[str] = ()) -> list[PullReport]:
    """Pull from ``host`` or every server with runs; the first failure raises."""
    return [pull(ctx, resolve(ctx.project, name, ctx.state), experiments) for name in hosts_to_pull(ctx.state, host)]


def sync_tick(ctx: Ctx, host: str | None = None) -> list[PullOutcome]:
    """One ``tether sync`` tick: pull every host; a host that fails is reported and the others still pulled."""
    outcomes: list[PullOutcome] = []
    for name in hosts_to_pull(ctx.state, host):
        try:
            outcomes.append(PullOutcome(name, pull(ctx, resolve(ctx.project, name, ctx.state))))
        except TetherError as exc:
            outcomes.append(PullOutcome(name, None, str(exc)))
    return outcomes
