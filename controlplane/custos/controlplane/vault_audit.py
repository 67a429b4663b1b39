"""Vault / OpenBao's own audit log: uses of the models' Transit keys by anyone but us.

The control plane is the only identity that should touch a model's Transit key
(``transit/*/custos-*``: keys, datakey, decrypt, rewrap, export, ...). A file
audit device writes one JSON object per request and per response; this module
tails that file and raises ``vault-foreign-access`` for each request on a
matching path made by an identity that is not the control plane's: not one of
its token accessors, display names or policies (``[rules.vault_foreign_access]``).

Vault HMACs the token accessor in the log unless the device is configured with
``hmac_accessor = false``; list the hashed form (``bao write sys/audit-hash/<device>
input=<accessor>``) or the plain one, whichever the log shows. Display names and
policies are logged in the clear.

The position in the file (inode and offset) is kept in the Store
(``meta/vault-audit-cursor``) and advanced only after the alerts are written. A
rotated file (new inode, or shorter than the offset) is read from its start.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import fnmatch
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from custos.controlplane.store.base import Store, Txn
from custos.core.canonical import decode_canonical, encode_canonical
from custos.core.rules import Finding

log = logging.getLogger("custos.vault_audit")

CURSOR_KEY = "meta/vault-audit-cursor"


@dataclass(frozen=True, slots=True)
class VaultAuditConfig:
    """``[rules.vault_foreign_access]``, parsed (custos.controlplane.rules.config)."""

    path: Path
    exclude_accessors: frozenset[str] = frozenset()
    exclude_display_names: frozenset[str] = frozenset()
    exclude_policies: frozenset[str] = frozenset()
    paths: tuple[str, ...] = ("transit/*/custos-*",)
    key_prefix: str = "custos-"
    max_bytes_per_round: int = 4 << 20


def _time_ns(text: str) -> int:
    """Vault's RFC 3339 time with nanoseconds -> Unix ns (0 if unreadable)."""

    try:
        base, _, frac = text.rstrip("Z").partition(".")
        t = dt.datetime.fromisoformat(base).replace(tzinfo=dt.UTC)
        return int(t.timestamp()) * 1_000_000_000 + int((frac + "000000000")[:9] or 0)
    except (ValueError, TypeError):
        return 0


def is_control_plane(auth: Mapping[str, Any], cfg: VaultAuditConfig) -> bool:
    """True if the entry's identity is one the config names as the control plane's."""
    accessor = str(auth.get("accessor") or "")
    if accessor and accessor in cfg.exclude_accessors:
        return True
    name = str(auth.get("display_name") or "")
    if name and name in cfg.exclude_display_names:
        return True
    policies = {str(p) for p in (auth.get("policies") or []) + (auth.get("token_policies") or [])}
    return bool(cfg.exclude_policies and policies & cfg.exclude_policies
                and "root" not in policies)  # a root token is never "the control plane"


def model_of(path: str, prefix: str) -> str:
    for seg in path.split("/"):
        if seg.startswith(prefix) and len(seg) > len(prefix):
            return seg[len(prefix):]
    return ""


def foreign_access(entry: Mapping[str, Any], cfg: VaultAuditConfig) -> Finding | None:
    """A finding if ``entry`` (one audit-log object) is a request on a model's Transit key
    by an identity other than the control plane's. Pure."""
    if entry.get("type") != "request":
        return None  # each request is logged twice; the request line is enough
    req = entry.get("request") or {}
    path = str(req.get("path") or "")
    if not path or not any(fnmatch.fnmatchcase(path, p) for p in cfg.paths):
        return None
    auth = entry.get("auth") or {}
    if is_control_plane(auth, cfg):
        return None
    name = str(auth.get("display_name") or "(no token)")
    policies = sorted({str(p) for p in (auth.get("policies") or [])})
    accessor = str(auth.get("accessor") or "")
    remote = str(req.get("remote_address") or "")
    rid = str(req.get("id") or "") or hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()
    error = " ".join(str(entry.get("error") or "").split())
    op = str(req.get("operation") or "?")
    detail = (f"Vault {op} {path} by {name!r} (policies {policies}, accessor {accessor[:24] or '-'}) from "
              f"{remote or '?'}: not the control plane's identity"
              + (f"; Vault answered: {error[:120]}" if error else "; Vault allowed it"))
    return Finding(rule="vault-foreign-access", key=(rid,), at_ns=_time_ns(str(entry.get("time", ""))),
                   detail=detail, model=model_of(path, cfg.key_prefix), host=remote, principal=name)


@dataclass(frozen=True, slots=True)
class Position:
    path: str
    inode: int
    offset: int


class VaultAuditTail:
    """Reads complete new lines of the audit file from the position kept in the Store."""

    def __init__(self, store: Store, cfg: VaultAuditConfig) -> None:
        self.store = store
        self.cfg = cfg
        self._warned = False
        self.malformed = 0

    async def _position(self) -> Position:
        entry = await self.store.get(CURSOR_KEY)
        if entry is None:
            return Position(str(self.cfg.path), 0, 0)
        rec = decode_canonical(entry.value)
        return Position(str(rec["path"]), int(rec["inode"]), int(rec["offset"]))

    def _read(self, pos: Position) -> tuple[bytes, Position] | None:
        try:
            with open(self.cfg.path, "rb") as f:
                st = os.fstat(f.fileno())
                offset = pos.offset
                if pos.path != str(self.cfg.path) or st.st_ino != pos.inode or st.st_size < offset:
                    offset = 0  # rotated, truncated or a new path: from the start
                f.seek(offset)
                data = f.read(self.cfg.max_bytes_per_round)
        except OSError as exc:
            if not self._warned:
                log.warning("cannot read the Vault audit log %s: %s", self.cfg.path, exc.strerror)
                self._warned = True
            return None
        self._warned = False
        end = data.rfind(b"\n")
        if end < 0:
            return b"", Position(str(self.cfg.path), st.st_ino, offset)
        return data[:end + 1], Position(str(self.cfg.path), st.st_ino, offset + end + 1)

    async def read(self) -> tuple[list[Finding], Position | None]:
        """Findings in the new complete lines, and the position to commit once they are written."""
        pos = await self._position()
        got = await asyncio.to_thread(self._read, pos)
        if got is None:
            return [], None
        data, new = got
        out: list[Finding] = []
        for line in data.splitlines():
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                self.malformed += 1
                continue
            if isinstance(entry, dict):
                f = foreign_access(entry, self.cfg)
                if f is not None:
                    out.append(f)
        return out, (new if new != pos else None)

    async def commit(self, pos: Position) -> None:
        await self.store.commit(Txn(puts={CURSOR_KEY: encode_canonical(
            {"inode": pos.inode, "offset": pos.offset, "path": pos.path})}))
