"""tether.checkpoint: never lose a finished result of a batch experiment.

Standard library only (``tqdm`` is used for the progress bar when importable) and Python 3.8+, because
experiment code imports it on servers with a bare ``python3``. It replaces the runbook's protocol (rewrite
the whole ``results_partial.json`` every 25 items, resume by position) with an append-only journal keyed by
item id.

Example::

    from tether.checkpoint import Checkpoint, run_batch, RetryAfter

    ckpt = Checkpoint(results_dir, total=len(items), config={"model": model, "dataset": dataset})
    with ckpt:                         # opens and replays the journal; adopts a runbook partial file
        for item in ckpt.pending(items, key=lambda it: it["id"]):  # not completed yet (failed included)
            try:
                ckpt.record(item["id"], compute(item))
            except ApiError as exc:
                ckpt.record_failure(item["id"], exc)  # retried on the next run
        ckpt.finalize()  # results.json in item order; journal and progress removed

    # or all of it, with concurrency, a rate limit, retries and a progress bar:
    summary = run_batch(call_model, items, results_dir, key=lambda it: it["id"], config={"model": model},
                        concurrency=8, rpm=600, retries=3)
    # summary.completed, .failed, .skipped, .elapsed, .final_path

``Checkpoint(results_dir, name="results", *, total=None, config=None, interval=25, interval_seconds=2.0,
allow_config_change=False, partial_name="results_partial.json", progress_interval=1.0)``;
``Checkpoint.from_env(results_dir=None, **kw)`` uses ``$TETHER_RESULTS_DIR`` when it is set. Methods:
``open()``/``close()`` (or ``with``), ``pending(items, key=None)``, ``record(id, result)``,
``record_failure(id, exc_or_message, *, attempts=None)``, ``finalize(order=None, *, allow_failures=False,
allow_missing=False)``, ``is_done(id)``, ``result(id)``; attributes ``completed``, ``failed`` (id → error),
``warnings`` (what opening repaired or adopted; each is also issued as a :class:`CheckpointWarning`),
``dropped_tail`` (the bytes of a torn last line that were dropped, or None), ``already_finalized``,
``failed_by`` (failed items by HTTP status or error type), ``stats`` (bytes written, fsyncs).
``read_progress(results_dir, name="results")`` reads the progress from outside (or the final file's counts).

Guarantees
----------
- Results are keyed by item id (``str`` or ``int``; compared by their JSON encoding, so ``7`` and ``"7"``
  differ). Every record is one ``write`` of one whole line (flushed to the OS on every item, so a killed
  process loses only the items in flight) and fsynced every ``interval`` items or ``interval_seconds``
  (checked on each record) and on close, so a power loss loses at most that window.
- Resume is by id. A torn last line (an interrupted write) is dropped, reported (warning + ``dropped_tail``)
  and cut off the journal; its item runs again. A corrupt line anywhere else raises :class:`CheckpointError`
  naming the file and the line number, and the file is left untouched.
- The header stores the run's config and its hash; resuming with a different config is refused, naming the
  keys that differ, unless ``allow_config_change=True`` (then the header is rewritten with the new config
  and the old hash is kept in ``previous_config_hashes``).
- A failed item is journaled with its error, does not count as completed, and ``pending`` yields it again.
- ``finalize`` refuses when items failed (``allow_failures=True`` writes the results without them and adds
  ``"failed": n``) or have no result (``allow_missing=True``).
- A runbook ``results_partial.json`` (``{"completed", "total", "results": [...]}``, by position) is adopted
  on the first ``pending(items)``: its results belong to the first items given (all of ``results`` is used:
  the runbook's own resume resets ``completed``), then it is renamed ``results_partial.json.adopted``, never
  deleted. One that is not valid JSON is refused and left untouched.
- Duplicate item ids are refused before any item runs. One process at a time writes a journal (``flock``):
  a second process opening the same checkpoint is refused, even when both create it at the same moment
  (the journal is created by a no-replace link of an already locked file, and a descriptor is kept only if
  the path still names it once locked).
- A result holding NaN or Infinity is refused at ``record`` (the final file must stay valid JSON).
- A finished checkpoint (final file present, no journal) runs nothing again: ``pending`` yields nothing and
  ``finalize`` returns the existing path. Move the final file away to run again.

Files (a contract: other parts of tether read them)
---------------------------------------------------
In the results folder, for a checkpoint ``name`` (default ``"results"``):

- ``<name>.journal.jsonl``: the first line is a header ``{"tether_journal": 1, "name", "config",
  "config_hash", "total", "created"}``, then one JSON object per line: ``{"id": <item id>, "ok": true,
  "result": ..., "t": <unix time>}`` or ``{"id": ..., "ok": false, "error": "...", "t": ...}``, a failure with
  ``"error_type"`` and, when known, ``"status"`` (HTTP), ``"request_id"`` and ``"attempts"``. Later lines
  for the same id win. (Adopted results carry ``"adopted": true``; readers ignore keys they do not know.)
- ``<name>.progress.json``: ``{"name", "completed", "failed", "failed_by", "total", "started", "updated",
  "rate_per_s", "eta_s", "pid", "finished"}``: ``failed_by`` counts failed items by HTTP status or error type
  (``{"429": 35, "KeyError": 2}``); times are ISO-8601 UTC strings; ``rate_per_s`` is items completed per
  second since this process opened the checkpoint; ``eta_s`` is null when unknown; ``pid`` is the writing
  process; ``finished`` is true once ``finalize`` wrote the final file. Replaced atomically (temp file +
  ``os.replace``) at open, at most every ``progress_interval`` seconds while recording, and at finalize and
  close. ``finalize`` removes it right after the final file is written, so a reader may find only the final
  file.
- ``<name>.json``: the final results in the runbook's shape ``{"completed", "total", "results"}`` (plus
  ``"failed"`` when failures were allowed), results in item order, one result per line; written by temp
  file, fsync, ``os.replace`` and an fsync of the folder. ``completed`` is the number of results.

The batch runner (:func:`run_batch`, or :func:`arun_batch` inside an event loop) maps a sync or async
function over the pending items:

- **Concurrency** at most ``concurrency`` (default 1), adaptive (``adaptive=True``): when the provider pushes
  back (HTTP 429, 503, 529, a ``RateLimitError``/``OverloadedError``, :class:`RetryAfter`) the limit is
  multiplied by 0.9, once per round of calls; each success adds ``1/limit`` (about one call per round), up to
  ``concurrency``. A pushback that says when to come back holds every new call until then.
- **Rate limits**: ``rpm`` (call starts per minute, retries included) and ``tpm`` (tokens per minute, each
  call costing ``cost(item)``, by default the item's text length / 4; a refused call is not charged).
- **Retries** (``retries=3``) of what can succeed: 408/409/425/429/5xx/529 answers, timeouts and connection
  errors, read duck-typed from the OpenAI, Anthropic and Google SDKs, httpx, requests, aiohttp and urllib (no
  SDK is imported); 400/401/403/404 and programming errors (``KeyError``...) fail at once. ``retry_on``
  (exception types) replaces that judgment. The wait is the error's Retry-After (``retry_after`` attribute,
  ``exc.response.headers`` or ``exc.headers``: ``retry-after-ms``, ``retry-after`` in seconds or as an HTTP
  date; else the body's ``google.rpc.RetryInfo`` ``retryDelay``, as google-genai's ``exc.details`` holds it; a
  rate limit's ``x-ratelimit-reset-*``) capped at ``max_retry_after`` (120 s, said once), else exponential
  backoff with jitter (also for a Retry-After of 0, negative or garbage).
- **A used-up quota** (OpenAI's 429 ``insufficient_quota``, in ``exc.code`` or the body) cannot be waited out:
  the item that met it fails, no other call starts, the calls in flight end, and :class:`CheckpointError` says
  so once the journal (with everything that finished) is closed; the next run resumes.
- **No stacked retries**: SDK clients retry by themselves (``max_retries=2``), which multiplies the calls of a
  rate-limited item and hides them from the pacing. Build them with ``max_retries=0`` or wrap them with
  :func:`without_sdk_retries` (google-genai: ``HttpOptions(retry_options=HttpRetryOptions(attempts=1))``, or no
  ``retry_options``); ``run_batch`` warns once when it sees a client that retries (in the item function's
  closure or globals, or in the ``x-stainless-retry-count`` header of an error's request).
- **Failures** are journaled with ``error_type``, ``status`` and ``request_id`` (when the error has them) and
  ``attempts``; the progress file counts them by kind (``failed_by``: ``{"429": 35, "400": 2}``).
- A progress bar on stderr; while the provider refuses every call it says so in place of the rate
  (``provider refusing: waiting 3 s (429 ×12)``) until a call is accepted. Every wait goes through ``clock``
  (a :class:`BatchClock`; a test passes one that records the waits). On Ctrl-C or SIGTERM it stops starting
  items, abandons the ones in flight (they are not recorded), closes the journal and exits.
"""

from __future__ import annotations

from tether.checkpoint.batch import (
    BatchClock,
    BatchSummary,
    RetryAfter,
    arun_batch,
    backoff_delay,
    retry_after_of,
    run_batch,
    without_sdk_retries,
)
from tether.checkpoint.journal import (
    ENV_RESULTS_DIR,
    RUNBOOK_PARTIAL,
    Checkpoint,
    CheckpointWarning,
    ItemId,
    config_hash,
    id_key,
    read_progress,
)
from tether.errors import CheckpointError

__all__ = [
    "ENV_RESULTS_DIR",
    "RUNBOOK_PARTIAL",
    "BatchClock",
    "BatchSummary",
    "Checkpoint",
    "CheckpointError",
    "CheckpointWarning",
    "ItemId",
    "RetryAfter",
    "arun_batch",
    "backoff_delay",
    "config_hash",
    "id_key",
    "read_progress",
    "retry_after_of",
    "run_batch",
    "without_sdk_retries",
]
