"""A thin httpx client for the part of the Vast.ai REST API tether uses.

It speaks JSON, retries what is safe to retry, and turns every failure into the tether exception tree::

    ProviderError      an answer Vast.ai gave that we cannot use, or no answer after the retries, or an
    │                  address that is not the Vast.ai API (a 404 for a route every API has: a wrong VAST_URL)
    ├── AuthError      no API key found, or Vast.ai rejected it (401 "Invalid user key", or 404 "auth_error")
    ├── RateLimited    429 past the retry budget, a Retry-After longer than the cap, or search_quota_exceeded
    ├── NoCredit       the account's credit does not cover the rental
    └── NoCapacity     the offer asked for is gone (someone else rented it), or a bid below its minimum

Retries: 429/502/503/504 and connect/read timeouts, with bounded exponential backoff that honours
``Retry-After`` (a 429 without it backs off all the same; the docs say none is sent). A create (``PUT /asks/``) is
not idempotent, so it is retried only when the request surely did not reach the server (connect failures, 429),
and it waits :data:`CREATE_TIMEOUT_S` for its answer, as the vendor's client does. "No such instance", at any
status, means gone. The key never appears in logs, reprs or exception messages.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from tether.errors import AuthError, NoCapacity, NoCredit, ProviderError, RateLimited
from tether.retry import backoff_step, jitter_up

DEFAULT_URL = "https://console.vast.ai"
RETRY_STATUSES = frozenset({429, 502, 503, 504})
KEY_HINT = "Set VAST_API_KEY, or run `vastai set api-key <key>` once (tether reads the same file)."
MAX_PAGES = 1000
#: The vendor's client waits this long for every request; instance creation is the slow one.
CREATE_TIMEOUT_S = 120.0
#: Words of an answer that says the instance does not exist (any status): it is gone.
_NO_SUCH_INSTANCE = ("no_such_instance", "no such instance", "instance not found", "does not exist")
_NO_CREDIT = ("insufficient_credit", "insufficient credit", "not enough credit", "insufficient funds", "balance")
KEY_ADD_HINT = (
    'Add it to your account: `vastai create ssh-key "$(cat {pub})"`, or paste it at '
    "https://cloud.vast.ai/manage-keys/ (Account > SSH Keys); then run the command again."
)


def find_api_key(env: Mapping[str, str] | None = None, home: Path | None = None) -> str | None:
    """The user's Vast.ai key, read where the vendor CLI keeps it, or None.

    Order: env ``VAST_API_KEY``; ``$XDG_CONFIG_HOME/vastai/vast_api_key`` (default ``~/.config/...``);
    the legacy ``~/.vast_api_key``.
    """
    found = _find_api_key(env, home)
    return found[0] if found else None


def _find_api_key(env: Mapping[str, str] | None = None, home: Path | None = None) -> tuple[str, str] | None:
    """The key and where it came from (``VAST_API_KEY`` or the file's path), or None."""
    env = os.environ if env is None else env
    key = env.get("VAST_API_KEY", "").strip()
    if key:
        return key, "VAST_API_KEY"
    home = Path(env.get("HOME", str(Path.home()))) if home is None else home
    xdg = env.get("XDG_CONFIG_HOME") or str(home / ".config")
    for path in (Path(xdg) / "vastai" / "vast_api_key", home / ".vast_api_key"):
        try:
            text = path.read_text(encoding="utf-8").strip()
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        if text:
            return text, str(path)
    return None


def rejected_key_hint(source: str | None) -> str:
    """What to do about a key Vast.ai rejected, given where it came from (never the key itself)."""
    account = "a key from your account's API keys (https://cloud.vast.ai/manage-keys/)"
    if source == "VAST_API_KEY":
        return (
            f"The key tether used is VAST_API_KEY's: set it to {account}, or unset it to use the key file "
            "`vastai set api-key` writes."
        )
    if source:
        return f"The key tether used is in {source}: replace it with {account} (`vastai set api-key <key>`)."
    return f"Use {account}."


def _retry_after(resp: httpx.Response, now: Callable[[], float] = time.time) -> float | None:
    """Seconds to wait: ``Retry-After``, else ``X-RateLimit-Reset`` (an epoch time or a number of seconds)."""
    raw = resp.headers.get("Retry-After")
    if raw is not None:
        try:
            return max(0.0, float(raw))
        except ValueError:
            pass
    reset = resp.headers.get("X-RateLimit-Reset")
    if reset is None:
        return None
    try:
        value = float(reset)
    except ValueError:
        return None
    # Large values are a moment (epoch seconds), small ones a delay.
    return max(0.0, value - now()) if value > 1e9 else max(0.0, value)


def _json_or_none(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return None


def _vast_message(resp: httpx.Response) -> str:
    body = _json_or_none(resp)
    if isinstance(body, dict):
        parts = [str(body[k]) for k in ("error", "msg") if body.get(k)]
        if parts:
            return ": ".join(parts)
    text = resp.text.strip().replace("\n", " ")
    return text[:200] if text else f"HTTP {resp.status_code}"


def _is_auth_failure(resp: httpx.Response) -> bool:
    """401 (the service and its OpenAPI spec: "Invalid user key"), or 403/404 whose body says ``auth_error``."""
    if resp.status_code == 401:
        return True
    if resp.status_code in (403, 404):
        body = _json_or_none(resp)
        return isinstance(body, dict) and body.get("error") == "auth_error"
    return False


def says_no_such_instance(resp: httpx.Response) -> bool:
    """Whether an answer (any status) says the instance does not exist."""
    body = _json_or_none(resp)
    if not isinstance(body, dict):
        return False
    text = " ".join(str(body.get(k) or "") for k in ("error", "msg", "message")).lower()
    return any(w in text for w in _NO_SUCH_INSTANCE)


def says_no_credit(resp: httpx.Response) -> bool:
    body = _json_or_none(resp)
    if resp.status_code == 402:
        return True
    if not isinstance(body, dict):
        return False
    text = " ".join(str(body.get(k) or "") for k in ("error", "msg", "message")).lower()
    return any(w in text for w in _NO_CREDIT)


class VastClient:
    """Vast.ai over HTTP. Build it with a key and URL, or let it find them (env, the vendor CLI's files)."""

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 30.0,
        max_retries: int = 5,
        backoff_base: float = 1.0,
        max_wait: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        create_timeout: float = CREATE_TIMEOUT_S,
    ) -> None:
        self.base_url = (base_url or os.environ.get("VAST_URL") or DEFAULT_URL).rstrip("/")
        self._api_key = api_key
        self._key_source: str | None = None  # where a key tether found came from (None: the caller's)
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.max_wait = max_wait
        self._sleep = sleep
        self.create_timeout = create_timeout
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport)

    def __repr__(self) -> str:
        return f"VastClient(base_url={self.base_url!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> VastClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _key(self) -> str:
        if self._api_key is None:
            found = _find_api_key()
            if found is not None:
                self._api_key, self._key_source = found
        if not self._api_key:
            raise AuthError("No Vast.ai API key was found.", KEY_HINT)
        return self._api_key

    def _backoff(self, attempt: int) -> float:
        return jitter_up(backoff_step(attempt, self.backoff_base, self.max_wait))

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        idempotent: bool = True,
        timeout: float | None = None,
    ) -> httpx.Response:
        """Send one request with retries; the response is neither a retryable error nor an auth failure."""
        headers = {"Authorization": f"Bearer {self._key()}", "Accept": "application/json"}
        what = f"{method} {path}"
        last_problem = ""
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            try:
                resp = self._http.request(
                    method,
                    path,
                    json=json,
                    params=params,
                    headers=headers,
                    timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
                )
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                last_problem = f"could not connect ({type(exc).__name__})"
                if last:
                    break
                self._sleep(self._backoff(attempt))
                continue
            except (httpx.ReadTimeout, httpx.WriteTimeout, httpx.RemoteProtocolError, httpx.ReadError) as exc:
                last_problem = f"no answer in time ({type(exc).__name__})"
                if last or not idempotent:
                    if not idempotent:
                        raise ProviderError(
                            f"Vast.ai did not answer {what} in time; it may or may not have been done.",
                            "Run `tether ls` to check before trying again.",
                        ) from exc
                    break
                self._sleep(self._backoff(attempt))
                continue
            if _is_auth_failure(resp):
                said = _vast_message(resp)
                raise AuthError(
                    f"Vast.ai rejected the API key (HTTP {resp.status_code}: {said}).",
                    rejected_key_hint(self._key_source),
                )
            if resp.status_code not in RETRY_STATUSES:
                return resp
            retry_after = _retry_after(resp)
            body = _json_or_none(resp)
            if isinstance(body, dict) and body.get("error") == "search_quota_exceeded":
                raise RateLimited(
                    "Vast.ai says the search quota is used up (search_quota_exceeded).",
                    _wait_hint(retry_after),
                    retry_after=retry_after,
                )
            if resp.status_code == 429:
                last_problem = f"rate limited (429: {_vast_message(resp)})"
                if retry_after is not None and retry_after > self.max_wait:
                    raise RateLimited(
                        f"Vast.ai is rate limiting {what} for longer than tether waits.",
                        _wait_hint(retry_after),
                        retry_after=retry_after,
                    )
                if last:
                    raise RateLimited(
                        f"Vast.ai kept rate limiting {what} after {self.max_retries + 1} tries.",
                        _wait_hint(retry_after),
                        retry_after=retry_after,
                    )
            else:
                last_problem = f"HTTP {resp.status_code}"
                if last or not idempotent:
                    break
            wait = retry_after if retry_after is not None else self._backoff(attempt)
            self._sleep(min(wait, self.max_wait))
        raise ProviderError(
            f"Vast.ai did not answer {what} after {self.max_retries + 1} tries: {last_problem}.",
            f"Check your network and {self.base_url}, then try again.",
        )

    def _json(self, resp: httpx.Response, what: str) -> dict[str, Any]:
        body = _json_or_none(resp)
        if resp.status_code >= 400 or not isinstance(body, dict):
            raise ProviderError(f"Vast.ai refused {what}: {_vast_message(resp)}.")
        if body.get("success") is False:
            raise ProviderError(f"Vast.ai refused {what}: {_vast_message(resp)}.")
        return body

    # -------------------------------------------------------------------------------- endpoints

    def search_offers(self, body: Mapping[str, Any]) -> list[dict[str, Any]]:
        """``POST /api/v0/bundles/`` with a wire body from :func:`tether.providers.vast.query.body_for`."""
        resp = self.request("POST", "/api/v0/bundles/", json=dict(body))
        data = self._json(resp, "the offer search")
        offers = data.get("offers")
        if not isinstance(offers, list):
            raise ProviderError("Vast.ai answered the offer search without an offer list.")
        return [o for o in offers if isinstance(o, dict)]

    def create_instance(
        self,
        offer_id: int,
        *,
        image: str,
        disk_gb: float,
        label: str | None = None,
        onstart: str | None = None,
        env: Mapping[str, str] | None = None,
        price: float | None = None,
        runtype: str = "ssh_direc ssh_proxy",
    ) -> int:
        """``PUT /api/v0/asks/{id}/``; the new instance id.

        ``price`` is the $/hr bid of an interruptible rental (None: on demand). An offer that is gone, or a refusal
        that still made an instance (a bid too low gives a stopped one), raises NoCapacity (with that instance's id,
        for the caller to destroy); too little credit raises NoCredit. Waited for :data:`CREATE_TIMEOUT_S`, never
        retried once it may have reached the server.
        """
        body = {
            "client_id": "me",
            "image": image,
            "env": dict(env or {}),
            "price": price,
            "disk": float(disk_gb),
            "label": label,
            "onstart": onstart,
            "runtype": runtype,
            "cancel_unavail": True,
        }
        resp = self.request(
            "PUT", f"/api/v0/asks/{int(offer_id)}/", json=body, idempotent=False, timeout=self.create_timeout
        )
        raw = _json_or_none(resp)
        made = raw.get("new_contract") if isinstance(raw, dict) else None
        made_id = str(made) if isinstance(made, int | str) and str(made).isdigit() else None
        refused = resp.status_code >= 400 or (isinstance(raw, dict) and raw.get("success") is False)
        if refused and says_no_credit(resp):
            raise NoCredit(
                f"Vast.ai refused to rent offer {offer_id}: the account has too little credit ({_vast_message(resp)}).",
                "Add credit at https://cloud.vast.ai/billing/, then run the command again.",
            )
        text = _vast_message(resp).lower()
        if refused and made_id is not None:
            raise NoCapacity(
                f"Vast.ai refused offer {offer_id} ({_vast_message(resp)}) but made instance {made_id}.",
                "tether destroys that instance; search again or raise the bid.",
                instance_id=made_id,
            )
        if resp.status_code == 404 and not (isinstance(raw, dict) and raw.get("error")):
            self._check_route(f"renting offer {offer_id}")  # a bare 404: is this the API at all?
        if resp.status_code == 404 or "no_such_ask" in text or "not available" in text:
            raise NoCapacity(
                f"Offer {offer_id} is no longer available (someone else rented it).",
                "Search again and pick another offer.",
            )
        data = self._json(resp, f"renting offer {offer_id}")
        new_id = data.get("new_contract")
        if not isinstance(new_id, int | str) or not str(new_id).isdigit():
            raise ProviderError(f"Vast.ai accepted offer {offer_id} but named no new instance.")
        return int(new_id)

    def _check_route(self, what: str) -> None:
        """After a 404 that does not say what is missing: is this address the Vast.ai API at all? A route every
        account has (``GET /api/v1/instances/``) must answer; if it does not, the URL is wrong (ProviderError)."""
        probe = self.request("GET", "/api/v1/instances/", params={"limit": 1})
        if probe.status_code == 404 or not isinstance(_json_or_none(probe), dict):
            raise ProviderError(
                f"{self.base_url} answered 404 for {what} and for the instance list: it is not the Vast.ai API.",
                "Check VAST_URL (or [vast] url in tether.toml); unset it to use https://console.vast.ai.",
            )

    def list_instances(self) -> list[dict[str, Any]]:
        """Every instance of the account (``GET /api/v1/instances/``, following ``next_token``)."""
        out: list[dict[str, Any]] = []
        token: str | None = None
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            params: dict[str, Any] = {"limit": 25}
            if token is not None:
                params["after_token"] = token
            resp = self.request("GET", "/api/v1/instances/", params=params)
            if resp.status_code == 404:
                self._check_route("listing instances")
            data = self._json(resp, "listing instances")
            page = data.get("instances") or []
            out.extend(i for i in page if isinstance(i, dict))
            nxt = data.get("next_token")
            if not nxt:
                return out
            token = str(nxt)
            if token in seen:
                raise ProviderError("Vast.ai returned the same page token twice while listing instances.")
            seen.add(token)
        raise ProviderError(f"Vast.ai listed more than {MAX_PAGES} pages of instances.")

    def _missing(self, resp: httpx.Response, what: str) -> bool:
        """Whether an answer means the instance does not exist: it says so (any status), or it is a 404 from an
        address that does answer for a known route. A 404 from a wrong address raises ProviderError."""
        if says_no_such_instance(resp):
            return True
        if resp.status_code == 404:
            self._check_route(what)
            return True
        return False

    def show_instance(self, instance_id: int) -> dict[str, Any] | None:
        """One instance (``GET /api/v0/instances/{id}/?owner=me``), or None once it is gone."""
        what = f"showing instance {instance_id}"
        resp = self.request("GET", f"/api/v0/instances/{int(instance_id)}/", params={"owner": "me"})
        if self._missing(resp, what):
            return None
        data = self._json(resp, what)
        inst = data.get("instances")
        return inst if isinstance(inst, dict) else None

    def _put_instance(self, instance_id: int, body: Mapping[str, Any], what: str) -> dict[str, Any]:
        resp = self.request("PUT", f"/api/v0/instances/{int(instance_id)}/", json=dict(body))
        if self._missing(resp, what):
            raise ProviderError(f"Instance {instance_id} does not exist (any more).", "Run `tether ls`.")
        return self._json(resp, what)

    def stop_instance(self, instance_id: int) -> None:
        self._put_instance(instance_id, {"state": "stopped"}, f"stopping instance {instance_id}")

    def start_instance(self, instance_id: int) -> str:
        """Ask for a start; the service's message (e.g. that the state change is queued), or ""."""
        data = self._put_instance(instance_id, {"state": "running"}, f"starting instance {instance_id}")
        return str(data.get("msg") or data.get("message") or "")

    def label_instance(self, instance_id: int, label: str) -> None:
        self._put_instance(instance_id, {"label": label}, f"labelling instance {instance_id}")

    def destroy_instance(self, instance_id: int) -> bool:
        """``DELETE /api/v0/instances/{id}/``; False if it was already gone ("no such instance" at any status)."""
        what = f"destroying instance {instance_id}"
        resp = self.request("DELETE", f"/api/v0/instances/{int(instance_id)}/", json={})
        if self._missing(resp, what):
            return False
        self._json(resp, what)
        return True

    def ssh_keys(self) -> list[str]:
        """The public keys on the account (``GET /api/v0/ssh/``): each as its OpenSSH line."""
        resp = self.request("GET", "/api/v0/ssh/")
        if resp.status_code == 404:
            self._check_route("listing SSH keys")
        body = _json_or_none(resp)
        if resp.status_code >= 400 or body is None:
            raise ProviderError(f"Vast.ai refused listing the account's SSH keys: {_vast_message(resp)}.")
        rows: Any = body
        if isinstance(body, dict):
            rows = next((body[k] for k in ("ssh_keys", "keys", "results") if isinstance(body.get(k), list)), [])
        out: list[str] = []
        for row in rows if isinstance(rows, list) else []:
            key = row.get("public_key") or row.get("ssh_key") or row.get("key") if isinstance(row, dict) else row
            if isinstance(key, str) and key.strip():
                out.append(key.strip())
        return out

    def attach_ssh_key(self, instance_id: int, public_key: str) -> None:
        """``POST /api/v0/instances/{id}/ssh/``: add a key to one instance (account keys reach only new ones)."""
        what = f"attaching an SSH key to instance {instance_id}"
        resp = self.request("POST", f"/api/v0/instances/{int(instance_id)}/ssh/", json={"ssh_key": public_key})
        if self._missing(resp, what):
            raise ProviderError(f"Instance {instance_id} does not exist (any more).", "Run `tether ls`.")
        self._json(resp, what)


def _wait_hint(retry_after: float | None) -> str:
    if retry_after is None:
        return "Wait a minute and try again."
    if retry_after >= 3600:
        return f"Vast.ai asks to wait about {retry_after / 3600:.1f} hours before trying again."
    if retry_after >= 60:
        return f"Vast.ai asks to wait about {retry_after / 60:.0f} minutes before trying again."
    return f"Vast.ai asks to wait {retry_after:.0f} seconds before trying again."
