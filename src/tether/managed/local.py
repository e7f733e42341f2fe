"""A managed run's files on this machine: its folder, each shard's local copies, the controller lock, the
journals synced home, and the results merged into the project."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tether import pull, vocab
from tether.atomic import atomic_write
from tether.checkpoint import shard as shard_lib
from tether.errors import CheckpointError
from tether.paths import private_dir, tether_home
from tether.state import ManagedRunRecord, State

# ------------------------------------------------------------------------------------------ paths and locks


def run_dir(run_id: str) -> Path:
    """``$TETHER_HOME/managed/<id>``: the controller's log and each shard's local copies."""
    return tether_home() / "managed" / run_id


def shard_dir(run_id: str, shard: int) -> Path:
    """Where shard ``shard``'s results folder is copied on this machine (same layout as the project: the
    experiment's ``results`` path under it)."""
    return run_dir(run_id) / f"shard-{shard}"


def _lock_path(experiment: str) -> Path:
    return private_dir(tether_home() / "managed") / f"{experiment}.lock"


@contextlib.contextmanager
def controller_lock(experiment: str) -> Iterator[tuple[bool, str]]:
    """Hold the controller lock of ``experiment`` (non-blocking): yields ``(held, holder)``; ``holder`` is what
    the lock file says of the process holding it when ``held`` is False."""
    path = _lock_path(experiment)
    with open(path, "a+", encoding="utf-8") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            yield False, fh.read().strip()
            return
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()}\n")
            fh.flush()
            yield True, ""
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


OWNER_PREFIX = "managed:"


def owner_of(run_id: str) -> str:
    """The owner a managed run writes on the instance record of every server it rents."""
    return OWNER_PREFIX + run_id


def live_owner(st: State, name: str) -> ManagedRunRecord | None:
    """The unfinished managed run whose live controller owns server ``name`` (by the owner on its instance record,
    or a shard of an unfinished run naming it while the rental is still being made), else None."""
    rec = st.instance(name)
    owner = rec.meta.get("owner") if rec is not None else None
    run: ManagedRunRecord | None = None
    if isinstance(owner, str) and owner.startswith(OWNER_PREFIX):
        run = st.managed_run(owner[len(OWNER_PREFIX) :])
    if run is None:
        for candidate in st.managed_runs():
            if candidate.status not in vocab.MANAGED_FINAL and any(
                s.server == name for s in st.managed_shards(candidate.id)
            ):
                run = candidate
    if run is None or run.status in vocab.MANAGED_FINAL or not controller_alive(run.experiment):
        return None
    return run


def controller_alive(experiment: str) -> bool:
    """Whether a controller holds ``experiment``'s lock now."""
    with controller_lock(experiment) as (held, _holder):
        return not held


# ------------------------------------------------------------------------------------------ journals at home


def _head_sha(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            first = fh.readline()
    except OSError:
        return ""
    return hashlib.sha256(first).hexdigest() if first.endswith(b"\n") else ""


def _record_count(path: Path) -> int:
    """Items with a result in a journal copy (``"ok": true`` records, by id; the format is tether.checkpoint's)."""
    _head, records = shard_lib.journal_records(path)
    return len({json.dumps(rec["id"]) for rec in records if rec["ok"] is True})


def apply_sync(local_dir: Path, doc: dict[str, Any]) -> int:
    """Write what ``python3 -m tether.server journal`` sent into the local copies; returns items journaled."""
    local_dir.mkdir(parents=True, exist_ok=True)
    journals = doc.get("journals") if isinstance(doc.get("journals"), dict) else {}
    assert isinstance(journals, dict)
    for name, delta in journals.items():
        if not _plain_name(name) or not isinstance(delta, dict):
            continue
        path = local_dir / name
        data = base64.b64decode(str(delta.get("data") or ""))
        start = int(delta.get("from") or 0)
        if start == 0:
            atomic_write(path, data)
        elif data:
            with open(path, "ab") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
    shards = doc.get("shards") if isinstance(doc.get("shards"), dict) else {}
    assert isinstance(shards, dict)
    for name, b64 in shards.items():
        if _plain_name(name):
            (local_dir / name).write_bytes(base64.b64decode(str(b64)))
    return sum(_record_count(p) for p in local_dir.glob("*" + ".journal.jsonl"))


def _plain_name(name: Any) -> bool:
    return isinstance(name, str) and bool(name) and "/" not in name and not name.startswith(".") and name != ".."


def have_args(local_dir: Path) -> list[str]:
    """``--have NAME=OFFSET:SHA`` for every journal copy here (what the server need not send again)."""
    out: list[str] = []
    for path in sorted(local_dir.glob("*.journal.jsonl")):
        out += ["--have", f"{path.name}={path.stat().st_size}:{_head_sha(path)}"]
    return out


def _place(path: Path, data: bytes, run_id: str) -> None:
    """Write ``data`` at ``path`` atomically; a different file already there is moved aside, never lost."""
    if path.exists():
        if path.read_bytes() == data:
            return
        pull.keep_aside(path, hashlib.sha256(data).hexdigest(), run_id)
    atomic_write(path, data)


@dataclass(frozen=True)
class Together:
    """What :func:`bring_together` put in the project's results folder."""

    path: Path
    """The merged final file (or the kept journal, or the folder) to name to the user."""
    complete: bool
    """Every item has a result."""
    summary: str
    """One sentence: what is there, and how a later run goes on from it."""


def bring_together(dest: Path, folders: Sequence[Path], run_id: str, *, sharded: bool) -> Together:
    """Put what the shards finished (their local copies ``folders``) into the project's results folder ``dest``.

    Sharded (``*.shard.json`` in the copies): per checkpoint name, the shards' final files merged in item order,
    byte for byte what one run writes; when items failed or are missing, the finished ones merged all the same
    (``"failed": n``, as ``finalize(allow_failures=True)``) plus a journal of every finished result and failure
    beside it, from which the same command resumes. Not sharded (one shard, or code without tether.checkpoint):
    the copy's files as they are. A file already there that differs is moved aside first, never overwritten.
    """
    dest.mkdir(parents=True, exist_ok=True)
    if not sharded:
        copy = sorted(folders[0].rglob("*")) if folders[0].is_dir() else []
        finals = {
            p for p in copy if p.name.endswith(".json") and not p.name.endswith((".shard.json", ".progress.json"))
        }
        written: Path | None = None
        for path in copy:
            if not path.is_file() or path.is_symlink() or path.name.startswith("."):
                continue
            base = path.name.removesuffix(".journal.jsonl").removesuffix(".progress.json")
            if base != path.name and path.with_name(base + ".json") in finals:
                continue  # a copy synced before its checkpoint finished: the final file holds it all
            out = dest / path.relative_to(folders[0])
            out.parent.mkdir(parents=True, exist_ok=True)
            _place(out, path.read_bytes(), run_id)
            if path.name == "results.json" or written is None:
                written = out
        for final in finals:
            out = dest / final.relative_to(folders[0])
            _drop_subsumed_journal(out.with_name(final.name[: -len(".json")] + ".journal.jsonl"), out)
        journals = sorted(p for p in dest.glob("*.journal.jsonl"))
        complete = bool(finals) and not journals
        if journals:
            return Together(journals[0], False, f"its journal is kept in {journals[0]} (the same command resumes it)")
        return Together(written or dest, complete, f"results in {written or dest}")
    names = sorted({p.name[: -len(".shard.json")] for f in folders for p in f.glob("*.shard.json")})
    if not names:
        raise CheckpointError(f"No shard of {run_id} left a shard file; nothing was merged.")
    first: Together | None = None
    for name in names:
        together = shard_lib.gather_shards(folders, name)
        out = dest / f"{name}.json"
        kept = dest / f"{name}.journal.jsonl"
        if together.complete:
            try:  # every shard's final file: checked as strictly as one run's
                data = shard_lib.merge_shards(folders, name)
            except CheckpointError:  # some results only in journals (a shard stopped before its final file)
                data = together.final
            _place(out, data, run_id)
            _drop_subsumed_journal(kept, out)
            done = Together(out, True, f"results in {out}")
        else:
            _place(out, together.final, run_id)
            if together.journal is not None:
                _place(kept, together.journal, run_id)
            failed = f", {together.failed} failed" if together.failed else ""
            resume = f"; the same command resumes from {kept}" if together.journal is not None else ""
            done = Together(
                out, False, f"{together.completed} of {together.total} items finished{failed}: in {out}{resume}"
            )
        first = first or done
    assert first is not None
    return first


def _drop_subsumed_journal(journal: Path, final: Path) -> None:
    """A journal a failed run kept beside its results (and a later run resumed from) goes once every result it
    holds is in the (complete) final file; one with any other result is left."""
    if not journal.is_file():
        return
    _head, records = shard_lib.journal_records(journal)
    try:
        merged = json.loads(final.read_bytes()).get("results") or []
    except (OSError, ValueError, AttributeError):
        return
    have = {json.dumps(r, sort_keys=True) for r in merged}
    # The final file is complete here, so an item that had failed has its result now.
    if all(json.dumps(rec.get("result"), sort_keys=True) in have for rec in records if rec.get("ok") is True):
        journal.unlink()


def seed_from_kept(dest: Path, local_copies: Sequence[Path], shards: int) -> list[int]:
    """Give a new run's shards the journals a failed run kept in the project's results folder ``dest`` (each
    shard only its items' lines), so their servers resume by item id; returns the results each shard got."""
    got = [0] * len(local_copies)
    for kept in sorted(dest.glob("*.journal.jsonl")) if dest.is_dir() else []:
        data = kept.read_bytes()
        for i, copy in enumerate(local_copies):
            part, done = shard_lib.split_journal(data, i, max(shards, 1))
            if done:
                copy.mkdir(parents=True, exist_ok=True)
                (copy / kept.name).write_bytes(part)
                got[i] += done
    return got
