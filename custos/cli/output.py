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
    def __init__(self, fmt: str) -> None:
        self.json = fmt == "json"

    def emit(self, data: Any, text: str | Callable[[], str]) -> None:
        if self.json:
            print(json.dumps(data, indent=2, sort_keys=True, default=str))
        else:
            print(text() if callable(text) else text)


def ts(ns: int) -> str:
    if not ns:
        return "-"
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


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
