"""Envelope keys in a local JSON file: the embedded, DEVELOPMENT-ONLY backend.

The key-encryption keys (KEKs) sit in a plain file on the control plane's disk, so
anyone who can read that file can unwrap every data key. That is acceptable for
``custos server --dev`` on one machine and nowhere else: the constructor insists on
``dev_only=True`` and logs a WARNING every time it runs.

It mirrors Transit's semantics so the same conformance suite passes on both:
versioned AES-256 KEKs, ``min_decryption_version`` / ``min_encryption_version``,
suspension by rotating to a suspension version, destruction by deleting every version.

Wrapped data keys are ``local:v<version>:<base64(nonce || AES-256-GCM ciphertext)>``;
the GCM additional data binds the key name, the KEK version and the caller's context,
so a wrapped key opens only under the same name, version and context.

File: ``{"format": "custos.local-keys.v1", "keys": {name: {...}}}``, mode 0600, replaced
atomically (temporary file, fsync, rename, fsync of the directory) under an exclusive
``flock`` on ``<path>.lock``, so several processes may share it.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import json
import logging
import os
import stat
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from custos.controlplane.keys.base import (
    DATA_KEY_BYTES,
    DataKey,
    KeyConflict,
    KeyDestroyed,
    KeyPolicies,
    KeyProvider,
    KeyState,
    KeySuspended,
    KeyVersionRetired,
    _parse_wrapped,
    zeroize,
)
from custos.errors import FailedPrecondition, IntegrityError, InvalidInput
from custos.fs.private import write_private

__all__ = ["LocalKeyProvider"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

FILE_FORMAT = "custos.local-keys.v1"
KEY_TYPE = "aes256-gcm96"
_AD_DOMAIN = b"custos.controlplane.keys.local.wrap.v1"
_NONCE_BYTES = 12
_TAG_BYTES = 16
_WRAPPED_PAYLOAD_BYTES = _NONCE_BYTES + DATA_KEY_BYTES + _TAG_BYTES
_KEK_BYTES = 32

_Doc = dict[str, Any]


def _ad(name: str, version: int, context: bytes) -> bytes:
    """Additional data: domain, then length-prefixed name, version, context (unambiguous)."""
    encoded_name = name.encode("ascii")
    return b"".join(
        (
            _AD_DOMAIN,
            struct.pack(">I", len(encoded_name)),
            encoded_name,
            struct.pack(">I", version),
            struct.pack(">I", len(context)),
            context,
        )
    )


class LocalKeyProvider(KeyProvider):
    """KEKs in a local 0600 JSON file. DEVELOPMENT ONLY: never use it in production.

    Args:
        path: the key file; created (with its directory) if missing.
        dev_only: must be ``True``: the caller states that this is a development setup.

    Raises:
        InvalidInput: ``dev_only`` is not True.
        FailedPrecondition: the key file is readable or writable by group or others, or
            is not a regular file.
        IntegrityError: the key file is not a valid key file.
    """

    kind: ClassVar[str] = "local"

    def __init__(self, path: str | os.PathLike[str], *, dev_only: bool) -> None:
        super().__init__()
        if dev_only is not True:
            raise InvalidInput(
                "LocalKeyProvider keeps keys in a plain file and is for development only; "
                "pass dev_only=True to acknowledge it, or use VaultTransitProvider"
            )
        self._path = Path(path)
        logger.warning(
            "LocalKeyProvider: key-encryption keys are kept in a plain file (%s). "
            "For development only; never use it in production.",
            self._path,
        )
        self._thread_lock = threading.Lock()
        self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock_fd = os.open(
            self._path.with_name(self._path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600
        )
        try:
            # Create an empty key file, or check the existing one now rather than at
            # the first key operation.
            self._locked(lambda doc: None, write=not self._path.exists())
        except BaseException:
            os.close(self._lock_fd)
            raise

    def __repr__(self) -> str:
        return f"LocalKeyProvider(path={str(self._path)!r}, dev_only=True)"

    # -- the file ------------------------------------------------------------------

    def _locked(self, fn: Callable[[_Doc], _T], *, write: bool) -> _T:
        """Run ``fn`` on the current file contents under both locks; save if ``write``."""
        with self._thread_lock:
            # flock serialises processes; the thread lock serialises this process's
            # threads, which share one lock descriptor.
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                doc = self._load()
                result = fn(doc)
                if write:
                    self._save(doc)
                return result
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _load(self) -> _Doc:
        try:
            fd = os.open(self._path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return {"format": FILE_FORMAT, "keys": {}}
        except OSError as exc:
            raise FailedPrecondition(f"cannot open the local key file: {exc.strerror}") from exc
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise FailedPrecondition("the local key file is not a regular file")
            # Like ssh with private keys: refuse a key file others can read or change.
            if info.st_mode & 0o077:
                raise FailedPrecondition(
                    f"the local key file has mode {stat.S_IMODE(info.st_mode):04o}; it must be 0600"
                )
            raw = f.read()
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise IntegrityError("the local key file is not valid JSON") from exc
        _check_doc(doc)
        return doc

    def _save(self, doc: _Doc) -> None:
        write_private(self._path, json.dumps(doc, sort_keys=True, indent=1).encode("ascii"))

    # -- helpers on one key entry --------------------------------------------------------

    @staticmethod
    def _entry(doc: _Doc, name: str) -> dict[str, Any]:
        entry = doc["keys"].get(name)
        if entry is None:
            raise KeyDestroyed(f"key {name!r} does not exist")
        return entry

    @staticmethod
    def _state_of(name: str, entry: dict[str, Any]) -> KeyState:
        return KeyState(
            name=name,
            exists=True,
            latest_version=entry["latest_version"],
            min_decryption_version=entry["min_decryption_version"],
            suspended=entry["min_encryption_version"] > 0,
            deletion_allowed=entry["deletion_allowed"],
        )

    @staticmethod
    def _add_version(entry: dict[str, Any]) -> int:
        version = int(entry["latest_version"]) + 1
        entry["versions"][str(version)] = base64.b64encode(os.urandom(_KEK_BYTES)).decode()
        entry["latest_version"] = version
        return version

    @staticmethod
    def _kek(entry: dict[str, Any], version: int) -> AESGCM:
        return AESGCM(base64.b64decode(entry["versions"][str(version)]))

    def _open(self, doc: _Doc, name: str, wrapped: str, context: bytes) -> bytearray:
        entry = self._entry(doc, name)
        _, version, payload = _parse_wrapped(wrapped)
        if version < entry["min_decryption_version"]:
            if entry["min_encryption_version"] > 0:
                raise KeySuspended(f"key {name!r} is suspended: unwrap refused")
            raise KeyVersionRetired(
                f"wrapped key version is below the minimum decryption version "
                f"{entry['min_decryption_version']} of key {name!r}"
            )
        if str(version) not in entry["versions"]:
            raise IntegrityError(f"wrapped key names a version key {name!r} does not have")
        try:
            raw = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise IntegrityError("wrapped key is malformed") from exc
        if len(raw) != _WRAPPED_PAYLOAD_BYTES:
            raise IntegrityError("wrapped key has the wrong length")
        out = bytearray(DATA_KEY_BYTES)
        try:
            # decrypt_into writes straight into the caller's bytearray: no bytes copy
            # of the data key is left behind.
            self._kek(entry, version).decrypt_into(
                raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _ad(name, version, context), out
            )
        except InvalidTag:
            zeroize(out)
            raise IntegrityError(
                f"wrapped key failed verification under key {name!r}: tampered, "
                "from another key, or bound to another context"
            ) from None
        return out

    def _seal(self, entry: dict[str, Any], name: str, plaintext: bytearray, context: bytes) -> str:
        version = int(entry["latest_version"])
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._kek(entry, version).encrypt(nonce, plaintext, _ad(name, version, context))
        return f"{self.kind}:v{version}:{base64.b64encode(nonce + sealed).decode()}"

    # -- hooks -------------------------------------------------------------------------

    def _ensure_key(self, name: str) -> KeyState:
        def op(doc: _Doc) -> KeyState:
            entry = doc["keys"].get(name)
            if entry is None:
                entry = {
                    "type": KEY_TYPE,
                    "latest_version": 0,
                    "min_decryption_version": 1,
                    "min_encryption_version": 0,
                    "deletion_allowed": False,
                    "versions": {},
                }
                self._add_version(entry)
                doc["keys"][name] = entry
                logger.info("created key %s", name)
            elif entry["type"] != KEY_TYPE:
                raise KeyConflict(f"key {name!r} exists with type {entry['type']!r}")
            return self._state_of(name, entry)

        return self._locked(op, write=True)

    def _generate_data_key(self, name: str, context: bytes) -> DataKey:
        def op(doc: _Doc) -> DataKey:
            entry = self._entry(doc, name)
            if entry["min_encryption_version"] > 0:
                raise KeySuspended(f"key {name!r} is suspended: no new data keys")
            plaintext = bytearray(os.urandom(DATA_KEY_BYTES))
            try:
                return DataKey(
                    plaintext=plaintext, wrapped=self._seal(entry, name, plaintext, context)
                )
            except BaseException:
                zeroize(plaintext)
                raise

        return self._locked(op, write=False)

    def _unwrap(self, name: str, wrapped: str, context: bytes) -> bytearray:
        return self._locked(lambda doc: self._open(doc, name, wrapped, context), write=False)

    def _rotate(self, name: str) -> KeyState:
        def op(doc: _Doc) -> KeyState:
            entry = self._entry(doc, name)
            if entry["min_encryption_version"] > 0:
                raise KeySuspended(f"key {name!r} is suspended: rotation refused")
            self._add_version(entry)
            return self._state_of(name, entry)

        state = self._locked(op, write=True)
        logger.info("rotated key %s", name)
        return state

    def _rewrap(self, name: str, wrapped: str, context: bytes) -> str:
        def op(doc: _Doc) -> str:
            plaintext = self._open(doc, name, wrapped, context)
            try:
                return self._seal(self._entry(doc, name), name, plaintext, context)
            finally:
                zeroize(plaintext)

        return self._locked(op, write=False)

    def _suspend(self, name: str) -> KeyState:
        def op(doc: _Doc) -> KeyState:
            entry = self._entry(doc, name)
            min_enc = entry["min_encryption_version"]
            if not (min_enc > 0 and entry["min_decryption_version"] >= min_enc):
                # As on Transit: a fresh suspension version S, decryption below S refused,
                # min_encryption_version = S as the marker.
                suspension_version = self._add_version(entry)
                entry["min_decryption_version"] = suspension_version
                entry["min_encryption_version"] = suspension_version
            return self._state_of(name, entry)

        state = self._locked(op, write=True)
        logger.warning("suspended key %s: every unwrap is refused", name)
        return state

    def _resume(self, name: str) -> KeyState:
        def op(doc: _Doc) -> KeyState:
            entry = self._entry(doc, name)
            entry["min_decryption_version"] = min(int(v) for v in entry["versions"])
            entry["min_encryption_version"] = 0
            return self._state_of(name, entry)

        state = self._locked(op, write=True)
        logger.warning("resumed key %s", name)
        return state

    def _destroy(self, name: str) -> None:
        def op(doc: _Doc) -> bool:
            # The entry, and with it every version's material, leaves the file on the
            # atomic rewrite that follows.
            return doc["keys"].pop(name, None) is not None

        if self._locked(op, write=True):
            # The old file's blocks may survive on disk until overwritten: one more
            # reason this backend is for development only.
            logger.warning("destroyed key %s: its data keys are unrecoverable", name)

    def _state(self, name: str) -> KeyState:
        def op(doc: _Doc) -> KeyState:
            entry = doc["keys"].get(name)
            return KeyState.missing(name) if entry is None else self._state_of(name, entry)

        return self._locked(op, write=False)

    def _key_policies(self, name: str) -> KeyPolicies:
        # Whoever can read the key file can unwrap every data key: there is no policy to list.
        return KeyPolicies(problems=("local dev keys: no Vault policies (anyone who can read the key file "
                                     "can unwrap every data key)",))

    def _close(self) -> None:
        os.close(self._lock_fd)


def _check_doc(doc: object) -> None:
    """Raise IntegrityError unless ``doc`` is a well-formed key file."""

    def bad(why: str) -> IntegrityError:
        return IntegrityError(f"the local key file is malformed: {why}")

    if not isinstance(doc, dict) or doc.get("format") != FILE_FORMAT:
        raise bad(f"format is not {FILE_FORMAT!r}")
    keys = doc.get("keys")
    if not isinstance(keys, dict):
        raise bad("no 'keys' object")
    for name, entry in keys.items():
        if not isinstance(entry, dict):
            raise bad(f"key {name!r} is not an object")
        ints = ("latest_version", "min_decryption_version", "min_encryption_version")
        if any(type(entry.get(f)) is not int or entry[f] < 0 for f in ints):
            raise bad(f"key {name!r} has invalid versions")
        if not isinstance(entry.get("deletion_allowed"), bool) or not isinstance(
            entry.get("type"), str
        ):
            raise bad(f"key {name!r} has invalid fields")
        versions = entry.get("versions")
        if not isinstance(versions, dict) or str(entry["latest_version"]) not in versions:
            raise bad(f"key {name!r} lacks its latest version")
        for version, material in versions.items():
            if not version.isdigit() or not isinstance(material, str):
                raise bad(f"key {name!r} has an invalid version entry")
            try:
                if len(base64.b64decode(material, validate=True)) != _KEK_BYTES:
                    raise bad(f"key {name!r} version {version} has the wrong size")
            except (binascii.Error, ValueError) as exc:
                raise bad(f"key {name!r} version {version} is not base64") from exc
