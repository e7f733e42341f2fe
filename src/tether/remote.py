"""Servers reached over SSH: set up, push code and secrets, pull results home and prove they arrived whole.

A rented Vast.ai instance is such a server too, once its provider has told us its address.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tether
from tether import setup
from tether.config import Project
from tether.errors import CommandFailed, ConfigError, RemoteError, SyncError
from tether.paths import tether_home
from tether.server.manifest import digest_of, sha256_file
from tether.state import State
from tether.targets import Target, remote_server_argv

#: Never pushed: version control, caches, virtualenvs, secrets (uploaded separately), tether's own files.
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
SERVER_PARTS = ("__init__.py", "errors.py", "py.typed", "checkpoint", "server")


def push_excludes(project: Project) -> list[str]:
    """rsync exclude patterns for a code push: the defaults, results folders, config and ``.tetherignore``."""
    patterns = list(ALWAYS_EXCLUDED)
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
        tmp = stage.with_name(f".{version}.{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        for path in files:
            dest = tmp / "tether" / path.relative_to(package)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
        (tmp / "tether" / ".complete").write_text(version)
        shutil.rmtree(stage, ignore_errors=True)
        os.replace(tmp, stage)
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


def run_setup(project: Project, target: Target) -> bool:
    """Run setup.sh on the target; True if it did work, False if it had run before (same script)."""
    script = setup.render(project, target.root, target.python)
    path = f"{target.root}/{setup.SETUP_PATH}"
    try:
        target.transport.put_bytes(script.encode(), path, 0o700)
        result = target.transport.run(["bash", path], timeout=3600)
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


def push_code(project: Project, state: State, target: Target) -> dict[str, Any]:
    try:
        stats = target.transport.push(project.root, target.code_dir, excludes=push_excludes(project))
    except (SyncError, CommandFailed) as exc:
        raise _disk_full(exc, target, "the push") or exc from None
    state.set(f"push:{target.name}", code_fingerprint(project))
    return {"files": stats.files_transferred, "bytes": stats.bytes_transferred, "total": stats.total_size}


def up(project: Project, state: State, target: Target, *, env: bool = True) -> dict[str, Any]:
    """Everything a server needs before runs: setup.sh, tether's server side, the code, the .env."""
    if env:
        env_source(project)  # a missing named env file is refused before anything changes on the server
    t0 = time.monotonic()
    python, executable = check_python(target)
    if not target.local:
        state.set(f"python:{target.name}", executable)
        target.server_argv = remote_server_argv(target.root, executable)
    did_setup = run_setup(project, target)
    version = install_server_side(target)
    pushed = push_code(project, state, target)
    env_uploaded = upload_env(project, target) if env else False
    state.set(f"up:{target.name}", version)
    return {
        "host": target.name,
        "python": python,
        "setup": "ran" if did_setup else "already done",
        "server_side": version,
        "push": pushed,
        "env": "uploaded (mode 0600)" if env_uploaded else "none",
        "seconds": round(time.monotonic() - t0, 2),
    }


def ensure_pushed(project: Project, state: State, target: Target) -> bool:
    """Before a remote run: refuse if the host was never set up; push the code if it changed. True if pushed."""
    if state.get(f"up:{target.name}") is None:
        raise ConfigError(f"{target.name} has not been set up by tether yet.", f"Run `tether up {target.name}` first.")
    if state.get(f"push:{target.name}") == code_fingerprint(project):
        return False
    push_code(project, state, target)
    upload_env(project, target)
    return True


# --- pulling results home -------------------------------------------------------------------------------------


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
    if last and last["verified"] and sorted(last["paths"]) == sorted(paths):
        manifest: dict[str, list[Any]] = last["manifest"]
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


def pull(
    project: Project, state: State, target: Target, experiments: Sequence[str] = (), *, attempts: int = 3
) -> PullReport:
    """Bring the results folders home by rsync and verify them against the server's manifest.

    A local file is never replaced by a partial one (rsync's delayed updates); a cut connection is retried by the
    transport. Files that change on the server while we pull (a live journal) are pulled again, a bounded number of
    times; the report says whether every file arrived whole.
    """
    paths = results_paths(project, experiments)
    report = PullReport(host=target.name, paths=paths)
    if target.local:
        report.verified = True
        return report
    before = {rel: sha for rel, (_s, _m, sha) in (state.last_pull(target.name) or {}).get("manifest", {}).items()}
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


def unsynced(state: State, target: Target, project: Project, experiments: Sequence[str] = ()) -> list[str]:
    """Result files on the server that are newer than (or missing from) the last verified pull."""
    paths = results_paths(project, experiments)
    pulled = _last_verified(state, target.name, paths)
    manifest = remote_manifest(target, target.code_dir, paths, digest_of(pulled) if pulled is not None else None)
    if manifest is None:
        return []
    pulled = pulled or {}
    return sorted(rel for rel, v in manifest.items() if rel not in pulled or pulled[rel][2] != v[2])
