"""Signing this host's acks: every ack of an order carries evidence signed by the host key.

The evidence (custos.core.evidence.AckEvidence: order id, outcome, pids stopped,
paths wiped, residual copies, times, the certificate's fingerprint) is signed with the
host's ECDSA P-256 key — the one its client certificate carries: STATE_DIR/identity/
agent.key, or ``control_plane.key_file`` when an operator certificate is configured —
so a third party can check what this agent says it did with nothing but the CA
(``custos order verify-report``).

The key is read once and kept in memory; it is read again only when the certificate
or key file changes (a renewal, custos.agent.renew, swaps both in by rename). Nothing
here logs the key or its bytes. When no key can be read (not enrolled yet, an
unreadable identity), the ack goes out unsigned and says so in the log: the control
plane records it as unsigned, and the report does not count it as evidence.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from custos.agent.enroll import check_issued
from custos.core.evidence import AckEvidence, sign_evidence
from custos.core.hosts import cert_fingerprint
from custos.errors import CustosError
from custos.v1 import custody_pb2

log = logging.getLogger("custos.agent.evidence")


@dataclass(frozen=True, slots=True)
class _Loaded:
    stamp: tuple[tuple[int, int, int], ...]  # () : read again next time
    key: ec.EllipticCurvePrivateKey
    cert_der: bytes
    fingerprint: str


def _stamp(*paths: Path) -> tuple[tuple[int, int, int], ...]:
    out = []
    for p in paths:
        st = os.stat(p)
        out.append((st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)


class AckSigner:
    """Signs acks as host ``host`` with the key in ``key_file`` and the certificate in ``cert_file``."""

    def __init__(self, *, host: str, cert_file: Path, key_file: Path) -> None:
        self.host = host
        self.cert_file, self.key_file = cert_file, key_file
        self._loaded: _Loaded | None = None
        self._warned = ""
        self.signed = 0
        self.unsigned = 0

    @classmethod
    def for_agent(cls, agent: Any) -> AckSigner:
        """The signer for an agent's configuration: its operator certificate if configured,
        else the enrolled identity in its state directory."""
        cfg = agent.cfg
        cert = getattr(cfg, "cert_file", None)
        key = getattr(cfg, "key_file", None)
        ident = Path(cfg.state_dir) / "identity"
        return cls(host=str(getattr(cfg, "name", "")), cert_file=Path(cert) if cert else ident / "agent.pem",
                   key_file=Path(key) if key and cert else ident / "agent.key")

    def _load(self) -> _Loaded:
        """The key and certificate, read again only when either file changed. Raises CustosError, OSError."""
        stamp = _stamp(self.cert_file, self.key_file)
        if self._loaded is not None and self._loaded.stamp == stamp:
            return self._loaded
        cert_pem, key_pem = self.cert_file.read_bytes(), self.key_file.read_bytes()
        try:
            check_issued(cert_pem, key_pem, self.host)
        except CustosError:
            raise CustosError(f"{self.cert_file} and {self.key_file} are not a certificate and key "
                              f"of host {self.host!r}") from None
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
            cert = x509.load_pem_x509_certificate(cert_pem)
        except (ValueError, TypeError):
            raise CustosError("this host's key or certificate is unreadable") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
            raise CustosError("this host's key is not an ECDSA P-256 key: acks cannot be signed")
        # Files swapped while being read (a renewal): use this pair once, read again next time.
        settled = _stamp(self.cert_file, self.key_file) == stamp
        loaded = _Loaded(stamp=stamp if settled else (), key=key,
                         cert_der=cert.public_bytes(serialization.Encoding.DER), fingerprint=cert_fingerprint(cert_pem))
        if self._loaded is not None and self._loaded.fingerprint != loaded.fingerprint:
            log.info("ack signing key reloaded (certificate renewed)",
                     extra={"fields": {"cert_sha256": loaded.fingerprint[:16]}})
        self._loaded = loaded
        return loaded

    def sign(self, ack: custody_pb2.OrderAck) -> custody_pb2.OrderAck:
        """Fill ``ack``'s evidence, signature and certificate (its lists cut to the evidence's
        limits, so the ack says exactly what is signed). Never raises: an ack that cannot be
        signed is returned unsigned, and that is logged."""
        try:
            loaded = self._load()
            ev = AckEvidence.bounded(
                host=self.host, order_id=ack.order_id, verified=ack.verified, outcome=ack.outcome,
                reason=ack.reason, pids_stopped=list(ack.pids_stopped), paths_wiped=list(ack.paths_wiped),
                remaining=list(ack.remaining), would_stop=list(ack.would_stop),
                received_ns=ack.received_unix_ns, done_ns=ack.done_unix_ns, cert_sha256=loaded.fingerprint)
            data, signature = sign_evidence(ev, loaded.key)
        except (CustosError, OSError) as exc:
            self.unsigned += 1
            why = f"{type(exc).__name__}: {exc}" if isinstance(exc, CustosError) else f"{exc.strerror}"
            if why != self._warned:  # once per distinct cause, not per ack
                self._warned = why
                log.error("ack sent unsigned: the host key cannot sign it",
                          extra={"fields": {"order_id": ack.order_id, "why": why}})
            return ack
        del ack.pids_stopped[:], ack.paths_wiped[:], ack.remaining[:], ack.would_stop[:]
        ack.pids_stopped.extend(ev.pids_stopped)
        ack.paths_wiped.extend(ev.paths_wiped)
        ack.remaining.extend(ev.remaining)
        ack.would_stop.extend(ev.would_stop)
        ack.reason, ack.received_unix_ns, ack.done_unix_ns = ev.reason, ev.received_ns, ev.done_ns
        ack.evidence, ack.evidence_signature, ack.host_certificate = data, signature, loaded.cert_der
        self.signed += 1
        self._warned = ""
        return ack
