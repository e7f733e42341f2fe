"""Shards: which items of a batch this process runs when a managed run spreads it over K servers.

``TETHER_SHARD=i/K`` (set by tether's run wrapper for shard ``i`` of a managed run with ``--shards K``) makes
:meth:`tether.checkpoint.Checkpoint.pending` yield only the items of shard ``i``. The assignment is a stable hash
of the item id's JSON encoding, so the same item always lands in the same shard for the same K, on any machine and
in any Python (no ``hash()`` randomisation), and ``7`` and ``"7"`` may land in different shards as they are
different ids. Experiment code changes nothing.

A sharded checkpoint writes ``<name>.shard.json`` beside its journal: ``{"tether_shard": 1, "shard": i,
"shards": K, "run": <managed run id or null>, "total": <items given>, "ids": [...], "positions": [...]}`` (the
shard's ids in order, and each one's position among all the items given), from which the shards' final files are
merged into one ``<name>.json`` in item order (:func:`merge_shards`), identical to a single run's.

Standard library only, Python 3.8+ (experiment code imports it on bare servers).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

from tether.atomic import atomic_write
from tether.errors import CheckpointError

ENV_SHARD = "TETHER_SHARD"
ENV_MANAGED_RUN = "TETHER_MANAGED_RUN"
SHARD_VERSION = 1


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/4"`` -> ``(2, 4)``; CheckpointError naming the value when it is not ``i/K`` with ``0 <= i < K``."""
    head, sep, tail = text.strip().partition("/")
    try:
        index, count = int(head), int(tail)
    except ValueError:
        index, count = -1, 0
    if not sep or count < 1 or not 0 <= index < count:
        raise CheckpointError(
            f"{ENV_SHARD}={text!r} is not a shard of the form i/K with 0 <= i < K.",
            hint=f"Unset {ENV_SHARD} to run every item, or set it like 0/4.",
        )
    return index, count


def shard_from_env(environ: dict[str, str] | None = None) -> tuple[int, int] | None:
    """The shard this process runs (from ``TETHER_SHARD``), or None when it runs every item."""
    value = (environ if environ is not None else os.environ).get(ENV_SHARD, "")
    return parse_shard(value) if value.strip() else None


def shard_of(item_id: Any, count: int) -> int:
    """The shard (0 .. count-1) item ``item_id`` belongs to (pure, stable across machines and runs)."""
    if count <= 1:
        return 0
    encoded = json.dumps(item_id, ensure_ascii=True, separators=(",", ":")).encode("ascii")
    return int.from_bytes(hashlib.sha256(encoded).digest()[:8], "big") % count


def select(ids: Sequence[Any], index: int, count: int) -> list[int]:
    """Positions in ``ids`` of the items of shard ``index`` of ``count``."""
    return [pos for pos, item_id in enumerate(ids) if shard_of(item_id, count) == index]


def shard_path(results_dir: str | os.PathLike[str], name: str) -> Path:
    return Path(results_dir) / f"{name}.shard.json"


def write_shard_file(
    results_dir: str | os.PathLike[str],
    name: str,
    index: int,
    count: int,
    ids: Sequence[Any],
    total: int,
    positions: Sequence[int],
) -> Path:
    """Write ``<name>.shard.json`` (atomically; unchanged content is not rewritten)."""
    doc = {
        "tether_shard": SHARD_VERSION,
        "shard": index,
        "shards": count,
        "run": os.environ.get(ENV_MANAGED_RUN) or None,
        "total": total,
        "ids": list(ids),
        "positions": list(positions),
    }
    data = (json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
    path = shard_path(results_dir, name)
    try:
        if path.read_bytes() == data:
            return path
    except OSError:
        pass  # absent (or unreadable): write it
    atomic_write(path, data)
    return path


def read_shard_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A ``<name>.shard.json``, checked; CheckpointError naming the file when it is not one."""
    try:
        doc: dict[str, Any] = json.loads(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"Shard file {path} cannot be read ({exc}).") from exc
    ok = (
        isinstance(doc, dict)
        and doc.get("tether_shard") == SHARD_VERSION
        and isinstance(doc.get("ids"), list)
        and isinstance(doc.get("positions"), list)
        and len(doc["ids"]) == len(doc["positions"])
        and isinstance(doc.get("total"), int)
        and isinstance(doc.get("shards"), int)
        and isinstance(doc.get("shard"), int)
    )
    if not ok:
        raise CheckpointError(f"Shard file {path} is not a tether shard file.")
    return doc


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def merge_shards(shard_dirs: Sequence[str | os.PathLike[str]], name: str = "results") -> bytes:
    """The bytes of one ``<name>.json`` from the final files of every shard, results in item order.

    The same bytes a single run over all the items writes (the shape ``{"completed", "total", "results"}``, one
    result per line). Refuses (CheckpointError) when a shard is missing, a shard's final file does not hold one
    result per item (items failed), the shards disagree on K or on the items, or an item is in two shards or none.
    """
    if not shard_dirs:
        raise CheckpointError("There are no shards to merge.")
    by_position: dict[int, str] = {}
    total: int | None = None
    seen_shards: dict[int, str] = {}
    count: int | None = None
    for folder in shard_dirs:
        meta = read_shard_file(shard_path(folder, name))
        final = Path(folder) / f"{name}.json"
        try:
            doc = json.loads(final.read_bytes())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"Shard {meta['shard']}'s final file {final} cannot be read ({exc}).") from exc
        results = doc.get("results") if isinstance(doc, dict) else None
        if not isinstance(results, list) or len(results) != len(meta["ids"]):
            got = len(results) if isinstance(results, list) else 0
            raise CheckpointError(
                f"Shard {meta['shard']} has {got} results for its {len(meta['ids'])} items ({final}); the shards "
                "were not merged.",
                hint="Run the shard's failed items again, then merge.",
            )
        if total is None:
            total, count = meta["total"], meta["shards"]
        elif meta["total"] != total or meta["shards"] != count:
            raise CheckpointError(
                f"Shard {meta['shard']} was run over {meta['total']} items in {meta['shards']} shards, another over "
                f"{total} in {count}; the shards were not merged."
            )
        if meta["shard"] in seen_shards:
            raise CheckpointError(f"Shard {meta['shard']} is given twice ({seen_shards[meta['shard']]}, {folder}).")
        seen_shards[meta["shard"]] = str(folder)
        for pos, value in zip(meta["positions"], results):
            if not isinstance(pos, int) or pos in by_position:
                raise CheckpointError(f"Item position {pos!r} is in two shards; the shards were not merged.")
            by_position[pos] = _dumps(value)
    assert total is not None and count is not None
    missing_shards = sorted(set(range(count)) - set(seen_shards))
    if missing_shards:
        raise CheckpointError(f"Shards {missing_shards} of {count} are missing; the shards were not merged.")
    if sorted(by_position) != list(range(total)):
        raise CheckpointError(
            f"The shards hold {len(by_position)} of {total} items; the shards were not merged.",
            hint="Run the missing items again, then merge.",
        )
    texts = [by_position[pos] for pos in range(total)]
    head = '{"completed": ' + str(len(texts)) + ', "total": ' + str(total) + ", "
    body = '"results": [\n' + ",\n".join(texts) + "\n]}\n" if texts else '"results": []}\n'
    doc_text = head + body
    try:
        return doc_text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(json.loads(doc_text), separators=(",", ":")).encode("ascii")


class Gathered:
    """What the shards of a run finished, together (:func:`gather_shards`)."""

    def __init__(self, final: bytes, journal: bytes | None, completed: int, failed: int, total: int) -> None:
        self.final = final
        """``<name>.json`` as ``finalize(allow_failures=True, allow_missing=True)`` writes it: the finished results
        in item order, ``"failed": n`` when items failed (failed and missing items are absent)."""
        self.journal = journal
        """A journal holding every finished result and every failure (None when every item finished, or when no
        shard left a journal to take the header from): a later run resumes from it by item id."""
        self.completed = completed
        self.failed = failed
        self.total = total

    @property
    def complete(self) -> bool:
        return self.completed == self.total


def journal_records(path: Path) -> tuple[bytes | None, list[dict[str, Any]]]:
    """A journal copy's header line and its records (a torn or unreadable line is skipped): what a managed run's
    controller reads of the journals it brings home."""
    try:
        lines = path.read_bytes().splitlines(keepends=True)
    except OSError:
        return None, []
    if not lines or not lines[0].endswith(b"\n"):
        return None, []
    records: list[dict[str, Any]] = []
    for line in lines[1:]:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and "id" in rec and rec.get("ok") in (True, False):
            records.append(rec)
    return lines[0], records


def gather_shards(shard_dirs: Sequence[str | os.PathLike[str]], name: str = "results") -> Gathered:
    """Everything the shards finished, whatever state each ended in: a shard's final file when it holds a result
    for each of its items, else its journal copy (results, and failures marked failed). A shard with no shard file
    (it never started) contributes nothing; its items are missing. Never refuses for failed or missing items."""
    results: dict[int, str] = {}
    failures: dict[int, bytes] = {}
    ids_at: dict[int, Any] = {}
    header: bytes | None = None
    total: int | None = None
    for folder in shard_dirs:
        try:
            meta = read_shard_file(shard_path(folder, name))
        except CheckpointError:
            continue
        total = meta["total"] if total is None else total
        pos_of = {_dumps(i): p for i, p in zip(meta["ids"], meta["positions"]) if isinstance(p, int)}
        for item_id, pos in zip(meta["ids"], meta["positions"]):
            if isinstance(pos, int):
                ids_at[pos] = item_id
        head, records = journal_records(Path(folder) / f"{name}.journal.jsonl")
        header = header or head
        try:
            doc = json.loads((Path(folder) / f"{name}.json").read_bytes())
        except (OSError, ValueError):
            doc = None
        final = doc.get("results") if isinstance(doc, dict) else None
        if isinstance(final, list) and len(final) == len(meta["ids"]):
            for pos, value in zip(meta["positions"], final):
                results[pos] = _dumps(value)
            continue
        for rec in records:
            pos = pos_of.get(_dumps(rec["id"]))
            if pos is None:
                continue
            if rec["ok"] is True and "result" in rec:
                results[pos] = _dumps(rec["result"])
                failures.pop(pos, None)
            elif rec["ok"] is False and pos not in results:
                failures[pos] = (_dumps(rec) + "\n").encode("utf-8")
    if total is None:
        raise CheckpointError("No shard left a shard file; there is nothing to gather.")
    texts = [results[pos] for pos in sorted(results)]
    head_text = '{"completed": ' + str(len(texts)) + ', "total": ' + str(total) + ", "
    if failures:
        head_text += '"failed": ' + str(len(failures)) + ", "
    body = '"results": [\n' + ",\n".join(texts) + "\n]}\n" if texts else '"results": []}\n'
    final_bytes = (head_text + body).encode("utf-8", "surrogatepass")
    journal: bytes | None = None
    if len(results) < total and header is not None:
        try:
            head_doc = json.loads(header)
            head_doc["total"] = total
            header = (_dumps(head_doc) + "\n").encode("utf-8")
        except (ValueError, TypeError):
            pass  # kept as it was
        lines = [header]
        for pos in sorted(results):
            lines.append(('{"id":' + _dumps(ids_at[pos]) + ',"ok":true,"result":' + results[pos] + "}\n").encode())
        lines += [failures[pos] for pos in sorted(failures)]
        journal = b"".join(lines)
    return Gathered(final_bytes, journal, len(results), len(failures), total)


def split_journal(data: bytes, index: int, count: int) -> tuple[bytes, int]:
    """The lines of a journal (``data``) whose items belong to shard ``index`` of ``count``, under its header,
    and how many of them are results: what a shard's new server is given so that it resumes by item id."""
    lines = data.splitlines(keepends=True)
    if not lines:
        return b"", 0
    out = [lines[0]]
    done = 0
    for line in lines[1:]:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if not isinstance(rec, dict) or "id" not in rec or not line.endswith(b"\n"):
            continue
        if shard_of(rec["id"], count) == index:
            out.append(line)
            done += rec.get("ok") is True
    return b"".join(out), done
