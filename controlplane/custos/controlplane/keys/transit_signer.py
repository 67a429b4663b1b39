"""Audit checkpoints signed by an ed25519 key in Vault / OpenBao Transit (production).

The key (default name ``audit-checkpoints``) is created by an operator, outside the
``custos-`` names of model keys, and the control plane's policy grants it ``sign`` and
``read`` only (vault-policies/custos-controlplane.hcl). Transit signs the exact input with
pure Ed25519, so its signatures verify with the raw public key Transit publishes and
``custos audit verify`` checks them unchanged (docs/audit.md: how to publish and pin it).

Every signature is made with one key version — the one pinned by configuration, else the
latest when the key is first read — and checked against the public key before it is
used: a Transit key that was replaced or rotated under a pinned public key is refused
loudly, never signed over.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
import threading
from collections.abc import Callable
from typing import Any

import hvac
import hvac.exceptions
import requests
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from custos.controlplane.audit import CheckpointSigner
from custos.controlplane.keys.base import KeyConflict, KeyDestroyed, validate_key_name
from custos.controlplane.keys.vault_auth import map_vault_error
from custos.controlplane.keys.vault_session import VaultSession
from custos.core.audit_chain import key_id
from custos.errors import BackendUnavailable, CustosError, IntegrityError, InvalidInput

__all__ = ["DEFAULT_CHECKPOINT_KEY", "TransitCheckpointSigner", "public_key_pem"]

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT_KEY = "audit-checkpoints"
_MOUNT_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(?:/[A-Za-z0-9][A-Za-z0-9_.-]*)*")
_SIGNATURE = re.compile(r"vault:v([1-9][0-9]{0,9}):([A-Za-z0-9+/]+={0,2})")


def ed25519_public_of(data: dict[str, Any], name: str, version: Any) -> Ed25519PublicKey:
    """The public key of ``version`` in Transit's description of key ``name``. Raises BackendUnavailable."""
    keys = data.get("keys")
    entry = keys.get(str(version)) if isinstance(keys, dict) else None
    try:
        raw = base64.b64decode(entry["public_key"] if isinstance(entry, dict) else "", validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (TypeError, KeyError, ValueError, binascii.Error) as exc:
        raise BackendUnavailable(f"Transit key {name!r} has no public key for version {version}") from exc


def transit_sign(request: Callable[[str, Callable[[hvac.Client], Any]], Any], *, mount: str, key: str,
                 version: int, public: Ed25519PublicKey, message: bytes, what: str) -> bytes:
    """Sign ``message`` with version ``version`` of Transit key ``mount/key`` (through ``request``, the
    caller's error-mapping call) and check the signature under ``public`` before it is used.

    Raises BackendUnavailable (an unexpected answer), IntegrityError (signed with another key:
    refusing ``what``)."""
    answer = request("signing", lambda c: c.adapter.post(
        f"/v1/{mount}/sign/{key}", json={"input": base64.b64encode(message).decode("ascii"), "key_version": version}))
    data = answer.get("data") if isinstance(answer, dict) else None
    match = _SIGNATURE.fullmatch(data.get("signature", "")) if isinstance(data, dict) else None
    if match is None or int(match.group(1)) != version:
        raise BackendUnavailable(f"unexpected answer signing with Transit key {key!r}")
    signature = base64.b64decode(match.group(2))
    try:
        public.verify(signature, message)
    except InvalidSignature:
        raise IntegrityError(f"Transit key {mount}/{key} version {version} signed with another key than its "
                             f"published one: refusing {what}") from None
    return signature


def public_key_pem(public_key: Ed25519PublicKey) -> bytes:
    """The PEM (SubjectPublicKeyInfo) form that ``custos audit verify --key`` reads."""
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


class TransitCheckpointSigner(CheckpointSigner):
    """Signs checkpoints with the Transit key ``key`` on ``mount`` through ``session``.

    Args:
        pinned: the published public key; signing is refused unless Transit's key version
            has exactly this public key. Given, the control plane knows its checkpoint key
            even while Vault is unreachable.
        key_version: the version to sign with (default: the latest when first read).

    The key is read at once; if Vault cannot be reached or the session has no token yet, that
    is logged and retried at the first checkpoint (the control plane starts, and checkpoints
    wait for Transit).

    Raises:
        InvalidInput: a malformed argument.
        KeyConflict: the key is not a non-derived ed25519 signing key.
        IntegrityError: its public key is not the pinned one.
    """

    def __init__(self, session: VaultSession, *, key: str = DEFAULT_CHECKPOINT_KEY, mount: str = "transit",
                 pinned: Ed25519PublicKey | None = None, key_version: int | None = None) -> None:
        self.key = validate_key_name(key)
        if not isinstance(mount, str) or _MOUNT_PATTERN.fullmatch(mount) is None:
            raise InvalidInput("checkpoint mount must be a path like 'transit'")
        if key_version is not None and (isinstance(key_version, bool) or not isinstance(key_version, int)
                                        or key_version < 1):
            raise InvalidInput("checkpoint_key_version must be an integer >= 1")
        if pinned is not None and not isinstance(pinned, Ed25519PublicKey):
            raise InvalidInput("the pinned checkpoint key must be an Ed25519 public key")
        self.session, self.mount = session, mount
        self._pinned, self._version = pinned, key_version
        self._public: Ed25519PublicKey | None = None
        self._lock = threading.Lock()
        try:
            self.load()
        except (KeyConflict, IntegrityError):
            raise  # the wrong key: no use retrying
        except KeyDestroyed as exc:
            raise KeyConflict(f"no Transit key {mount}/{key} to sign audit checkpoints with: create it "
                              "(type ed25519, docs/audit.md)") from exc
        except CustosError as exc:
            # Unreachable, sealed, not authenticated yet (an Agent's token file not written yet):
            # the control plane starts, not ready, and checkpoints wait for Transit.
            log.error("audit checkpoint key %s/%s not read yet (checkpoints wait for it): %s", mount, key, exc)

    def __repr__(self) -> str:
        return f"TransitCheckpointSigner(key={self.mount}/{self.key}, version={self._version})"

    def _request(self, what: str, fn: Callable[[hvac.Client], Any]) -> Any:
        try:
            return self.session.run(fn)
        except (requests.exceptions.RequestException, hvac.exceptions.VaultError) as exc:
            where = f"{what} with Transit key {self.mount}/{self.key}"
            if isinstance(exc, hvac.exceptions.InvalidPath) and "no handler" not in str(exc).lower():
                raise KeyDestroyed(f"no Transit key {self.mount}/{self.key} ({what})") from exc
            raise map_vault_error(where, exc) from exc

    def load(self) -> Ed25519PublicKey:
        """Read the key from Transit and check it. Raises as the constructor, and BackendUnavailable."""
        answer = self._request("reading", lambda c: c.secrets.transit.read_key(name=self.key,
                                                                              mount_point=self.mount))
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, dict):
            raise BackendUnavailable(f"empty description of Transit key {self.key!r}")
        if data.get("type") != "ed25519" or data.get("derived"):
            raise KeyConflict(f"Transit key {self.mount}/{self.key} is {data.get('type')!r}"
                              f"{' (derived)' if data.get('derived') else ''}: audit checkpoints need a "
                              "non-derived ed25519 key")
        version = self._version or data.get("latest_version")
        public = ed25519_public_of(data, self.key, version)
        if self._pinned is not None and self._pinned != public:
            raise IntegrityError(
                f"Transit key {self.mount}/{self.key} version {version} (key id {key_id(public)}) is not the "
                f"pinned audit checkpoint key (key id {key_id(self._pinned)}): refusing to sign")
        with self._lock:
            self._public, self._version = public, int(version)  # type: ignore[arg-type]
        log.info("audit checkpoints signed by Transit key %s/%s version %s, key id %s",
                 self.mount, self.key, version, key_id(public))
        return public

    def public_key(self) -> Ed25519PublicKey:
        with self._lock:
            known = self._pinned or self._public
        if known is None:
            raise BackendUnavailable(f"the public key of Transit key {self.mount}/{self.key} is not known yet "
                                     "(Vault unreachable since start; pin it with checkpoint_public_key_file)")
        return known

    async def sign(self, message: bytes) -> bytes:
        return await asyncio.to_thread(self._sign, message)

    def _sign(self, message: bytes) -> bytes:
        with self._lock:
            public, version = self._public, self._version
        if public is None:
            public = self.load()
            version = self._version
        return transit_sign(self._request, mount=self.mount, key=self.key, version=int(version or 0),
                            public=public, message=message, what="the checkpoint")
