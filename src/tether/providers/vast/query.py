"""Vast.ai's offer query language: parse, validate, render to the wire form, match, explain no match.

What users type is what the vendor's CLI reads (``'gpu_ram>=24 reliability>0.95 num_gpus=1' -o 'dph+'``):

- terms ``field op value`` separated by spaces; ops ``< <= = == != >= > in notin nin`` and the word forms
  ``eq neq gt gte lt lte`` (word forms need spaces around them: ``num_gpus gte 2``);
- lists ``geolocation in [US,CA]``; literals ``true false True False None null``;
  quoted values ``"RTX 4090"``;
- ``field=any`` (or ``?``, ``*``) removes that filter, the defaults included;
- ``_`` in a string value means a space (``gpu_name=RTX_4090``);
- aliases ``dph``, ``cuda_vers``, ``dlperf_usd``, ``flops_usd``, ``display_active``;
- ``gpu_ram``, ``gpu_total_ram``, ``cpu_ram`` are typed in GB and sent in MB (x1000); ``duration`` is typed in
  days and sent in seconds (x86400);
- the defaults ``verified=true external=false rentable=true rented=false`` apply unless the query sets or removes
  them.

The wire form is one flat dict ``{field: {op: value}}`` plus ``order``, ``type``, ``limit`` and
``allocated_storage``. Numbers are sent as JSON numbers (the vendor client sends some as strings; the server
takes both). :func:`matches` is the client's own reading of a wire body, used only to explain an empty search.
Everything here is pure: no I/O. Nothing outside :mod:`tether.providers.vast` imports it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tether.errors import ConfigError
from tether.providers.base import OfferQuery

__all__ = [
    "ALIASES",
    "DEFAULT_FILTERS",
    "FIELDS",
    "MAX_OFFERS",
    "OFFER_TYPES",
    "Query",
    "Term",
    "body_for",
    "check",
    "explain_no_match",
    "matches",
    "parse_order",
    "parse_query",
    "render_body",
    "wire_filters",
]

#: The most offers one search answers, whatever ``limit`` asks.
MAX_OFFERS = 64

FieldKind = Literal["num", "bool", "str"]

#: Every field the query language knows, with its kind.
FIELDS: dict[str, FieldKind] = {
    "bw_nvlink": "num",
    "compute_cap": "num",
    "cpu_arch": "str",
    "cpu_cores": "num",
    "cpu_cores_effective": "num",
    "cpu_ghz": "num",
    "cpu_ram": "num",
    "cuda_max_good": "num",
    "datacenter": "bool",
    "direct_port_count": "num",
    "disk_bw": "num",
    "disk_space": "num",
    "dlperf": "num",
    "dlperf_per_dphtotal": "num",
    "dph_base": "num",
    "dph_total": "num",
    "driver_version": "str",
    "duration": "num",
    "external": "bool",
    "flops_per_dphtotal": "num",
    "geolocation": "str",
    "gpu_arch": "str",
    "gpu_display_active": "bool",
    "gpu_frac": "num",
    "gpu_max_power": "num",
    "gpu_max_temp": "num",
    "gpu_mem_bw": "num",
    "gpu_name": "str",
    "gpu_ram": "num",
    "gpu_total_ram": "num",
    "has_avx": "bool",
    "host_id": "num",
    "id": "num",
    "inet_down": "num",
    "inet_down_cost": "num",
    "inet_up": "num",
    "inet_up_cost": "num",
    "machine_id": "num",
    "min_bid": "num",
    "mobo_name": "str",
    "num_gpus": "num",
    "pci_gen": "num",
    "pcie_bw": "num",
    "public_ipaddr": "str",
    "reliability": "num",
    "rentable": "bool",
    "rented": "bool",
    "score": "num",
    "static_ip": "bool",
    "storage_cost": "num",
    "storage_total_cost": "num",
    "total_flops": "num",
    "ubuntu_version": "str",
    "verification": "str",
    "verified": "bool",
    "vms_enabled": "bool",
}

#: Names users may type for a field, applied before sending.
ALIASES: dict[str, str] = {
    "dph": "dph_total",
    "cuda_vers": "cuda_max_good",
    "dlperf_usd": "dlperf_per_dphtotal",
    "flops_usd": "flops_per_dphtotal",
    "display_active": "gpu_display_active",
    "reliability2": "reliability",
}

#: Fields typed in one unit and sent in another: typed value x multiplier = wire value.
MULTIPLIERS: dict[str, float] = {
    "gpu_ram": 1000.0,
    "gpu_total_ram": 1000.0,
    "cpu_ram": 1000.0,
    "duration": 86400.0,
}
UNITS: dict[str, str] = {"gpu_ram": "GB", "gpu_total_ram": "GB", "cpu_ram": "GB", "duration": "days"}

#: What the vendor's client adds unless the query sets or removes it (``rented`` since its 1.x releases).
DEFAULT_FILTERS: dict[str, dict[str, Any]] = {
    "verified": {"eq": True},
    "external": {"eq": False},
    "rentable": {"eq": True},
    "rented": {"eq": False},
}

OFFER_TYPES = ("on-demand", "bid", "reserved")
_TYPE_ALIASES = {
    "on-demand": "on-demand",
    "ondemand": "on-demand",
    "bid": "bid",
    "interruptible": "bid",
    "reserved": "reserved",
}

_SYMBOL_OPS = {"<=": "lte", ">=": "gte", "==": "eq", "!=": "neq", "<": "lt", ">": "gt", "=": "eq"}
_WORD_OPS = {
    "eq": "eq",
    "neq": "neq",
    "gt": "gt",
    "gte": "gte",
    "lt": "lt",
    "lte": "lte",
    "in": "in",
    "notin": "notin",
    "nin": "notin",
}
_OP_SYMBOL = {
    "eq": "=",
    "neq": "!=",
    "gt": ">",
    "gte": ">=",
    "lt": "<",
    "lte": "<=",
    "in": " in ",
    "notin": " notin ",
}
_ANY = ("any", "?", "*")
_NONE_LITERALS = ("None", "null")
_TRUE_LITERALS = ("true", "True")
_FALSE_LITERALS = ("false", "False")
_BODY_KEYS = frozenset({"order", "type", "limit", "allocated_storage", "q", "select_cols"})

_FIELD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WORD_OP_RE = re.compile(r"(gte|lte|neq|notin|nin|eq|gt|lt|in)(?=[\s\[\"'])")
_NUMBER_RE = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


@dataclass(frozen=True)
class Term:
    """One parsed term: the canonical field, the wire op and the wire value, and where the user typed it."""

    field: str
    op: str
    value: Any
    text: str
    index: int
    column: int


@dataclass(frozen=True)
class Query:
    """A parsed query: the user's terms and the fields they removed with ``=any``."""

    text: str = ""
    terms: tuple[Term, ...] = ()
    removed: frozenset[str] = frozenset()

    def filters(self) -> dict[str, dict[str, Any]]:
        """The wire filters: defaults, replaced per field by the user's terms, minus removed fields."""
        out: dict[str, dict[str, Any]] = {}
        user_fields = {t.field for t in self.terms}
        for name, ops in DEFAULT_FILTERS.items():
            if name not in user_fields and name not in self.removed:
                out[name] = dict(ops)
        for t in self.terms:
            out.setdefault(t.field, {})[t.op] = t.value
        return out

    def without_user_terms(self) -> Query:
        """The same query with only the defaults the user left in place (for explaining an empty search)."""
        kept = tuple(t for t in self.terms if t.field in DEFAULT_FILTERS)
        return Query(text="", terms=kept, removed=self.removed)


def _known_fields_hint() -> str:
    names = sorted(set(FIELDS) | set(ALIASES))
    return "Known fields: " + ", ".join(names) + "."


def _term_error(text: str, index: int, column: int, reason: str, hint: str | None = None) -> ConfigError:
    return ConfigError(
        f"Bad offer query term {index + 1} at column {column + 1} of {text!r}: {reason}.",
        hint or "Write terms as field op value, e.g. 'gpu_ram>=24 reliability>0.95 num_gpus=1'.",
    )


def _canonical_field(name: str, text: str, index: int, column: int) -> str:
    canon = ALIASES.get(name, name)
    if canon in FIELDS:
        return canon
    close = difflib.get_close_matches(name, sorted(set(FIELDS) | set(ALIASES)), n=3, cutoff=0.6)
    suggestion = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigError(
        f"Unknown field {name!r} in offer query term {index + 1} at column {column + 1} of {text!r}{suggestion}",
        _known_fields_hint(),
    )


def _convert_scalar(fname: str, raw: str, text: str, index: int, column: int) -> Any:
    kind = FIELDS[fname]
    if raw in _NONE_LITERALS:
        return None
    if kind == "bool":
        if raw in _TRUE_LITERALS or raw == "1":
            return True
        if raw in _FALSE_LITERALS or raw == "0":
            return False
        raise _term_error(text, index, column, f"field {fname!r} takes true or false, not {raw!r}")
    if kind == "num":
        if raw in _TRUE_LITERALS or raw in _FALSE_LITERALS or not _NUMBER_RE.fullmatch(raw):
            raise _term_error(text, index, column, f"field {fname!r} takes a number, not {raw!r}")
        mult = MULTIPLIERS.get(fname)
        if mult is not None:
            return float(raw) * mult
        if re.fullmatch(r"[+-]?\d+", raw):
            return int(raw)
        return float(raw)
    return raw.replace("_", " ")


def _unquote(raw: str) -> tuple[str, bool]:
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
        return raw[1:-1], True
    return raw, False


def _convert_value(fname: str, op: str, raw: str, text: str, index: int, column: int) -> Any:
    is_list = raw.startswith("[")
    if op in ("in", "notin"):
        inner = raw[1:-1] if is_list else raw
        items = [s.strip() for s in inner.split(",") if s.strip()]
        if not items:
            raise _term_error(text, index, column, f"{op} needs a non-empty list like [US,CA]")
        out = []
        for item in items:
            value, quoted = _unquote(item)
            out.append(
                value if quoted and FIELDS[fname] == "str" else _convert_scalar(fname, value, text, index, column)
            )
        return out
    if is_list:
        raise _term_error(text, index, column, f"a list value needs the op 'in' or 'notin', not {op!r}")
    value, quoted = _unquote(raw)
    if quoted and FIELDS[fname] == "str":
        return value
    return _convert_scalar(fname, value, text, index, column)


def parse_query(text: str) -> Query:
    """Parse what a user typed into a :class:`Query`; a bad term raises ConfigError with its position."""
    terms: list[Term] = []
    removed: set[str] = set()
    pos, n, index = 0, len(text), 0
    while True:
        while pos < n and text[pos].isspace():
            pos += 1
        if pos >= n:
            break
        start = pos
        m = _FIELD_RE.match(text, pos)
        if m is None:
            raise _term_error(text, index, pos, f"expected a field name, found {text[pos:].split()[0]!r}")
        name = m.group(0)
        pos = m.end()
        fname = _canonical_field(name, text, index, start)
        while pos < n and text[pos] == " ":
            pos += 1
        op: str | None = None
        for sym in ("<=", ">=", "==", "!=", "<", ">", "="):
            if text.startswith(sym, pos):
                op = _SYMBOL_OPS[sym]
                pos += len(sym)
                break
        if op is None:
            wm = _WORD_OP_RE.match(text, pos) if pos > m.end() else None
            if wm is None:
                found = text[pos:].split()[0] if text[pos:].strip() else "the end of the query"
                raise _term_error(
                    text,
                    index,
                    pos,
                    f"expected an operator after {name!r}, found {found!r}",
                    "Operators: < <= = == != >= > in notin nin eq neq gt gte lt lte.",
                )
            op = _WORD_OPS[wm.group(1)]
            pos = wm.end()
        while pos < n and text[pos] == " ":
            pos += 1
        vstart = pos
        if pos >= n:
            raise _term_error(text, index, vstart, f"missing value after {text[start:pos].strip()!r}")
        if text[pos] == "[":
            close = text.find("]", pos)
            if close < 0:
                raise _term_error(text, index, pos, "unclosed list: missing ']'")
            pos = close + 1
        elif text[pos] in "\"'":
            close = text.find(text[pos], pos + 1)
            if close < 0:
                raise _term_error(text, index, pos, f"unclosed quote {text[pos]}")
            pos = close + 1
        else:
            while pos < n and not text[pos].isspace():
                pos += 1
        raw = text[vstart:pos]
        if pos < n and not text[pos].isspace():
            raise _term_error(text, index, pos, f"unexpected {text[pos]!r} after the value {raw!r}")
        term_text = text[start:pos]
        if raw in _ANY:
            if op != "eq":
                raise _term_error(text, index, vstart, f"'{raw}' (any) only works with '=', as in {name}=any")
            removed.add(fname)
            terms = [t for t in terms if t.field != fname]
        else:
            value = _convert_value(fname, op, raw, text, index, vstart)
            removed.discard(fname)
            terms.append(Term(fname, op, value, term_text, index, start))
        index += 1
    return Query(text=text, terms=tuple(terms), removed=frozenset(removed))


def parse_order(text: str) -> list[list[str]]:
    """``'dph+,reliability-'`` → ``[["dph_total","asc"],["reliability","desc"]]`` (``-`` before or after)."""
    out: list[list[str]] = []
    for i, part in enumerate(p.strip() for p in text.split(",")):
        if not part:
            continue
        direction = "asc"
        name = part
        if name.startswith("-"):
            direction, name = "desc", name[1:]
        elif name.startswith("+"):
            name = name[1:]
        if name.endswith("-"):
            direction, name = "desc", name[:-1]
        elif name.endswith("+"):
            name = name[:-1]
        canon = ALIASES.get(name, name)
        if canon not in FIELDS:
            close = difflib.get_close_matches(name, sorted(set(FIELDS) | set(ALIASES)), n=3, cutoff=0.6)
            suggestion = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise ConfigError(
                f"Unknown order field {name!r} in part {i + 1} of the order {text!r}{suggestion}",
                _known_fields_hint(),
            )
        out.append([canon, direction])
    return out


def render_body(
    query: Query,
    order: str | Sequence[Sequence[str]] = "dph+",
    type: str = "on-demand",
    disk_gb: float = 5.0,
    limit: int | None = None,
) -> dict[str, Any]:
    """The exact JSON body of ``POST /api/v0/bundles/`` for this query."""
    offer_type = _TYPE_ALIASES.get(type)
    if offer_type is None:
        raise ConfigError(f"Unknown offer type {type!r}.", "Use on-demand, bid (interruptible) or reserved.")
    if disk_gb <= 0:
        raise ConfigError(f"Disk size must be positive, not {disk_gb!r} GB.")
    if limit is not None and limit <= 0:
        raise ConfigError(f"The offer limit must be positive, not {limit!r}.")
    body: dict[str, Any] = dict(query.filters())
    body["order"] = parse_order(order) if isinstance(order, str) else [list(o) for o in order]
    body["type"] = offer_type
    body["allocated_storage"] = float(disk_gb)
    if limit is not None:
        body["limit"] = int(limit)
    return body


def wire_filters(body_or_query: Query | Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The ``{field: {op: value}}`` part of a query or of a wire body (a ``q`` wrapper is unwrapped)."""
    if isinstance(body_or_query, Query):
        return body_or_query.filters()
    body: Mapping[str, Any] = body_or_query
    inner = body.get("q")
    if isinstance(inner, Mapping):
        body = inner
    return {k: dict(v) for k, v in body.items() if k not in _BODY_KEYS and isinstance(v, Mapping)}


# ------------------------------------------------------------------------------------------ matching


def _as_float(v: Any) -> float | None:
    if isinstance(v, bool):
        return 1.0 if v else 0.0
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    return None


def _as_bool(v: Any) -> bool | None:
    if isinstance(v, bool):
        return v
    if isinstance(v, int | float):
        return bool(v)
    if isinstance(v, str):
        if v in ("true", "True", "1"):
            return True
        if v in ("false", "False", "0"):
            return False
    return None


def _norm(fname: str, v: Any) -> Any:
    kind = FIELDS.get(fname)
    if v is None:
        return None
    if kind == "bool":
        return _as_bool(v)
    if kind == "str":
        return str(v).replace("_", " ").casefold()
    f = _as_float(v)
    return f if f is not None else str(v).casefold()


def _str_candidates(fname: str, offer_value: Any) -> set[Any]:
    base = _norm(fname, offer_value)
    out = {base}
    if fname == "geolocation" and isinstance(base, str) and "," in base:
        out.add(base.rsplit(",", 1)[1].strip())
    return out


def _check(fname: str, op: str, want: Any, have: Any) -> bool:
    if op in ("in", "notin"):
        wants = want if isinstance(want, list) else [want]
        cands = _str_candidates(fname, have)
        hit = any(_norm(fname, w) in cands for w in wants)
        return hit if op == "in" else not hit
    if op in ("eq", "neq"):
        eq = have is None if want is None else _norm(fname, want) in _str_candidates(fname, have)
        return eq if op == "eq" else not eq
    a, b = _norm(fname, have), _norm(fname, want)
    if a is None or b is None or type(a) is not type(b):
        return False
    try:
        if op == "gt":
            return bool(a > b)
        if op == "gte":
            return bool(a >= b)
        if op == "lt":
            return bool(a < b)
        if op == "lte":
            return bool(a <= b)
    except TypeError:
        return False
    return False


def _offer_value(offer: Mapping[str, Any], fname: str) -> Any:
    if fname in offer:
        return offer[fname]
    if fname == "reliability":
        return offer.get("reliability2")
    if fname == "cpu_cores_effective":
        return offer.get("cpu_cores")
    return None


def matches(query: Query | Mapping[str, Any], offer: Mapping[str, Any]) -> bool:
    """Whether an offer (the wire JSON dict) passes every filter of a query or of a wire body."""
    for fname, ops in wire_filters(query).items():
        have = _offer_value(offer, fname)
        for op, want in ops.items():
            if not _check(fname, op, want, have):
                return False
    return True


def _describe(fname: str, op: str, value: Any) -> str:
    def show(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if v is None:
            return "null"
        mult = MULTIPLIERS.get(fname)
        if mult is not None and isinstance(v, int | float):
            return f"{v / mult:g}"
        return str(v)

    rendered = "[" + ",".join(show(v) for v in value) + "]" if isinstance(value, list) else show(value)
    unit = f" {UNITS[fname]}" if fname in UNITS else ""
    return f"{fname}{_OP_SYMBOL.get(op, op)}{rendered}{unit}"


def explain_no_match(query: Query | Mapping[str, Any], offers: Sequence[Mapping[str, Any]]) -> str:
    """One sentence naming the filter that ruled out the most offers (for "no offer matches")."""
    total = len(offers)
    if total == 0:
        return "The provider listed no offers at all, even without your filters."
    worst: tuple[int, str] | None = None
    for fname, ops in wire_filters(query).items():
        for op, want in ops.items():
            failed = sum(1 for o in offers if not _check(fname, op, want, _offer_value(o, fname)))
            if failed and (worst is None or failed > worst[0]):
                worst = (failed, _describe(fname, op, want))
    if worst is None:
        return f"All {total} offers pass each filter alone, but none passes them all together."
    failed, desc = worst
    return f"The filter {desc} ruled out {failed} of {total} offers, more than any other filter."


# ------------------------------------------------------------------------------------------ the provider's side


def check(text: str, order: str) -> None:
    """Refuse a bad query or order (ConfigError with the term's position); nothing is sent."""
    parse_query(text)
    parse_order(order)


def body_for(query: OfferQuery) -> dict[str, Any]:
    """The wire body of ``POST /api/v0/bundles/`` for a provider-neutral :class:`OfferQuery`."""
    return render_body(parse_query(query.text), query.order, query.type, query.disk_gb, query.limit)
