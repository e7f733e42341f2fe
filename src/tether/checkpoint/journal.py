"""The :class:`Checkpoint`: an append-only journal of results keyed by item id (see the package docstring)."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, Union

from tether.atomic import atomic_write, fsync_dir, write_all
from tether.checkpoint import shard as _shard
from tether.checkpoint._fs import publish_locked, utc_iso
from tether.checkpoint._http import describe, failure_fields, failure_kind, safe_text
from tether.errors import CheckpointError

try:
    import fcntl

    _HAVE_FCNTL = True
except ImportError:  # pragma: no cover - Windows has no fcntl; the journal is then not locked
    _HAVE_FCNTL = False

ItemId = Union[str, int]
T = TypeVar("T")

JOURNAL_VERSION = 1
_ID_TYPES = (str, int)  # exact types as JSON decodes them (type(True) is bool, so booleans are not ids)
RUNBOOK_PARTIAL = "results_partial.json"
ENV_RESULTS_DIR = "TETHER_RESULTS_DIR"

_NEWLINE_TO_COMMA = bytes.maketrans(b"\n", b",")
#: The deepest nesting (lists and dicts) a recorded result may have. Deeper values serialize when recorded from a
#: shallow stack but cannot be read back from a deeper one (json's recursion limit), which would make the whole
#: journal unreadable; no real result comes near it.
MAX_RESULT_DEPTH = 400


class CheckpointWarning(UserWarning):
    """Opening a checkpoint repaired or adopted something (a torn last line, a runbook partial file)."""


class _Encoded:
    """A result recorded by this process, kept as its JSON text (replayed results are kept as values)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def id_key(item_id: Any) -> ItemId:
    """Check an item id and return it as the key results are filed under.

    Ids must be ``str`` or ``int`` (not ``bool``), so the id is its own key: ``7`` and ``"7"`` are different
    ids, exactly as their JSON encodings in the journal differ, and an id read back from the journal is equal
    to the one given.
    """
    if isinstance(item_id, bool) or not isinstance(item_id, (str, int)):
        raise CheckpointError(
            f"Item id {item_id!r} is a {type(item_id).__name__}; item ids must be str or int.",
            hint="Pass key= to say which field of an item is its id, e.g. key=lambda it: it['id'].",
        )
    return item_id


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _dumps_strict(value: Any) -> str:
    """``_dumps`` that refuses NaN and Infinity (raises ValueError): the final file must stay valid JSON."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests lists/dicts more than ``limit`` deep (an iterative walk: never a RecursionError)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[Any] = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _is_non_finite(exc: ValueError) -> bool:
    return "Out of range float" in safe_text(exc)


def _encode_line(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate in a string: fall back to \u escapes, which are plain ASCII.
        return json.dumps(json.loads(text), separators=(",", ":")).encode("ascii")


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of ``config`` (sorted keys, compact)."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def _short(value: Any, missing: bool) -> str:
    if missing:
        return "(absent)"
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``["key: old → new", ...]`` for every top-level key whose value differs (added or removed too)."""
    out: list[str] = []
    for k in sorted(set(old) | set(new), key=str):
        a, b = old.get(k), new.get(k)
        if k in old and k in new and json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True):
            continue
        out.append(f"{k}: {_short(a, k not in old)} → {_short(b, k not in new)}")
    return out


def _duplicates(keys: Sequence[ItemId]) -> list[ItemId]:
    if len(set(keys)) == len(keys):
        return []
    seen: set[ItemId] = set()
    dupes: dict[ItemId, None] = {}
    for k in keys:
        if k in seen:
            dupes[k] = None
        seen.add(k)
    return list(dupes)


def _name_ids(keys: Sequence[ItemId], limit: int = 10) -> str:
    shown = ", ".join(json.dumps(k, ensure_ascii=False) for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


class Checkpoint:
    """Results of one batch run, journaled by item id so that a crash loses at most the items in flight.

    See the package docstring for the files it writes and an example. Thread-safe: ``record`` and
    ``record_failure`` may be called from several threads.
    """

    def __init__(
        self,
        results_dir: str | os.PathLike[str],
        name: str = "results",
        *,
        total: int | None = None,
        config: Mapping[str, Any] | None = None,
        interval: int = 25,
        interval_seconds: float | None = 2.0,
        allow_config_change: bool = False,
        partial_name: str | None = RUNBOOK_PARTIAL,
        progress_interval: float = 1.0,
    ) -> None:
        if not name or name.startswith(".") or "/" in name or os.sep in name:
            raise CheckpointError(
                f"Checkpoint name {name!r} is not a plain file name.", hint='Use a name like "results".'
            )
        if interval < 1:
            raise CheckpointError(f"interval must be at least 1 (got {interval}).")
        self.results_dir = Path(results_dir)
        self.name = name
        self.total = total
        self.config: dict[str, Any] = dict(config or {})
        try:
            self.config_hash = config_hash(self.config)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(
                f"The checkpoint config is not JSON-serializable: {exc}.",
                hint="Pass a dict of plain values (str, int, float, bool, lists, dicts).",
            ) from exc
        self.interval = interval
        self.interval_seconds = interval_seconds
        self.allow_config_change = allow_config_change
        self.progress_interval = progress_interval
        self.journal_path = self.results_dir / f"{name}.journal.jsonl"
        self.progress_path = self.results_dir / f"{name}.progress.json"
        self.final_path = self.results_dir / f"{name}.json"
        self.partial_path = self.results_dir / partial_name if partial_name else None

        #: Human-readable notes about what opening repaired or adopted (also issued as CheckpointWarning).
        self.warnings: list[str] = []
        #: The bytes of a torn last journal line that opening dropped (None when there was none).
        self.dropped_tail: bytes | None = None
        #: True when the final file exists and no journal does: this checkpoint finished earlier.
        self.already_finalized = False
        #: True once finalize() wrote the final file in this process.
        self.finished = False

        self._lock = threading.RLock()
        self._fd: int | None = None
        self._seen: dict[ItemId, None] = {}  # every id, in first-seen order
        self._done: dict[ItemId, Any] = {}  # id → result (a value, or _Encoded JSON text)
        self._failed: dict[ItemId, str] = {}
        self._failed_kind: dict[ItemId, str] = {}  # id → "429", "KeyError", ... (see failure_kind)
        self._order: list[ItemId] | None = None
        self._partial: dict[str, Any] | None = None
        self._since_sync = 0
        self._last_sync = 0.0
        self._last_progress = 0.0
        self._started = 0.0
        self._started_mono = 0.0
        self._new_completed = 0
        self._bytes = {"journal": 0, "progress": 0, "final": 0}
        self._fsyncs = 0

    # ----------------------------------------------------------------------------------------------- set-up
    @classmethod
    def from_env(cls, results_dir: str | os.PathLike[str] | None = None, **kwargs: Any) -> Checkpoint:
        """A checkpoint in ``$TETHER_RESULTS_DIR`` if that is set, else in ``results_dir``."""
        env = os.environ.get(ENV_RESULTS_DIR)
        chosen = env if env else results_dir
        if chosen is None:
            raise CheckpointError(
                f"No results folder: {ENV_RESULTS_DIR} is not set and no folder was given.",
                hint=f"Pass results_dir or set {ENV_RESULTS_DIR}.",
            )
        return cls(chosen, **kwargs)

    def __enter__(self) -> Checkpoint:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _os_error(self, what: str, exc: OSError) -> CheckpointError:
        return CheckpointError(
            f"Cannot {what} in results folder {self.results_dir}: {exc.strerror or exc}.",
            hint="Pass a results folder that exists or can be created and that this user can write "
            f"(or set {ENV_RESULTS_DIR}); check free disk space.",
        )

    def open(self) -> Checkpoint:
        """Create or replay the journal, lock it, read a runbook partial file if there is one. Idempotent."""
        with self._lock:
            if self._fd is not None or self.already_finalized:
                return self
            self._started = time.time()
            self._started_mono = time.monotonic()
            try:
                self.results_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise self._os_error("create the folder", exc) from exc
            if not self.results_dir.is_dir():
                raise CheckpointError(
                    f"Results folder {self.results_dir} is not a folder.",
                    hint="Pass the path of a folder (it is created if missing).",
                )
            if not self.journal_path.exists() and self.final_path.exists():
                return self._finished_earlier()
            self._read_partial()
            try:
                opened = self._open_locked()
            except OSError as exc:
                raise self._os_error("create the journal", exc) from exc
            if opened is None:
                return self._finished_earlier()
            fd = opened
            try:
                self._fd = fd
                self._replay()
            except BaseException:
                self._fd = None
                os.close(fd)
                raise
            self._last_sync = time.monotonic()
            self._write_progress()
            return self

    def _finished_earlier(self) -> Checkpoint:
        self.already_finalized = True
        self._partial = None
        self._note(
            f"{self.final_path} already exists and there is no journal: this run finished earlier; "
            "nothing will run again (delete or move the file to run again)."
        )
        return self

    def _open_locked(self) -> int | None:
        """Open and lock the journal, creating it when missing: a descriptor on the file the path names, locked.

        Two processes opening a fresh checkpoint at once must end up on one file: the journal is created with
        a no-replace link of a complete, already locked temp file (so the loser of the race opens the winner's
        file and is refused by its lock), and a descriptor is kept only if, once locked, it is still the file
        the path names (not one replaced by a header rewrite or removed by finalize meanwhile). Returns None
        when the journal is gone and the final file exists (another process finalized meanwhile).
        """
        for _ in range(100):
            if not self.journal_path.exists():
                if self.final_path.exists():
                    return None
                created = self._create_journal(replace=False)
                if created is not None:
                    return created
                continue  # another process created it first: open theirs (and meet its lock)
            try:
                fd = os.open(str(self.journal_path), os.O_RDWR | os.O_APPEND)
            except FileNotFoundError:
                continue  # removed between the check and the open: look again
            try:
                self._lock_fd(fd)
                if _names_file(self.journal_path, fd):
                    return fd
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # replaced or removed after it was opened: open what the path names now
        raise CheckpointError(
            f"The journal {self.journal_path} keeps being replaced while it is opened.",
            hint="Another program is rewriting it: stop it, then run again.",
        )

    def _lock_fd(self, fd: int) -> None:
        if not _HAVE_FCNTL:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise CheckpointError(
                f"Another process is writing the journal {self.journal_path}.",
                hint=f"Wait for it to finish (its pid is in {self.progress_path.name}), or use another name.",
            ) from exc

    def _header(self, previous: list[str] | None = None) -> dict[str, Any]:
        head: dict[str, Any] = {
            "tether_journal": JOURNAL_VERSION,
            "name": self.name,
            "config": self.config,
            "config_hash": self.config_hash,
            "total": self.total,
            "created": utc_iso(),
        }
        if previous:
            head["previous_config_hashes"] = previous
        return head

    def _create_journal(self, *, replace: bool) -> int | None:
        """Write a journal holding only the header; return a locked append descriptor on it. With
        ``replace=False`` an existing journal is kept and None returned; with ``replace=True`` it is replaced
        (the caller holds the lock on the old one), never leaving a moment where the new file is unlocked."""
        data = _encode_line(_dumps(self._header()) + "\n")
        fd = publish_locked(self.journal_path, data, replace=replace, lock=self._lock_fd)
        if fd is not None:
            self._bytes["journal"] += len(data)
        return fd

    def _note(self, text: str) -> None:
        self.warnings.append(text)
        warnings.warn(text, CheckpointWarning, stacklevel=4)

    # ----------------------------------------------------------------------------------------------- replay
    def _corrupt(self, line_no: int, why: str) -> CheckpointError:
        return CheckpointError(
            f"Journal {self.journal_path} line {line_no} is corrupt ({why}); the file was left untouched.",
            hint=f"Inspect line {line_no} (e.g. sed -n '{line_no}p' FILE), repair or remove it by hand, then run "
            "again.",
        )

    def _replay(self) -> None:
        # Replay builds one object per journaled item and none of them form cycles: pausing the cyclic
        # garbage collector meanwhile saves it from rescanning a growing heap (a third of a 100k-item resume).
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            self._replay_journal()
        finally:
            if was_enabled:
                gc.enable()

    def _replay_journal(self) -> None:
        assert self._fd is not None
        with open(self.journal_path, "rb") as fh:
            data = fh.read()
        end = data.rfind(b"\n") + 1  # the journal's complete lines end here
        tail = data[end:]  # the bytes after the last newline: b"" unless the last line is torn
        if end == 0:
            # Not even the header line is complete (a crash while it was created): start the journal afresh.
            if tail:
                self.dropped_tail = tail
            self._note(f"Journal {self.journal_path} had no complete header line; it was started afresh.")
            fd = self._create_journal(replace=True)
            assert fd is not None
            os.close(self._fd)
            self._fd = fd
            return
        try:
            first_nl = data.index(b"\n")
            header = json.loads(data[:first_nl])
        except ValueError as exc:
            raise self._corrupt(1, f"the header is not valid JSON: {exc}") from exc
        if not isinstance(header, dict) or header.get("tether_journal") != JOURNAL_VERSION:
            raise self._corrupt(1, "not a tether journal header")
        self._check_config(header)  # may refuse; nothing was changed so far
        body = data[first_nl + 1 : end]
        records = self._parse_records(body)
        tail_record: dict[str, Any] | None = None
        if tail:
            try:
                parsed = json.loads(tail)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict) and self._valid_record(parsed):
                tail_record = parsed  # complete but for its newline: keep it
        if tail_record is not None:
            records.append(tail_record)
        # Validate and apply in one pass (this loop runs once per journaled item, so it is kept tight).
        # Re-assigning a key keeps its first position, so _seen stays in first-seen order.
        seen, done, failed, kinds = self._seen, self._done, self._failed, self._failed_kind
        for rec in records:
            if type(rec) is not dict or type(rec.get("id")) not in _ID_TYPES:
                self._parse_records_slowly(body)  # raises, naming the bad line
            item_id = rec["id"]
            ok = rec.get("ok")
            if ok is True and "result" in rec:
                done[item_id] = rec["result"]
                if failed:
                    failed.pop(item_id, None)
                    kinds.pop(item_id, None)
            elif ok is False and "error" in rec:
                message = str(rec["error"])
                failed[item_id] = message
                kinds[item_id] = failure_kind(rec.get("status"), rec.get("error_type"), message)
                done.pop(item_id, None)
            else:
                self._parse_records_slowly(body)
            seen[item_id] = None
        if tail_record is not None:
            self._append(b"\n")
        elif tail:
            self.dropped_tail = tail
            os.ftruncate(self._fd, end)
            os.fsync(self._fd)
            line_no = data.count(b"\n", 0, end) + 1
            self._note(
                f"Journal {self.journal_path}: dropped a torn last line of {len(tail)} bytes "
                f"(line {line_no}, an interrupted write); its item will run again."
            )

    @staticmethod
    def _valid_record(rec: Any) -> bool:
        if not isinstance(rec, dict) or "id" not in rec:
            return False
        item_id = rec["id"]
        if isinstance(item_id, bool) or not isinstance(item_id, (str, int)):
            return False
        ok = rec.get("ok")
        return (ok is True and "result" in rec) or (ok is False and "error" in rec)

    def _parse_records(self, body_bytes: bytes) -> list[Any]:
        """Parse the record lines (``body_bytes`` holds whole lines, each ending with a newline): one value per
        line, not yet checked to be records (the caller checks them as it applies them)."""
        if not body_bytes:
            return []
        # Fast path: one parse of all lines as a JSON array. A line holding two values (``1, 2``) would shift
        # the rest, hence the count check; on any doubt the slow path finds and names the bad line.
        # The text is built with two copies (not four): JSON strings hold no raw newline, so every newline is a
        # line end; the last one becomes the closing bracket and the others commas.
        text = bytearray(b"[") + body_bytes
        text[-1] = 0x5D  # "]"
        try:
            parsed = json.loads(text.translate(_NEWLINE_TO_COMMA))
            if isinstance(parsed, list) and len(parsed) == body_bytes.count(b"\n"):
                return parsed
        except (ValueError, RecursionError):
            pass  # a bad line somewhere (or one nested too deep to read): the slow path below finds and names it
        return self._parse_records_slowly(body_bytes)

    def _parse_records_slowly(self, body_bytes: bytes) -> list[dict[str, Any]]:
        """Parse and check the record lines one by one; raise naming the first bad line."""
        out: list[dict[str, Any]] = []
        for i, raw in enumerate(body_bytes[:-1].split(b"\n")):
            line_no = i + 2
            try:
                rec = json.loads(raw)
            except ValueError as exc:
                raise self._corrupt(line_no, f"not valid JSON: {exc}") from exc
            except RecursionError as exc:  # written by an older tether, which did not bound the depth
                raise self._corrupt(line_no, "nested too deep to read") from exc
            if not self._valid_record(rec):
                raise self._corrupt(line_no, 'not a record {"id", "ok", "result" or "error"}')
            out.append(rec)
        return out

    def _check_config(self, header: Mapping[str, Any]) -> None:
        old_hash = header.get("config_hash")
        if old_hash == self.config_hash:
            return
        old_config = header.get("config") if isinstance(header.get("config"), dict) else {}
        assert isinstance(old_config, dict)
        diff = config_diff(old_config, self.config) or ["(the stored hash differs)"]
        if not self.allow_config_change:
            raise CheckpointError(
                f"Journal {self.journal_path} was written with a different config; differing keys: "
                + "; ".join(diff)
                + ".",
                hint="Use another results folder or name for the new config, or pass "
                "allow_config_change=True to continue this journal with the new config.",
            )
        self._note(f"Continuing journal {self.journal_path} with a changed config: " + "; ".join(diff) + ".")
        previous = [*list(header.get("previous_config_hashes") or []), str(old_hash)]
        self._rewrite_header(previous)

    def _rewrite_header(self, previous: list[str]) -> None:
        assert self._fd is not None
        with open(self.journal_path, "rb") as fh:
            data = fh.read()
        rest = data[data.index(b"\n") + 1 :]
        new = _encode_line(_dumps(self._header(previous)) + "\n") + rest
        fd = publish_locked(self.journal_path, new, replace=True, lock=self._lock_fd)
        assert fd is not None
        self._bytes["journal"] += len(new)
        old_fd, self._fd = self._fd, fd
        os.close(old_fd)  # the new file was locked before it replaced the old one: no unlocked moment

    # ------------------------------------------------------------------------------------ runbook adoption
    def _read_partial(self) -> None:
        path = self.partial_path
        if path is None or not path.exists():
            return
        try:
            doc = json.loads(path.read_bytes())
        except ValueError as exc:
            raise CheckpointError(
                f"Runbook partial file {path} is not valid JSON ({exc}); it was left untouched.",
                hint="Repair it, or move it aside if its results are not wanted, then run again.",
            ) from exc
        except OSError as exc:
            raise self._os_error(f"read {path.name}", exc) from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
            raise CheckpointError(
                f'Runbook partial file {path} is not of the form {{"completed", "total", "results": [...]}}; '
                "it was left untouched.",
                hint="Repair it, or move it aside if its results are not wanted, then run again.",
            )
        self._partial = doc

    def _adopt(self, ids: Sequence[ItemId]) -> None:
        doc = self._partial
        if doc is None or self.partial_path is None:
            return
        results: list[Any] = doc["results"]
        completed = doc.get("completed")
        n = len(results)
        path = self.partial_path
        if isinstance(completed, int) and not isinstance(completed, bool) and completed > n:
            raise CheckpointError(
                f"Runbook partial file {path} says completed={completed} but holds only {n} results; "
                "it was left untouched.",
                hint="Repair it, or move it aside if its results are not wanted, then run again.",
            )
        if n > len(ids):
            raise CheckpointError(
                f"Runbook partial file {path} holds {n} results but only {len(ids)} items were given; "
                "it was left untouched.",
                hint="Pass the same items as the run that wrote it, or move it aside.",
            )
        if completed != n:
            self._note(
                f"Runbook partial file {path} says completed={completed!r} but holds {n} results; "
                f"adopting all {n} (the runbook's resume resets its counter)."
            )
        adopted = 0
        now = round(time.time(), 3)
        texts: list[str] = []
        for i in range(n):
            try:
                texts.append(_dumps_strict(results[i]))
            except ValueError as exc:
                raise CheckpointError(
                    f"Runbook partial file {path} holds NaN or Infinity in result {i} (item "
                    f"{json.dumps(ids[i], ensure_ascii=False)}), which results.json cannot hold; it was left "
                    "untouched.",
                    hint="Replace the non-finite numbers (e.g. by null) in the file, or move it aside, then run again.",
                ) from exc
        for i in range(n):
            if ids[i] in self._done:
                continue  # the journal already has a newer result for this item
            self._append_line(ids[i], texts[i], now, extra=',"adopted":true')
            adopted += 1
        self._sync()
        target = Path(str(path) + ".adopted")
        k = 1
        while target.exists():
            target = Path(f"{path}.adopted.{k}")
            k += 1
        os.replace(str(path), str(target))
        fsync_dir(self.results_dir)
        self._partial = None
        self._note(f"Adopted {adopted} results from runbook partial file {path}; it was renamed to {target.name}.")

    # ------------------------------------------------------------------------------------------ recording
    def _require_open(self) -> int:
        if self._fd is None:
            if self.finished or self.already_finalized:
                raise CheckpointError(
                    f"Checkpoint {self.name!r} is already finalized ({self.final_path}).",
                    hint="Delete or move the final file to run again.",
                )
            self.open()
            if self._fd is None:
                raise CheckpointError(f"Checkpoint {self.name!r} is already finalized ({self.final_path}).")
        return self._fd

    def _append(self, data: bytes) -> None:
        fd = self._require_open()
        try:
            write_all(fd, data)
        except OSError as exc:
            raise self._os_error("append to the journal", exc) from exc
        self._bytes["journal"] += len(data)

    def _append_line(self, item_id: ItemId, result_text: str, t: float, extra: str = "") -> None:
        line = '{"id":' + _dumps(item_id) + ',"ok":true,"result":' + result_text + ',"t":' + repr(t) + extra
        self._append(_encode_line(line + "}\n"))
        if item_id not in self._seen:
            self._seen[item_id] = None
        self._done[item_id] = _Encoded(result_text)
        if self._failed:
            self._failed.pop(item_id, None)
            self._failed_kind.pop(item_id, None)

    def _sync(self) -> None:
        if self._fd is None:
            return
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise self._os_error("fsync the journal", exc) from exc
        self._fsyncs += 1
        self._since_sync = 0
        self._last_sync = time.monotonic()

    def _after_write(self) -> None:
        self._since_sync += 1
        now = time.monotonic()
        if self._since_sync >= self.interval or (
            self.interval_seconds is not None and now - self._last_sync >= self.interval_seconds
        ):
            self._sync()
        if now - self._last_progress >= self.progress_interval:
            self._write_progress()

    def record(self, item_id: ItemId, result: Any) -> None:
        """Append a successful result for ``item_id`` (flushed to the OS now; fsynced every ``interval``)."""
        key = id_key(item_id)
        try:
            text = _dumps_strict(result)
        except ValueError as exc:
            if not _is_non_finite(exc):
                raise CheckpointError(
                    f"The result for item {key} is not JSON-serializable: {describe(exc)}.",
                    hint="Return plain values (str, int, float, bool, None, lists, dicts) from the function.",
                ) from exc
            raise CheckpointError(
                f"The result for item {key} holds NaN or Infinity, which JSON cannot represent; it was not recorded.",
                hint="Replace non-finite numbers (e.g. by None or a string; math.isfinite tells them apart) "
                "before recording.",
            ) from exc
        except Exception as exc:  # TypeError, RecursionError (nested too deep), or what the result's own code raised
            raise CheckpointError(
                f"The result for item {key} is not JSON-serializable: {describe(exc)}.",
                hint="Return plain values (str, int, float, bool, None, lists, dicts) from the function.",
            ) from exc
        # Counting brackets is C-fast and bounds the depth from above; only a result with many walks it.
        if text.count("[") + text.count("{") > MAX_RESULT_DEPTH and _nested_deeper_than(result, MAX_RESULT_DEPTH):
            raise CheckpointError(
                f"The result for item {key} is nested more than {MAX_RESULT_DEPTH} deep (lists and dicts); it was "
                "not recorded, so that the journal stays readable.",
                hint="Flatten the result (or store the deep part as a JSON string) before returning it.",
            )
        with self._lock:
            self._require_open()
            self._append_line(key, text, round(time.time(), 3))
            self._new_completed += 1
            self._after_write()

    def record_failure(self, item_id: ItemId, error: BaseException | str, *, attempts: int | None = None) -> None:
        """Append a failure for ``item_id``; it does not count as completed and is retried on resume.

        For an exception the line also keeps its type, and the HTTP status and the provider's request id when
        it carries them (read as :mod:`tether.checkpoint` reads SDK errors), so that progress can group failures
        ("35 x 429, 2 x 400"); ``attempts`` (calls made) is kept when given.
        """
        key = id_key(item_id)
        fields: dict[str, Any] = {}
        if isinstance(error, str):
            message = error
        else:
            message = describe(error)  # never raises, even when the exception's __str__ does
            fields = failure_fields(error)
        if attempts is not None:
            fields["attempts"] = int(attempts)
        line = '{"id":' + _dumps(key) + ',"ok":false,"error":' + _dumps(message)
        for name, value in fields.items():
            line += "," + _dumps(name) + ":" + _dumps(value)
        line += ',"t":' + repr(round(time.time(), 3))
        kind = failure_kind(fields.get("status"), fields.get("error_type"), message)
        with self._lock:
            self._require_open()
            self._append(_encode_line(line + "}\n"))
            if key not in self._seen:
                self._seen[key] = None
            self._failed[key] = message
            self._failed_kind[key] = kind
            self._done.pop(key, None)
            self._after_write()

    # ------------------------------------------------------------------------------------------ querying
    def pending(self, items: Iterable[T], key: Callable[[T], ItemId] | None = None) -> Iterator[T]:
        """The items not yet completed (failed ones included), in the order given.

        Checks the ids first (all str or int, no duplicates) and raises before any item is returned; sets the
        default order of :meth:`finalize` and, if ``total`` was not given, the total; adopts a runbook partial
        file (its first N results belong to the first N items).
        """
        listed = list(items)
        ids: list[ItemId] = [key(it) for it in listed] if key is not None else listed  # type: ignore[assignment]
        for item_id in ids:
            if type(item_id) not in _ID_TYPES:
                id_key(item_id)  # raises for anything but a str or int (subclass), naming the bad id
        dupes = _duplicates(ids)
        if dupes:
            raise CheckpointError(
                f"Duplicate item ids: {_name_ids(dupes)}; nothing was run.",
                hint="Give every item a unique id (key= picks the id of an item).",
            )
        shard = _shard.shard_from_env()
        with self._lock:
            self._require_open_or_final()
            if self.already_finalized:
                self._order = ids
                if self.total is None:
                    self.total = len(listed)
                return iter(())
            self._adopt(ids)  # a runbook partial file's results belong to the first items of the whole list
            if shard is not None:
                # TETHER_SHARD=i/K (a managed run): only this shard's items, by a stable hash of their ids.
                positions = _shard.select(ids, *shard)
                _shard.write_shard_file(
                    self.results_dir, self.name, shard[0], shard[1], [ids[p] for p in positions], len(ids), positions
                )
                listed = [listed[p] for p in positions]
                ids = [ids[p] for p in positions]
                self.total = len(ids)
            self._order = ids  # finalize's default order from now on (no need to extend _seen)
            if self.total is None:
                self.total = len(listed)
            self._write_progress()
        done = self._done
        return (it for it, k in zip(listed, ids) if k not in done)

    def _require_open_or_final(self) -> None:
        if not self.already_finalized:
            self._require_open()

    def is_done(self, item_id: ItemId) -> bool:
        """True when ``item_id`` has a successful result."""
        return id_key(item_id) in self._done

    def result(self, item_id: ItemId) -> Any:
        """The recorded result of ``item_id`` (KeyError when it has none)."""
        value = self._done[id_key(item_id)]
        return json.loads(value.text) if isinstance(value, _Encoded) else value

    @property
    def completed(self) -> int:
        """Items with a successful result."""
        return len(self._done)

    @property
    def failed(self) -> dict[ItemId, str]:
        """Items whose last record is a failure → its error message."""
        return dict(self._failed)

    @property
    def failed_by(self) -> dict[str, int]:
        """Failed items by kind: HTTP status (``"429"``) or error type (``"KeyError"``) → count."""
        out: dict[str, int] = {}
        for kind in self._failed_kind.values():
            out[kind] = out.get(kind, 0) + 1
        return out

    @property
    def stats(self) -> dict[str, int]:
        """Bytes this object wrote, by file (journal, progress, final), and the number of journal fsyncs."""
        out = {f"{k}_bytes": v for k, v in self._bytes.items()}
        out["fsyncs"] = self._fsyncs
        return out

    def progress(self, finished: bool = False) -> dict[str, Any]:
        """The progress document (what the progress file holds)."""
        now = time.time()
        elapsed = max(time.monotonic() - self._started_mono, 1e-9)
        rate = self._new_completed / elapsed if self._started_mono else 0.0
        completed = len(self._done)
        eta: float | None = None
        if self.total is not None:
            if completed >= self.total:
                eta = 0.0
            elif rate > 0:
                eta = round((self.total - completed) / rate, 1)
        return {
            "name": self.name,
            "completed": completed,
            "failed": len(self._failed),
            "failed_by": self.failed_by,
            "total": self.total,
            "started": utc_iso(self._started or now),
            "updated": utc_iso(now),
            "rate_per_s": round(rate, 3),
            "eta_s": eta,
            "pid": os.getpid(),
            "finished": finished,
        }

    def _write_progress(self, finished: bool = False) -> None:
        data = (json.dumps(self.progress(finished)) + "\n").encode("utf-8")
        try:
            atomic_write(self.progress_path, data, durable=False)
        except OSError as exc:
            raise self._os_error("write the progress file", exc) from exc
        self._bytes["progress"] += len(data)
        self._last_progress = time.monotonic()

    # ------------------------------------------------------------------------------------------ finishing
    def finalize(
        self,
        order: Iterable[ItemId] | None = None,
        *,
        allow_failures: bool = False,
        allow_missing: bool = False,
    ) -> Path:
        """Write ``<name>.json`` atomically, results in item order; then remove the journal and progress file.

        ``order`` defaults to the items given to :meth:`pending`, else the order ids were first seen. Refuses
        when an item failed (unless ``allow_failures``) or has no result (unless ``allow_missing``); allowed
        failed or missing items are simply absent from ``results``.
        """
        with self._lock:
            if self.already_finalized or self.finished:
                return self.final_path
            self._require_open()
            if order is not None:
                keys = [id_key(i) for i in order]
                dupes = _duplicates(keys)
                if dupes:
                    raise CheckpointError(f"Duplicate item ids in the order: {_name_ids(dupes)}.")
            elif self._order is not None:
                keys = self._order
            else:
                keys = list(self._seen)
            failed = [k for k in keys if k in self._failed]
            missing = [k for k in keys if k not in self._done and k not in self._failed]
            if failed and not allow_failures:
                first = failed[0]
                raise CheckpointError(
                    f"{len(failed)} items failed (e.g. item {first}: {self._failed[first]}); "
                    f"{self.final_path.name} was not written.",
                    hint="Run again to retry the failed items, or finalize(allow_failures=True) to write the "
                    "results without them.",
                )
            if missing and not allow_missing:
                raise CheckpointError(
                    f"{len(missing)} items have no result yet (e.g. {_name_ids(missing, 5)}); "
                    f"{self.final_path.name} was not written.",
                    hint="Run the remaining items first, or finalize(allow_missing=True).",
                )
            wanted = set(keys)
            extra = [k for k in self._done if k not in wanted]
            if extra:
                self._note(
                    f"{len(extra)} journaled results are not among the items and were left out of "
                    f"{self.final_path.name} (e.g. {_name_ids(extra, 5)})."
                )
            texts: list[str] = []
            for k in keys:
                if k in self._done:
                    value = self._done[k]
                    texts.append(value.text if isinstance(value, _Encoded) else self._final_text(k, value))
            total = self.total if self.total is not None else len(keys)
            head = '{"completed": ' + str(len(texts)) + ', "total": ' + str(total) + ", "
            if failed:
                head += '"failed": ' + str(len(failed)) + ", "
            body = '"results": [\n' + ",\n".join(texts) + "\n]}\n" if texts else '"results": []}\n'
            doc = head + body
            data = _encode_line(doc)
            self._sync()
            try:
                atomic_write(self.final_path, data)
            except OSError as exc:
                raise self._os_error(f"write {self.final_path.name}", exc) from exc
            self._bytes["final"] += len(data)
            self.finished = True
            self._write_progress(finished=True)
            # Remove the journal while still holding its lock: a process waiting to open it then finds it
            # gone (and the final file there), never an unlinked journal it could append to unseen.
            for path in (self.journal_path, self.progress_path):
                with contextlib.suppress(FileNotFoundError):  # already gone: nothing to remove
                    path.unlink()
            self._release()
            fsync_dir(self.results_dir)
            return self.final_path

    def _final_text(self, item_id: ItemId, value: Any) -> str:
        try:
            return _dumps_strict(value)
        except ValueError as exc:  # NaN journaled by an older tether: results.json must stay valid JSON
            raise CheckpointError(
                f"The journaled result for item {json.dumps(item_id, ensure_ascii=False)} holds NaN or Infinity, "
                f"which JSON cannot represent; {self.final_path.name} was not written.",
                hint=f"Edit that line of {self.journal_path.name} (e.g. NaN → null), or record the item again.",
            ) from exc

    def _release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock

    def close(self) -> None:
        """fsync the journal, write the progress file and release the journal. Idempotent."""
        with self._lock:
            if self._fd is None:
                return
            self._sync()
            self._write_progress()
            self._release()


def _names_file(path: Path, fd: int) -> bool:
    """True when ``path`` still names the file open as ``fd`` (not replaced or removed since it was opened)."""
    try:
        st = os.stat(str(path))
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_ino, st.st_dev) == (mine.st_ino, mine.st_dev)


def read_progress(results_dir: str | os.PathLike[str], name: str = "results") -> dict[str, Any] | None:
    """A checkpoint's state read from outside: the progress file, else the final file's counts, else None."""
    folder = Path(results_dir)
    for _ in range(3):  # the progress file can be removed between the two reads below: look again
        try:
            doc = json.loads((folder / f"{name}.progress.json").read_bytes())
            if isinstance(doc, dict):
                return doc
        except FileNotFoundError:
            pass  # no run under way: look for the final file
        except ValueError:
            pass  # an empty file after a power loss: look for the final file
        try:
            final = json.loads((folder / f"{name}.json").read_bytes())
        except FileNotFoundError:
            if (folder / f"{name}.progress.json").exists():
                continue
            return None
        return {
            "name": name,
            "completed": final.get("completed"),
            "failed": final.get("failed", 0),
            "total": final.get("total"),
            "finished": True,
        }
    return None
