"""Signer-set rotations prepared in the console: adding an executive's passkey as a signer key.

The control plane installs a rotation only with every signature at once
(RotateSignerSet), so the console keeps a prepared rotation — the canonical
bytes of version n+1 and the signatures collected so far — in a private file of
its state directory until it is installed: the passkey holder's own signature
(made in the browser: the challenge is the new set's digest, i.e. its id), and
the others' from ``custos signer sign-set`` (pasted in). Every signature is
checked against the current or the new set before it is kept; the control plane
(and later every agent) checks them all again (docs/orders.md "Rotation").
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from custos.core import sshsig
from custos.core.signers import (
    SIGNER_SET_NAMESPACE,
    Signature,
    SignerKey,
    SignerSet,
    SignerSetError,
    decode_signatures,
    encode_signatures,
    key_id_of,
    verify_rotation,
)
from custos.core.webauthn import WebAuthnParams
from custos.errors import Conflict, InvalidInput, NotFound
from custos.fs.private import private_dir, write_private

MAX_PENDING = 20


@dataclass(frozen=True)
class PendingRotation:
    set_bytes: bytes
    signatures: tuple[Signature, ...]
    proposed_by: str
    added_key_id: str
    created_ns: int

    @property
    def new_set(self) -> SignerSet:
        return SignerSet.decode(self.set_bytes)

    @property
    def id(self) -> str:
        return self.new_set.id


def passkey_successor(current: SignerSet, *, name: str, alg: int, public: bytes, credential_id: bytes,
                      rp_id: str, origin: str, user_verification: bool = True) -> tuple[SignerSet, SignerKey]:
    """Version n+1: ``current`` plus a webauthn signer key ``name`` for this passkey, thresholds
    unchanged. Raises Conflict (the name or the key pair is a signer already), InvalidInput."""
    try:
        key = SignerKey.from_webauthn(WebAuthnParams(alg=alg, rp_id=rp_id, origins=(origin,),
                                                     user_verification=user_verification,
                                                     credential_id=credential_id), public, name=name)
    except SignerSetError as exc:
        raise InvalidInput(str(exc)) from None
    if current.key(key.key_id) is not None:
        raise Conflict(f"this passkey is a signer of version {current.version} already")
    if current.key_by_name(name) is not None:
        raise Conflict(f"version {current.version} has a signer named {name} already (another key)")
    try:
        return current.successor([*current.keys, key]), key
    except SignerSetError as exc:
        raise InvalidInput(f"cannot add the passkey: {exc}") from None


def parse_signature_text(text: object) -> list[Signature]:
    """Signatures as ``custos signer sign-set`` writes them (a canonical signature list) or as
    ``ssh-keygen -Y sign`` does (armored SSHSIG; its key id comes from the key inside).
    Raises InvalidInput."""
    if not isinstance(text, str) or not text.strip() or len(text) > 64 * 1024:
        raise InvalidInput("signatures: paste the contents of a .sig.json or .sig file (at most 64 KiB)")
    if text.lstrip().startswith(sshsig.ARMOR_BEGIN):
        try:
            pub = sshsig.parse(text).public_key
        except sshsig.SshSigError as exc:
            raise InvalidInput(f"signatures: {exc}") from None
        return [Signature(key_id=key_id_of(pub.algorithm, pub.public), sig=text.strip() + "\n")]
    try:
        sigs = decode_signatures(text.strip().encode())
    except (SignerSetError, InvalidInput) as exc:
        raise InvalidInput(f"signatures: {exc}") from None
    if not sigs:
        raise InvalidInput("signatures: the list is empty")
    return sigs


def check_signatures(current: SignerSet, new: SignerSet, sigs: list[Signature]) -> None:
    """Each signature must be a valid one over ``new`` by a key of ``current`` or ``new``.
    Raises InvalidInput naming the first that is not."""
    message = new.signature_input()
    for s in sigs:
        key = new.key(s.key_id) or current.key(s.key_id)
        if key is None:
            raise InvalidInput(f"signature by key {s.key_id[:16]}: not a key of version {current.version} "
                               f"or {new.version}")
        problem = key.verify(s.sig, message, namespace=SIGNER_SET_NAMESPACE)
        if problem is not None:
            raise InvalidInput(f"signature by {key.name}: {problem} (is it over version {new.version}, "
                               f"id {new.id[:16]}?)")


def status(current: SignerSet, p: PendingRotation) -> dict[str, Any]:
    """Where a prepared rotation stands against the current set: who signed, how many of each
    threshold, and whether the control plane would install it now."""
    new = p.new_set
    v = verify_rotation(current, p.set_bytes, list(p.signatures))
    signed = {s.key_id for s in p.signatures}
    names = {k.key_id: k.name for k in (*current.keys, *new.keys)}
    return {
        "id": new.id, "version": new.version, "from_version": current.version, "proposed_by": p.proposed_by,
        "added_key_id": p.added_key_id, "added_name": names.get(p.added_key_id, "?"),
        "signed_by": sorted(names.get(k, k[:16]) for k in signed),
        "old_threshold": current.threshold("rotate"), "old_valid": len(v.old.valid) if v.old is not None else 0,
        "new_threshold": new.threshold("rotate"), "new_valid": len(v.new.valid) if v.new is not None else 0,
        "ready": bool(v), "problems": [f.code for f in v.failures],
        "thresholds": dict(new.thresholds), "keys": sorted(k.name for k in new.keys),
    }


class RotationStore:
    """Prepared rotations, by new-set id, in one private file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def _read(self) -> dict[str, PendingRotation]:
        try:
            raw = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"the console's rotation file {self.path} is unreadable ({exc})") from None
        out = {}
        for rid, r in raw.items():
            out[rid] = PendingRotation(set_bytes=r["set"].encode(), signatures=tuple(decode_signatures(
                r["signatures"].encode())), proposed_by=r["proposed_by"], added_key_id=r["added_key_id"],
                created_ns=r["created_ns"])
        return out

    def _write(self, items: dict[str, PendingRotation]) -> None:
        private_dir(self.path.parent)
        write_private(self.path, json.dumps({rid: {
            "added_key_id": p.added_key_id, "created_ns": p.created_ns, "proposed_by": p.proposed_by,
            "set": p.set_bytes.decode(), "signatures": encode_signatures(p.signatures).decode()}
            for rid, p in items.items()}, indent=1, sort_keys=True).encode())

    def pending(self, current: SignerSet) -> list[PendingRotation]:
        """Prepared rotations still applicable to ``current`` (older ones are dropped)."""
        with self._lock:
            items = self._read()
            keep = {rid: p for rid, p in items.items() if p.new_set.version == current.version + 1}
            if keep.keys() != items.keys():
                self._write(keep)
            return sorted(keep.values(), key=lambda p: p.created_ns)

    def get(self, rid: str) -> PendingRotation:
        with self._lock:
            p = self._read().get(rid) if isinstance(rid, str) else None
        if p is None:
            raise NotFound(f"no prepared rotation {str(rid)[:16]}")
        return p

    def add(self, new: SignerSet, *, proposed_by: str, added_key_id: str) -> PendingRotation:
        with self._lock:
            items = self._read()
            if new.id in items:
                return items[new.id]
            if len(items) >= MAX_PENDING:
                raise Conflict(f"{MAX_PENDING} rotations are prepared already: install or let them lapse")
            p = PendingRotation(set_bytes=new.encode(), signatures=(), proposed_by=proposed_by,
                                added_key_id=added_key_id, created_ns=time.time_ns())
            items[new.id] = p
            self._write(items)
            return p

    def add_signatures(self, rid: str, sigs: list[Signature]) -> PendingRotation:
        """Keep ``sigs`` (already checked) with the rotation; a key's later signature replaces its earlier."""
        with self._lock:
            items = self._read()
            p = items.get(rid)
            if p is None:
                raise NotFound(f"no prepared rotation {rid[:16]}")
            by_key = {s.key_id: s for s in p.signatures}
            by_key.update({s.key_id: s for s in sigs})
            p = PendingRotation(set_bytes=p.set_bytes, signatures=tuple(by_key.values()), proposed_by=p.proposed_by,
                                added_key_id=p.added_key_id, created_ns=p.created_ns)
            items[rid] = p
            self._write(items)
            return p

    def remove(self, rid: str) -> None:
        with self._lock:
            items = self._read()
            if items.pop(rid, None) is not None:
                self._write(items)
