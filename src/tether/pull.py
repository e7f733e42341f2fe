"""Bringing results home: rsync the results folders, then prove every file arrived whole against the server's
sha256 manifest; and telling which results on a server are not home yet (the destroy guard's question)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tether.config import Project
from tether.context import Ctx
from tether.errors import RemoteError, SyncError, TetherError
from tether.hosts import LOCAL, Target, resolve
from tether.server.manifest import digest_of, sha256_file
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

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


def remote_manifest(
    target: Target, base: str, paths: Sequence[str], unless_digest: str | None = None
) -> dict[str, list[Any]] | None:
    """The server's manifest of ``paths``; None when ``unless_digest`` matches (nothing changed there)."""
    argv = [*target.server_argv, "manifest", "--base", base]
    if unless_digest:
        argv += ["--unless-digest", unless_digest]
    result = target.transport.run([*argv, *paths])
    try:
        doc = json.loads(result.text())
        if doc.get("unchanged"):
            return None
        files: dict[str, list[Any]] = doc["files"]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise RemoteError(f"The manifest from {target.name} is not readable.", result.output_tail()) from None
    return files


def _last_verified(state: State, host: str, paths: Sequence[str]) -> dict[str, list[Any]] | None:
    last = state.last_pull(host)
    if last and last.verified and sorted(last.paths) == sorted(paths):
        manifest: dict[str, list[Any]] = last.manifest
        return manifest
    return None


def verify_local(root: Path, manifest: dict[str, list[Any]]) -> list[str]:
    """Paths of the manifest whose local copy is missing or differs (by size, then sha256)."""
    bad = []
    for rel, (size, _mtime, sha) in manifest.items():
        path = root / rel
        try:
            if path.stat().st_size != size or sha256_file(str(path)) != sha:
                bad.append(rel)
        except OSError:
            bad.append(rel)
    return bad


def results_paths(project: Project, experiments: Sequence[str] = ()) -> list[str]:
    names = list(experiments) or sorted(project.config.experiments)
    return sorted({project.experiment(n).results.strip("/") for n in names})


def pull(ctx: Ctx, target: Target, experiments: Sequence[str] = (), *, attempts: int = 3) -> PullReport:
    """Bring the results folders home by rsync and verify them against the server's manifest.

    A local file is never replaced by a partial one (rsync's delayed updates); a cut connection is retried by the
    transport. Files that change on the server while we pull (a live journal) are pulled again, a bounded number of
    times; the report says whether every file arrived whole.
    """
    project, state = ctx.project, ctx.state
    paths = results_paths(project, experiments)
    report = PullReport(host=target.name, paths=paths)
    if target.local:
        report.verified = True
        return report
    last = state.last_pull(target.name)
    before = {rel: sha for rel, (_s, _m, sha) in (last.manifest if last else {}).items()}
    previous = _last_verified(state, target.name, paths)
    manifest: dict[str, list[Any]] = {}
    for attempt in range(attempts):
        fresh = remote_manifest(
            target, target.code_dir, paths, digest_of(previous) if previous is not None and attempt == 0 else None
        )
        if fresh is None and previous is not None:
            # Nothing changed on the server since the last verified pull: nothing to move or check again.
            report.verified = True
            report.total_bytes = sum(int(v[0]) for v in previous.values())
            state.add_pull(target.name, paths, previous, 0, True)
            return report
        assert fresh is not None
        manifest = fresh
        wanted = [p for p in paths if any(rel == p or rel.startswith(p + "/") for rel in manifest)]
        for rel in wanted:
            local = project.root / rel
            try:
                stats = target.transport.pull(f"{target.code_dir}/{rel}", local, excludes=[".*.tmp"])
            except SyncError as exc:
                raise SyncError(
                    f"Pulling {rel} from {target.name} failed: {exc.message}",
                    "The local copy was left as it was; run `tether pull` again.",
                ) from None
            report.files += stats.files_transferred
            report.bytes_transferred += stats.bytes_transferred
        report.mismatched = verify_local(project.root, manifest)
        if not report.mismatched:
            break
        if attempt + 1 < attempts:
            time.sleep(0.2 * (attempt + 1))  # a file changed on the server while it was copied; copy it again
    report.total_bytes = sum(int(v[0]) for v in manifest.values())
    report.verified = not report.mismatched
    report.changed = sorted(rel for rel, v in manifest.items() if before.get(rel) != v[2])
    state.add_pull(target.name, paths, manifest, report.bytes_transferred, report.verified)
    return report


def unsynced(ctx: Ctx, target: Target, experiments: Sequence[str] = ()) -> list[str]:
    """Result files on the server that are newer than (or missing from) the last verified pull."""
    paths = results_paths(ctx.project, experiments)
    pulled = _last_verified(ctx.state, target.name, paths)
    manifest = remote_manifest(target, target.code_dir, paths, digest_of(pulled) if pulled is not None else None)
    if manifest is None:
        return []
    pulled = pulled or {}
    return sorted(rel for rel, v in manifest.items() if rel not in pulled or pulled[rel][2] != v[2])


def hosts_to_pull(state: State, host: str | None = None) -> list[str]:
    """``host``, or every server with runs except this machine and rented servers already destroyed."""
    if host:
        return [host]
    gone = {r.name for r in state.instances() if r.state == "gone"}
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
