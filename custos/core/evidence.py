"""Signed halt evidence and signed completion reports: checkable offline by a third party.

Two signed objects, each a versioned, domain-separated canonical encoding
(docs/orders.md, "Signed evidence"):

- **ack evidence**: what one host agent says it did for one order (outcome, pids
  stopped, paths wiped, residual copies, times), naming the certificate of the key
  that signs it. The agent signs ``"custos.v1.ack-evidence" 0x00 || evidence`` with its
  host key (ECDSA P-256, SHA-256). :func:`verify_ack` checks it against the CA that
  issued agent certificates: the certificate is an agent certificate for that host,
  issued by the CA, valid at the ack's time, the one the evidence names, and its key
  made the signature.
- **the order report**: the order (body and signatures), the signer-set chain it
  verifies under, every host's ack with its evidence, signature and certificate, the
  control plane's per-host result, and the counts and verdict those give. The control
  plane signs ``"custos.v1.order-report" 0x00 || body`` with its report key (Ed25519;
  Transit in production). :func:`verify_report` re-verifies every ack and the order's
  quorum itself and recomputes the counts and the verdict, so neither an edit of the
  file nor a control plane that signs a lie about an agent's ack passes.

No network, no clock but the times in the data. Pure logic.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from custos.core.canonical import decode_canonical, encode_canonical
from custos.core.drills import DrillRegister, verify_register
from custos.core.hosts import HOST_NAME
from custos.core.names import HEX64
from custos.core.orders import ExecutedOrders, Order, OrderError, verify_order
from custos.core.signers import SignerSet, TrustedSignerSets, decode_signatures
from custos.errors import CustosError, IntegrityError, InvalidInput

EVIDENCE_DOMAIN = b"custos.v1.ack-evidence\x00"
REPORT_DOMAIN = b"custos.v1.order-report\x00"
EVIDENCE_ENCODING = 1
REPORT_ENCODING = 1

ACK_OUTCOMES = ("already-executed", "destroyed", "dry-run", "halted", "lifted", "refused")
# The outcomes that prove an order was carried out on a host, by action.
SUCCESS: Mapping[str, frozenset[str]] = {
    "drill": frozenset({"halted", "already-executed"}),
    "halt": frozenset({"halted", "already-executed"}),
    "destroy": frozenset({"destroyed", "already-executed"}),
    "lift": frozenset({"lifted", "already-executed"}),
}
AGENT_ROLE = "agent"

MAX_PIDS = 10_000
MAX_PATHS = 10_000
MAX_REMAINING = 1000
MAX_WOULD_STOP = 1000
MAX_ITEM_CHARS = 4096
MAX_REASON_CHARS = 2000
MAX_EVIDENCE_BYTES = 16 << 20
MAX_REPORT_BYTES = 64 << 20
MAX_CERTIFICATE_BYTES = 16 << 10
MAX_HOSTS = 100_000
_MAX_NS = 2**63 - 1
_MAX_PID = 2**31 - 1
_ITEM_BUDGET = 8 << 20  # characters of listed items an agent puts in one evidence

_EVIDENCE_FIELDS = frozenset({"cert_sha256", "done_ns", "encoding", "host", "order_id", "outcome", "paths_wiped",
                              "pids_stopped", "reason", "received_ns", "remaining", "verified", "would_stop"})
_HEX_SIG = re.compile(r"^(?:[0-9a-f]{2}){0,512}$")  # what an agent sent is kept (up to 512 bytes), junk or not


class EvidenceError(InvalidInput):
    """Ack evidence or a report is malformed (not canonical, a field wrong or missing)."""


class ReportRejected(IntegrityError):
    """A signed report failed verification; ``verification`` says why."""

    def __init__(self, verification: ReportVerification) -> None:
        self.verification = verification
        super().__init__("report rejected: " + "; ".join(verification.problems))


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _text(v: object, what: str, limit: int) -> str:
    if not isinstance(v, str) or len(v) > limit:
        raise EvidenceError(f"evidence: {what} must be a string of at most {limit} characters")
    return v


def _items(v: object, what: str, limit: int) -> tuple[str, ...]:
    if not isinstance(v, list | tuple) or len(v) > limit:
        raise EvidenceError(f"evidence: {what} must be a list of at most {limit} strings")
    return tuple(_text(x, f"each of {what}", MAX_ITEM_CHARS) for x in v)


# -- ack evidence -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AckEvidence:
    """What a host agent signs for one order. Every field is checked when it is made.

    Raises EvidenceError.
    """

    host: str
    order_id: str  # "" when the order's body could not even be read
    verified: bool  # the agent's own verification of the order's signatures
    outcome: str
    reason: str
    pids_stopped: tuple[int, ...]
    paths_wiped: tuple[str, ...]
    remaining: tuple[str, ...]  # copies that remain, each with why
    would_stop: tuple[str, ...]  # a drill's dry run
    received_ns: int
    done_ns: int
    cert_sha256: str  # the certificate of the key that signs this evidence
    encoding: int = EVIDENCE_ENCODING

    def __post_init__(self) -> None:
        if self.encoding != EVIDENCE_ENCODING or not _is_int(self.encoding):
            raise EvidenceError(f"evidence: encoding must be {EVIDENCE_ENCODING}")
        if not isinstance(self.host, str) or not HOST_NAME.match(self.host):
            raise EvidenceError("evidence: host must be a host name (a-z 0-9 . -)")
        if not isinstance(self.order_id, str) or (self.order_id and not HEX64.match(self.order_id)):
            raise EvidenceError("evidence: order_id must be 64 lowercase hex digits (or empty)")
        if not isinstance(self.verified, bool):
            raise EvidenceError("evidence: verified must be true or false")
        if self.outcome not in ACK_OUTCOMES:
            raise EvidenceError(f"evidence: outcome must be one of {', '.join(ACK_OUTCOMES)}")
        _text(self.reason, "reason", MAX_REASON_CHARS)
        pids = self.pids_stopped
        if (not isinstance(pids, tuple) or len(pids) > MAX_PIDS
                or not all(_is_int(p) and 1 <= p <= _MAX_PID for p in pids)):
            raise EvidenceError(f"evidence: pids_stopped must be at most {MAX_PIDS} process ids")
        for name, limit in (("paths_wiped", MAX_PATHS), ("remaining", MAX_REMAINING),
                            ("would_stop", MAX_WOULD_STOP)):
            value = getattr(self, name)
            if not isinstance(value, tuple):
                raise EvidenceError(f"evidence: {name} must be a tuple")
            _items(value, name, limit)
        for name in ("received_ns", "done_ns"):
            v = getattr(self, name)
            if not _is_int(v) or not 0 <= v <= _MAX_NS:
                raise EvidenceError(f"evidence: {name} must be unix nanoseconds")
        if self.done_ns < 1 or self.received_ns > self.done_ns:
            raise EvidenceError("evidence: done_ns must be set and not before received_ns")
        if not isinstance(self.cert_sha256, str) or not HEX64.match(self.cert_sha256):
            raise EvidenceError("evidence: cert_sha256 must be 64 lowercase hex digits")

    @classmethod
    def bounded(cls, *, host: str, order_id: str, verified: bool, outcome: str, reason: str,
                pids_stopped: Iterable[int], paths_wiped: Iterable[str], remaining: Iterable[str],
                would_stop: Iterable[str], received_ns: int, done_ns: int, cert_sha256: str) -> AckEvidence:
        """The evidence of an ack, its lists cut to the limits; what is cut is said in ``remaining``
        (a wiped path that is not listed is not claimed: its copy stays residual). Raises EvidenceError."""
        budget = [_ITEM_BUDGET]
        dropped: list[str] = []

        def keep(values: Iterable[str], limit: int, what: str) -> tuple[str, ...]:
            out: list[str] = []
            lost = 0
            for v in values:
                if len(out) < limit and len(v) <= MAX_ITEM_CHARS and len(v) <= budget[0]:
                    out.append(v)
                    budget[0] -= len(v)
                else:
                    lost += 1
            if lost:
                dropped.append(f"evidence truncated: {lost} {what} not listed")
            return tuple(out)

        pids = tuple(p for p in pids_stopped if 1 <= p <= _MAX_PID)
        if len(pids) > MAX_PIDS:
            dropped.append(f"evidence truncated: {len(pids) - MAX_PIDS} stopped pids not listed")
            pids = pids[:MAX_PIDS]
        wiped = keep(paths_wiped, MAX_PATHS, "wiped paths")
        stop = keep(would_stop, MAX_WOULD_STOP, "dry-run items")
        rest = keep(remaining, MAX_REMAINING - 3, "remaining copies")
        return cls(host=host, order_id=order_id, verified=verified, outcome=outcome,
                   reason=reason[:MAX_REASON_CHARS], pids_stopped=pids, paths_wiped=wiped,
                   remaining=rest + tuple(dropped), would_stop=stop, received_ns=max(0, received_ns),
                   done_ns=max(done_ns, received_ns, 1), cert_sha256=cert_sha256)

    def to_json(self) -> dict[str, Any]:
        return {"cert_sha256": self.cert_sha256, "done_ns": self.done_ns, "encoding": self.encoding,
                "host": self.host, "order_id": self.order_id, "outcome": self.outcome,
                "paths_wiped": list(self.paths_wiped), "pids_stopped": list(self.pids_stopped),
                "reason": self.reason, "received_ns": self.received_ns, "remaining": list(self.remaining),
                "verified": self.verified, "would_stop": list(self.would_stop)}

    def encode(self) -> bytes:
        """Canonical bytes. Raises EvidenceError (a string with no UTF-8 form)."""
        try:
            return encode_canonical(self.to_json())
        except InvalidInput as exc:
            raise EvidenceError(f"evidence: {exc}") from None

    def signature_input(self) -> bytes:
        return EVIDENCE_DOMAIN + self.encode()

    @classmethod
    def decode(cls, data: bytes) -> AckEvidence:
        """Strict: canonical bytes with exactly the fields of encoding 1. Raises EvidenceError."""
        if not isinstance(data, bytes | bytearray) or len(data) > MAX_EVIDENCE_BYTES:
            raise EvidenceError(f"evidence: want at most {MAX_EVIDENCE_BYTES} bytes")
        try:
            obj = decode_canonical(bytes(data))
        except InvalidInput as exc:
            raise EvidenceError(f"evidence: {exc}") from None
        if not isinstance(obj, dict) or set(obj) != _EVIDENCE_FIELDS:
            raise EvidenceError("evidence: want exactly the fields of encoding 1")
        if not isinstance(obj["pids_stopped"], list):
            raise EvidenceError("evidence: pids_stopped must be a list")
        return cls(host=obj["host"], order_id=obj["order_id"], verified=obj["verified"], outcome=obj["outcome"],
                   reason=obj["reason"], pids_stopped=tuple(obj["pids_stopped"]),
                   paths_wiped=_items(obj["paths_wiped"], "paths_wiped", MAX_PATHS),
                   remaining=_items(obj["remaining"], "remaining", MAX_REMAINING),
                   would_stop=_items(obj["would_stop"], "would_stop", MAX_WOULD_STOP),
                   received_ns=obj["received_ns"], done_ns=obj["done_ns"], cert_sha256=obj["cert_sha256"],
                   encoding=obj["encoding"])


def sign_evidence(evidence: AckEvidence, key: ec.EllipticCurvePrivateKey) -> tuple[bytes, bytes]:
    """(evidence bytes, DER ECDSA-SHA256 signature over the domain-separated input). Raises EvidenceError."""
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise EvidenceError("the host key must be an ECDSA P-256 key")
    data = evidence.encode()
    return data, key.sign(EVIDENCE_DOMAIN + data, ec.ECDSA(hashes.SHA256()))


def load_ca_certificates(pem: bytes) -> list[x509.Certificate]:
    """The CA certificates of a PEM bundle (at least one). Raises InvalidInput."""
    try:
        cas = x509.load_pem_x509_certificates(pem)
    except (ValueError, TypeError):
        raise InvalidInput("the CA file holds no readable PEM certificate") from None
    if not cas:
        raise InvalidInput("the CA file holds no certificate")
    return cas


def certificate_sha256(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


@dataclass(frozen=True, slots=True)
class AckCheck:
    """The result of :func:`verify_ack`: truthy only when the evidence verified."""

    evidence: AckEvidence | None
    problem: str

    def __bool__(self) -> bool:
        return self.evidence is not None and not self.problem


def _utc_ns(t: dt.datetime) -> int:
    return int(t.timestamp()) * 1_000_000_000


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _attrs(name: x509.Name, oid: x509.ObjectIdentifier) -> list[str]:
    return [str(a.value) for a in name.get_attributes_for_oid(oid)]


def verify_ack(evidence: bytes, signature: bytes, certificate: bytes, cas: Sequence[x509.Certificate], *,
               host: str, order_id: str) -> AckCheck:
    """Check one ack's signed evidence offline. Never raises for bad input: the first
    problem found is the result's ``problem``.

    ``certificate`` (DER) must be an agent certificate (OU = agent) for ``host`` (CN),
    issued directly by one of ``cas``, valid at the evidence's ``done_ns``, the one whose
    SHA-256 the evidence names; ``signature`` (DER ECDSA-SHA256) by its key over
    ``"custos.v1.ack-evidence" 0x00 || evidence``; and the evidence about ``host`` and
    ``order_id``.
    """
    if not evidence:
        return AckCheck(None, "unsigned: the ack carries no evidence")
    try:
        ev = AckEvidence.decode(evidence)
    except EvidenceError as exc:
        return AckCheck(None, f"evidence malformed: {exc}")
    if not signature:
        return AckCheck(ev, "signature missing")
    if not certificate:
        return AckCheck(ev, "certificate missing")
    if ev.host != host:
        return AckCheck(ev, f"evidence names host {ev.host!r}, not {host!r}")
    if ev.order_id != order_id:
        return AckCheck(ev, f"evidence is of order {ev.order_id[:16] or '(none)'}, not {order_id[:16]}")
    if len(certificate) > MAX_CERTIFICATE_BYTES:
        return AckCheck(ev, "certificate too large")
    try:
        cert = x509.load_der_x509_certificate(bytes(certificate))
    except ValueError:
        return AckCheck(ev, "certificate unreadable")
    if certificate_sha256(bytes(certificate)) != ev.cert_sha256:
        return AckCheck(ev, "the certificate is not the one the evidence names")
    at = ev.done_ns
    issuer = None
    for ca in cas:
        if ca.subject != cert.issuer or not _is_ca(ca):
            continue
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        if _utc_ns(ca.not_valid_before_utc) <= at <= _utc_ns(ca.not_valid_after_utc):
            issuer = ca
            break
    if issuer is None:
        return AckCheck(ev, "certificate not issued by the given CA")
    if _is_ca(cert):
        return AckCheck(ev, "certificate is a CA certificate, not an agent's")
    cns, ous = _attrs(cert.subject, NameOID.COMMON_NAME), _attrs(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME)
    if cns != [host] or ous != [AGENT_ROLE]:
        return AckCheck(ev, f"certificate is for {'/'.join(cns) or '?'} (role {'/'.join(ous) or 'none'}), "
                            f"not the agent of host {host!r}")
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
            return AckCheck(ev, "certificate is not a client certificate")
    except x509.ExtensionNotFound:
        pass
    if not _utc_ns(cert.not_valid_before_utc) <= at <= _utc_ns(cert.not_valid_after_utc):
        return AckCheck(ev, f"certificate not valid at the ack's time ({_iso(at)}; valid "
                            f"{_iso(_utc_ns(cert.not_valid_before_utc))} to {_iso(_utc_ns(cert.not_valid_after_utc))})")
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        return AckCheck(ev, "certificate key is not ECDSA P-256")
    try:
        key.verify(bytes(signature), EVIDENCE_DOMAIN + bytes(evidence), ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return AckCheck(ev, "signature does not verify")
    return AckCheck(ev, "")


def _iso(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns // 1_000_000_000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the report ---------------------------------------------------------------------


def report_key_id(public_key: Ed25519PublicKey) -> str:
    """The report key's fingerprint: hex SHA-256 of its 32 raw bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def load_report_public_key(pem: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM (SubjectPublicKeyInfo). Raises InvalidInput."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError):
        raise InvalidInput("the report key is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidInput("the report key is not an Ed25519 public key")
    return key


@dataclass(frozen=True, slots=True)
class HostAck:
    """One host's row in a report, as stored by the control plane."""

    host: str
    acked: bool = False
    evidence: bytes = b""  # canonical evidence bytes; empty for an unsigned ack
    signature: bytes = b""
    certificate: bytes = b""  # DER
    recorded_ns: int = 0
    verified: bool = False  # the control plane's check on arrival (also against the host's enrolled certificate)
    problem: str = ""  # why not, when not


def _status(action: str, row: HostAck, evidence: AckEvidence | None) -> str:
    if not row.acked:
        return "no-ack"
    if not row.verified or evidence is None:
        return "unverified"
    if evidence.verified and evidence.outcome in SUCCESS.get(action, frozenset()):
        return "lifted" if action == "lift" else "halted"
    return evidence.outcome


def assess(action: str, rows: Sequence[HostAck], copies: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per-host status, counts, the verdict and what keeps it incomplete — from the rows alone
    (the evidence of a row counts only when ``verified``). The control plane and
    :func:`verify_report` compute these the same way."""
    statuses: dict[str, str] = {}
    residual: list[str] = []
    counts = {"acked": 0, "halted": 0, "hosts": len(rows), "verified": 0}
    for row in rows:
        ev = None
        if row.verified:
            try:
                ev = AckEvidence.decode(row.evidence)
            except EvidenceError:
                ev = None
        st = _status(action, row, ev)
        statuses[row.host] = st
        counts["acked"] += row.acked
        counts["verified"] += ev is not None
        counts["halted"] += st in ("halted", "lifted")
        if st == "no-ack":
            residual.append(f"host {row.host}: no ack")
        elif st == "unverified":
            residual.append(f"host {row.host}: ack without verified evidence ({row.problem or 'unsigned'})")
        elif st not in ("halted", "lifted"):
            residual.append(f"host {row.host}: outcome {st}")
        if ev is not None:
            residual += [f"host {row.host}: {r}" for r in ev.remaining]
    for c in copies:
        if c.get("state") == "residual":
            residual.append(f"copy {c.get('location', '?')} of {str(c.get('artifact_id', '?'))[:16]}: residual")
    if not rows:
        residual.append("no host in the report")
    counts["residual"] = len(residual)
    return {"counts": counts, "statuses": statuses, "residual": residual,
            "verdict": "incomplete" if residual else "complete"}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise EvidenceError(f"report: {what} must be base64 text")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise EvidenceError(f"report: {what} is not base64") from None
    if _b64(raw) != text:
        raise EvidenceError(f"report: {what} is not canonical base64")
    return raw


def _unhex(text: object, what: str) -> bytes:
    if not isinstance(text, str) or not _HEX_SIG.match(text):
        raise EvidenceError(f"report: {what} must be lowercase hex")
    return bytes.fromhex(text)


@dataclass(frozen=True, slots=True)
class ChainEntry:
    """One signer-set version and the rotation signatures that installed it (canonical texts)."""

    set: bytes
    signatures: bytes


_COPY_FIELDS = ("artifact_id", "evidence", "form", "host", "location", "location_kind", "model", "state")
_BODY_FIELDS = frozenset({"copies", "counts", "drill_register", "dry_run", "encoding", "hosts", "made_at_ns",
                          "order", "order_id", "quorum_at_ns", "completed_at_ns", "residual", "signer",
                          "signer_chain", "state", "verdict"})
_ROW_FIELDS = frozenset({"ack", "host", "problem", "status", "verified"})
_ACK_FIELDS = frozenset({"certificate", "evidence", "recorded_ns", "signature"})
_ENVELOPE_FIELDS = frozenset({"body", "encoding", "key_id", "signature"})


def report_body(*, order_body: bytes, order_signatures: bytes, signer_chain: Sequence[ChainEntry],
                drill_register: tuple[bytes, bytes], dry_run: Mapping[str, Sequence[str]], state: str,
                quorum_at_ns: int, completed_at_ns: int, made_at_ns: int, rows: Sequence[HostAck],
                copies: Sequence[Mapping[str, Any]], signer: str) -> bytes:
    """The canonical report body; counts, statuses and the verdict computed by :func:`assess`.

    Raises InvalidInput (an order body that does not decode, bad rows).
    """
    order = Order.decode(order_body)
    rows = sorted(rows, key=lambda r: r.host)
    if len({r.host for r in rows}) != len(rows):
        raise InvalidInput("report: a host is listed twice")
    copies = [{k: c.get(k, "") for k in _COPY_FIELDS} for c in copies]
    a = assess(order.action, rows, copies)
    body = {
        "completed_at_ns": completed_at_ns,
        "copies": copies,
        "counts": a["counts"],
        "drill_register": {"body": drill_register[0].decode(), "signatures": drill_register[1].decode()},
        "dry_run": {"artifacts": sorted(dry_run.get("artifacts", [])), "models": sorted(dry_run.get("models", []))},
        "encoding": REPORT_ENCODING,
        "hosts": [{
            "ack": None if not r.acked else {"certificate": _b64(r.certificate), "evidence": r.evidence.decode(),
                                             "recorded_ns": r.recorded_ns, "signature": r.signature.hex()},
            "host": r.host, "problem": r.problem, "status": a["statuses"][r.host], "verified": r.verified,
        } for r in rows],
        "made_at_ns": made_at_ns,
        "order": {"body": order_body.decode(), "signatures": order_signatures.decode()},
        "order_id": order.id,
        "quorum_at_ns": quorum_at_ns,
        "residual": a["residual"],
        "signer": signer,
        "signer_chain": [{"set": e.set.decode(), "signatures": e.signatures.decode()} for e in signer_chain],
        "state": state,
        "verdict": a["verdict"],
    }
    try:
        return encode_canonical(body)
    except (InvalidInput, UnicodeDecodeError) as exc:
        raise InvalidInput(f"report: {exc}") from None


def seal_report(body: bytes, *, signature: bytes, public_key: Ed25519PublicKey) -> bytes:
    """The signed report file: the canonical envelope of ``body`` and its signature."""
    return encode_canonical({"body": body.decode(), "encoding": REPORT_ENCODING,
                             "key_id": report_key_id(public_key), "signature": signature.hex()})


def report_signature_input(body: bytes) -> bytes:
    return REPORT_DOMAIN + body


def sign_report_locally(body: bytes, key: Ed25519PrivateKey) -> bytes:
    """A sealed report signed with ``key`` (a local key; production signs in Transit)."""
    return seal_report(body, signature=key.sign(report_signature_input(body)), public_key=key.public_key())


@dataclass
class ReportVerification:
    """The result of :func:`verify_report`: truthy only when the report verified.

    ``problems`` names every reason it failed, one sentence each; the other fields
    summarize what the report says (as recomputed from its acks, when it decodes).
    """

    problems: list[str] = field(default_factory=list)
    order_id: str = ""
    action: str = ""
    models: tuple[str, ...] = ()
    state: str = ""
    verdict: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, str] = field(default_factory=dict)
    residual: list[str] = field(default_factory=list)
    signer_set_id: str = ""  # id of signer-set version 1 the chain starts from
    signer_set_version: int = 0
    signed_by: tuple[str, ...] = ()
    report_key_id: str = ""
    signer: str = ""

    def __bool__(self) -> bool:
        return not self.problems and bool(self.order_id)

    def raise_if_invalid(self) -> ReportVerification:
        """Raises ReportRejected unless the report verified."""
        if not self:
            raise ReportRejected(self)
        return self


def _strict(obj: object, fields: frozenset[str], what: str) -> dict[str, Any]:
    if not isinstance(obj, dict) or set(obj) != fields:
        raise EvidenceError(f"report: {what} must have exactly the fields {', '.join(sorted(fields))}")
    return obj


def _int(v: object, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= _MAX_NS:
        raise EvidenceError(f"report: {what} must be a non-negative integer")
    return v


def _str(v: object, what: str) -> str:
    if not isinstance(v, str):
        raise EvidenceError(f"report: {what} must be a string")
    return v


def _decode_envelope(data: bytes) -> tuple[bytes, str, bytes]:
    if not isinstance(data, bytes | bytearray) or len(data) > MAX_REPORT_BYTES:
        raise EvidenceError(f"report: want at most {MAX_REPORT_BYTES} bytes")
    try:
        env = _strict(decode_canonical(bytes(data)), _ENVELOPE_FIELDS, "the envelope")
    except InvalidInput as exc:
        raise EvidenceError(f"report: not a signed report: {exc}") from None
    if env["encoding"] != REPORT_ENCODING:
        raise EvidenceError(f"report: encoding must be {REPORT_ENCODING}")
    key_id = _str(env["key_id"], "key_id")
    sig = _unhex(env["signature"], "signature")
    return _str(env["body"], "body").encode(), key_id, sig


def _rows(hosts: object) -> tuple[list[HostAck], dict[str, str], list[str]]:
    if not isinstance(hosts, list) or len(hosts) > MAX_HOSTS:
        raise EvidenceError(f"report: hosts must be a list of at most {MAX_HOSTS}")
    rows, claimed, problems = [], {}, []
    seen: set[str] = set()
    for item in hosts:
        h = _strict(item, _ROW_FIELDS, "a host row")
        name = _str(h["host"], "host")
        if name in seen:
            problems.append(f"host {name} is listed twice")
            continue
        seen.add(name)
        if not isinstance(h["verified"], bool):
            raise EvidenceError("report: verified must be true or false")
        claimed[name] = _str(h["status"], "status")
        ack = h["ack"]
        if ack is None:
            if h["verified"]:
                problems.append(f"host {name}: marked verified without an ack")
            rows.append(HostAck(host=name, verified=False, problem=_str(h["problem"], "problem")))
            continue
        a = _strict(ack, _ACK_FIELDS, "an ack")
        rows.append(HostAck(host=name, acked=True, evidence=_str(a["evidence"], "evidence").encode(),
                            signature=_unhex(a["signature"], "ack signature"),
                            certificate=_unb64(a["certificate"], "certificate"),
                            recorded_ns=_int(a["recorded_ns"], "recorded_ns"),
                            verified=h["verified"], problem=_str(h["problem"], "problem")))
    if [r.host for r in rows] != sorted(r.host for r in rows):
        problems.append("hosts are not in order (rows moved)")
    return rows, claimed, problems


def _check_quorum(body: dict[str, Any], result: ReportVerification, pinned_v1: bytes | None) -> Order | None:
    """Verify the order's quorum from the report's own data; note what fails."""
    order_obj = _strict(body["order"], frozenset({"body", "signatures"}), "order")
    order_bytes = _str(order_obj["body"], "order body").encode()
    try:
        order = Order.decode(order_bytes)
    except OrderError as exc:
        result.problems.append(f"order body malformed: {exc}")
        return None
    result.order_id, result.action, result.models = order.id, order.action, order.models
    if body["order_id"] != order.id:
        result.problems.append(f"order id edited: the body hashes to {order.id[:16]}, the report says "
                               f"{str(body['order_id'])[:16]}")
    chain = body["signer_chain"]
    if not isinstance(chain, list) or not chain:
        result.problems.append("the report carries no signer set")
        return order
    try:
        entries = [_strict(e, frozenset({"set", "signatures"}), "a signer-chain entry") for e in chain]
        first = _str(entries[0]["set"], "signer set").encode()
        trusted = TrustedSignerSets.from_pinned_bytes(first)
        result.signer_set_id = trusted.current.id
        if pinned_v1 is not None and first != pinned_v1:
            result.problems.append("signer set version 1 of the report is not the pinned one")
        for e in entries[1:]:
            trusted.update(_str(e["set"], "signer set").encode(),
                           decode_signatures(_str(e["signatures"], "rotation signatures").encode()))
        signer_set: SignerSet = trusted.current
    except CustosError as exc:
        result.problems.append(f"signer-set chain does not verify: {exc}")
        return order
    result.signer_set_version = signer_set.version
    register: DrillRegister | None = None
    reg = _strict(body["drill_register"], frozenset({"body", "signatures"}), "drill_register")
    if _str(reg["body"], "drill register"):
        try:
            register = verify_register(reg["body"].encode(), decode_signatures(
                _str(reg["signatures"], "drill register signatures").encode()), signer_set)
        except CustosError as exc:
            result.problems.append(f"drill register does not verify: {exc}")
    try:
        sigs = decode_signatures(_str(order_obj["signatures"], "order signatures").encode())
    except CustosError as exc:
        result.problems.append(f"order signatures malformed: {exc}")
        return order
    # The quorum as signed: inside its window (at its own issue time), no replay state.
    v = verify_order(order_bytes, sigs, signer_set, now=order.issued_at, state=ExecutedOrders(),
                     drill_register=register)
    result.signed_by = tuple(v.valid)
    if not v:
        result.problems.append("order quorum does not verify: " + "; ".join(f"{f.code}: {f.detail}"
                                                                            for f in v.failures))
    return order


def verify_report(data: bytes, ca_pem: bytes, report_public_key: Ed25519PublicKey, *,
                  pinned_signer_set: bytes | None = None) -> ReportVerification:
    """Verify a signed report file offline, against the CA that issues agent certificates
    and the control plane's report key (and, if given, a pinned signer set version 1).

    Re-verifies every ack's evidence, the order's quorum and the signer-set chain, and
    recomputes each host's status, the counts, the residual list and the verdict; every
    difference is a problem. Never raises for a bad report (see ``problems``); raises
    InvalidInput for an unreadable CA or key argument.
    """
    cas = load_ca_certificates(ca_pem)
    if not isinstance(report_public_key, Ed25519PublicKey):
        raise InvalidInput("the report key must be an Ed25519 public key")
    result = ReportVerification(report_key_id=report_key_id(report_public_key))
    try:
        body_bytes, key_id, signature = _decode_envelope(data)
    except EvidenceError as exc:
        result.problems.append(str(exc))
        return result
    try:
        _verify_body(body_bytes, cas, result, pinned_signer_set)
    except EvidenceError as exc:
        result.problems.append(f"report body malformed: {exc}")
    if key_id != result.report_key_id:
        result.problems.append(f"report signed by another key: key id {key_id[:16]}, the report key is "
                               f"{result.report_key_id[:16]}")
    else:
        try:
            report_public_key.verify(signature, report_signature_input(body_bytes))
        except InvalidSignature:
            result.problems.append("report body edited: the report signature does not verify under the report key")
    return result


def _verify_body(body_bytes: bytes, cas: Sequence[x509.Certificate], result: ReportVerification,
                 pinned_v1: bytes | None) -> None:
    try:
        body = _strict(decode_canonical(body_bytes), _BODY_FIELDS, "the body")
    except InvalidInput as exc:
        raise EvidenceError(str(exc)) from None
    if body["encoding"] != REPORT_ENCODING:
        raise EvidenceError(f"encoding must be {REPORT_ENCODING}")
    result.state, result.signer = _str(body["state"], "state"), _str(body["signer"], "signer")
    for name in ("quorum_at_ns", "completed_at_ns", "made_at_ns"):
        _int(body[name], name)
    order = _check_quorum(body, result, pinned_v1)
    rows, claimed, problems = _rows(body["hosts"])
    result.problems += problems
    dry = _strict(body["dry_run"], frozenset({"artifacts", "models"}), "dry_run")
    if not all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in dry.values()):
        raise EvidenceError("dry_run must list artifact ids and model names")
    copies = body["copies"]
    if not isinstance(copies, list) or not all(isinstance(c, dict) and set(c) == set(_COPY_FIELDS)
                                               for c in copies):
        raise EvidenceError("copies must be a list of copy rows")
    checked = []
    for row in rows:
        if not row.acked:
            checked.append(row)
            continue
        check = verify_ack(row.evidence, row.signature, row.certificate, cas, host=row.host,
                           order_id=result.order_id)
        if row.verified and not check:
            result.problems.append(f"ack of host {row.host}: {check.problem}")
        # Evidence counts only when the control plane verified it on arrival and it verifies here.
        checked.append(replace(row, verified=row.verified and bool(check)))
    if order is None:
        return
    a = assess(order.action, checked, copies)
    result.verdict, result.counts, result.statuses, result.residual = (
        a["verdict"], a["counts"], a["statuses"], a["residual"])
    for host, status in a["statuses"].items():
        if claimed.get(host) != status:
            result.problems.append(f"host {host}: status edited (the report says {claimed.get(host)!r}, "
                                   f"its ack gives {status!r})")
    if body["counts"] != a["counts"]:
        result.problems.append(f"counts edited: the report says {body['counts']}, its acks give {a['counts']}")
    if body["residual"] != a["residual"]:
        result.problems.append("residual list edited: it is not what the acks and copies give")
    if body["verdict"] != a["verdict"]:
        result.problems.append(f"verdict edited: the report says {body['verdict']!r}, its acks give "
                               f"{a['verdict']!r}")
