"""What an exception from an API client says: its HTTP status, Retry-After, request id, and whether a retry can help.

Duck-typed, so that no SDK is imported: the OpenAI and Anthropic SDKs (``exc.status_code``, ``exc.response.headers``,
``exc.request_id``, ``exc.body`` and ``exc.code``), google-genai's (``exc.code``, ``exc.status``, ``exc.details``:
the JSON body), httpx and requests (``exc.response.status_code``, the body the response has read), aiohttp
(``exc.status``, ``exc.headers``) and urllib (``HTTPError.code``, ``.headers``) all answer the same questions.
Standard library only, Python 3.8+.

The body says what headers do not: Google's delay (a ``google.rpc.RetryInfo`` detail with ``retryDelay``, e.g.
``"3s"``, in ``error.details``) and OpenAI's ``insufficient_quota`` (a 429 that waiting cannot cure).

Every read is defensive: an error object comes from code tether does not control, and reading it must never raise
(a property that raises, a ``__str__`` that raises, an httpx error without its request, a number too big for a
float). What cannot be read counts as absent, so that one odd error fails its own item and nothing else.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import json
import math
import re
import socket
import time
from collections.abc import Mapping
from typing import Any

#: HTTP statuses worth retrying: request timeout, conflict (a lock), too early, rate limit, server errors.
RETRYABLE_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529})
#: Statuses by which a provider pushes back (too many requests, overloaded): the batch lowers its concurrency.
PUSHBACK_STATUSES = frozenset({429, 503, 529})

# Class names (anywhere in the exception's MRO) of errors that carry no status but are worth retrying.
_TRANSIENT_NAMES = (
    "Timeout",  # APITimeoutError, httpx.TimeoutException/ReadTimeout, requests.Timeout, asyncio/builtin TimeoutError
    "ConnectionError",  # APIConnectionError, requests.ConnectionError, builtin ConnectionError and its children
    "ConnectError",  # httpx.ConnectError
    "NetworkError",  # httpx.NetworkError
    "RemoteProtocolError",  # httpx: the server closed the connection mid-answer
    "ProtocolError",  # urllib3
    "ServerDisconnected",  # aiohttp
    "ClientConnectorError",  # aiohttp
    "IncompleteRead",  # http.client
    "ChunkedEncodingError",  # requests
    "DeadlineExceeded",  # google.api_core
)
_PUSHBACK_NAMES = ("RateLimit", "TooManyRequests", "ResourceExhausted", "Overloaded", "ServiceUnavailable")

_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+(?:\.\d+)?)ms)?$")
_REQUEST_ID_HEADERS = ("x-request-id", "request-id", "x-amzn-requestid", "x-goog-request-id")
# A protobuf Duration in JSON: seconds with up to nine decimals and an "s" ("3s", "0.5s", "1.200s").
_PROTO_DURATION = re.compile(r"^\s*(\d{1,12}(?:\.\d{1,9})?)s\s*$")
_RETRY_INFO = "google.rpc.RetryInfo"
#: The error code (OpenAI: ``error.code``, older answers also ``error.type``) of an account whose quota or credit
#: is used up: a 429 that no wait can cure.
QUOTA_CODES = frozenset({"insufficient_quota"})
_BODY_LIMIT = 65536  # a longer body is not parsed: an error body with a delay or a code is a few hundred bytes


#: The longest error message kept (a journal line, a warning): an SDK error can carry a whole response body.
MAX_MESSAGE = 2000


def attr(obj: Any, name: str) -> Any:
    """``obj.name``, or None when it is absent or reading it raises (a property that raises, httpx's
    ``.request`` on an error made without one, ``__getattr__`` that misbehaves)."""
    try:
        return getattr(obj, name, None)
    except Exception:  # reading a foreign object's attribute: whatever it raises means "not there"
        return None


def type_name(exc: BaseException) -> str:
    """The exception's class name, never raising."""
    try:
        name = type(exc).__name__
    except Exception:  # a metaclass with a misbehaving __name__
        return "Exception"
    return name if isinstance(name, str) and name else "Exception"


def safe_text(value: Any, limit: int = MAX_MESSAGE) -> str:
    """``str(value)``, else its ``repr``, else a placeholder: never raises; at most ``limit`` characters."""
    for render in (str, repr):
        try:
            text = render(value)
        except Exception:  # a __str__/__repr__ that raises (or returns a non-str): try the next rendering
            continue
        if isinstance(text, str):
            return text if len(text) <= limit else text[: limit - 3] + "..."
    return f"<unprintable {type_name(value) if isinstance(value, BaseException) else type(value).__name__}>"


def describe(exc: BaseException) -> str:
    """``"Type: message"`` (or just ``"Type"`` when the message is empty), never raising."""
    text = safe_text(exc)
    return f"{type_name(exc)}: {text}" if text else type_name(exc)


def seconds_value(value: Any) -> float | None:
    """A number of seconds as a float: ``inf``/``-inf`` for an int too large for a float, None for NaN and
    for anything that is not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        seconds = float(value)
    except OverflowError:  # an int beyond float range, e.g. 10**400
        return math.inf if value > 0 else -math.inf
    return None if math.isnan(seconds) else seconds


def _int_status(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
        return value
    return None


def status_of(exc: BaseException) -> int | None:
    """The HTTP status an exception carries, or None (a connection error, a programming error)."""
    for name in ("status_code", "status", "code", "http_status"):
        found = _int_status(attr(exc, name))
        if found is not None:
            return found
    response = attr(exc, "response")
    if response is not None:
        for name in ("status_code", "status"):
            found = _int_status(attr(response, name))
            if found is not None:
                return found
    return None


def headers_of(exc: BaseException) -> Any | None:
    """The response headers an exception carries (``exc.response.headers``, else ``exc.headers``), or None."""
    response = attr(exc, "response")
    for holder in (response, exc):
        if holder is None:
            continue
        headers = attr(holder, "headers")
        if headers is not None and callable(attr(headers, "get")):
            return headers
    return None


def header(headers: Any, name: str) -> str | None:
    """Header ``name`` (lower case) from a case-insensitive mapping (httpx, requests, email) or a plain dict."""
    if headers is None:
        return None
    try:
        value = headers.get(name)
        if value is None and isinstance(headers, Mapping):
            for key, val in headers.items():
                if isinstance(key, str) and key.lower() == name:
                    value = val
                    break
    except Exception:  # a header object of an unknown kind that misbehaves: as if absent
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return value if isinstance(value, str) else None


def _header_names(headers: Any) -> list[str]:
    try:
        keys = headers.keys()
        return [k.decode("latin-1") if isinstance(k, bytes) else str(k) for k in keys]
    except Exception:  # no keys() to list: only the fixed names are looked up
        return []


def request_id_of(exc: BaseException) -> str | None:
    """The provider's request id (``exc.request_id`` or an ``x-request-id``/``request-id`` header), or None."""
    value = attr(exc, "request_id")
    if isinstance(value, str) and value:
        return value
    headers = headers_of(exc)
    for name in _REQUEST_ID_HEADERS:
        found = header(headers, name)
        if found:
            return found
    return None


def _date_seconds(text: str, now: float) -> float | None:
    """Seconds from ``now`` to an HTTP date or an ISO-8601/RFC 3339 time; None if it is neither."""
    try:
        parsed = email.utils.parsedate_tz(text)
        if parsed is not None:
            return float(email.utils.mktime_tz(parsed)) - now
    except Exception:  # not an HTTP date (the parser raises various errors on garbage): try ISO 8601 below
        pass
    iso = text.strip().replace("Z", "+00:00").replace("z", "+00:00")
    iso = re.sub(r"(\.\d{6})\d+", r"\1", iso)  # Python 3.8 reads at most microseconds
    try:
        when = datetime.datetime.fromisoformat(iso)
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.timezone.utc)
        return when.timestamp() - now
    except (ValueError, OverflowError, OSError):
        return None


def parse_seconds(text: str, now: float, *, durations: bool = False) -> float | None:
    """A delay header's value in seconds from ``now``: a number of seconds, an HTTP date, an ISO time, or (with
    ``durations``) an OpenAI-style duration such as ``6m0s`` or ``20ms``. None for garbage (NaN included)."""
    raw = text.strip()
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = None
    if seconds is not None:
        if math.isnan(seconds):
            return None
        if durations and seconds > 1e9:  # a reset header holding a unix time
            return seconds - now
        return seconds
    if durations:
        m = _DURATION.match(raw)
        if m and any(m.groups()):
            h, mi, s, ms = (float(g) if g else 0.0 for g in m.groups())
            return h * 3600 + mi * 60 + s + ms / 1000
    return _date_seconds(raw, now)


def asked_delay(exc: BaseException, now: float | None = None) -> tuple[float | None, str]:
    """The delay (seconds, possibly negative or huge: the caller bounds it) an error asks for, and where it was
    read (for messages). Looks at a ``retry_after`` attribute, then ``retry-after-ms``, ``retry-after`` (seconds
    or an HTTP date), then the body's ``RetryInfo`` (Google), then for a rate limit the ``x-ratelimit-reset-*``
    (and Anthropic's ``*-reset``) headers. ``(None, "")`` when there is none or it is garbage."""
    t = time.time() if now is None else now
    value = attr(exc, "retry_after")
    if value is not None and not isinstance(value, bool):
        if isinstance(value, (int, float)):
            seconds = seconds_value(value)
            return (None, "") if seconds is None else (seconds, f"retry_after={safe_text(value, 40)}")
        if isinstance(value, str):
            parsed = parse_seconds(value, t)
            if parsed is not None:
                return parsed, f"retry_after={safe_text(value, 40)!r}"
    headers = headers_of(exc)
    if headers is None:
        return body_retry_delay(exc)
    ms = header(headers, "retry-after-ms")
    if ms is not None:
        try:
            millis = float(ms.strip())
        except ValueError:
            millis = math.nan
        if not math.isnan(millis):
            return millis / 1000.0, f"retry-after-ms: {ms[:40]}"
    ra = header(headers, "retry-after")
    if ra is not None:
        parsed = parse_seconds(ra, t)
        if parsed is not None:
            return parsed, f"retry-after: {ra[:40]}"
    in_body = body_retry_delay(exc)
    if in_body[0] is not None:
        return in_body
    if status_of(exc) != 429 and not is_pushback(exc):
        return None, ""
    exhausted: list[tuple[float, str]] = []
    others: list[tuple[float, str]] = []
    for name in _header_names(headers):
        low = name.lower()
        anthropic = low.startswith("anthropic-ratelimit-") and low.endswith("-reset")
        if not (low.startswith("x-ratelimit-reset") or anthropic):
            continue
        text = header(headers, low)
        parsed = parse_seconds(text, t, durations=True) if text is not None else None
        if parsed is None or text is None:
            continue
        remaining = header(headers, low.replace("reset", "remaining"))
        found = (parsed, f"{low[:60]}: {text[:40]}")
        (exhausted if remaining is not None and remaining.strip() == "0" else others).append(found)
    if exhausted:
        return max(exhausted)
    if others:
        return min(others)
    return None, ""


def _json_doc(value: Any) -> Any:
    """A JSON body as Python: a dict or list as it is, a str or bytes parsed (None when it is not JSON or too long)."""
    if isinstance(value, (dict, list)):
        return value
    if isinstance(value, (bytes, bytearray)):
        if len(value) > _BODY_LIMIT:
            return None
        value = bytes(value).decode("utf-8", "replace")
    if not isinstance(value, str) or len(value) > _BODY_LIMIT or not value.lstrip().startswith(("{", "[")):
        return None
    try:
        return json.loads(value)
    except Exception:  # not JSON, or nested too deep (RecursionError): no body to read
        return None


def _error_objects(doc: Any) -> list[Mapping[str, Any]]:
    """The error objects of a body: ``{"error": {...}}``'s inner object, the object itself when it has no
    ``error`` (OpenAI's ``exc.body`` is the inner one already), each of a list of them (Google's streaming form)."""
    docs = doc[:8] if isinstance(doc, list) else [doc]
    out: list[Mapping[str, Any]] = []
    for one in docs:
        if not isinstance(one, Mapping):
            continue
        inner = one.get("error")
        out.append(inner if isinstance(inner, Mapping) else one)
    return out


def error_bodies(exc: BaseException) -> list[Mapping[str, Any]]:
    """The error objects of the JSON body an exception carries: ``exc.body`` (OpenAI, Anthropic: the inner
    ``error`` object), ``exc.details`` or ``exc.response_json`` (google-genai: the whole body), else the body its
    response has already read (``exc.response.content``/``.text``: httpx, requests). Empty when there is none."""
    try:
        for name in ("body", "details", "response_json"):
            found = _error_objects(_json_doc(attr(exc, name)))
            if found:
                return found
        response = attr(exc, "response")
        if response is None:
            return []
        for name in ("content", "text"):  # httpx raises ResponseNotRead for a body not read: absent
            found = _error_objects(_json_doc(attr(response, name)))
            if found:
                return found
    except Exception:  # a mapping whose own code raises: no body to read
        return []
    return []


def proto_duration(value: Any) -> float | None:
    """Seconds of a protobuf Duration as JSON renders it (``"3s"``, ``"0.5s"``, ``"1.200s"``) or as an object
    (``{"seconds": "3", "nanos": 500000000}``); None for anything else (a negative one included)."""
    if isinstance(value, str):
        m = _PROTO_DURATION.match(value)
        return float(m.group(1)) if m else None
    if isinstance(value, Mapping):
        try:
            seconds, nanos = value.get("seconds", 0), value.get("nanos", 0)
            if isinstance(seconds, bool) or isinstance(nanos, bool):
                return None
            total = int(seconds) + int(nanos) / 1e9
        except Exception:  # not numbers: no duration
            return None
        return total if 0 <= total < 1e12 else None
    return None


def body_retry_delay(exc: BaseException) -> tuple[float | None, str]:
    """The delay a ``google.rpc.RetryInfo`` detail of the error body asks for (``error.details[].retryDelay``, as
    the Gemini and Vertex AI APIs send it with a 429), and where it was read; ``(None, "")`` when there is none."""
    try:
        for err in error_bodies(exc):
            details = err.get("details")
            if not isinstance(details, list):
                continue
            for detail in details[:32]:
                if not isinstance(detail, Mapping):
                    continue
                kind = detail.get("@type")
                if not (isinstance(kind, str) and kind.endswith(_RETRY_INFO)) and "retryDelay" not in detail:
                    continue
                raw = detail.get("retryDelay")
                seconds = proto_duration(raw)
                if seconds is not None:
                    return seconds, f"RetryInfo retryDelay {safe_text(raw, 40)}"
    except Exception:  # a mapping whose own code raises: as if absent
        return None, ""
    return None, ""


def quota_exhausted(exc: BaseException) -> str | None:
    """When the error says the account's quota or credit is used up (OpenAI's 429 ``insufficient_quota``, in
    ``exc.code`` or the body's ``error.code``/``error.type``), the provider's message (possibly empty); else None.
    Waiting cannot cure it. (Google says "You exceeded your current quota" of a per-minute limit too, with a
    RetryInfo: that one is a rate limit, read by its ``RESOURCE_EXHAUSTED`` status, and waited for.)"""
    code = attr(exc, "code")
    hit = isinstance(code, str) and code in QUOTA_CODES
    message = ""
    try:
        for err in error_bodies(exc):
            named = [err.get("code"), err.get("type")]
            if hit or any(isinstance(v, str) and v in QUOTA_CODES for v in named):
                hit = True
                text = err.get("message")
                message = text[:300] if isinstance(text, str) else ""
                break
    except Exception:  # a mapping whose own code raises: judged by exc.code alone
        pass
    return message if hit else None


def _names(exc: BaseException) -> list[str]:
    try:
        return [name for name in (getattr(cls, "__name__", "") for cls in type(exc).__mro__) if isinstance(name, str)]
    except Exception:  # a class whose MRO cannot be read: judged by its status alone
        return []


def is_pushback(exc: BaseException) -> bool:
    """The provider pushes back: a rate limit or overload (429, 503, 529, or an error class named so)."""
    status = status_of(exc)
    if status is not None:
        return status in PUSHBACK_STATUSES
    return any(tag in name for name in _names(exc) for tag in _PUSHBACK_NAMES)


def is_transient(exc: BaseException) -> bool:
    """A retry can succeed: a retryable status (429, 5xx, ...), a rate limit, a timeout or a connection error.

    A 4xx other than 408/409/425/429 (bad request, auth, not found) and programming errors (KeyError, TypeError,
    ...) are not transient, nor is a used-up quota (:func:`quota_exhausted`). Otherwise an ``x-should-retry``
    header (sent by the OpenAI and Anthropic APIs) has the last word.
    """
    if quota_exhausted(exc) is not None:
        return False
    should = header(headers_of(exc), "x-should-retry")
    if should in ("true", "false"):
        return should == "true"
    status = status_of(exc)
    if status is not None:
        return status in RETRYABLE_STATUSES
    if isinstance(exc, (TimeoutError, ConnectionError, asyncio.TimeoutError, socket.timeout)):
        return True
    names = _names(exc)
    if any(tag in name for name in names for tag in _TRANSIENT_NAMES + _PUSHBACK_NAMES):
        return True
    if "URLError" in names:  # urllib without a status: the reason says whether the network failed
        reason = attr(exc, "reason")
        return isinstance(reason, (OSError, socket.timeout))
    return False


def sdk_retries_taken(exc: BaseException) -> int | None:
    """How many times the SDK itself retried the call that raised ``exc`` (the OpenAI and Anthropic SDKs tell it
    in the request's ``x-stainless-retry-count`` header), or None when unknown."""
    request = attr(exc, "request")  # httpx raises here when the error was made without a request
    if request is None:
        response = attr(exc, "response")
        request = attr(response, "request") if response is not None else None
    value = header(attr(request, "headers"), "x-stainless-retry-count")
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip())


def failure_fields(exc: BaseException) -> dict[str, Any]:
    """What a failure's journal line keeps: ``error_type``, and ``status`` and ``request_id`` when known."""
    out: dict[str, Any] = {"error_type": type_name(exc)}
    status = status_of(exc)
    if status is not None:
        out["status"] = status
    rid = request_id_of(exc)
    if rid is not None:
        out["request_id"] = rid[:200]
    return out


def failure_kind(status: Any, error_type: Any, message: str) -> str:
    """How ``tether progress`` groups a failure: its HTTP status (``"429"``), else its error type (``"KeyError"``),
    else the word before the colon of an older journal's message, else ``"error"``."""
    if isinstance(status, int) and not isinstance(status, bool):
        return str(status)
    if isinstance(error_type, str) and error_type:
        return error_type
    head, colon, _ = message.partition(":")
    return head if colon and head.isidentifier() else "error"
