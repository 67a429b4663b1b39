"""Output: human text or JSON, tables, times and sizes, and the exit code of each error class.

Light on purpose: the entry point imports it before it knows which command runs.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

from custos.errors import (
    BackendUnavailable,
    Conflict,
    CustosError,
    FailedPrecondition,
    IntegrityError,
    InvalidInput,
    NotFound,
    Unauthorized,
)

EXIT_BY_ERROR: list[tuple[type[CustosError], int]] = [
    (IntegrityError, 7), (InvalidInput, 2), (NotFound, 3), (Unauthorized, 4),
    (BackendUnavailable, 5), (Conflict, 6), (FailedPrecondition, 6),
]
"""Exit code by error class, first match wins (IntegrityError first: verification failed is 7)."""


class Out:
    """``text`` (for people), ``json`` (for programs) or ``id`` (only the id of what the
    command made or showed, for a shell variable: ``BASE=$(custos push m ./w -o id)``)."""

    def __init__(self, fmt: str) -> None:
        self.json = fmt in ("json", "id")
        self.id_only = fmt == "id"

    def emit(self, data: Any, text: str | Callable[[], str]) -> None:
        if self.id_only:
            print(id_of(data))
        elif self.json:
            print(json.dumps(data, indent=2, sort_keys=True, default=str))
        else:
            print(text() if callable(text) else text)


def id_of(data: Any) -> str:
    """The id in a command's JSON result (``id``, or the ``id`` of its one object: ``order``,
    ``request``, ``grant``, ``artifact``, ``host``). Raises InvalidInput when it has none."""
    if isinstance(data, dict):
        if isinstance(data.get("id"), str):
            return str(data["id"])
        if isinstance(data.get("workload_id"), str):
            return str(data["workload_id"])
        for key in ("order", "request", "grant", "artifact"):
            inner = data.get(key)
            if isinstance(inner, dict) and isinstance(inner.get("id"), str):
                return str(inner["id"])
        if isinstance(data.get("name"), str):
            return str(data["name"])
    raise InvalidInput("this command's result has no id to print: use -o json")


def ts(ns: int) -> str:
    if not ns:
        return "-"
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")  # RFC 3339


def table(rows: list[list[str]], header: list[str]) -> str:
    if not rows:
        return "(none)"
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=False)).rstrip()]
    for r in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)).rstrip())
    return "\n".join(lines)


def size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)
