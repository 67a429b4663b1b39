"""Host certificates: issuing, which certificates of a host are accepted, renewal, revocation.

A host record names the certificates it accepts (docs/agent.md, "Certificates"):

    cert_fingerprint, cert_key_id, cert_not_after_ns     the current certificate, its key, its expiry
    cert_previous, cert_previous_not_after_ns            the one it renewed, until it expires

The previous certificate stays accepted until its own expiry, because the agent's
open stream still speaks with it; the agent's next connection uses the new one. Only
the current certificate may renew — for a fresh key. The previous one may renew only
for the key the current certificate already carries: the reply to a renewal was lost
(the agent died before it stored it) and the agent asks again with the same key, so
a stolen previous certificate cannot buy a certificate for a key of its own.
"""

from __future__ import annotations

import datetime as dt
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from custos.controlplane.audit import AuditLog, Caller, Plan
from custos.controlplane.pki import CertificateAuthority, public_key_id, sign_agent_csr
from custos.controlplane.revocations import PREFIX, RevocationList, check_fingerprint, revocation, revocation_puts
from custos.controlplane.store.base import Store, Txn
from custos.core.canonical import decode_canonical, encode_canonical
from custos.core.hosts import cert_fingerprint, validate_host_name
from custos.errors import FailedPrecondition, InvalidInput, NotFound, Unauthorized

MAX_REASON = 500


class CertificateExpired(Unauthorized):
    """The caller's certificate has expired (on a connection opened before): reconnect with the renewed one."""


class RenewalRefused(Unauthorized):
    """This certificate may not renew (it was renewed already, or the host is not enrolled)."""


def iso(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def not_after_ns(cert: x509.Certificate) -> int:
    return int(cert.not_valid_after_utc.timestamp() * 1e9)


def load_csr(csr_pem: bytes) -> x509.CertificateSigningRequest:
    """A CSR whose signature verifies. Raises InvalidInput."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError:
        raise InvalidInput("unreadable certificate signing request") from None
    if not csr.is_signature_valid:
        raise InvalidInput("the CSR's signature does not verify")
    return csr


def check_reason(reason: str) -> str:
    """Raises InvalidInput for a reason too long to record."""
    text = (reason or "").strip()
    if len(text) > MAX_REASON or any(ord(c) < 32 for c in text):
        raise InvalidInput(f"a reason is at most {MAX_REASON} printable characters on one line")
    return text


def certificate_fields(cert_pem: bytes, *, previous: tuple[str, int] = ("", 0)) -> dict[str, Any]:
    """The host record's fields for a newly issued certificate (``previous``: fingerprint and
    expiry of the certificate it replaces, still accepted until then)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return {"cert_fingerprint": cert_fingerprint(cert_pem), "cert_key_id": public_key_id(cert.public_key()),
            "cert_not_after_ns": not_after_ns(cert), "cert_previous": previous[0],
            "cert_previous_not_after_ns": previous[1]}


def accepted_until(record: dict[str, Any], fingerprint: str) -> int | None:
    """Until when (unix ns; 0: no recorded expiry) the host accepts this certificate; None: never."""
    if not fingerprint:
        return None
    if record.get("cert_fingerprint") and hmac.compare_digest(record["cert_fingerprint"], fingerprint):
        return int(record.get("cert_not_after_ns", 0))
    if record.get("cert_previous") and hmac.compare_digest(record["cert_previous"], fingerprint):
        return int(record.get("cert_previous_not_after_ns", 0))
    return None


def host_revocations(record: dict[str, Any], *, reason: str, by: str) -> list[dict[str, Any]]:
    """Revocation records for every certificate the host accepts."""
    out = []
    for fp_key, exp_key in (("cert_fingerprint", "cert_not_after_ns"), ("cert_previous", "cert_previous_not_after_ns")):
        if record.get(fp_key):
            out.append(revocation(record[fp_key], principal=record["name"], role="agent", reason=reason, by=by,
                                  not_after_ns=int(record.get(exp_key, 0))))
    return out


class HostCertificates:
    """Issues agent certificates (``ttl`` seconds long) with the enrollment CA; renews them."""

    def __init__(self, audit: AuditLog, ca: CertificateAuthority | None, *, ttl: float,
                 revocations: RevocationList) -> None:
        self.audit = audit
        self.store = audit.store
        self.ca = ca
        self.ttl = ttl
        self.revocations = revocations

    @property
    def ca_pem(self) -> bytes:
        return self._ca().cert.public_bytes(serialization.Encoding.PEM)

    def _ca(self) -> CertificateAuthority:
        if self.ca is None:
            raise FailedPrecondition("this control plane has no CA key configured to sign agent certificates")
        return self.ca

    def issue(self, csr: x509.CertificateSigningRequest, host: str) -> bytes:
        """An agent certificate (PEM) for ``host`` over the CSR's key. Raises FailedPrecondition (no CA)."""
        cert = sign_agent_csr(self._ca(), csr, host, ttl_seconds=self.ttl)
        return cert.public_bytes(serialization.Encoding.PEM)

    async def renew(self, caller: Caller, csr_pem: bytes) -> tuple[bytes, int]:
        """The next certificate of the caller's host, for the CSR's key; (PEM, expiry in unix ns).

        Raises InvalidInput (bad CSR, the current key again), RenewalRefused, FailedPrecondition (no CA).
        """
        self._ca()
        csr = load_csr(csr_pem)
        key_id = public_key_id(csr.public_key())
        name = caller.principal
        fp = caller.cert_sha256

        async def plan() -> tuple[Plan, tuple[bytes, int]]:
            entry = await self.store.get(f"hosts/{validate_host_name(name)}")
            record = dict(decode_canonical(entry.value)) if entry else {}
            if entry is None or record["state"] != "enrolled":
                raise RenewalRefused(f"host {name!r} is not enrolled")
            if fp and hmac.compare_digest(record["cert_fingerprint"], fp):
                if key_id == record.get("cert_key_id"):
                    raise InvalidInput("a renewal needs a fresh key: the CSR carries the current certificate's key")
                previous = (fp, int(record.get("cert_not_after_ns", 0)))
            elif (fp and record.get("cert_previous") and hmac.compare_digest(record["cert_previous"], fp)
                  and key_id == record.get("cert_key_id")):
                # The reply to the last renewal was lost: the same key asks again.
                previous = (fp, int(record.get("cert_previous_not_after_ns", 0)))
            else:
                raise RenewalRefused(f"host {name!r}: this certificate was renewed already; only its successor "
                                     "may renew")
            cert = self.issue(csr, name)
            record.update(certificate_fields(cert, previous=previous))
            txn = Txn(checks={entry.key: entry.mod_revision}, puts={entry.key: encode_canonical(record)})
            return Plan(txn), (cert, int(record["cert_not_after_ns"]))

        return await self.audit.mutate(caller, "RenewCertificate", f"host/{name}", plan)

    async def revoke(self, caller: Caller, entry: dict[str, Any]) -> list[dict[str, Any]]:
        """Put one certificate on the revocation list; the records newly written (none if it was
        already there). Raises BackendUnavailable."""
        key = f"{PREFIX}{entry['fingerprint']}"

        async def plan() -> tuple[Plan, list[dict[str, Any]]]:
            if await self.store.get(key) is not None:
                return Plan(result="already revoked"), []
            return Plan(Txn(checks={key: 0}, puts=revocation_puts([entry]))), [entry]

        revoked = await self.audit.mutate(caller, "RevokeCertificate", f"cert/{entry['fingerprint']}", plan)
        self.revocations.learn(revoked)  # refused here at once; elsewhere within a poll
        return revoked

    def retire_plan(self, name: str, *, state: str, reason: str, by: str) -> Callable[[], Awaitable[
            tuple[Plan, tuple[dict[str, Any], list[dict[str, Any]]]]]]:
        """The audited change that takes a host out of custody (``state``: removed, revoked): its
        certificates revoked, its lease revoked, its token void. The plan raises NotFound."""
        async def plan() -> tuple[Plan, tuple[dict[str, Any], list[dict[str, Any]]]]:
            entry = await self.store.get(f"hosts/{validate_host_name(name)}")
            if entry is None:
                raise NotFound(f"host {name!r} not found")
            record = dict(decode_canonical(entry.value))
            revoked = await new_revocations(self.store, host_revocations(record, reason=reason, by=by))
            record.update(state=state, token_hash="")
            checks = {entry.key: entry.mod_revision, **dict.fromkeys(revocation_puts(revoked), 0)}
            txn = Txn(checks=checks, puts={entry.key: encode_canonical(record), **revocation_puts(revoked),
                                           f"leases/{name}": encode_canonical({"expires_ns": 0, "state": "revoked"})})
            return Plan(txn), (record, revoked)

        return plan

    async def subject(self, *, fingerprint: str, certificate_pem: bytes, reason: str,
                      by: str) -> tuple[str, dict[str, Any]]:
        """What a certificate named by fingerprint or PEM is: the host that accepts it (or ""),
        and its revocation record. Raises InvalidInput."""
        principal = role = ""
        until = 0
        if certificate_pem:
            try:
                cert = x509.load_pem_x509_certificate(certificate_pem)
            except ValueError:
                raise InvalidInput("unreadable certificate (want PEM)") from None
            fp = cert_fingerprint(certificate_pem)
            principal = ",".join(str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME))
            role = ",".join(str(a.value) for a in cert.subject.get_attributes_for_oid(
                NameOID.ORGANIZATIONAL_UNIT_NAME))
            until = not_after_ns(cert)
        else:
            fp = check_fingerprint(fingerprint)
        for e in await self.store.range("hosts/"):
            record = dict(decode_canonical(e.value))
            if accepted_until(record, fp) is not None:
                return str(record["name"]), {}
        return "", revocation(fp, principal=principal[:253], role=role[:64], reason=reason or "no reason given",
                              by=by, not_after_ns=until)


async def new_revocations(store: Store, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The entries not on the list yet (a revocation, once written, is never rewritten)."""
    have = await store.get_many([f"{PREFIX}{e['fingerprint']}" for e in entries])
    return [e for e in entries if f"{PREFIX}{e['fingerprint']}" not in have]
