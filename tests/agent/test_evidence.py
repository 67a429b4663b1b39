"""The agent signs every ack with its host key (custos.agent.evidence): executions, refusals
and replays; it reloads the key after a certificate renewal; without a usable key the ack
goes out unsigned (and the control plane counts it as no evidence); the key is never logged."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from custos.agent.enroll import RENEW_KEY, install_renewed, make_key_and_csr
from custos.agent.evidence import AckSigner
from custos.agent.halt import HaltEvidence
from custos.agent.orders import VerifyingOrderHandler
from custos.controlplane.pki import CertificateAuthority, sign_agent_csr
from custos.core.evidence import AckEvidence, load_ca_certificates, verify_ack
from custos.core.orders import order_id_of
from custos.core.signers import encode_signatures
from custos.fs.private import private_dir, write_private
from custos.v1 import custody_pb2
from tests.core.order_cases import inputs as make_inputs
from tests.core.order_cases import make_order, panel

HOST = "gpu-ev1"
CA = CertificateAuthority.create("evidence test CA")
CAS = load_ca_certificates(CA.cert.public_bytes(serialization.Encoding.PEM))


def issue(name: str, ttl: float = 3600.0) -> tuple[bytes, bytes]:
    key_pem, csr_pem = make_key_and_csr(name)
    cert = sign_agent_csr(CA, x509.load_pem_x509_csr(csr_pem), name, ttl_seconds=ttl)
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def enroll_dir(state: Path, name: str = HOST, *, cert_for: str | None = None) -> Path:
    ident = private_dir(private_dir(state) / "identity")
    cert, key = issue(cert_for or name)
    write_private(ident / "agent.key", key)
    write_private(ident / "agent.pem", cert, mode=0o644)
    return ident


@dataclass
class _Identity:
    signer_set: bytes


@dataclass
class _Cfg:
    state_dir: Path
    name: str = HOST
    cert_file: Path | None = None
    key_file: Path | None = None


@dataclass
class Agent:
    cfg: _Cfg
    identity: _Identity
    halts: list[set[str]] = field(default_factory=list)

    async def halt_local(self, scope: set[str], *, reason: str, dry_run: bool = False,
                         drill: bool = False) -> HaltEvidence:
        self.halts.append(set(scope))
        return HaltEvidence(scope=tuple(sorted(scope)), reason=reason, dry_run=dry_run, pids_stopped=(4242,),
                            paths_wiped=("/run/w-1/model.safetensors",), remaining=("/data/x: not managed",),
                            done_unix_ns=time.time_ns())

    async def lift_local(self, scope: set[str]) -> None:
        return None


def signed_order(i: object) -> custody_pb2.SignedOrder:
    return custody_pb2.SignedOrder(
        body=i.order_bytes,  # type: ignore[attr-defined]
        signatures=[custody_pb2.OrderSignature(key_id=s.key_id, signature=s.sig.encode())
                    for s in i.signatures],  # type: ignore[attr-defined]
        drill_register=i.register_bytes,  # type: ignore[attr-defined]
        drill_register_signatures=encode_signatures(i.register_signatures))  # type: ignore[attr-defined]


def check(ack: custody_pb2.OrderAck, host: str = HOST) -> AckEvidence:
    c = verify_ack(ack.evidence, ack.evidence_signature, ack.host_certificate, CAS, host=host, order_id=ack.order_id)
    assert c and c.evidence is not None, c.problem
    ev = c.evidence
    # The ack says exactly what is signed.
    assert (ev.outcome, ev.verified, ev.reason) == (ack.outcome, ack.verified, ack.reason)
    assert (list(ev.pids_stopped), list(ev.paths_wiped), list(ev.remaining), list(ev.would_stop)) == (
        list(ack.pids_stopped), list(ack.paths_wiped), list(ack.remaining), list(ack.would_stop))
    assert (ev.received_ns, ev.done_ns) == (ack.received_unix_ns, ack.done_unix_ns)
    return ev


def test_executions_refusals_and_replays_are_all_signed(tmp_path: Path) -> None:
    enroll_dir(tmp_path)
    p = panel("ed25519")
    order = make_order("halt")
    good = make_inputs(order.encode(), p.sign_order(order), p, now=int(time.time()))
    agent = Agent(cfg=_Cfg(tmp_path), identity=_Identity(p.signer_set.encode()))
    handler = VerifyingOrderHandler(agent, clock=lambda: order.issued_at + 10)
    now = time.time_ns()
    done = asyncio.run(handler.handle(signed_order(good), received_unix_ns=now))
    ev = check(done)
    assert ev.outcome == "halted" and ev.pids_stopped == (4242,) and ev.order_id == order.id
    again = asyncio.run(handler.handle(signed_order(good), received_unix_ns=time.time_ns()))
    assert check(again).outcome == "already-executed"
    under = make_order("halt", sequence=order.sequence + 1)
    weak = make_inputs(under.encode(), p.sign_order(under, 1), p)
    refused = asyncio.run(handler.handle(signed_order(weak), received_unix_ns=time.time_ns()))
    ev = check(refused)
    assert ev.outcome == "refused" and not ev.verified and ev.order_id == order_id_of(under.encode())
    junk = asyncio.run(handler.handle(custody_pb2.SignedOrder(body=b"not an order"), received_unix_ns=1))
    assert junk.outcome == "refused" and check(junk).order_id == order_id_of(b"not an order")
    assert handler.signer.signed == 4 and handler.signer.unsigned == 0


def test_the_key_is_reloaded_after_a_renewal(tmp_path: Path) -> None:
    ident = enroll_dir(tmp_path)
    signer = AckSigner(host=HOST, cert_file=ident / "agent.pem", key_file=ident / "agent.key")

    def ack() -> custody_pb2.OrderAck:
        t = time.time_ns()
        return signer.sign(custody_pb2.OrderAck(order_id="ab" * 32, verified=True, outcome="halted",
                                                received_unix_ns=t, done_unix_ns=t))

    first = check(ack())
    assert check(ack()).cert_sha256 == first.cert_sha256
    # A renewal as custos.agent.renew makes it: the new key on disk first, then both renamed in.
    cert_pem, key_pem = issue(HOST)
    write_private(ident / RENEW_KEY, key_pem)
    install_renewed(ident, cert_pem)
    renewed = check(ack())
    assert renewed.cert_sha256 != first.cert_sha256
    assert x509.load_der_x509_certificate(ack().host_certificate).public_bytes(serialization.Encoding.PEM) == cert_pem


def test_an_operator_certificate_signs_when_configured(tmp_path: Path) -> None:
    cert, key = issue(HOST)
    (tmp_path / "op.pem").write_bytes(cert)
    write_private(tmp_path / "op.key", key)
    agent = Agent(cfg=_Cfg(tmp_path / "state", cert_file=tmp_path / "op.pem", key_file=tmp_path / "op.key"),
                  identity=_Identity(b""))
    signer = AckSigner.for_agent(agent)
    t = time.time_ns()
    assert check(signer.sign(custody_pb2.OrderAck(order_id="", outcome="refused", received_unix_ns=t,
                                                  done_unix_ns=t)))


@pytest.mark.parametrize("setup", ["not-enrolled", "cert-of-another-host", "key-of-another-cert", "garbage-key"])
def test_without_a_usable_key_the_ack_goes_unsigned_and_the_key_is_never_logged(
        setup: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ident = tmp_path / "identity"
    if setup != "not-enrolled":
        ident = enroll_dir(tmp_path, cert_for="gpu-other" if setup == "cert-of-another-host" else None)
    if setup == "key-of-another-cert":
        write_private(ident / "agent.key", issue(HOST)[1])
    if setup == "garbage-key":
        write_private(ident / "agent.key", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    signer = AckSigner(host=HOST, cert_file=ident / "agent.pem", key_file=ident / "agent.key")
    caplog.set_level(logging.DEBUG)
    for _ in range(3):
        ack = signer.sign(custody_pb2.OrderAck(order_id="ab" * 32, outcome="halted", done_unix_ns=1))
        assert not ack.evidence and not ack.evidence_signature and not ack.host_certificate
    assert signer.unsigned == 3
    errors = [r for r in caplog.records if r.name == "custos.agent.evidence"]
    assert len(errors) == 1  # once per cause, not per ack
    text = caplog.text + repr([r.__dict__ for r in caplog.records])
    assert "PRIVATE KEY" not in text
    if (ident / "agent.key").exists():
        key = (ident / "agent.key").read_bytes()
        for line in key.decode().splitlines()[1:-1]:
            assert line not in text


def test_lists_beyond_the_limits_are_cut_and_the_ack_matches_what_is_signed(tmp_path: Path) -> None:
    ident = enroll_dir(tmp_path)
    signer = AckSigner(host=HOST, cert_file=ident / "agent.pem", key_file=ident / "agent.key")
    t = time.time_ns()
    ack = signer.sign(custody_pb2.OrderAck(order_id="ab" * 32, verified=True, outcome="halted",
                                           paths_wiped=[f"/run/w/{i}" for i in range(10_100)],
                                           remaining=["x" * 5000], received_unix_ns=t, done_unix_ns=t))
    ev = check(ack)
    assert len(ev.paths_wiped) == 10_000 and any("100 wiped paths not listed" in r for r in ev.remaining)
