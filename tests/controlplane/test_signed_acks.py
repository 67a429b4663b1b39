"""Acks checked on arrival, against a real control plane (`custos server --dev`) with
protocol-level hosts (tests/servers/agentsim) that sign exactly what a test tells them to.

One host acks with evidence its own key signed; one with its own certificate but the
evidence of another host (a host lying about a neighbour); one with a certificate of
another CA; one with a certificate of the right CA and name that enrollment never issued
to it; one unsigned. The signed
report counts only the first as a halt, says why for the others, and verifies offline with
`custos order verify-report`; the file edited fails it with the reason.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from custos.controlplane.pki import CertificateAuthority
from custos.core.canonical import encode_canonical
from custos.core.evidence import AckEvidence, sign_evidence
from custos.core.hosts import cert_fingerprint
from custos.v1 import custody_pb2
from tests.servers.agentsim import SimHost, enroll
from tests.servers.custos import DevServer

KiB = 1 << 10


def _ack(host: SimHost, oid: str, *, as_host: str | None = None, cert_pem: bytes | None = None,
         key_pem: bytes | None = None) -> custody_pb2.OrderAck:
    cert_pem, key_pem = cert_pem or host.cert, key_pem or host.key
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    t = time.time_ns()
    ev = AckEvidence.bounded(host=as_host or host.name, order_id=oid, verified=True, outcome="halted",
                             reason="halted", pids_stopped=[], paths_wiped=[f"/data/{host.name}"], remaining=[],
                             would_stop=[], received_ns=t, done_ns=t, cert_sha256=cert_fingerprint(cert_pem))
    data, sig = sign_evidence(ev, key)
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    return custody_pb2.OrderAck(order_id=oid, verified=True, outcome="halted", reason="halted",
                                paths_wiped=[f"/data/{host.name}"], received_unix_ns=t, done_unix_ns=t,
                                evidence=data, evidence_signature=sig, host_certificate=der)


def _report(srv: DevServer, oid: str, path: Path) -> None:
    srv.cli("order", "report", oid, "--signed", "--out", str(path), role="auditor", check=True)


def _verify(srv: DevServer, path: Path, key: Path, *extra: str) -> Any:
    return srv.cli("order", "verify-report", str(path), "--ca", srv.env["CUSTOS_CA"], "--report-key", str(key),
                   *extra)


def test_acks_are_checked_on_arrival_and_the_report_counts_only_verified_evidence(tmp_path: Path) -> None:
    srv = DevServer(tmp_path / "cp").start()
    hosts: list[SimHost] = []
    try:
        srv.cli("model", "register", "m", "--training-flops", "3e26", check=True)
        w = tmp_path / "w"
        w.mkdir()
        data = b"\x07" * (64 * KiB)
        (w / "x.safetensors").write_bytes(data)
        srv.cli("push", "m", str(w), check=True)
        for name in ("gpu-good", "gpu-liar", "gpu-foreign", "gpu-unsigned", "gpu-minted"):
            h = enroll(srv.env, name)
            h.open_stream(srv.env["CUSTOS_ADDR"])
            h.next_of("lease")
            h.send(custody_pb2.AgentMessage(inventory=custody_pb2.Inventory(full=True, files=[
                custody_pb2.FileRecord(path=f"/data/{name}/x.safetensors", size=len(data), form="plaintext",
                                       sha256=hashlib.sha256(data).hexdigest())])))
            hosts.append(h)
        oid = srv.propose("halt", "m")
        # A signed report before quorum is refused, clearly.
        early = srv.cli("order", "report", oid, "--signed", "--out", str(tmp_path / "early.json"))
        assert early.returncode != 0 and "quorum" in early.stderr, early.stderr
        srv.sign(oid, 1, 2, 3)
        good, liar, foreign, unsigned, minted = hosts
        for h in hosts:
            assert h.next_of("order", timeout=20).body
        good.send(custody_pb2.AgentMessage(ack=_ack(good, oid)))
        # gpu-liar signs "gpu-good halted" with its own key and certificate, filed under itself.
        liar.send(custody_pb2.AgentMessage(ack=_ack(liar, oid, as_host="gpu-good")))
        other_ca = CertificateAuthority.create("not the deployment CA")
        cert, key = other_ca.issue(common_name="gpu-foreign", role="agent")
        foreign.send(custody_pb2.AgentMessage(ack=_ack(foreign, oid, cert_pem=cert, key_pem=key)))
        # A certificate from the right CA, for the right name, that enrollment never issued to this host.
        dev_ca = CertificateAuthority.load(tmp_path / "cp" / "tls" / "ca.pem", tmp_path / "cp" / "tls" / "ca.key")
        cert, key = dev_ca.issue(common_name="gpu-minted", role="agent")
        minted.send(custody_pb2.AgentMessage(ack=_ack(minted, oid, cert_pem=cert, key_pem=key)))
        unsigned.send(custody_pb2.AgentMessage(ack=custody_pb2.OrderAck(
            order_id=oid, verified=True, outcome="halted", paths_wiped=["/data/gpu-unsigned"],
            received_unix_ns=time.time_ns(), done_unix_ns=time.time_ns())))

        def acked() -> dict[str, Any]:
            rep = json.loads(srv.cli("order", "report", oid, "-o", "json", check=True).stdout)
            return {r["host"]: r for r in rep["hosts"] if r.get("acked")}

        deadline = time.monotonic() + 20
        while len(acked()) < 5 and time.monotonic() < deadline:
            time.sleep(0.2)
        rows = acked()
        assert {h: r["evidence_verified"] for h, r in rows.items()} == {
            "gpu-good": True, "gpu-liar": False, "gpu-foreign": False, "gpu-unsigned": False, "gpu-minted": False}

        key_out = srv.cli("order", "report-key", role="auditor", check=True)
        pub = tmp_path / "report-key.pem"
        pub.write_text(key_out.stdout)
        report = tmp_path / "report.json"
        _report(srv, oid, report)
        res = _verify(srv, report, pub, "-o", "json")
        assert res.returncode == 0, res.stderr
        v = json.loads(res.stdout)
        assert v["valid"] and v["verdict"] == "incomplete"
        assert v["hosts"] == {"gpu-good": "halted", "gpu-liar": "unverified", "gpu-foreign": "unverified",
                              "gpu-unsigned": "unverified", "gpu-minted": "unverified"}
        body = json.loads(json.loads(report.read_bytes())["body"])
        why = {r["host"]: r["problem"] for r in body["hosts"]}
        assert "names host 'gpu-good'" in why["gpu-liar"]
        assert "not issued by the given CA" in why["gpu-foreign"]
        assert "unsigned" in why["gpu-unsigned"]
        assert "does not accept" in why["gpu-minted"]
        assert "DEVELOPMENT ONLY" in body["signer"]
        text = _verify(srv, report, pub)
        assert text.returncode == 0 and "VALID" in text.stdout and "host gpu-good: halted" in text.stdout
        # Printed to a terminal instead (one newline after it), and saved from there: the same file.
        printed = srv.cli("order", "report", oid, "--signed", role="auditor", check=True).stdout
        (tmp_path / "printed.json").write_text(printed)
        assert _verify(srv, tmp_path / "printed.json", pub).returncode == 0

        # Edited: gpu-liar's row marked verified and halted (what a forger would want).
        env = json.loads(report.read_bytes())
        b = json.loads(env["body"])
        for r in b["hosts"]:
            if r["host"] == "gpu-liar":
                r["verified"], r["status"], r["problem"] = True, "halted", ""
        env["body"] = encode_canonical(b).decode()
        forged = tmp_path / "forged.json"
        forged.write_bytes(encode_canonical(env))
        res = _verify(srv, forged, pub)
        assert res.returncode == 7, res
        assert "ack of host gpu-liar: evidence names host 'gpu-good', not 'gpu-liar'" in res.stderr
        assert "report body edited" in res.stderr
    finally:
        for h in hosts:
            h.close()
        srv.stop()
