"""What every command shares: output, the connection, tables and times, exit codes, signer keys."""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from custos.client.session import Client
from custos.client.signerkeys import load_private_key
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


def connect(ns: argparse.Namespace) -> Client:
    """A client from the connection flags over the environment. Raises InvalidInput (not configured,
    unreadable certificate or key)."""
    return Client.from_env(addr=ns.addr, ca=ns.ca, cert=ns.tls_cert, key=ns.tls_key, role=ns.role,
                           timeout=ns.timeout)


def enum_name(enum: Any, value: int, prefix: str) -> str:
    return str(enum.Name(value)).removeprefix(prefix).lower().replace("_", "-")


def duration(text: str) -> int:
    m = re.fullmatch(r"(\d+)([smhd]?)", text.strip())
    if not m:
        raise InvalidInput(f"bad duration {text!r}: want e.g. 90s, 30m, 1h, 2d")
    return int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def parse_labels(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        k, sep, v = item.partition("=")
        if not sep:
            raise InvalidInput(f"bad --label {item!r}: want KEY=VALUE")
        out[k] = v
    return out


def read_passphrase(ns: argparse.Namespace, *, confirm: bool = False) -> bytes | None:
    if getattr(ns, "no_passphrase", False):
        return None
    if getattr(ns, "passphrase_file", None):
        try:
            return Path(ns.passphrase_file).read_bytes().rstrip(b"\n")
        except OSError as exc:
            raise InvalidInput(f"cannot read {ns.passphrase_file}: {exc.strerror}") from None
    env = os.environ.get("CUSTOS_SIGNER_PASSPHRASE")
    if env is not None:
        return env.encode()
    if not sys.stdin.isatty():
        return None

    first = getpass.getpass("passphrase for the signer key (empty for none): ").encode()
    if confirm and first and getpass.getpass("again: ").encode() != first:
        raise InvalidInput("passphrases do not match")
    return first or None


def load_signer(ns: argparse.Namespace) -> Ed25519PrivateKey:
    return load_private_key(ns.key, read_passphrase(ns))
