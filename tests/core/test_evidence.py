"""Signed halt evidence and signed reports (custos.core.evidence), as an attacker would try them.

Acks: every field edited, moved to another host or order, a certificate of another CA, an
expired or not-yet-valid one, another role's, a CA's, another host's key. Reports: the body
edited, an ack edited (and re-signed by a lying control plane), removed or duplicated, the
counts, statuses, residual list or verdict edited, the quorum or the signer-set chain
edited, signed by another key. Hypothesis mutates evidence and report bytes at random:
nothing mutated ever verifies, and nothing raises.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from custos.core.canonical import encode_canonical
from custos.core.drills import DrillRegister
from custos.core.evidence import (
    EVIDENCE_DOMAIN,
    MAX_PATHS,
    AckEvidence,
    ChainEntry,
    EvidenceError,
    HostAck,
    ReportRejected,
    load_ca_certificates,
    report_body,
    report_key_id,
    report_signature_input,
    seal_report,
    sign_evidence,
    sign_report_locally,
    verify_ack,
    verify_report,
)
from custos.core.orders import Order
from custos.core.signers import SignerKey, SignerSet, encode_signatures, sign_raw
from custos.errors import InvalidInput

NOW = dt.datetime(2024, 6, 1, 12, 0, tzinfo=dt.UTC)
NOW_NS = int(NOW.timestamp()) * 1_000_000_000
THRESHOLDS = {"destroy": 4, "drill": 2, "halt": 3, "lift": 3, "rotate": 4}
ARTIFACT = hashlib.sha256(b"artifact").hexdigest()
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _ec(label: str) -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(int.from_bytes(hashlib.sha256(label.encode()).digest()) % (2**255) + 1,
                                 ec.SECP256R1())


def _ed(label: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(label.encode()).digest())


def make_ca(name: str, label: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _ec(f"ca {label}")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(1).not_valid_before(NOW - dt.timedelta(days=365))
            .not_valid_after(NOW + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def make_cert(ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], host: str, key: ec.EllipticCurvePrivateKey, *,
              role: str = "agent", start: dt.datetime = NOW - dt.timedelta(days=1),
              end: dt.datetime = NOW + dt.timedelta(days=29), is_ca: bool = False, serial: int = 7) -> bytes:
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "custos"),
                                     x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                                     x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(ca[0].subject).public_key(key.public_key()).serial_number(serial)
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca[1], hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.DER)


CA = make_ca("Custos test CA", "real")
OTHER_CA = make_ca("Custos test CA", "look-alike")  # the same name, another key
CA_PEM = CA[0].public_bytes(serialization.Encoding.PEM)
CAS = load_ca_certificates(CA_PEM)
KEYS = {h: _ec(f"host {h}") for h in ("gpu-a", "gpu-b", "gpu-c")}
CERTS = {h: make_cert(CA, h, k) for h, k in KEYS.items()}
SIGNERS = [_ed(f"exec{i}") for i in range(1, 6)]
SET = SignerSet.bootstrap([SignerKey.from_ed25519(k.public_key(), name=f"exec{i}")
                           for i, k in enumerate(SIGNERS, 1)], thresholds=THRESHOLDS)
REPORT_KEY = _ed("report key")
ISSUED = int(NOW.timestamp()) - 600


def make_order(action: str = "halt", sequence: int = 10) -> Order:
    return Order.create(action=action, models=["frontier-1"], artifacts=[ARTIFACT], reason="halt for the test",
                        issued_at=ISSUED, sequence=sequence, signer_set_version=1, nonce="ab" * 16)


ORDER = make_order()


def evidence(host: str = "gpu-a", order: Order = ORDER, **changes: Any) -> AckEvidence:
    base = AckEvidence(host=host, order_id=order.id, verified=True, outcome="halted",
                       reason=f"order {order.id[:16]} (halt): halt for the test", pids_stopped=(4242, 4343),
                       paths_wiped=(f"/srv/{host}/w/model.safetensors",), remaining=(), would_stop=(),
                       received_ns=NOW_NS, done_ns=NOW_NS + 5_000_000,
                       cert_sha256=hashlib.sha256(CERTS[host]).hexdigest())
    return replace(base, **changes)


def signed_ack(host: str = "gpu-a", *, key_of: str | None = None, cert: bytes | None = None,
               ev: AckEvidence | None = None) -> tuple[bytes, bytes, bytes]:
    ev = ev or evidence(host)
    data, sig = sign_evidence(ev, KEYS[key_of or host])
    return data, sig, CERTS[host] if cert is None else cert


# -- evidence encoding ----------------------------------------------------------------


def test_evidence_is_canonical_and_decodes_to_itself() -> None:
    ev = evidence()
    data = ev.encode()
    assert AckEvidence.decode(data) == ev
    assert ev.signature_input() == EVIDENCE_DOMAIN + data
    assert json.loads(data)["encoding"] == 1


# Known answer: any change to the encoding of version 1 fails here (add encoding 2 instead).
VECTOR = AckEvidence(host="gpu-17", order_id="c1dfd5e0d0c308605eaca875278ec2f6b84317d4a51b207dc64cf72130f660db",
                     verified=True, outcome="halted", reason="order c1dfd5e0d0c30860 (halt): test",
                     pids_stopped=(4242,), paths_wiped=("/var/lib/custos/run/w-1/model.safetensors",), remaining=(),
                     would_stop=(), received_ns=1700000000000000000, done_ns=1700000000250000000,
                     cert_sha256="ab" * 32)
VECTOR_BYTES = (
    b'{"cert_sha256":"abababababababababababababababababababababababababababababababab","done_ns":1700000000250000000,'
    b'"encoding":1,"host":"gpu-17","order_id":"c1dfd5e0d0c308605eaca875278ec2f6b84317d4a51b207dc64cf72130f660db",'
    b'"outcome":"halted","paths_wiped":["/var/lib/custos/run/w-1/model.safetensors"],"pids_stopped":[4242],'
    b'"reason":"order c1dfd5e0d0c30860 (halt): test","received_ns":1700000000000000000,"remaining":[],'
    b'"verified":true,"would_stop":[]}')


def test_the_encoding_of_version_1_is_fixed() -> None:
    assert VECTOR.encode() == VECTOR_BYTES
    assert VECTOR.signature_input() == b"custos.v1.ack-evidence\x00" + VECTOR_BYTES
    assert report_signature_input(b"{}") == b"custos.v1.order-report\x00{}"


BAD_EVIDENCE: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
    ("extra field", lambda d: {**d, "extra": 1}),
    ("missing field", lambda d: {k: v for k, v in d.items() if k != "reason"}),
    ("encoding 2", lambda d: {**d, "encoding": 2}),
    ("bad host", lambda d: {**d, "host": "GPU A"}),
    ("bad order id", lambda d: {**d, "order_id": "xyz"}),
    ("verified not bool", lambda d: {**d, "verified": 1}),
    ("unknown outcome", lambda d: {**d, "outcome": "probably-halted"}),
    ("pid zero", lambda d: {**d, "pids_stopped": [0]}),
    ("pid bool", lambda d: {**d, "pids_stopped": [True]}),
    ("pid too big", lambda d: {**d, "pids_stopped": [2**31]}),
    ("path not str", lambda d: {**d, "paths_wiped": [7]}),
    ("too many paths", lambda d: {**d, "paths_wiped": ["/x"] * (MAX_PATHS + 1)}),
    ("item too long", lambda d: {**d, "remaining": ["x" * 5000]}),
    ("done before received", lambda d: {**d, "done_ns": d["received_ns"] - 1}),
    ("no done time", lambda d: {**d, "done_ns": 0, "received_ns": 0}),
    ("negative time", lambda d: {**d, "received_ns": -1}),
    ("bad fingerprint", lambda d: {**d, "cert_sha256": "AB" * 32}),
    ("reason too long", lambda d: {**d, "reason": "x" * 2001}),
    ("not an object", lambda d: [d]),
]


@pytest.mark.parametrize(("name", "mutate"), BAD_EVIDENCE, ids=[n for n, _ in BAD_EVIDENCE])
def test_malformed_evidence_is_refused_with_a_clear_error(name: str, mutate: Callable[[dict[str, Any]], Any]) -> None:
    data = encode_canonical(mutate(evidence().to_json()))
    with pytest.raises(EvidenceError):
        AckEvidence.decode(data)
    ok = verify_ack(data, b"\x30" * 70, CERTS["gpu-a"], CAS, host="gpu-a", order_id=ORDER.id)
    assert not ok and ok.problem.startswith("evidence malformed")


def test_non_canonical_evidence_is_refused() -> None:
    pretty = json.dumps(evidence().to_json(), indent=1, sort_keys=True).encode()
    with pytest.raises(EvidenceError, match="canonical"):
        AckEvidence.decode(pretty)


def test_bounded_evidence_cuts_lists_and_says_so() -> None:
    ev = AckEvidence.bounded(host="gpu-a", order_id=ORDER.id, verified=True, outcome="halted", reason="r" * 5000,
                             pids_stopped=[0, *range(1, 10_050)], paths_wiped=["/p" * 3000] + ["/q"] * 10_005,
                             remaining=["left"] * 2000, would_stop=[], received_ns=5, done_ns=1,
                             cert_sha256="ab" * 32)
    assert len(ev.pids_stopped) == 10_000 and len(ev.paths_wiped) == 10_000 and len(ev.reason) == 2000
    assert ev.done_ns == 5  # never before it was received
    notes = [r for r in ev.remaining if r.startswith("evidence truncated")]
    assert any("stopped pids" in n for n in notes) and any("wiped paths" in n for n in notes)
    assert any("remaining copies" in n for n in notes)
    assert AckEvidence.decode(ev.encode()) == ev


# -- ack verification -----------------------------------------------------------------


def test_a_signed_ack_verifies() -> None:
    check = verify_ack(*signed_ack(), CAS, host="gpu-a", order_id=ORDER.id)
    assert check and check.evidence == evidence()


_OTHER: dict[str, Any] = {
          "host": "gpu-b", "order_id": make_order(sequence=11).id, "verified": False, "outcome": "refused",
          "reason": "another reason", "pids_stopped": (4242,), "paths_wiped": (), "remaining": ("left behind",),
          "would_stop": ("stop pid 1",), "received_ns": NOW_NS + 1, "done_ns": NOW_NS + 6_000_000,
          "cert_sha256": hashlib.sha256(CERTS["gpu-b"]).hexdigest()}


@pytest.mark.parametrize("field", sorted(_OTHER))
def test_every_field_of_an_ack_edited_fails(field: str) -> None:
    _, sig, cert = signed_ack()
    edited = replace(evidence(), **{field: _OTHER[field]}).encode()
    check = verify_ack(edited, sig, cert, CAS, host="gpu-a", order_id=ORDER.id)
    assert not check, field
    if field not in ("host", "order_id", "cert_sha256"):
        assert check.problem == "signature does not verify"


@SETTINGS
@given(st.data())
def test_any_byte_of_the_evidence_or_signature_flipped_fails(data: st.DataObject) -> None:
    ev, sig, cert = SIGNED  # one signature: ECDSA signatures are randomized, and so are their lengths
    which = data.draw(st.sampled_from(["evidence", "signature"]))
    blob = bytearray(ev if which == "evidence" else sig)
    i = data.draw(st.integers(0, len(blob) - 1))
    blob[i] ^= data.draw(st.integers(1, 255))
    args = (bytes(blob), sig) if which == "evidence" else (ev, bytes(blob))
    assert not verify_ack(*args, cert, CAS, host="gpu-a", order_id=ORDER.id)


SIGNED = signed_ack()


def _expired() -> tuple[bytes, bytes, bytes]:
    cert = make_cert(CA, "gpu-a", KEYS["gpu-a"], start=NOW - dt.timedelta(days=30), end=NOW - dt.timedelta(days=1))
    return signed_ack(cert=cert, ev=evidence(cert_sha256=hashlib.sha256(cert).hexdigest()))


def _not_yet_valid() -> tuple[bytes, bytes, bytes]:
    cert = make_cert(CA, "gpu-a", KEYS["gpu-a"], start=NOW + dt.timedelta(days=1), end=NOW + dt.timedelta(days=30))
    return signed_ack(cert=cert, ev=evidence(cert_sha256=hashlib.sha256(cert).hexdigest()))


def _cert_variant(**kw: Any) -> tuple[bytes, bytes, bytes]:
    ca = kw.pop("ca", CA)
    cert = make_cert(ca, kw.pop("cn", "gpu-a"), KEYS["gpu-a"], **kw)
    return signed_ack(cert=cert, ev=evidence(cert_sha256=hashlib.sha256(cert).hexdigest()))


def _another_hosts_key() -> tuple[bytes, bytes, bytes]:
    # gpu-b's key signs evidence that claims gpu-a, with gpu-a's certificate attached.
    data, sig = sign_evidence(evidence(), KEYS["gpu-b"])
    return data, sig, CERTS["gpu-a"]


def _another_hosts_key_and_cert() -> tuple[bytes, bytes, bytes]:
    # gpu-b signs "gpu-a halted" with its own key and certificate.
    ev = evidence(cert_sha256=hashlib.sha256(CERTS["gpu-b"]).hexdigest())
    data, sig = sign_evidence(ev, KEYS["gpu-b"])
    return data, sig, CERTS["gpu-b"]


def _cert_swapped() -> tuple[bytes, bytes, bytes]:
    data, sig, _ = signed_ack()
    return data, sig, CERTS["gpu-b"]


ACK_ATTACKS: list[tuple[str, Callable[[], tuple[bytes, bytes, bytes]], str, str]] = [
    # (name, make (evidence, signature, certificate), verify as host, expected problem)
    ("moved-to-another-host", signed_ack, "gpu-b", "names host 'gpu-a', not 'gpu-b'"),
    ("cert-from-another-ca", lambda: _cert_variant(ca=OTHER_CA), "gpu-a", "not issued by the given CA"),
    ("expired-cert", _expired, "gpu-a", "not valid at the ack's time"),
    ("not-yet-valid-cert", _not_yet_valid, "gpu-a", "not valid at the ack's time"),
    ("another-role", lambda: _cert_variant(role="executive"), "gpu-a", "role executive"),
    ("ca-certificate-as-leaf", lambda: _cert_variant(is_ca=True), "gpu-a", "CA certificate"),
    ("cert-for-another-name", lambda: _cert_variant(cn="gpu-z"), "gpu-a", "certificate is for gpu-z"),
    ("signature-by-another-hosts-key", _another_hosts_key, "gpu-a", "signature does not verify"),
    ("another-hosts-key-and-cert", _another_hosts_key_and_cert, "gpu-a", "certificate is for gpu-b"),
    ("certificate-swapped", _cert_swapped, "gpu-a", "not the one the evidence names"),
    ("signature-missing", lambda: (signed_ack()[0], b"", CERTS["gpu-a"]), "gpu-a", "signature missing"),
    ("certificate-missing", lambda: (*signed_ack()[:2], b""), "gpu-a", "certificate missing"),
    ("certificate-garbage", lambda: (*signed_ack()[:2], b"\x30\x03\x02\x01\x00"), "gpu-a", "unreadable"),
    ("unsigned", lambda: (b"", b"", b""), "gpu-a", "no evidence"),
]


@pytest.mark.parametrize(("name", "make", "as_host", "problem"), ACK_ATTACKS, ids=[a[0] for a in ACK_ATTACKS])
def test_ack_attacks_fail_with_the_reason(name: str, make: Callable[[], tuple[bytes, bytes, bytes]], as_host: str,
                                          problem: str) -> None:
    check = verify_ack(*make(), CAS, host=as_host, order_id=ORDER.id)
    assert not check and problem in check.problem, (name, check.problem)


def test_evidence_of_another_order_fails() -> None:
    check = verify_ack(*signed_ack(), CAS, host="gpu-a", order_id=make_order(sequence=11).id)
    assert not check and "evidence is of order" in check.problem


def test_a_bundle_with_the_right_ca_verifies_and_an_empty_or_junk_ca_is_a_clear_error() -> None:
    bundle = OTHER_CA[0].public_bytes(serialization.Encoding.PEM) + CA_PEM
    assert verify_ack(*signed_ack(), load_ca_certificates(bundle), host="gpu-a", order_id=ORDER.id)
    for junk in (b"", b"not a pem"):
        with pytest.raises(InvalidInput):
            load_ca_certificates(junk)


# -- reports ----------------------------------------------------------------------------


def sigs(order: Order, n: int = 3) -> bytes:
    return encode_signatures([order.sign(k) for k in SIGNERS[:n]])


@dataclass
class World:
    """What the control plane would have stored: the order and each host's row."""

    order: Order
    signatures: bytes
    rows: list[HostAck]
    copies: list[dict[str, Any]]

    def body(self, **kw: Any) -> bytes:
        return report_body(order_body=self.order.encode(), order_signatures=self.signatures,
                           signer_chain=[ChainEntry(set=SET.encode(), signatures=b"[]")], drill_register=(b"", b""),
                           dry_run={"artifacts": [], "models": []}, state="complete", quorum_at_ns=NOW_NS,
                           completed_at_ns=NOW_NS + 10**9, made_at_ns=NOW_NS + 2 * 10**9, rows=self.rows,
                           copies=self.copies, signer="local key file (DEVELOPMENT ONLY)", **kw)

    def file(self, key: Ed25519PrivateKey = REPORT_KEY) -> bytes:
        return sign_report_locally(self.body(), key)


def row(host: str, **kw: Any) -> HostAck:
    data, sig, cert = signed_ack(host, ev=kw.pop("ev", None) or evidence(host))
    return HostAck(host=host, acked=True, evidence=data, signature=sig, certificate=cert,
                   recorded_ns=NOW_NS + 10**7, verified=True, **kw)


def world() -> World:
    copies = [{"artifact_id": ARTIFACT, "evidence": f"order {ORDER.id[:16]}: plaintext wiped", "form": "plaintext",
               "host": h, "location": f"{h}:/srv/{h}/w", "location_kind": "host-path", "model": "frontier-1",
               "state": "wiped"} for h in ("gpu-a", "gpu-b")]
    return World(order=ORDER, signatures=sigs(ORDER), rows=[row("gpu-a"), row("gpu-b")], copies=copies)


def verify(data: bytes, **kw: Any) -> Any:
    return verify_report(data, CA_PEM, REPORT_KEY.public_key(), **kw)


def test_a_signed_report_verifies_and_says_what_was_proven() -> None:
    v = verify(world().file())
    assert v, v.problems
    assert v.verdict == "complete" and v.statuses == {"gpu-a": "halted", "gpu-b": "halted"}
    assert v.counts == {"acked": 2, "halted": 2, "hosts": 2, "residual": 0, "verified": 2}
    assert v.order_id == ORDER.id and v.action == "halt" and len(v.signed_by) == 3
    assert v.signer_set_id == SET.id and v.report_key_id == report_key_id(REPORT_KEY.public_key())
    v.raise_if_invalid()


def test_residual_copies_and_hosts_without_evidence_make_it_incomplete_not_invalid() -> None:
    w = world()
    w.rows = [row("gpu-a", ev=evidence("gpu-a", remaining=("/data/x: not managed by this agent",))),
              HostAck(host="gpu-b", acked=True, verified=False, problem="unsigned: the ack carries no evidence",
                      recorded_ns=NOW_NS),
              HostAck(host="gpu-c", problem="unreachable (lease lapsed)")]
    w.copies[1]["state"] = "residual"
    v = verify(w.file())
    assert v, v.problems
    assert v.verdict == "incomplete"
    assert v.statuses == {"gpu-a": "halted", "gpu-b": "unverified", "gpu-c": "no-ack"}
    assert v.counts == {"acked": 2, "halted": 1, "hosts": 3, "residual": 4, "verified": 1}
    assert "host gpu-a: /data/x: not managed by this agent" in v.residual
    assert any(r.startswith("host gpu-b: ack without verified evidence") for r in v.residual)
    assert "host gpu-c: no ack" in v.residual
    assert any(r.startswith("copy gpu-b:/srv/gpu-b/w") for r in v.residual)


def test_evidence_the_control_plane_did_not_verify_is_never_counted() -> None:
    """A valid signature under a certificate the host's record no longer accepts (the control
    plane said so on arrival) stays unverified offline too: not a halt."""
    w = world()
    w.rows[1] = replace(w.rows[1], verified=False, problem="signed with a revoked certificate")
    v = verify(w.file())
    assert v and v.statuses["gpu-b"] == "unverified" and v.verdict == "incomplete"


@pytest.mark.parametrize(("signature", "certificate"), [(b"\x01", b"\x02"), (b"\xff" * 512, b"\x30" * 16384),
                                                       (b"", b"")])
def test_one_hosts_junk_cannot_spoil_the_report_of_the_others(signature: bytes, certificate: bytes) -> None:
    w = world()
    w.rows[1] = replace(w.rows[1], signature=signature, certificate=certificate, verified=False,
                        problem="signature does not verify")
    v = verify(w.file())
    assert v, v.problems
    assert v.statuses == {"gpu-a": "halted", "gpu-b": "unverified"}


def test_a_refused_order_is_not_a_halt() -> None:
    w = world()
    w.rows = [row("gpu-a", ev=evidence("gpu-a", outcome="refused", verified=False)), row("gpu-b")]
    v = verify(w.file())
    assert v and v.statuses["gpu-a"] == "refused" and v.verdict == "incomplete"


def _resign(data: bytes, edit: Callable[[dict[str, Any]], None], key: Ed25519PrivateKey = REPORT_KEY) -> bytes:
    """What a control plane that holds the report key could make: an edited body, signed again."""
    body = json.loads(json.loads(data)["body"])
    edit(body)
    raw = encode_canonical(body)
    return seal_report(raw, signature=key.sign(report_signature_input(raw)), public_key=key.public_key())


def _edit_file(data: bytes, edit: Callable[[dict[str, Any]], None]) -> bytes:
    """An edit of the file by anyone (not signed again)."""
    env = json.loads(data)
    body = json.loads(env["body"])
    edit(body)
    env["body"] = encode_canonical(body).decode()
    return encode_canonical(env)


def _ack_field(host: str, field: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(body: dict[str, Any]) -> None:
        row = next(r for r in body["hosts"] if r["host"] == host)
        ev = json.loads(row["ack"]["evidence"])
        ev[field] = value
        row["ack"]["evidence"] = encode_canonical(ev).decode()
    return edit


def _set(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(body: dict[str, Any]) -> None:
        obj = body
        for p in path[:-1]:
            obj = obj[p]
        obj[path[-1]] = value
    return edit


def _drop_ack(body: dict[str, Any]) -> None:
    body["hosts"][1]["ack"] = None


def _drop_host(body: dict[str, Any]) -> None:
    del body["hosts"][1]


def _dup_host(body: dict[str, Any]) -> None:
    body["hosts"].append(body["hosts"][0])


def _swap_acks(body: dict[str, Any]) -> None:
    a, b = body["hosts"][0]["ack"], body["hosts"][1]["ack"]
    body["hosts"][0]["ack"], body["hosts"][1]["ack"] = b, a


def _below_quorum(body: dict[str, Any]) -> None:
    body["order"]["signatures"] = sigs(ORDER, 2).decode()


def _other_order(body: dict[str, Any]) -> None:
    other = make_order(sequence=12)
    body["order"] = {"body": other.encode().decode(), "signatures": sigs(other).decode()}


def _foreign_signer_set(body: dict[str, Any]) -> None:
    # An attacker's own set of five keys (it signs the order itself) replacing version 1.
    mine = [_ed(f"attacker{i}") for i in range(5)]
    fake = SignerSet.bootstrap([SignerKey.from_ed25519(k.public_key(), name=f"a{i}") for i, k in enumerate(mine)],
                               thresholds=THRESHOLDS)
    body["signer_chain"] = [{"set": fake.encode().decode(), "signatures": "[]"}]
    body["order"]["signatures"] = encode_signatures([ORDER.sign(k) for k in mine[:3]]).decode()


def _unsigned_ack_claimed_verified(body: dict[str, Any]) -> None:
    r = body["hosts"][1]
    r["ack"] = {"certificate": "", "evidence": "", "recorded_ns": 5, "signature": ""}


# (name, edit, the problem verify-report must name)
REPORT_EDITS: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("ack-outcome", _ack_field("gpu-a", "outcome", "refused"), "ack of host gpu-a: signature does not verify"),
    ("ack-paths-wiped", _ack_field("gpu-b", "paths_wiped", ["/everything"]),
     "ack of host gpu-b: signature does not verify"),
    ("ack-remaining-added", _ack_field("gpu-a", "remaining", ["x"]), "ack of host gpu-a: signature does not verify"),
    ("ack-pids", _ack_field("gpu-a", "pids_stopped", [1]), "ack of host gpu-a: signature does not verify"),
    ("ack-done-time", _ack_field("gpu-a", "done_ns", NOW_NS + 1), "ack of host gpu-a: signature does not verify"),
    ("ack-signature", _set(["hosts", 0, "ack", "signature"], "30" * 35), "ack of host gpu-a:"),
    ("ack-removed", _drop_ack, "status edited"),
    ("host-removed", _drop_host, "counts edited"),
    ("host-duplicated", _dup_host, "listed twice"),
    ("acks-swapped-between-hosts", _swap_acks, "ack of host gpu-a: evidence names host 'gpu-b'"),
    ("unsigned-ack-claimed-verified", _unsigned_ack_claimed_verified, "ack of host gpu-b: unsigned"),
    ("counts", _set(["counts", "halted"], 3), "counts edited"),
    ("verdict", _set(["verdict"], "incomplete"), "verdict edited"),
    ("status", _set(["hosts", 0, "status"], "refused"), "host gpu-a: status edited"),
    ("residual-added", _set(["residual"], ["host gpu-a: nothing"]), "residual list edited"),
    ("quorum-below-threshold", _below_quorum, "order quorum does not verify"),
    ("order-replaced", _other_order, "order id edited"),
    ("order-id", _set(["order_id"], "00" * 32), "order id edited"),
    ("foreign-signer-set-pinned", _foreign_signer_set, "not the pinned one"),
    ("signer-set-garbage", _set(["signer_chain", 0, "set"], "{}"), "signer-set chain does not verify"),
    ("encoding", _set(["encoding"], 2), "encoding must be 1"),
]


@pytest.mark.parametrize(("name", "edit", "problem"), REPORT_EDITS, ids=[e[0] for e in REPORT_EDITS])
def test_an_edited_report_fails(name: str, edit: Callable[[dict[str, Any]], None], problem: str) -> None:
    original = world().file()
    # Edited by anyone: the report signature fails (and the edit is named where it can be).
    v = verify(_edit_file(original, edit), pinned_signer_set=SET.encode())
    assert not v and "report body edited: the report signature does not verify under the report key" in v.problems
    # Edited and signed again by a control plane that lies: the acks and the quorum still catch it.
    v = verify(_resign(original, edit), pinned_signer_set=SET.encode())
    assert not v and any(problem in p for p in v.problems), (name, v.problems)
    with pytest.raises(ReportRejected):
        v.raise_if_invalid()


def test_residual_copies_cannot_be_hidden() -> None:
    w = world()
    w.rows[0] = row("gpu-a", ev=evidence("gpu-a", remaining=("/data/x: not managed by this agent",)))
    original = w.file()
    assert verify(original).verdict == "incomplete"

    def hide(body: dict[str, Any]) -> None:
        _ack_field("gpu-a", "remaining", [])(body)
        body["residual"], body["verdict"] = [], "complete"
        body["counts"]["residual"] = 0
    v = verify(_resign(original, hide))
    assert not v and "ack of host gpu-a: signature does not verify" in v.problems
    assert v.verdict == "incomplete"  # recomputed: the edited ack is not evidence


def test_a_report_signed_by_another_key_fails() -> None:
    other = _ed("another control plane")
    v = verify(world().file(key=other))
    assert not v and any(p.startswith("report signed by another key") for p in v.problems)
    # The key id edited to the real one: then the signature itself fails.
    env = json.loads(world().file(key=other))
    env["key_id"] = report_key_id(REPORT_KEY.public_key())
    v = verify(encode_canonical(env))
    assert not v and any(p.startswith("report body edited") for p in v.problems)


def test_a_report_is_checked_against_the_ca_given() -> None:
    v = verify_report(world().file(), OTHER_CA[0].public_bytes(serialization.Encoding.PEM), REPORT_KEY.public_key())
    assert not v and "ack of host gpu-a: certificate not issued by the given CA" in v.problems


def test_a_drill_report_verifies_with_its_register_and_not_without() -> None:
    """Thresholds cannot be borrowed offline either: a 2-key drill counts only with the signed
    register that declares its scope."""
    register = DrillRegister(version=1, signer_set_version=1, models=("frontier-1",), artifacts=(ARTIFACT,))
    reg_sigs = encode_signatures([register.sign(k) for k in SIGNERS[:4]])
    drill = make_order("drill", sequence=30)
    rows = [row("gpu-a", ev=evidence("gpu-a", order=drill))]

    def file(reg: tuple[bytes, bytes]) -> bytes:
        body = report_body(order_body=drill.encode(), order_signatures=sigs(drill, 2),
                           signer_chain=[ChainEntry(set=SET.encode(), signatures=b"[]")], drill_register=reg,
                           dry_run={"artifacts": [], "models": ["prod-1"]}, state="complete", quorum_at_ns=1,
                           completed_at_ns=2, made_at_ns=3, rows=rows, copies=[], signer="test")
        return sign_report_locally(body, REPORT_KEY)

    v = verify(file((register.encode(), reg_sigs)))
    assert v and v.action == "drill" and v.statuses == {"gpu-a": "halted"}, v.problems
    v = verify(file((b"", b"")))
    assert not v and any("order quorum does not verify" in p and "not_drill" in p for p in v.problems)
    v = verify(file((register.encode(), encode_signatures([register.sign(k) for k in SIGNERS[:2]]))))
    assert not v and any("drill register does not verify" in p for p in v.problems)


def _rotation(signers: list[Ed25519PrivateKey], new: SignerSet) -> bytes:
    return encode_signatures([sign_raw(k, new.signature_input()) for k in signers])


def test_a_rotated_signer_set_chain_verifies_and_a_broken_one_does_not() -> None:
    v2 = SET.successor(list(SET.keys))
    order = Order.create(action="halt", models=["frontier-1"], artifacts=[ARTIFACT], reason="after rotation",
                         issued_at=ISSUED, sequence=20, signer_set_version=2, nonce="cd" * 16)
    rows = [row("gpu-a", ev=evidence("gpu-a", order=order))]

    def file(rotation: bytes) -> bytes:
        chain = [ChainEntry(set=SET.encode(), signatures=b"[]"), ChainEntry(set=v2.encode(), signatures=rotation)]
        body = report_body(order_body=order.encode(), order_signatures=sigs(order), signer_chain=chain,
                           drill_register=(b"", b""), dry_run={}, state="executing", quorum_at_ns=1,
                           completed_at_ns=0, made_at_ns=2, rows=rows, copies=[], signer="test")
        return sign_report_locally(body, REPORT_KEY)

    v = verify(file(_rotation(SIGNERS[:4], v2)), pinned_signer_set=SET.encode())
    assert v and v.signer_set_version == 2, v.problems
    v = verify(file(_rotation(SIGNERS[:2], v2)))  # below the rotate threshold of version 1
    assert not v and any("signer-set chain does not verify" in p for p in v.problems)


WORLD_FILE = world().file()


@SETTINGS
@given(st.data())
def test_any_mutation_of_a_report_file_fails_and_never_raises(data: st.DataObject) -> None:
    original = WORLD_FILE
    blob = bytearray(original)
    for i in data.draw(st.sets(st.integers(0, len(blob) - 1), min_size=1, max_size=3)):
        blob[i] ^= data.draw(st.integers(1, 255))
    v = verify(bytes(blob))
    assert not v and v.problems


@pytest.mark.parametrize("junk", [b"", b"{}", b"[]", b"null", b"\xff" * 10, b'{"body":"x","encoding":1,"key_id":"",'
                                  b'"signature":""}', WORLD_FILE + b" "])
def test_junk_is_refused_cleanly(junk: bytes) -> None:
    v = verify(junk)
    assert not v and v.problems


def test_certificates_in_the_report_are_canonical_base64() -> None:
    body = json.loads(json.loads(WORLD_FILE)["body"])
    assert base64.b64decode(body["hosts"][0]["ack"]["certificate"]) == CERTS["gpu-a"]
    edited = _resign(WORLD_FILE, _set(["hosts", 0, "ack", "certificate"],
                                      body["hosts"][0]["ack"]["certificate"] + "\n"))
    v = verify(edited)
    assert not v and any("base64" in p for p in v.problems)
