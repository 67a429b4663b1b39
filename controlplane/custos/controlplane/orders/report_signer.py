"""What signs completion reports: an Ed25519 key, in Vault / OpenBao Transit in production.

Two backends behind one interface (:class:`ReportSigner`), chosen by configuration:

- **Transit** (``[keys] report_key = "order-reports"``, needs ``provider = "vault"``): a
  dedicated non-derived ``ed25519`` key, outside the ``custos-`` names model keys use, so
  no model name can reach it. Created at start if absent; the control plane's policy
  (vault-policies/custos-controlplane.hcl) lets it create that one key once, read it and
  sign with it — never rotate, reconfigure, export or delete it. Transit signs the exact
  input with pure Ed25519, so the signature verifies under the raw public key it publishes.
- **a local key file** (``[orders] report_key_file``; ``--dev`` makes one in the data dir):
  DEVELOPMENT ONLY. Every report it signs says so in its signed body, and the control
  plane warns at start when it is used outside ``--dev``.

Every signature is checked against the public key before it is handed out: a key that
was replaced under a running control plane is refused loudly, never signed with.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from custos.controlplane.keys.base import KeyConflict, KeyProvider, validate_key_name
from custos.controlplane.keys.transit_signer import ed25519_public_of, transit_sign
from custos.controlplane.keys.vault import VaultTransitProvider
from custos.controlplane.keys.vault_auth import map_vault_error
from custos.controlplane.keys.vault_session import VaultSession
from custos.core.evidence import report_key_id
from custos.errors import BackendUnavailable, CustosError, IntegrityError, InvalidInput
from custos.fs.private import write_private

log = logging.getLogger("custos.orders")

DEFAULT_REPORT_KEY = "order-reports"
DEV_REPORT_KEY_FILE = "report-signing-dev-only.key"
_MOUNT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(?:/[A-Za-z0-9][A-Za-z0-9_.-]*)*")


class ReportSigner(abc.ABC):
    """Signs ``"custos.v1.order-report" 0x00 || body`` with Ed25519 (custos.core.evidence)."""

    @property
    @abc.abstractmethod
    def label(self) -> str:
        """What signs, as the signed body names it (e.g. ``transit:order-reports:v1``)."""

    @abc.abstractmethod
    def public_key(self) -> Ed25519PublicKey:
        """The key reports verify with. Raises BackendUnavailable if it is not known yet."""

    @abc.abstractmethod
    async def sign(self, message: bytes) -> bytes:
        """A 64-byte Ed25519 signature of ``message`` under :meth:`public_key`.

        Raises BackendUnavailable (cannot sign now), IntegrityError (the key was replaced)."""

    def public_key_pem(self) -> bytes:
        return self.public_key().public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)

    def key_id(self) -> str:
        return report_key_id(self.public_key())


class DevReportSigner(ReportSigner):
    """DEVELOPMENT ONLY: an Ed25519 key in a file on the control plane's own disk."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key

    @classmethod
    def from_file(cls, path: Path) -> DevReportSigner:
        """Load the key (PKCS#8 PEM), or create it (0600) with its ``.pub`` beside it. Raises InvalidInput."""
        try:
            if path.exists():
                key = serialization.load_pem_private_key(path.read_bytes(), password=None)
                if not isinstance(key, Ed25519PrivateKey):
                    raise InvalidInput(f"{path}: not an Ed25519 private key")
            else:
                key = Ed25519PrivateKey.generate()
                path.parent.mkdir(parents=True, exist_ok=True)
                write_private(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()), exclusive=True)
        except OSError as exc:
            raise InvalidInput(f"cannot read or write the report key {path}: {exc.strerror}") from None
        except ValueError:
            raise InvalidInput(f"{path}: not a PEM private key") from None
        signer = cls(key)
        pub = path.with_suffix(".pub")
        if not pub.exists() or pub.read_bytes() != signer.public_key_pem():
            write_private(pub, signer.public_key_pem(), mode=0o644)
        return signer

    @property
    def label(self) -> str:
        return "local key file (DEVELOPMENT ONLY)"

    def public_key(self) -> Ed25519PublicKey:
        return self._key.public_key()

    async def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)


class TransitReportSigner(ReportSigner):
    """Signs with the Transit key ``key`` on ``mount`` through ``session`` (created if absent).

    Raises (at construction only for the wrong key; an unreachable Vault is retried at the
    first report): InvalidInput, KeyConflict (not a non-derived ed25519 key).
    """

    def __init__(self, session: VaultSession, *, key: str = DEFAULT_REPORT_KEY, mount: str = "transit") -> None:
        self.key = validate_key_name(key)
        if not isinstance(mount, str) or _MOUNT.fullmatch(mount) is None:
            raise InvalidInput("report key mount must be a path like 'transit'")
        self.session, self.mount = session, mount
        self._public: Ed25519PublicKey | None = None
        self._version = 0
        self._lock = threading.Lock()
        try:
            self.load()
        except KeyConflict:
            raise
        except CustosError as exc:
            log.error("report key %s/%s not read yet (signed reports wait for it): %s", mount, key, exc)

    def __repr__(self) -> str:
        return f"TransitReportSigner(key={self.mount}/{self.key}, version={self._version})"

    def _request(self, what: str, fn: Callable[[hvac.Client], Any]) -> Any:
        try:
            return self.session.run(fn)
        except (requests.exceptions.RequestException, hvac.exceptions.VaultError) as exc:
            raise map_vault_error(f"{what} with Transit key {self.mount}/{self.key}", exc) from exc

    def _read(self) -> dict[str, Any] | None:
        try:
            answer = self.session.run(lambda c: c.secrets.transit.read_key(name=self.key, mount_point=self.mount))
        except hvac.exceptions.InvalidPath as exc:
            if "no handler" in str(exc).lower():
                raise map_vault_error(f"reading Transit key {self.mount}/{self.key}", exc) from exc
            return None
        except (requests.exceptions.RequestException, hvac.exceptions.VaultError) as exc:
            raise map_vault_error(f"reading Transit key {self.mount}/{self.key}", exc) from exc
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, dict):
            raise BackendUnavailable(f"empty description of Transit key {self.key!r}")
        return data

    def load(self) -> Ed25519PublicKey:
        """Read the key (creating it if absent) and check it. Raises KeyConflict, BackendUnavailable,
        Unauthorized."""
        data = self._read()
        if data is None:
            try:
                self._request("creating", lambda c: c.adapter.post(f"/v1/{self.mount}/keys/{self.key}",
                                                                   json={"type": "ed25519"}))
                log.warning("created the Transit key %s/%s that signs completion reports", self.mount, self.key)
            except CustosError:
                if self._read() is None:  # another replica may have created it meanwhile
                    raise
            data = self._read()
            if data is None:
                raise BackendUnavailable(f"Transit key {self.mount}/{self.key} is absent after creating it")
        if data.get("type") != "ed25519" or data.get("derived"):
            raise KeyConflict(f"Transit key {self.mount}/{self.key} is {data.get('type')!r}"
                              f"{' (derived)' if data.get('derived') else ''}: reports need a non-derived "
                              "ed25519 key")
        version = data.get("latest_version")
        public = ed25519_public_of(data, self.key, version)
        with self._lock:
            if self._public is not None and self._public != public:
                raise IntegrityError(f"Transit key {self.mount}/{self.key} changed under the running control "
                                     "plane: refusing to sign reports with it")
            self._public, self._version = public, int(version)  # type: ignore[arg-type]
        log.info("completion reports signed by Transit key %s/%s version %s, key id %s",
                 self.mount, self.key, version, report_key_id(public)[:16])
        return public

    @property
    def label(self) -> str:
        return f"transit:{self.mount}/{self.key}:v{self._version}"

    def public_key(self) -> Ed25519PublicKey:
        with self._lock:
            known = self._public
        if known is None:
            return self.load()
        return known

    async def sign(self, message: bytes) -> bytes:
        return await asyncio.to_thread(self._sign, message)

    def _sign(self, message: bytes) -> bytes:
        public = self.public_key()
        version = self._version
        return transit_sign(self._request, mount=self.mount, key=self.key, version=version, public=public,
                            message=message, what="the report")


def open_report_signer(keys_cfg: dict[str, Any], keys: KeyProvider, key_file: Path | None, *,
                       dev: bool) -> ReportSigner | None:
    """Transit signs reports when [keys] names report_key; else a local key file (dev only);
    None when neither is configured (signed reports are then refused).

    Raises InvalidInput (report_key without the vault provider, or a name a model key could
    take), KeyConflict.
    """
    name = keys_cfg.get("report_key")
    if name is None:
        if key_file is None:
            log.warning("no report key configured ([keys] report_key): signed completion reports are refused")
            return None
        if not dev:
            log.warning("completion reports are signed by a key file on this host (%s): DEVELOPMENT ONLY; "
                        "set [keys] report_key to sign them in Transit", key_file)
        return DevReportSigner.from_file(key_file)
    if not isinstance(keys, VaultTransitProvider):
        raise InvalidInput("[keys] report_key needs provider = \"vault\"")
    if not isinstance(name, str) or name.startswith(keys_cfg.get("key_prefix", "custos-")):
        raise InvalidInput("[keys] report_key must be a key name outside key_prefix (a model could take it)")
    return TransitReportSigner(keys.session, key=name, mount=keys_cfg.get("mount", "transit"))
